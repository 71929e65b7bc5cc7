//! Opening a source: a replication connection made ready before the window's instant and fired
//! then, a `BGSAVE` on the node and the file it writes, or an RDB file or AOF directory on disk.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fleetsnap_core::ObjectKind;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use super::source::*;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{Connection, Value, info_field, refusal_hint};

/// An opened source: its description and the objects to store, in order (an RDB, then maybe a tail).
pub struct OpenedSource {
    /// What is known about the source.
    pub info: SourceInfo,
    /// The objects, each with its kind.
    pub objects: Vec<(ObjectKind, ByteSource)>,
}

/// Options for opening a source.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// How long the node may send nothing (not even a keepalive) before the snapshot fails.
    pub idle_timeout: Duration,
    /// How long a BGSAVE may take.
    pub bgsave_timeout: Duration,
    /// `scan`: the most `DUMP` and `PTTL` commands a second (none: as fast as the node answers).
    pub max_ops_per_sec: Option<u32>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            bgsave_timeout: Duration::from_secs(3600),
            max_ops_per_sec: None,
        }
    }
}

/// A source made ready to start at once: for `replication`, the connection is open, authenticated
/// and announced (`REPLCONF`), so that starting costs one `PSYNC`.
pub enum Prepared {
    /// A replication connection waiting for its `PSYNC`.
    Replication(Box<PreparedReplication>),
    /// `BGSAVE` on this node when started.
    Bgsave(RedisTarget),
    /// This file, opened when started.
    File(PathBuf),
    /// A scan of this node's keys when started.
    Scan(RedisTarget),
    /// `auto` on a node that refused replication while being prepared: a scan when started.
    ScanInstead(RedisTarget, Error),
}

/// See [`Prepared::Replication`].
pub struct PreparedReplication {
    conn: Connection,
    info: SourceInfo,
    /// `PSYNC` already left, at the window's instant.
    psync_sent: bool,
    /// `auto`: a refused `PSYNC` turns into a scan.
    scan_if_refused: bool,
}

/// `PSYNC ? -1` under the name the node gives it.
fn full_psync(t: &RedisTarget) -> [&[u8]; 3] {
    [t.psync(), b"?", b"-1"]
}

/// Prepares a source. `keep_stream` (replication only) asks for the replication stream after
/// the RDB as well, for a consistent cut's tail.
pub async fn prepare(
    kind: &SourceKind,
    target: Option<&RedisTarget>,
    keep_stream: bool,
) -> Result<Prepared> {
    match kind {
        SourceKind::Replication => Ok(Prepared::Replication(Box::new(
            prepare_replication(need_target(target)?, keep_stream).await?,
        ))),
        SourceKind::Auto if !keep_stream => {
            let target = need_target(target)?;
            match prepare_replication(target, false).await {
                Ok(mut p) => {
                    p.scan_if_refused = true;
                    p.info.kind = Some("replication");
                    Ok(Prepared::Replication(Box::new(p)))
                }
                Err(e @ Error::SyncRefused { .. }) => Ok(Prepared::ScanInstead(target.clone(), e)),
                Err(e) => Err(e),
            }
        }
        // A consistent cut needs the stream: replication, without a fallback.
        SourceKind::Auto => {
            let mut p = prepare_replication(need_target(target)?, keep_stream).await?;
            p.info.kind = Some("replication");
            Ok(Prepared::Replication(Box::new(p)))
        }
        _ if keep_stream => Err(Error::Input(format!(
            "a consistent cut reads the replication stream; source {} cannot give one",
            kind.name()
        ))),
        SourceKind::BgsaveFile => Ok(Prepared::Bgsave(need_target(target)?.clone())),
        SourceKind::File(path) => Ok(Prepared::File(path.clone())),
        SourceKind::Scan => Ok(Prepared::Scan(need_target(target)?.clone())),
    }
}

impl Prepared {
    /// Waits for the Unix millisecond `at` and sends the command that starts the snapshot then
    /// (`PSYNC` on a replication connection), from a thread that acts on time (see
    /// [`crate::instant`]). Returns the source to [`Prepared::start`] and the instant the command
    /// left; a source that only connects when started is timed by the instant it is due.
    pub async fn fire_at(self, at: i64) -> Result<(Prepared, OffsetDateTime)> {
        match self {
            Prepared::Replication(mut p) => {
                let (sent, at) = super::instant::at_instant(at, move |rt| {
                    let t = p.conn.target().clone();
                    rt.block_on(p.conn.send(&full_psync(&t))).map(|()| p)
                })
                .await?;
                let mut p = sent?;
                p.psync_sent = true;
                Ok((Prepared::Replication(p), at))
            }
            other => Ok((other, super::instant::at_instant(at, |_| ()).await?.1)),
        }
    }

    /// Starts reading.
    pub async fn start(self, opts: &SourceOptions) -> Result<OpenedSource> {
        match self {
            Prepared::Replication(p) => p.start(opts).await,
            Prepared::ScanInstead(target, why) => scan_instead(&target, why, opts).await,
            Prepared::Bgsave(target) => open_bgsave(&target, opts).await,
            Prepared::File(path) => open_file(&path).await,
            Prepared::Scan(target) => open_scan_source(&target, opts).await,
        }
    }
}

fn need_target(t: Option<&RedisTarget>) -> Result<&RedisTarget> {
    t.ok_or_else(|| Error::Input("this source needs --redis URL".into()))
}

async fn server_facts(conn: &mut Connection, info: &mut SourceInfo) -> Result<()> {
    let server = conn.info("server").await?;
    info.redis_version = info_field(&server, "redis_version").map(str::to_string);
    info.server = fleetsnap_core::server::Server::from_info(|k| info_field(&server, k))
        .map(|s| s.to_string());
    info.run_id = info_field(&server, "run_id").map(str::to_string);
    Ok(())
}

fn sync_refused(target: &RedisTarget, e: &str) -> Error {
    Error::SyncRefused {
        target: target.to_string(),
        message: format!(
            "the node refuses replication ({e}){}; grant the agent's user +psync +replconf (see docs/security.md), or use --source bgsave-file where only SYNC is disabled, --source scan (or auto) where SYNC, PSYNC and BGSAVE all are (managed services)",
            refusal_hint(e)
        ),
    }
}

/// A scan of `target`'s keys.
async fn open_scan_source(target: &RedisTarget, opts: &SourceOptions) -> Result<OpenedSource> {
    let (s, stream) = super::scan::open_scan(target, opts.max_ops_per_sec).await?;
    Ok(OpenedSource {
        info: SourceInfo {
            node: target.address(),
            run_id: s.run_id,
            redis_version: Some(s.redis_version),
            server: Some(s.server.to_string()),
            notes: vec![super::scan::NOT_POINT_IN_TIME.to_string()],
            ..Default::default()
        },
        objects: vec![(ObjectKind::Rdb, ByteSource::Scan(Box::new(stream)))],
    })
}

/// `auto`'s scan of a node that refused replication (`why`), said so in its notes.
async fn scan_instead(
    target: &RedisTarget,
    why: Error,
    opts: &SourceOptions,
) -> Result<OpenedSource> {
    tracing::info!(node = %target, %why, "the node refuses replication; scanning it instead (source auto)");
    let mut s = open_scan_source(target, opts).await?;
    s.info.kind = Some("scan");
    s.info.notes.insert(
        0,
        format!("source auto: {why}; read with SCAN, DUMP and PTTL instead"),
    );
    Ok(s)
}

/// The next line that is not a bare newline (a node sends those as keepalives while it forks
/// and writes); after `idle` without one, the error `silent` says.
async fn next_line(
    conn: &mut Connection,
    idle: Duration,
    silent: impl Fn() -> String,
) -> Result<Vec<u8>> {
    loop {
        let line = tokio::time::timeout(idle, conn.read_line())
            .await
            .map_err(|_| Error::redis(conn.target(), silent()))??;
        if !line.is_empty() {
            return Ok(line);
        }
    }
}

/// A connection that has announced itself as a replica: diskless payloads (`capa eof`) and
/// the replication-id history a promoted node continues (`capa psync2`), no listening port.
async fn replica_connection(target: &RedisTarget) -> Result<(Connection, SourceInfo)> {
    let mut conn = Connection::connect(target).await?;
    let mut info = SourceInfo {
        node: target.address(),
        ..Default::default()
    };
    server_facts(&mut conn, &mut info).await?;
    if let Value::Error(e) = conn
        .command(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"])
        .await?
    {
        return Err(sync_refused(target, &e));
    }
    Ok((conn, info))
}

async fn prepare_replication(
    target: &RedisTarget,
    keep_stream: bool,
) -> Result<PreparedReplication> {
    let (mut conn, mut info) = replica_connection(target).await?;
    // Asks the node to send only the RDB; servers before 7.0 do not know it and send commands after
    // the payload, which this source never reads. A consistent cut wants those commands.
    if !keep_stream && let Value::Error(e) = conn.command(&[b"REPLCONF", b"rdb-only", b"1"]).await?
    {
        if e.starts_with("NOPERM") {
            return Err(sync_refused(target, &e));
        }
        info.notes.push(format!("the node does not know REPLCONF rdb-only ({e}); it may keep streaming after the snapshot, which is ignored"));
    }
    Ok(PreparedReplication {
        conn,
        info,
        psync_sent: false,
        scan_if_refused: false,
    })
}

impl PreparedReplication {
    async fn start(self, opts: &SourceOptions) -> Result<OpenedSource> {
        let PreparedReplication {
            mut conn,
            info,
            psync_sent,
            scan_if_refused,
        } = self;
        let t = conn.target().clone();
        let psync = full_psync(&t);
        if !psync_sent {
            conn.send(&psync).await?;
        }
        let line = match psync_answer(&mut conn, opts, &psync).await {
            Err(e @ Error::SyncRefused { .. }) if scan_if_refused => {
                drop(conn);
                return scan_instead(&t, e, opts).await;
            }
            line => line?,
        };
        after_fullresync(conn, info, &line, opts).await
    }
}

/// The node's answer to a `PSYNC` already sent (`psync`, sent again while the node cannot serve
/// a sync yet); an error answer is a refusal.
async fn psync_answer(
    conn: &mut Connection,
    opts: &SourceOptions,
    psync: &[&[u8]],
) -> Result<String> {
    let target = &conn.target().clone();
    // A replica between two primaries (just after a failover) or still loading answers
    // NOMASTERLINK or LOADING; it will serve the sync in a moment, on its new history.
    let patience = tokio::time::Instant::now() + opts.idle_timeout;
    let line = loop {
        let line = next_line(conn, opts.idle_timeout, || {
            format!("no answer to PSYNC within {}s", opts.idle_timeout.as_secs())
        })
        .await?;
        let line = String::from_utf8_lossy(&line).into_owned();
        let transient = ["NOMASTERLINK", "LOADING"]
            .iter()
            .any(|t| line.strip_prefix('-').is_some_and(|e| e.starts_with(t)));
        if !transient {
            break line;
        }
        if tokio::time::Instant::now() >= patience {
            return Err(Error::redis(
                target,
                format!(
                    "the node could not serve a sync for {}s ({}): it has no link to its \
                         primary or is loading; check its replication",
                    opts.idle_timeout.as_secs(),
                    &line[1..]
                ),
            ));
        }
        tracing::info!(node = %target, answer = %line, "the node cannot serve a sync yet; asking again");
        tokio::time::sleep(Duration::from_millis(250)).await;
        conn.send(psync).await?;
    };
    if let Some(e) = line.strip_prefix('-') {
        return Err(sync_refused(target, e));
    }
    Ok(line)
}

/// The snapshot that follows a `+FULLRESYNC` answer (`line`) on `conn`.
async fn after_fullresync(
    mut conn: Connection,
    mut info: SourceInfo,
    line: &str,
    opts: &SourceOptions,
) -> Result<OpenedSource> {
    let target = &conn.target().clone();
    let header = if let Some(rest) = line.strip_prefix("+FULLRESYNC ") {
        let mut parts = rest.split(' ');
        info.replid = parts.next().map(str::to_string);
        info.offset = parts.next().and_then(|o| o.parse().ok());
        next_line(&mut conn, opts.idle_timeout, || {
            format!(
                "no snapshot from the node within {}s after FULLRESYNC (not even a keepalive): \
                 check its log",
                opts.idle_timeout.as_secs()
            )
        })
        .await?
    } else if line.starts_with('$') && target.psync_command.is_some() {
        // Redis takes a renamed PSYNC for the old SYNC: the payload comes at once, without
        // the history and offset it corresponds to.
        info.notes.push(
            "the node answered the renamed PSYNC as a SYNC: the snapshot is whole, but without the replication id and offset it corresponds to (it cannot start an archive's chain or a consistent cut)".into(),
        );
        line.as_bytes().to_vec()
    } else {
        return Err(Error::redis(
            target,
            format!("unexpected answer to PSYNC: {line:?}"),
        ));
    };
    if header.first() == Some(&b'-') {
        return Err(Error::redis(
            target,
            format!(
                "the node could not produce a snapshot: {}",
                String::from_utf8_lossy(&header[1..])
            ),
        ));
    }
    let Some(spec) = header.strip_prefix(b"$") else {
        return Err(Error::redis(
            target,
            format!(
                "unexpected snapshot header {:?}",
                String::from_utf8_lossy(&header)
            ),
        ));
    };
    let idle = opts.idle_timeout;
    let body = if let Some(mark) = spec.strip_prefix(b"EOF:") {
        if mark.len() != EOF_MARK_LEN {
            return Err(Error::redis(
                target,
                "diskless snapshot header has a malformed end mark",
            ));
        }
        ByteSource::ReplicationMark {
            conn,
            mark: mark.to_vec(),
            hold: Vec::new(),
            done: false,
            idle,
            head: Vec::new(),
        }
    } else {
        let total: u64 = std::str::from_utf8(spec)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::redis(
                    target,
                    format!(
                        "unexpected snapshot header {:?}",
                        String::from_utf8_lossy(&header)
                    ),
                )
            })?;
        ByteSource::ReplicationLen {
            conn,
            remaining: total,
            total,
            idle,
            extra: BytesMut::new(),
            head: Vec::new(),
        }
    };
    Ok(OpenedSource {
        info,
        objects: vec![(ObjectKind::Rdb, body)],
    })
}

/// What a node answered an archiver's `PSYNC`.
pub enum Resumed {
    /// `+CONTINUE`: the stream goes on from the offset asked for; `replid` is the node's
    /// replication id when it names one (a promotion switched it).
    Continue {
        /// The connection, streaming.
        conn: Box<Connection>,
        /// The id `+CONTINUE` named, if any.
        replid: Option<String>,
        /// What the node is.
        info: SourceInfo,
    },
    /// `+FULLRESYNC`: the node sends a new RDB, then the stream.
    Full(Box<OpenedSource>),
}

/// Opens a replication stream for the archive: `PSYNC <replid> <offset + 1>` to continue a
/// chain at `from`, or `PSYNC ? -1` to start one. A node that was promoted continues the stream
/// and names its new id (`capa psync2`); with no listening port announced, Sentinel sees the
/// archiver as a replica at port 0, which it never reaches and so never promotes.
pub async fn psync_from(
    target: &RedisTarget,
    from: Option<(&str, u64)>,
    opts: &SourceOptions,
) -> Result<Resumed> {
    let (mut conn, info) = replica_connection(target).await?;
    let (replid, offset) = match from {
        Some((r, o)) => (r.to_string(), (o + 1).to_string()),
        None => ("?".to_string(), "-1".to_string()),
    };
    let psync: [&[u8]; 3] = [target.psync(), replid.as_bytes(), offset.as_bytes()];
    conn.send(&psync).await?;
    let line = psync_answer(&mut conn, opts, &psync).await?;
    if let Some(rest) = line.strip_prefix("+CONTINUE") {
        let replid = rest.trim();
        return Ok(Resumed::Continue {
            conn: Box::new(conn),
            replid: (!replid.is_empty()).then(|| replid.to_string()),
            info,
        });
    }
    after_fullresync(conn, info, &line, opts)
        .await
        .map(|o| Resumed::Full(Box::new(o)))
}

async fn open_bgsave(target: &RedisTarget, opts: &SourceOptions) -> Result<OpenedSource> {
    let mut conn = Connection::connect(target).await?;
    let mut info = SourceInfo {
        node: target.address(),
        ..Default::default()
    };
    server_facts(&mut conn, &mut info).await?;
    let dir = conn.config_get("dir").await?;
    let dbfilename = conn.config_get("dbfilename").await?;
    let deadline = tokio::time::Instant::now() + opts.bgsave_timeout;
    let persistence = conn.info("persistence").await?;
    let last_save = |p: &[(String, String)]| {
        info_field(p, "rdb_last_save_time")
            .unwrap_or("0")
            .to_string()
    };
    // `rdb_saves` (Redis 7+) counts RDB children when they fork; older servers only have the time
    // of the last disk save, in whole seconds.
    let saves = |p: &[(String, String)]| info_field(p, "rdb_saves").map(str::to_string);
    let saved_before = last_save(&persistence);
    // An RDB child already running may be a BGSAVE (reuse it) or a diskless sync to a replica,
    // which writes no file: wait for it, and reuse it only if a disk save completed.
    let mut reused = false;
    if running(&persistence) {
        let p = wait_idle(&mut conn, target, deadline).await?;
        reused = last_save(&p) != saved_before;
    }
    if !reused {
        loop {
            let p = conn.info("persistence").await?;
            let before = (saves(&p), last_save(&p));
            match conn.command(&[b"BGSAVE", b"SCHEDULE"]).await? {
                // Another RDB child started meanwhile: let it end, then ask again.
                Value::Error(e) if e.contains("already in progress") => {
                    wait_idle(&mut conn, target, deadline).await?;
                    continue;
                }
                Value::Error(e) => {
                    return Err(Error::redis(
                        target,
                        format!("BGSAVE refused: {e}{}", refusal_hint(&e)),
                    ));
                }
                _ => {}
            }
            // Started or scheduled (behind an AOF rewrite): wait until ours has run and ended.
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                interval.tick().await;
                let p = conn.info("persistence").await?;
                let ours_ran = match (&before.0, saves(&p)) {
                    (Some(b), Some(now)) => *b != now,
                    _ => last_save(&p) != before.1,
                };
                if ours_ran && !running(&p) {
                    break;
                }
                check_deadline(target, deadline, opts)?;
            }
            break;
        }
    }
    let p = conn.info("persistence").await?;
    if info_field(&p, "rdb_last_bgsave_status") != Some("ok") {
        return Err(Error::redis(
            target,
            "BGSAVE failed on the node (rdb_last_bgsave_status is not ok): check its log, usually a full disk or a permission problem in its dir",
        ));
    }
    if reused {
        info.notes
            .push("a BGSAVE was already running on the node; reused its result".into());
    }
    let path = Path::new(&dir).join(&dbfilename);
    // Redis writes a temporary file and renames it, so the file opened now stays whole even if
    // another BGSAVE replaces it while it is read.
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        Error::file(
            "cannot open the node's RDB file (bgsave-file needs the agent on the node's host)",
            &path,
            e,
        )
    })?;
    Ok(OpenedSource {
        info,
        objects: vec![(
            ObjectKind::Rdb,
            ByteSource::Files {
                files: Vec::new(),
                current: Some(file),
            },
        )],
    })
}

fn running(p: &[(String, String)]) -> bool {
    info_field(p, "rdb_bgsave_in_progress") == Some("1")
}

fn check_deadline(
    target: &RedisTarget,
    deadline: tokio::time::Instant,
    opts: &SourceOptions,
) -> Result<()> {
    if tokio::time::Instant::now() > deadline {
        return Err(Error::redis(
            target,
            format!(
                "BGSAVE did not finish within {}s",
                opts.bgsave_timeout.as_secs()
            ),
        ));
    }
    Ok(())
}

/// Waits until no RDB child runs on the node; returns `INFO persistence` at that point.
async fn wait_idle(
    conn: &mut Connection,
    target: &RedisTarget,
    deadline: tokio::time::Instant,
) -> Result<Vec<(String, String)>> {
    let mut interval = tokio::time::interval(Duration::from_millis(100));
    loop {
        interval.tick().await;
        let p = conn.info("persistence").await?;
        if !running(&p) {
            return Ok(p);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::redis(
                target,
                "an RDB child kept running on the node past the BGSAVE timeout",
            ));
        }
    }
}

/// One line of a Redis 7 AOF manifest.
#[derive(Debug, PartialEq, Eq)]
struct AofEntry {
    name: String,
    seq: u64,
    kind: char,
}

fn parse_aof_manifest(text: &str, path: &Path) -> Result<Vec<AofEntry>> {
    let bad = |line: &str| {
        Error::Input(format!(
            "AOF manifest {} has a line that is not `file NAME seq N type b|h|i`: {line:?}",
            path.display()
        ))
    };
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut entry = AofEntry {
            name: String::new(),
            seq: 0,
            kind: ' ',
        };
        for pair in words.chunks(2) {
            match pair {
                ["file", n] => entry.name = n.trim_matches('"').to_string(),
                ["seq", s] => entry.seq = s.parse().map_err(|_| bad(line))?,
                ["type", t] if t.len() == 1 => entry.kind = t.chars().next().expect("one char"),
                _ => {}
            }
        }
        if entry.name.is_empty() || !matches!(entry.kind, 'b' | 'h' | 'i') {
            return Err(bad(line));
        }
        // Redis names the files of its AOF directory inside it: a name that is a path is not
        // one it wrote, and would read a file from elsewhere into the backup.
        if entry.name.contains('/') || entry.name == ".." || entry.name == "." {
            return Err(Error::Input(format!(
                "AOF manifest {} names {:?}, which is not a file in its directory: refused",
                path.display(),
                entry.name
            )));
        }
        out.push(entry);
    }
    Ok(out)
}

async fn open_file(path: &Path) -> Result<OpenedSource> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| Error::file("cannot read the source", path, e))?;
    let mut info = SourceInfo {
        node: path.display().to_string(),
        ..Default::default()
    };
    if meta.is_file() {
        let mut f = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::file("cannot open", path, e))?;
        let mut magic = [0u8; 6];
        let n = f
            .read(&mut magic)
            .await
            .map_err(|e| Error::file("cannot read", path, e))?;
        if !magic[..n].starts_with(b"REDIS") && &magic[..n] != b"VALKEY" {
            return Err(Error::Input(format!(
                "{} is not an RDB file (it does not start with REDIS or VALKEY); for an AOF, pass its directory (appendonlydir), which holds the manifest",
                path.display()
            )));
        }
        return Ok(OpenedSource {
            info,
            objects: vec![(
                ObjectKind::Rdb,
                ByteSource::Files {
                    files: vec![path.to_path_buf()],
                    current: None,
                },
            )],
        });
    }
    let mut manifest = None;
    let mut rd = tokio::fs::read_dir(path)
        .await
        .map_err(|e| Error::file("cannot list", path, e))?;
    while let Some(entry) = rd
        .next_entry()
        .await
        .map_err(|e| Error::file("cannot list", path, e))?
    {
        if entry.file_name().to_string_lossy().ends_with(".manifest") {
            manifest = Some(entry.path());
        }
    }
    let manifest = manifest.ok_or_else(|| Error::Input(format!("{} is a directory without an AOF manifest (*.manifest): pass an RDB file or a Redis 7 appendonlydir", path.display())))?;
    let text = tokio::fs::read_to_string(&manifest)
        .await
        .map_err(|e| Error::file("cannot read", &manifest, e))?;
    let entries = parse_aof_manifest(&text, &manifest)?;
    let base = entries.iter().find(|e| e.kind == 'b');
    let mut incr: Vec<&AofEntry> = entries.iter().filter(|e| e.kind == 'i').collect();
    incr.sort_by_key(|e| e.seq);
    let mut tail: Vec<PathBuf> = incr.iter().map(|e| path.join(&e.name)).collect();
    let rdb = match base {
        Some(b) if b.name.ends_with(".rdb") => ByteSource::Files {
            files: vec![path.join(&b.name)],
            current: None,
        },
        Some(b) => {
            // A base in plain AOF form: commands only. Store an empty RDB and replay everything.
            tail.insert(0, path.join(&b.name));
            info.notes.push("the AOF base holds commands, not an RDB: stored an empty RDB and the whole AOF as the tail".into());
            ByteSource::Memory(Some(Bytes::from(fleetsnap_core::empty_rdb(9))))
        }
        None => ByteSource::Memory(Some(Bytes::from(fleetsnap_core::empty_rdb(9)))),
    };
    info.notes.push(format!(
        "read the AOF {}: base plus {} incremental file(s), stored as RDB + tail",
        manifest.display(),
        incr.len()
    ));
    let mut objects = vec![(ObjectKind::Rdb, rdb)];
    if !tail.is_empty() {
        objects.push((
            ObjectKind::Tail,
            ByteSource::Files {
                files: tail,
                current: None,
            },
        ));
    }
    Ok(OpenedSource { info, objects })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aof_manifest_names_stay_in_their_directory() {
        let p = Path::new("/x/appendonly.aof.manifest");
        for bad in ["../../etc/shadow", "/etc/shadow", "..", "a/b"] {
            let text = format!("file {bad} seq 1 type b\n");
            let e = parse_aof_manifest(&text, p).unwrap_err().to_string();
            assert!(e.contains("not a file in its directory"), "{bad}: {e}");
        }
    }

    #[test]
    fn aof_manifest_parses() {
        let text = "file appendonly.aof.1.base.rdb seq 1 type b\nfile appendonly.aof.1.incr.aof seq 1 type i\nfile appendonly.aof.2.incr.aof seq 2 type i\n";
        let e = parse_aof_manifest(text, Path::new("m")).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            AofEntry {
                name: "appendonly.aof.1.base.rdb".into(),
                seq: 1,
                kind: 'b'
            }
        );
        assert!(parse_aof_manifest("garbage line\n", Path::new("m")).is_err());
    }
}
