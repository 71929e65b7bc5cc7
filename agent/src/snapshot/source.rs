//! Where snapshot bytes come from: the replication protocol, a BGSAVE file, or a file on disk.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fleetsnap_core::ObjectKind;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::redis::{Connection, Value, info_field, refusal_hint};
use crate::redis::RedisTarget;

/// Read size for every source.
pub const CHUNK: usize = 256 * 1024;

/// Length of the end mark of a diskless (`$EOF:`) payload.
const EOF_MARK_LEN: usize = 40;

/// Which source to snapshot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The replication protocol (`PSYNC`), like a replica would.
    Replication,
    /// `BGSAVE`, then read the RDB file the node wrote (the agent must run on the node's host).
    BgsaveFile,
    /// An RDB file, or a Redis 7 multi-part AOF directory.
    File(PathBuf),
}

impl FromStr for SourceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "replication" => Ok(Self::Replication),
            "bgsave-file" => Ok(Self::BgsaveFile),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(Error::Input(format!(
                    "source {s:?} is not valid: use replication, bgsave-file or file:PATH"
                ))),
            },
        }
    }
}

impl SourceKind {
    /// The name recorded in manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Replication => "replication",
            Self::BgsaveFile => "bgsave-file",
            Self::File(_) => "file",
        }
    }
}

/// What is known about the node or file a snapshot came from.
#[derive(Clone, Debug, Default)]
pub struct SourceInfo {
    /// `host:port` or the file path.
    pub node: String,
    /// The node's run id.
    pub run_id: Option<String>,
    /// The replication id announced with `+FULLRESYNC`.
    pub replid: Option<String>,
    /// The offset announced with `+FULLRESYNC`.
    pub offset: Option<u64>,
    /// `redis_version` from `INFO server`.
    pub redis_version: Option<String>,
    /// Notes worth telling the operator (e.g. a reused BGSAVE).
    pub notes: Vec<String>,
}

/// One object's bytes, read in chunks.
pub enum ByteSource {
    /// A replication payload of known length.
    ReplicationLen {
        conn: Connection,
        remaining: u64,
        total: u64,
        idle: Duration,
        /// Stream bytes read past the payload (kept for the tail).
        extra: BytesMut,
        /// The payload's first bytes (its aux fields).
        head: Vec<u8>,
    },
    /// A diskless replication payload that ends with a 40-byte mark.
    ReplicationMark {
        conn: Connection,
        mark: Vec<u8>,
        hold: Vec<u8>,
        done: bool,
        idle: Duration,
        /// See `ReplicationLen`.
        head: Vec<u8>,
    },
    /// The replication stream after the RDB, up to the cut offset (consistent cuts).
    Tail(Box<TailStream>),
    /// Files read one after the other.
    Files {
        files: Vec<PathBuf>,
        current: Option<tokio::fs::File>,
    },
    /// Bytes in memory.
    Memory(Option<Bytes>),
}

impl ByteSource {
    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self {
            ByteSource::ReplicationLen {
                conn,
                remaining,
                total,
                idle,
                extra,
                head,
            } => {
                if *remaining == 0 {
                    return Ok(None);
                }
                let mut buf = BytesMut::with_capacity(CHUNK.min(*remaining as usize));
                let mut n = read_with_idle(conn, &mut buf, *idle).await?;
                if n as u64 > *remaining {
                    *extra = buf.split_off(*remaining as usize);
                    n = *remaining as usize;
                }
                keep_head(head, &buf);
                if n == 0 {
                    return Err(Error::redis(
                        conn.target(),
                        format!(
                            "the node closed the connection after {} of {} snapshot bytes: check its log (restart, output-buffer limit for replicas, repl-timeout)",
                            *total - *remaining,
                            total
                        ),
                    ));
                }
                *remaining -= n as u64;
                Ok(Some(buf.freeze()))
            }
            ByteSource::ReplicationMark {
                conn,
                mark,
                hold,
                done,
                idle,
                head,
            } => {
                if *done {
                    return Ok(None);
                }
                loop {
                    // The last 40 bytes seen are held back: they may be the end mark.
                    let mut data = BytesMut::with_capacity(CHUNK + EOF_MARK_LEN);
                    data.extend_from_slice(hold);
                    hold.clear();
                    let n = read_with_idle(conn, &mut data, *idle).await?;
                    if n == 0 {
                        return Err(Error::redis(
                            conn.target(),
                            "the node closed the connection before the end of the snapshot: check its log (restart, output-buffer limit for replicas, repl-timeout)",
                        ));
                    }
                    if data.len() >= EOF_MARK_LEN && data[data.len() - EOF_MARK_LEN..] == mark[..] {
                        data.truncate(data.len() - EOF_MARK_LEN);
                        *done = true;
                        keep_head(head, &data);
                        return Ok(Some(data.freeze()));
                    }
                    if data.len() > EOF_MARK_LEN {
                        *hold = data.split_off(data.len() - EOF_MARK_LEN).to_vec();
                        keep_head(head, &data);
                        return Ok(Some(data.freeze()));
                    }
                    *hold = data.to_vec();
                }
            }
            ByteSource::Files { files, current } => loop {
                if current.is_none() {
                    if files.is_empty() {
                        return Ok(None);
                    }
                    let path = files.remove(0);
                    let f = tokio::fs::File::open(&path)
                        .await
                        .map_err(|e| Error::file("cannot open", &path, e))?;
                    *current = Some(f);
                }
                let f = current.as_mut().expect("opened");
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = f
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::file("cannot read", "source file", e))?;
                if n == 0 {
                    *current = None;
                    continue;
                }
                return Ok(Some(buf.freeze()));
            },
            ByteSource::Memory(b) => Ok(b.take()),
            ByteSource::Tail(t) => t.next_chunk().await,
        }
    }

    /// After a replication payload was read to its end: the connection, the stream bytes already
    /// read past the payload, and the payload's first bytes.
    pub fn into_stream(self) -> Option<(Connection, BytesMut, Vec<u8>)> {
        match self {
            ByteSource::ReplicationLen {
                conn,
                remaining: 0,
                extra,
                head,
                ..
            } => Some((conn, extra, head)),
            ByteSource::ReplicationMark {
                conn,
                done: true,
                head,
                ..
            } => Some((conn, BytesMut::new(), head)),
            _ => None,
        }
    }
}

/// How many of an RDB's first bytes are kept to read its aux fields.
const HEAD_LEN: usize = 4096;

fn keep_head(head: &mut Vec<u8>, data: &[u8]) {
    if head.len() < HEAD_LEN {
        let n = (HEAD_LEN - head.len()).min(data.len());
        head.extend_from_slice(&data[..n]);
    }
}

/// What the coordinator decided for a consistent cut: the replication id and offset to read the
/// stream up to, or why to give up.
pub type CutVerdict = std::result::Result<(String, u64), String>;

/// The most stream bytes held in memory while waiting for the cut.
const MAX_PENDING: usize = 256 << 20;

/// How long a tail waits for the cut once the RDB is stored.
const CUT_WAIT: Duration = Duration::from_secs(300);

/// The replication stream after the RDB, read up to exactly the cut offset. Acknowledges its
/// offset at once and every second (a node streams nothing after a diskless RDB until it hears
/// `REPLCONF ACK`, and drops a replica that stays silent for `repl-timeout`).
pub struct TailStream {
    conn: Connection,
    /// Read from the node, not yet handed on.
    pending: BytesMut,
    /// Handed on before the stream (`SELECT` of the stream's database).
    prefix: Option<Bytes>,
    replid: String,
    /// The offset the RDB corresponds to.
    start: u64,
    /// Stream bytes handed on.
    passed: u64,
    /// Stream bytes to hand on, once the cut is known.
    wanted: Option<u64>,
    verdict: tokio::sync::watch::Receiver<Option<CutVerdict>>,
    idle: Duration,
    /// When the RDB ended.
    since: std::time::Instant,
    /// Whether any stream byte came yet.
    flowing: bool,
}

/// How soon to acknowledge again. A node whose RDB child wrote the payload's end mark may not
/// yet have marked the replica online when the first `REPLCONF ACK` arrives, and then ignores
/// it: until the stream flows, the first two seconds are acknowledged every 10 ms, not every
/// second.
fn ack_every(flowing: bool, since: std::time::Instant) -> Duration {
    if flowing || since.elapsed() > Duration::from_secs(2) {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(10)
    }
}

impl TailStream {
    /// The tail of a payload read by `into_stream`, starting at `start` of `replid`.
    pub fn new(
        (conn, pending, head): (Connection, BytesMut, Vec<u8>),
        replid: String,
        start: u64,
        verdict: tokio::sync::watch::Receiver<Option<CutVerdict>>,
        idle: Duration,
    ) -> Self {
        // A node serving a sync from its own primary's stream says in the RDB which database that
        // stream is in; replaying starts there.
        let prefix = fleetsnap_core::rdb::leading_aux(&head)
            .into_iter()
            .find(|(k, _)| k == "repl-stream-db")
            .map(|(_, db)| {
                let mut cmd = Vec::new();
                crate::redis::encode(&mut cmd, &[b"SELECT", db.as_bytes()]);
                Bytes::from(cmd)
            });
        Self {
            conn,
            pending,
            prefix,
            replid,
            start,
            passed: 0,
            wanted: None,
            verdict,
            idle,
            since: std::time::Instant::now(),
            flowing: false,
        }
    }

    async fn ack(&mut self) -> Result<()> {
        let offset = (self.start + self.passed + self.pending.len() as u64).to_string();
        self.conn
            .send(&[b"REPLCONF", b"ACK", offset.as_bytes()])
            .await
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.wanted.is_none() {
            self.ack().await?;
            self.wanted = Some(self.wait_for_cut().await?);
        }
        if let Some(p) = self.prefix.take() {
            return Ok(Some(p));
        }
        let wanted = self.wanted.expect("known");
        let mut silent = Duration::ZERO;
        loop {
            let left = wanted - self.passed;
            if left == 0 {
                return Ok(None);
            }
            if !self.pending.is_empty() {
                let n = (left as usize).min(self.pending.len()).min(CHUNK);
                self.passed += n as u64;
                return Ok(Some(self.pending.split_to(n).freeze()));
            }
            let tick = ack_every(self.flowing, self.since);
            match tokio::time::timeout(tick, self.conn.read_some(&mut self.pending)).await {
                Ok(Ok(0)) => {
                    return Err(Error::redis(
                        self.conn.target(),
                        format!(
                            "the node closed the replication stream {} bytes short of the cut: check its log (restart, failover, output-buffer limit for replicas)",
                            left
                        ),
                    ));
                }
                Ok(Ok(_)) => {
                    silent = Duration::ZERO;
                    self.flowing = true;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    silent += tick;
                    if silent >= self.idle {
                        return Err(Error::redis(
                            self.conn.target(),
                            format!(
                                "the replication stream stayed {} bytes short of the cut for {}s: the node is not receiving its primary's writes",
                                left,
                                silent.as_secs()
                            ),
                        ));
                    }
                    self.ack().await?;
                }
            }
        }
    }

    /// Waits for the coordinator's cut, keeping the stream acknowledged; the number of stream
    /// bytes from the RDB to the cut.
    async fn wait_for_cut(&mut self) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + CUT_WAIT;
        loop {
            if let Some(v) = self.verdict.borrow().clone() {
                let (replid, offset) = v.map_err(Error::Cut)?;
                if replid != self.replid {
                    return Err(Error::Cut(format!(
                        "the cut is on replication history {replid} but this stream is on {}: the shard failed over",
                        self.replid
                    )));
                }
                return offset.checked_sub(self.start).ok_or_else(|| {
                    Error::Cut(format!(
                        "the node was already at offset {} when the cut was taken at {offset}",
                        self.start
                    ))
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Cut(format!(
                    "no cut from the coordinator within {}s of the RDB",
                    CUT_WAIT.as_secs()
                )));
            }
            // The stream is read while waiting, so the node's output buffer for this connection
            // stays empty whatever the write load.
            if self.pending.len() > MAX_PENDING {
                return Err(Error::Cut(format!(
                    "more than {} MiB of writes arrived while waiting for the cut; the agent gives up rather than hold more",
                    MAX_PENDING >> 20
                )));
            }
            tokio::select! {
                changed = self.verdict.changed() => if changed.is_err() {
                    return Err(Error::Cut("the job was dropped before the cut was taken".into()));
                },
                read = self.conn.read_some(&mut self.pending) => {
                    self.flowing = true;
                    if read? == 0 {
                        return Err(Error::redis(
                            self.conn.target(),
                            "the node closed the replication stream before the cut was taken: check its log (restart, failover, output-buffer limit for replicas)",
                        ));
                    }
                }
                _ = tokio::time::sleep(ack_every(self.flowing, self.since)) => self.ack().await?,
            }
        }
    }
}

async fn read_with_idle(
    conn: &mut Connection,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<usize> {
    match tokio::time::timeout(idle, conn.read_some(buf)).await {
        Ok(r) => r,
        Err(_) => Err(Error::redis(
            conn.target(),
            format!(
                "no snapshot data for {}s: the node stalled; check its load and log",
                idle.as_secs()
            ),
        )),
    }
}

impl ByteSource {
    /// Total bytes, when known in advance.
    pub async fn total(&mut self) -> Option<u64> {
        match self {
            ByteSource::ReplicationLen { total, .. } => Some(*total),
            ByteSource::ReplicationMark { .. } => None,
            ByteSource::Files { files, current } => {
                let mut n = match current {
                    Some(f) => f.metadata().await.ok()?.len(),
                    None => 0,
                };
                for f in files {
                    n += tokio::fs::metadata(f).await.ok()?.len();
                }
                Some(n)
            }
            ByteSource::Memory(b) => b.as_ref().map(|b| b.len() as u64),
            ByteSource::Tail(_) => None,
        }
    }
}

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
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            bgsave_timeout: Duration::from_secs(3600),
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
}

/// See [`Prepared::Replication`].
pub struct PreparedReplication {
    conn: Connection,
    info: SourceInfo,
    /// `PSYNC` already left, at the window's instant.
    psync_sent: bool,
}

const PSYNC: &[&[u8]] = &[b"PSYNC", b"?", b"-1"];

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
        _ if keep_stream => Err(Error::Input(format!(
            "a consistent cut reads the replication stream; source {} cannot give one",
            kind.name()
        ))),
        SourceKind::BgsaveFile => Ok(Prepared::Bgsave(need_target(target)?.clone())),
        SourceKind::File(path) => Ok(Prepared::File(path.clone())),
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
                    rt.block_on(p.conn.send(PSYNC)).map(|()| p)
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
            Prepared::Bgsave(target) => open_bgsave(&target, opts).await,
            Prepared::File(path) => open_file(&path).await,
        }
    }
}

fn need_target(t: Option<&RedisTarget>) -> Result<&RedisTarget> {
    t.ok_or_else(|| Error::Input("this source needs --redis URL".into()))
}

async fn server_facts(conn: &mut Connection, info: &mut SourceInfo) -> Result<()> {
    let server = conn.info("server").await?;
    info.redis_version = info_field(&server, "redis_version").map(str::to_string);
    info.run_id = info_field(&server, "run_id").map(str::to_string);
    Ok(())
}

fn sync_refused(target: &RedisTarget, e: &str) -> Error {
    Error::redis(
        target,
        format!(
            "the node refuses replication ({e}){}; grant the agent's user +psync +replconf (see docs/security.md), or use --source bgsave-file where SYNC is disabled (managed services)",
            refusal_hint(e)
        ),
    )
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

async fn prepare_replication(
    target: &RedisTarget,
    keep_stream: bool,
) -> Result<PreparedReplication> {
    let mut conn = Connection::connect(target).await?;
    let mut info = SourceInfo {
        node: target.address(),
        ..Default::default()
    };
    server_facts(&mut conn, &mut info).await?;
    if let Value::Error(e) = conn.command(&[b"REPLCONF", b"capa", b"eof"]).await? {
        return Err(sync_refused(target, &e));
    }
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
    })
}

impl PreparedReplication {
    async fn start(self, opts: &SourceOptions) -> Result<OpenedSource> {
        let PreparedReplication {
            mut conn,
            mut info,
            psync_sent,
        } = self;
        let target = &conn.target().clone();
        if !psync_sent {
            conn.send(PSYNC).await?;
        }
        // A replica between two primaries (just after a failover) or still loading answers
        // NOMASTERLINK or LOADING; it will serve the sync in a moment, on its new history.
        let patience = tokio::time::Instant::now() + opts.idle_timeout;
        let line = loop {
            let line = next_line(&mut conn, opts.idle_timeout, || {
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
            conn.send(PSYNC).await?;
        };
        if let Some(e) = line.strip_prefix('-') {
            return Err(sync_refused(target, e));
        }
        let Some(rest) = line.strip_prefix("+FULLRESYNC ") else {
            return Err(Error::redis(
                target,
                format!("unexpected answer to PSYNC: {line:?}"),
            ));
        };
        let mut parts = rest.split(' ');
        info.replid = parts.next().map(str::to_string);
        info.offset = parts.next().and_then(|o| o.parse().ok());
        let header = next_line(&mut conn, opts.idle_timeout, || {
            format!(
                "no snapshot from the node within {}s after FULLRESYNC (not even a keepalive): \
                 check its log",
                opts.idle_timeout.as_secs()
            )
        })
        .await?;
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
        let mut magic = [0u8; 5];
        let n = f
            .read(&mut magic)
            .await
            .map_err(|e| Error::file("cannot read", path, e))?;
        if &magic[..n] != b"REDIS" {
            return Err(Error::Input(format!(
                "{} is not an RDB file (it does not start with REDIS); for an AOF, pass its directory (appendonlydir), which holds the manifest",
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
    fn source_kinds_parse() {
        assert_eq!(
            "replication".parse::<SourceKind>().unwrap(),
            SourceKind::Replication
        );
        assert_eq!(
            "file:/x/dump.rdb".parse::<SourceKind>().unwrap(),
            SourceKind::File("/x/dump.rdb".into())
        );
        assert!("file:".parse::<SourceKind>().is_err());
        assert!("sync".parse::<SourceKind>().is_err());
    }

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
