//! `replace` restores: a node is stopped through the operator's hook, its data file replaced by a
//! verified copy of the backup, started again through the hook, and checked — key count, the
//! replication offset the RDB carries, and for a Redis Cluster node the slots it owns — before the
//! tail of a consistent cut is replayed into it.
//!
//! A node that keeps an RDB file takes the copy as it streams: once the manifest is read and the
//! tail fetched and verified, the node is stopped, its file kept aside (`….fleetsnap-old`), and a
//! named pipe put in its place, from which the node loads while the agent fetches, decodes and
//! verifies the object and writes the same bytes beside it. The last bytes of the RDB (its
//! checksum among them) go into the pipe only after the object has matched its manifest and the
//! written copy has been moved over the pipe's name; a copy that does not match ends the stream
//! short, the node refuses the load and exits, and the next region is tried, or the node is
//! started again on its previous file. So the fetch and the node's load overlap instead of
//! adding up.
//!
//! A node with an AOF directory gets a copy fetched and verified beside it while it still runs;
//! it is down for the stop, a rename and its own load.
//!
//! The tail goes in once the node serves the base: as a replication stream where the node can
//! take one (`feed`: the node a replica of the agent for the tail's length, at the speed it
//! loads an AOF), else as pipelined commands. A tail from the archive is written by a task of
//! its own while the base streams into the node's load, so the segments' fetch overlaps the
//! load too. Where that tail, or its replay, fails after the node was stopped, the node is
//! stopped again and started on its previous data: it is never left at a point nobody asked
//! for.

use fleetsnap_core::outcomes::ReplaceReport;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleetsnap_core::digest::DbDigest;
use fleetsnap_core::rdbread::{Item, RdbReader};

use super::to_file::{RestoreRequest, restore, with_suffix};
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{Connection, Value, info_field};
use fleetsnap_core::outcomes::RestoreReport;

/// What to replace and how.
pub struct ReplaceRequest {
    /// The shard to read (with `to_file` and `aof_dir` chosen here).
    pub read: RestoreRequest,
    /// The node.
    pub node: RedisTarget,
    /// Shell command that stops the node (default: `SHUTDOWN NOSAVE` sent to it).
    pub stop: Option<String>,
    /// Shell command that starts the node and returns (`systemctl start redis@6379`,
    /// `redis-server /etc/redis/6379.conf --daemonize yes`).
    pub start: String,
    /// The node's data file, when the node is down and cannot say (`CONFIG GET dir dbfilename`).
    pub rdb_path: Option<PathBuf>,
    /// How long the stop, and then the start and load, may take.
    pub timeout: Duration,
}

/// Where the node keeps its data, as it says.
struct Layout {
    dir: PathBuf,
    dbfilename: String,
    aof_dir: Option<String>,
}

async fn layout(req: &ReplaceRequest) -> Result<Layout> {
    match Connection::connect(&req.node).await {
        Ok(mut c) => {
            let dir = PathBuf::from(c.config_get("dir").await?);
            let dbfilename = c.config_get("dbfilename").await?;
            let aof = c.config_get("appendonly").await? == "yes";
            let aof_dir = if aof {
                Some(c.config_get("appenddirname").await?)
            } else {
                None
            };
            if let Some(p) = &req.rdb_path
                && *p != dir.join(&dbfilename)
            {
                return Err(Error::Input(format!(
                    "--rdb-path {} is not the node's data file ({}): leave --rdb-path out while the node runs",
                    p.display(),
                    dir.join(&dbfilename).display()
                )));
            }
            Ok(Layout {
                dir,
                dbfilename,
                aof_dir,
            })
        }
        Err(e) => match &req.rdb_path {
            Some(p) => Ok(Layout {
                dir: p.parent().map(Path::to_path_buf).unwrap_or_default(),
                dbfilename: p
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                aof_dir: None,
            }),
            None => Err(Error::Input(format!(
                "{e}; a node that is down cannot say where its data file is: give --rdb-path"
            ))),
        },
    }
}

/// How many keys the backup's RDB holds, and how many of them carry an expiry (Redis does not
/// load those already past).
#[derive(Default)]
struct Census {
    keys: u64,
    expires: u64,
}

impl Census {
    /// From the manifest, which counted them while the snapshot streamed.
    fn recorded(dbs: Option<&[DbDigest]>) -> Option<Self> {
        dbs.map(|dbs| Census {
            keys: dbs.iter().map(|d| d.keys).sum(),
            expires: dbs.iter().map(|d| d.expires).sum(),
        })
    }

    /// By reading the copy, for sets whose manifest has no counts (written before they were
    /// recorded, or holding a module value).
    fn read(rdb: &Path) -> Result<Self> {
        let file = std::fs::File::open(rdb).map_err(|e| Error::file("cannot open", rdb, e))?;
        let bad = |e| Error::Decode(format!("{}: {e}", rdb.display()));
        let mut r = RdbReader::checked_elsewhere(file).map_err(bad)?;
        let mut c = Census::default();
        while let Some(item) = r.next_item().map_err(bad)? {
            if let Item::Entry(e) = item {
                c.keys += 1;
                c.expires += u64::from(e.expire_ms.is_some());
            }
        }
        Ok(c)
    }
}

/// The replication offset an RDB carries in its leading aux fields.
fn rdb_offset(rdb: &Path) -> Result<Option<u64>> {
    let mut head = vec![0u8; 4096];
    let mut f = std::fs::File::open(rdb).map_err(|e| Error::file("cannot open", rdb, e))?;
    let n =
        std::io::Read::read(&mut f, &mut head).map_err(|e| Error::file("cannot read", rdb, e))?;
    Ok(fleetsnap_core::rdb::leading_aux(&head[..n])
        .into_iter()
        .find(|(k, _)| k == "repl-offset")
        .and_then(|(_, v)| v.parse().ok()))
}

async fn run_hook(what: &str, command: &str, timeout: Duration) -> Result<()> {
    let run = tokio::process::Command::new("sh")
        .args(["-c", command])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| {
            Error::Failed(format!(
                "the {what} hook `{command}` did not finish within {}s",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| Error::Failed(format!("the {what} hook `{command}` could not run: {e}")))?;
    if !out.status.success() {
        return Err(Error::Failed(format!(
            "the {what} hook `{command}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

async fn stop(req: &ReplaceRequest) -> Result<()> {
    match &req.stop {
        Some(hook) => run_hook("stop", hook, req.timeout).await?,
        None => {
            if let Ok(mut c) = Connection::connect(&req.node).await {
                // The reply is the connection closing.
                let _ = c.command(&[b"SHUTDOWN", b"NOSAVE"]).await;
            }
        }
    }
    let deadline = Instant::now() + req.timeout;
    while Connection::connect(&req.node).await.is_ok() {
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "{} still accepts connections {}s after the stop: nothing was replaced",
                req.node,
                req.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Waits until the node answers and has loaded its data.
async fn serving(req: &ReplaceRequest) -> Result<Connection> {
    let deadline = Instant::now() + req.timeout;
    let mut last = String::from("no answer yet");
    loop {
        if let Ok(mut c) = Connection::connect(&req.node).await {
            match c.command(&[b"PING"]).await {
                Ok(Value::Simple(_)) => return Ok(c),
                Ok(Value::Error(e)) => last = e,
                Ok(_) => {}
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "{} did not serve within {}s of the start hook ({last})",
                req.node,
                req.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// fsyncs the placed copy (a file, or an AOF directory's files) and the directory holding it, so
/// the rename survives a crash too.
fn sync_placed(live: &Path) -> Result<()> {
    let sync = |p: &Path| {
        std::fs::File::open(p)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::file("cannot sync", p, e))
    };
    if live.is_dir() {
        for entry in std::fs::read_dir(live).map_err(|e| Error::file("cannot list", live, e))? {
            let entry = entry.map_err(|e| Error::file("cannot list", live, e))?;
            sync(&entry.path())?;
        }
    }
    sync(live)?;
    match live.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync(dir),
        _ => Ok(()),
    }
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).map_err(|e| Error::file("cannot move into place", to, e))
}

/// Replaces one node's data with a verified copy of the backup.
pub async fn replace(req: ReplaceRequest) -> Result<ReplaceReport> {
    let layout = layout(&req).await?;
    if layout.aof_dir.is_none() {
        replace_streamed(req, layout).await
    } else {
        replace_staged(req, layout).await
    }
}

/// Drops what an earlier replace kept: its space goes to the new copy, and freeing a large file
/// takes time the node would otherwise be down for.
fn drop_kept(old: &Path) {
    if old.is_dir() {
        std::fs::remove_dir_all(old).ok();
    } else {
        std::fs::remove_file(old).ok();
    }
}

/// Where the node was stopped, and where its previous data went.
struct Stopped {
    at: Instant,
    previous_kept_at: Option<String>,
}

async fn stop_and_keep(req: &ReplaceRequest, live: &Path, old: &Path) -> Result<Stopped> {
    let at = Instant::now();
    stop(req).await?;
    let previous_kept_at = if live.exists() {
        rename(live, old)?;
        Some(old.display().to_string())
    } else {
        None
    };
    Ok(Stopped {
        at,
        previous_kept_at,
    })
}

/// After a failure with the node stopped: its previous file back in place, and the node started
/// on it. The error says what became of the node.
async fn bring_back(
    req: &ReplaceRequest,
    live: &Path,
    stopped: Option<&Stopped>,
    e: Error,
) -> Error {
    let Some(stopped) = stopped else {
        return Error::Failed(format!("{e}. {} was not stopped", req.node));
    };
    let back = async {
        if let Some(old) = &stopped.previous_kept_at {
            rename(Path::new(old), live)?;
        }
        run_hook("start", &req.start, req.timeout).await?;
        serving(req).await.map(|_| ())
    };
    match back.await {
        Ok(()) => Error::Failed(format!(
            "{e}. {} was started again on its previous data",
            req.node
        )),
        Err(again) => Error::Failed(format!(
            "{e}. Starting {} again on its previous data failed too: {again}",
            req.node
        )),
    }
}

/// The node's data file made a named pipe, which the node opens as it starts.
fn make_fifo(path: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    std::fs::remove_file(path).ok();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Input(format!("{} holds a NUL byte", path.display())))?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(Error::file(
            "cannot make a named pipe at",
            path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Opens the pipe's writing end, non-blocking (see `restore::write_paced`), without waiting for
/// a reader: `None` while nobody reads it.
fn open_writer(fifo: &Path) -> Result<Option<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(fifo)
    {
        Ok(f) => {
            // Fewer wake-ups of the reading node; the default size is kept if refused.
            // SAFETY: fcntl on a descriptor this function owns.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES) };
            Ok(Some(f))
        }
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(None),
        Err(e) => Err(Error::file("cannot open", fifo, e)),
    }
}

/// The pipe's buffer.
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Starts the node on the pipe and streams the prepared copy into it. On success the copy is the
/// node's data file and the node is loading its last bytes.
async fn load_streamed(
    req: &ReplaceRequest,
    prepared: &super::to_file::Prepared,
    live: &Path,
) -> Result<()> {
    make_fifo(live)?;
    // A start hook may wait for the node to be ready (systemd with `Type=notify`), which it is
    // only once the pipe has been read: the hook runs beside the stream.
    let mut hook = {
        let (start, timeout) = (req.start.clone(), req.timeout);
        Some(tokio::spawn(async move {
            run_hook("start", &start, timeout).await
        }))
    };
    let hook_failed = |r: std::result::Result<Result<()>, tokio::task::JoinError>| match r {
        Ok(r) => r,
        Err(e) => Err(Error::Failed(format!("the start hook's task failed: {e}"))),
    };
    let deadline = Instant::now() + req.timeout;
    let pipe = loop {
        if let Some(p) = open_writer(live)? {
            break p;
        }
        if hook.as_ref().is_some_and(|h| h.is_finished())
            && let Some(h) = hook.take()
        {
            hook_failed(h.await)?;
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "{} did not open its data file {} within {}s of the start hook: check that the hook starts it with that `dir` and `dbfilename`",
                req.node,
                live.display(),
                req.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let held = super::to_file::stream_rdb(prepared, &req.read, pipe).await?;
    // The node keeps reading the pipe it opened; its name now gives the verified copy.
    rename(&req.read.to_file, live)?;
    tokio::task::spawn_blocking(move || held.release())
        .await
        .map_err(|e| Error::Failed(format!("the stream's last write failed: {e}")))?
        .map_err(|e| {
            Error::Failed(format!(
                "{} stopped reading the restored copy before its end ({e}): see its log",
                req.node
            ))
        })?;
    if let Some(h) = hook {
        hook_failed(h.await)?;
    }
    Ok(())
}

/// After a stream that failed: makes sure the node has given up its load and exited. Redis ends
/// a short read by opening its data file again to check it; a writer that opens the pipe and
/// closes it at once lets that check end, and the process exit.
async fn reap(req: &ReplaceRequest, fifo: &Path) -> Result<()> {
    let deadline = Instant::now() + req.timeout;
    loop {
        drop(open_writer(fifo));
        let addr = (req.node.host.as_str(), req.node.port);
        // A listening socket accepts even while the process is stuck; only a refusal says it
        // has gone.
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "{} did not exit within {}s after its load was cut short: stop it by hand",
                req.node,
                req.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if std::fs::symlink_metadata(fifo).is_ok_and(|m| {
        use std::os::unix::fs::FileTypeExt;
        m.file_type().is_fifo()
    }) {
        std::fs::remove_file(fifo).ok();
    }
    std::fs::remove_file(&req.read.to_file).ok();
    Ok(())
}

/// `replace` for a node that keeps an RDB file: see the module's documentation.
async fn replace_streamed(mut req: ReplaceRequest, layout: Layout) -> Result<ReplaceReport> {
    let started = Instant::now();
    let live = layout.dir.join(&layout.dbfilename);
    let old = with_suffix(&live, ".fleetsnap-old");
    drop_kept(&old);
    req.read.to_file = with_suffix(&live, ".fleetsnap-restore");
    req.read.aof_dir = false;
    let mut skipped = Vec::new();
    let mut stopped: Option<Stopped> = None;
    let mut read = None;
    let mut staged_seconds = 0.0;
    for spec in req.read.from.clone() {
        let prepared = match super::to_file::prepare_stream(&spec, &req.read).await {
            Ok(p) => p,
            Err(e @ (Error::Input(_) | Error::File { .. })) => {
                return Err(bring_back(&req, &live, stopped.as_ref(), e).await);
            }
            Err(e) => {
                skipped.push((spec.to_string(), e.to_string()));
                continue;
            }
        };
        if stopped.is_none() {
            staged_seconds = started.elapsed().as_secs_f64();
            stopped = Some(stop_and_keep(&req, &live, &old).await?);
        }
        match load_streamed(&req, &prepared, &live).await {
            Ok(()) => {
                read = Some(prepared.report);
                break;
            }
            Err(e) => {
                if let Err(stuck) = reap(&req, &live).await {
                    return Err(Error::Failed(format!("{e}. {stuck}")));
                }
                match e {
                    Error::Storage { .. } | Error::Decode(_) => {
                        skipped.push((spec.to_string(), e.to_string()));
                    }
                    e => return Err(bring_back(&req, &live, stopped.as_ref(), e).await),
                }
            }
        }
    }
    let Some(mut read) = read else {
        let why: Vec<String> = skipped.iter().map(|(d, e)| format!("{d}: {e}")).collect();
        let e = Error::Failed(format!(
            "backup {} could not be restored from any destination:
  {}",
            req.read.backup,
            why.join("\n  ")
        ));
        return Err(bring_back(&req, &live, stopped.as_ref(), e).await);
    };
    let stopped = stopped.expect("a stream ran, so the node was stopped");
    read.skipped = skipped;
    read.rdb_file = live.display().to_string();
    let offset_in_rdb = rdb_offset(&live)?;
    let census = {
        let live = live.clone();
        Census::recorded(read.dbs.as_deref())
            .ok_or_else(|| tokio::task::spawn_blocking(move || Census::read(&live)))
    };
    Loaded::wait(&req, &live, false, read, census, offset_in_rdb)
        .await?
        .check(&req, started, staged_seconds, stopped)
        .await
}

/// A node serving again after its data file was replaced, and what it should hold.
struct Loaded<'a> {
    conn: Connection,
    live: &'a Path,
    is_aof: bool,
    read: RestoreReport,
    census: Counting,
    synced: tokio::task::JoinHandle<Result<()>>,
    offset_in_rdb: Option<u64>,
}

type Counting = std::result::Result<Census, tokio::task::JoinHandle<Result<Census>>>;

impl<'a> Loaded<'a> {
    /// Syncs the placed copy to disk while the node loads it, and waits until the node serves.
    async fn wait(
        req: &ReplaceRequest,
        live: &'a Path,
        is_aof: bool,
        read: RestoreReport,
        census: Counting,
        offset_in_rdb: Option<u64>,
    ) -> Result<Self> {
        let synced = {
            let live = live.to_path_buf();
            tokio::task::spawn_blocking(move || sync_placed(&live))
        };
        let conn = serving(req).await?;
        Ok(Self {
            conn,
            live,
            is_aof,
            read,
            census,
            synced,
            offset_in_rdb,
        })
    }

    /// The checks: the node loaded this very file, every key of it, and owns the shard's slots;
    /// then the tail is replayed.
    async fn check(
        mut self,
        req: &ReplaceRequest,
        started: Instant,
        staged_seconds: f64,
        stopped: Stopped,
    ) -> Result<ReplaceReport> {
        let (conn, live) = (&mut self.conn, self.live);
        self.synced
            .await
            .map_err(|e| Error::Failed(format!("syncing the placed copy failed: {e}")))??;
        let census = match self.census {
            Ok(recorded) => recorded,
            Err(counting) => counting
                .await
                .map_err(|e| Error::Decode(format!("reading the backup's keys failed: {e}")))??,
        };
        let keys_loaded = crate::redis::keyspace_keys(&conn.info("keyspace").await?);
        if keys_loaded > census.keys || keys_loaded < census.keys - census.expires {
            return Err(Error::Failed(format!(
                "{} holds {keys_loaded} keys after the restart but the backup has {} ({} of them with an expiry): the node did not load the restored file (check that the start hook starts it on {})",
                req.node,
                census.keys,
                census.expires,
                live.display()
            )));
        }
        let replication = conn.info("replication").await?;
        let offset =
            info_field(&replication, "master_repl_offset").and_then(|o| o.parse::<u64>().ok());
        if !self.is_aof
            && let (Some(want), Some(got)) = (self.offset_in_rdb, offset)
            && info_field(&replication, "role") == Some("master")
            && want != got
        {
            return Err(Error::Failed(format!(
                "{} came up at replication offset {got}, not the backup's {want}: it did not load the restored file",
                req.node
            )));
        }
        check_slots(conn, &req.node, &self.read.slot_ranges).await?;
        cluster_ok(conn, req).await?;
        let tail_started = Instant::now();
        let replayed = async {
            if self.is_aof {
                // An AOF directory's incremental file is the tail: the node replayed it as it
                // loaded.
                return Ok((0, String::new()));
            }
            if let Some(t) = &req.read.archive_tail {
                // Written while the base streamed into the node's load.
                let point = t.ready().await?;
                return replay(req, t.path(), Some(point.tail_commands)).await;
            }
            let Some(t) = &self.read.tail_file else {
                return Ok((0, String::new()));
            };
            let r = replay(req, Path::new(t), None).await?;
            std::fs::remove_file(t).ok();
            Ok(r)
        };
        let (tail_commands, tail_replayed_as) = match replayed.await {
            Ok(r) => r,
            Err(e) => return Err(undo(req, live, &stopped, e).await),
        };
        let tail_seconds = tail_started.elapsed().as_secs_f64();
        Ok(ReplaceReport {
            node: req.node.to_string(),
            placed: live.display().to_string(),
            previous_kept_at: stopped.previous_kept_at,
            keys_in_backup: census.keys,
            expires_in_backup: census.expires,
            keys_loaded,
            offset: self.offset_in_rdb,
            tail_commands,
            tail_replayed_as,
            tail_seconds,
            staged_seconds,
            down_seconds: stopped.at.elapsed().as_secs_f64(),
            seconds: started.elapsed().as_secs_f64(),
            read: self.read,
        })
    }
}

/// Replays a tail file into the restarted node: as a replication stream where the node can take
/// one, else as commands. Gives the commands replayed (`commands`, when the caller knows them)
/// and how they went in.
async fn replay(req: &ReplaceRequest, tail: &Path, commands: Option<u64>) -> Result<(u64, String)> {
    match super::feed::feed_tail(&req.node, tail, req.timeout).await? {
        super::feed::Fed::Streamed => {
            let n = match commands {
                Some(n) => n,
                None => super::online::count_commands(tail)?,
            };
            Ok((n, "replication".into()))
        }
        super::feed::Fed::NotPossible(why) => {
            let n = super::online::replay_tail_into(&req.node, tail).await?;
            Ok((n, format!("commands ({why})")))
        }
    }
}

/// After a failure with the restored base loaded (the tail could not be built or replayed): the
/// node stopped, and started again on its previous data (see `bring_back`), so it is never left
/// at a point nobody asked for.
async fn undo(req: &ReplaceRequest, live: &Path, stopped: &Stopped, e: Error) -> Error {
    if let Err(again) = stop(req).await {
        return Error::Failed(format!(
            "{e}. {} holds the backup's base without the tail, and stopping it failed: {again}; its previous data is at {}",
            req.node,
            stopped.previous_kept_at.as_deref().unwrap_or("(none)")
        ));
    }
    bring_back(req, live, Some(stopped), e).await
}

/// `replace` for a node with an AOF directory: see the module's documentation.
async fn replace_staged(mut req: ReplaceRequest, layout: Layout) -> Result<ReplaceReport> {
    let started = Instant::now();
    let aof_dir = layout.aof_dir.as_deref().ok_or_else(|| {
        Error::Input("a staged replace is for a node with an AOF directory".into())
    })?;
    // Placed beside the node's data, on the same filesystem, so moving it in is a rename.
    let staged = layout.dir.join(format!("{aof_dir}.fleetsnap-restore"));
    let live = layout.dir.join(aof_dir);
    let old = with_suffix(&live, ".fleetsnap-old");
    drop_kept(&old);
    req.read.to_file = staged.clone();
    req.read.aof_dir = true;
    // Synced while the node loads it, below.
    req.read.sync = false;
    std::fs::remove_dir_all(&staged).ok();
    let read = restore(&req.read).await?;
    let staged_seconds = started.elapsed().as_secs_f64();
    let rdb = PathBuf::from(&read.rdb_file);
    let offset_in_rdb = rdb_offset(&rdb)?;
    // The manifest's counts, or (for sets without them) a count made while the node restarts.
    let census = Census::recorded(read.dbs.as_deref())
        .ok_or_else(|| tokio::task::spawn_blocking(move || Census::read(&rdb)));

    let stopped = stop_and_keep(&req, &live, &old).await?;
    rename(&staged, &live)?;
    if let Err(e) = run_hook("start", &req.start, req.timeout).await {
        return Err(Error::Failed(format!(
            "{e}. The backup is in place at {}; the node's previous data is at {}",
            live.display(),
            stopped.previous_kept_at.as_deref().unwrap_or("(none)")
        )));
    }
    Loaded::wait(&req, &live, true, read, census, offset_in_rdb)
        .await?
        .check(&req, started, staged_seconds, stopped)
        .await
}

/// A restarted Redis Cluster node refuses commands until it has met its peers again: waits for
/// `cluster_state:ok` before the tail is replayed.
async fn cluster_ok(conn: &mut Connection, req: &ReplaceRequest) -> Result<()> {
    let deadline = Instant::now() + req.timeout;
    loop {
        let cluster = conn.info("cluster").await?;
        if info_field(&cluster, "cluster_enabled") != Some("1") {
            return Ok(());
        }
        if let Value::Bulk(Some(b)) = conn.checked(&[b"CLUSTER", b"INFO"]).await?
            && String::from_utf8_lossy(&b).contains("cluster_state:ok")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Failed(format!(
                "{} came back but its cluster is not ok after {}s (CLUSTER INFO): check that its peers are up",
                req.node,
                req.timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis Cluster node must own exactly the slots the backup's shard owned.
async fn check_slots(conn: &mut Connection, node: &RedisTarget, want: &[(u16, u16)]) -> Result<()> {
    let cluster = conn.info("cluster").await?;
    if info_field(&cluster, "cluster_enabled") != Some("1") || want.is_empty() {
        return Ok(());
    }
    let Value::Bulk(Some(nodes)) = conn.checked(&[b"CLUSTER", b"NODES"]).await? else {
        return Err(Error::redis(node, "CLUSTER NODES gave no text"));
    };
    let text = String::from_utf8_lossy(&nodes);
    let myself = text
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
        .ok_or_else(|| Error::redis(node, "CLUSTER NODES has no line for this node"))?;
    let mut owned: Vec<(u16, u16)> = myself
        .split(' ')
        .skip(8)
        .filter(|r| !r.starts_with('['))
        .filter_map(|r| match r.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => r.parse().ok().map(|s| (s, s)),
        })
        .collect();
    owned.sort();
    let mut want = want.to_vec();
    want.sort();
    if owned != want {
        return Err(Error::Failed(format!(
            "{node} owns slots {} but the backup's shard held {}: its nodes.conf belongs to another layout; restore this shard on the node that owns those slots, or use an online restore",
            fleetsnap_core::topology::format_slots(&owned),
            fleetsnap_core::topology::format_slots(&want)
        )));
    }
    Ok(())
}
