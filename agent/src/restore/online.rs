//! Online restore: reads a verified RDB key by key and sends each value with `RESTORE … ABSTTL`
//! into a running server (standalone, or a Redis Cluster of any shape, routed by slot), pipelined,
//! then replays the tail of a consistent cut.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use fleetsnap_core::keys::{glob_match, key_slot};
use fleetsnap_core::rdbread::{Entry, Item, RdbReader};
use fleetsnap_core::resp::parse_commands;
use fleetsnap_core::window::{JobResult, ProbeTask, ProbeWant};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::redis::{self as resp, Connection, Value, info_field};
use crate::redis::RedisTarget;

/// Bytes of commands written to a node before its replies are read.
const BATCH_BYTES: usize = 512 * 1024;
/// Keys reported by name when some already existed.
const CONFLICTS_NAMED: usize = 10;

/// What to restore and how.
#[derive(Clone, Debug, Default)]
pub struct OnlineOptions {
    /// Overwrite keys (and function libraries) that already exist; otherwise they are left as
    /// they are and reported.
    pub replace_existing: bool,
    /// Only this logical database.
    pub db: Option<u64>,
    /// Only keys matching this glob.
    pub pattern: Option<String>,
    /// Print progress on standard error (a bar on a terminal).
    pub progress: bool,
}

/// What an online restore did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OnlineReport {
    /// The target named.
    pub target: String,
    /// Whether it is a Redis Cluster.
    pub cluster: bool,
    /// Primaries written to.
    pub nodes: usize,
    /// Keys restored.
    pub keys: u64,
    /// Keys left out by `--db` or `--match`.
    pub filtered: u64,
    /// Keys whose expiry had already passed.
    pub expired: u64,
    /// Keys (and libraries) that already existed and were left as they are.
    pub conflicts: u64,
    /// The first of them.
    pub conflicting_keys: Vec<String>,
    /// Function libraries loaded.
    pub functions: u64,
    /// Module auxiliary data skipped (the modules' own state, not keys).
    pub module_aux_skipped: Vec<String>,
    /// Tail commands replayed.
    pub tail_commands: u64,
    /// Tail commands left out because they write to a key that was in the target before the
    /// restore (or, for `FLUSHALL`/`FLUSHDB`, to a target that held keys): merging, the restore
    /// changes nothing that was there.
    pub tail_skipped: u64,
    /// The first of them (command and key).
    pub tail_skipped_commands: Vec<String>,
    /// RDB bytes read.
    pub rdb_bytes: u64,
    /// Wall time of the whole restore.
    pub seconds: f64,
}

/// Keys and values of plain strings.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a command written to a node restores, for reading its reply.
enum Pending {
    /// A command whose reply only needs to be OK (`SELECT`, a tail's command).
    Ok,
    /// `RESTORE` of this key of this database (`BUSYKEY`: it existed).
    Key(u64, Vec<u8>),
    /// `MSETNX` (or `MSET` when replacing) of plain strings in database `db`; when `MSETNX`
    /// finds one of them existing it sets none, and each is sent again as `SET … NX`.
    Strings { db: u64, pairs: Pairs },
    /// `SET key value NX` in this database (a nil reply: it existed).
    SetNx(u64, Vec<u8>),
}

/// The RDB type byte of a string value.
const RDB_TYPE_STRING: u8 = 0;

/// Plain strings (no expiry, no LRU/LFU field) held back to go as one command.
const STRINGS_BYTES: usize = 256 * 1024;
/// Larger strings go as `RESTORE`.
const STRING_BATCHED_MAX: usize = 16 * 1024;
const STRINGS_KEYS: usize = 2000;

/// One primary of the target.
struct Node {
    conn: Connection,
    buf: Vec<u8>,
    /// What each command in `buf` restores.
    pending: Vec<Pending>,
    /// Batches written and not yet answered.
    in_flight: VecDeque<Vec<Pending>>,
    db: u64,
    /// Plain strings of database `db` waiting for their `MSETNX`.
    strings: Vec<(Vec<u8>, Vec<u8>)>,
    strings_bytes: usize,
    /// Strings an `MSETNX` did not set, to send again one by one.
    retry: Vec<(u64, Pairs)>,
    /// Keys (with their database) the tail writes to: a conflict on one is remembered in
    /// `watched_conflicts`, so the tail leaves that key alone too.
    watch: std::sync::Arc<HashSet<DbKey>>,
    watched_conflicts: HashSet<DbKey>,
}

/// A key with its logical database.
type DbKey = (u64, Vec<u8>);

impl Node {
    fn push(&mut self, args: &[&[u8]], what: Pending) {
        resp::encode(&mut self.buf, args);
        self.pending.push(what);
    }

    /// Holds back a plain string for the next `MSETNX`.
    fn hold_string(&mut self, key: Vec<u8>, value: Vec<u8>, replace: bool) {
        self.strings_bytes += key.len() + value.len();
        self.strings.push((key, value));
        if self.strings_bytes >= STRINGS_BYTES || self.strings.len() >= STRINGS_KEYS {
            self.emit_strings(replace);
        }
    }

    /// Writes the held strings as one `MSETNX` (`MSET` when replacing) into the batch.
    fn emit_strings(&mut self, replace: bool) {
        if self.strings.is_empty() {
            return;
        }
        let pairs = std::mem::take(&mut self.strings);
        self.strings_bytes = 0;
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + 2 * pairs.len());
        args.push(if replace { b"MSET" } else { b"MSETNX" });
        for (k, v) in &pairs {
            args.push(k);
            args.push(v);
        }
        resp::encode(&mut self.buf, &args);
        self.pending.push(if replace {
            Pending::Ok
        } else {
            Pending::Strings { db: self.db, pairs }
        });
    }

    /// Sends each string an `MSETNX` refused as `SET … NX`, in its own database.
    fn push_retries(&mut self) {
        for (db, pairs) in std::mem::take(&mut self.retry) {
            let back = self.db;
            if db != back {
                self.push(&[b"SELECT", db.to_string().as_bytes()], Pending::Ok);
            }
            for (k, v) in pairs {
                resp::encode(&mut self.buf, &[b"SET", &k, &v, b"NX"]);
                self.pending.push(Pending::SetNx(db, k));
            }
            if db != back {
                self.push(&[b"SELECT", back.to_string().as_bytes()], Pending::Ok);
            }
        }
    }

    /// Writes the batch; reads the replies of the one before it, so the node always has work.
    async fn flush(&mut self, report: &mut OnlineReport) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.conn.write_all(&self.buf).await?;
        self.buf.clear();
        self.in_flight.push_back(std::mem::take(&mut self.pending));
        if self.in_flight.len() > 1 {
            self.answer(report).await?;
        }
        self.push_retries();
        Ok(())
    }

    async fn drain(&mut self, report: &mut OnlineReport, replace: bool) -> Result<()> {
        self.emit_strings(replace);
        loop {
            self.flush(report).await?;
            while !self.in_flight.is_empty() {
                self.answer(report).await?;
            }
            if self.retry.is_empty() && self.pending.is_empty() {
                return Ok(());
            }
            self.push_retries();
        }
    }

    async fn answer(&mut self, report: &mut OnlineReport) -> Result<()> {
        let Some(batch) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let mut failed = None;
        for what in batch {
            let reply = self.conn.read_ok_or_value().await?;
            let watch = &self.watch;
            let watched = &mut self.watched_conflicts;
            let mut conflict = |db: u64, key: Vec<u8>, report: &mut OnlineReport| {
                report.keys -= 1;
                report.conflicts += 1;
                if report.conflicting_keys.len() < CONFLICTS_NAMED {
                    report
                        .conflicting_keys
                        .push(String::from_utf8_lossy(&key).into_owned());
                }
                let k = (db, key);
                if watch.contains(&k) {
                    watched.insert(k);
                }
            };
            let error = match (what, reply) {
                (_, None) => continue,
                (Pending::Strings { db, pairs }, Some(Value::Int(n))) => {
                    if n == 0 {
                        self.retry.push((db, pairs));
                    }
                    continue;
                }
                (Pending::SetNx(db, key), Some(Value::Bulk(None))) => {
                    conflict(db, key, report);
                    continue;
                }
                (Pending::Key(db, key), Some(Value::Error(e))) if e.starts_with("BUSYKEY") => {
                    conflict(db, key, report);
                    continue;
                }
                (what, Some(Value::Error(e))) => {
                    let what = match &what {
                        Pending::Key(_, k) => {
                            format!("RESTORE of key {:?}", String::from_utf8_lossy(k))
                        }
                        Pending::SetNx(_, k) => {
                            format!("SET NX of key {:?}", String::from_utf8_lossy(k))
                        }
                        Pending::Strings { pairs, .. } => format!(
                            "MSETNX of {} keys from {:?}",
                            pairs.len(),
                            String::from_utf8_lossy(&pairs[0].0)
                        ),
                        Pending::Ok => "a command".to_string(),
                    };
                    format!("{what} refused: {e}{}", hint(&e))
                }
                // Anything else that is not an error: the command did its work.
                (_, Some(_)) => continue,
            };
            if failed.is_none() {
                failed = Some(Error::redis(self.conn.target(), error));
            }
        }
        failed.map_or(Ok(()), Err)
    }
}

fn hint(e: &str) -> &'static str {
    if e.starts_with("OOM") {
        " (the target reached maxmemory: raise it or restore into a larger target)"
    } else if e.contains("payload version") {
        " (the target is an older Redis than the backup's source: restore into Redis of the same version or newer)"
    } else if e.starts_with("MOVED") || e.starts_with("ASK") {
        " (the target's slots moved during the restore: wait for resharding to end and run it again)"
    } else {
        resp::refusal_hint(e)
    }
}

/// The target: its primaries and, for a cluster, which one owns each slot.
struct Target {
    nodes: Vec<Node>,
    slots: Option<Vec<u16>>,
    rdb_version: u16,
    /// Keys the tail writes to (merging into a target that keeps its own keys), and those of
    /// them the RDB restored or tried to.
    watch: std::sync::Arc<HashSet<DbKey>>,
    in_rdb: HashSet<DbKey>,
}

/// The RDB version a server of `redis_version` writes (and the highest it restores).
fn rdb_version_of(redis_version: &str) -> Option<u16> {
    let mut parts = redis_version.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next()??, parts.next()??);
    Some(match (major, minor) {
        (8.., _) | (7, 4..) => 12,
        (7, 2..) => 11,
        (7, _) => 10,
        (5..=6, _) => 9,
        (4, _) => 8,
        _ => 7,
    })
}

async fn node(target: &RedisTarget) -> Result<Node> {
    Ok(Node {
        conn: Connection::connect(target).await?,
        buf: Vec::with_capacity(BATCH_BYTES + 64 * 1024),
        pending: Vec::new(),
        in_flight: VecDeque::new(),
        db: 0,
        strings: Vec::new(),
        strings_bytes: 0,
        retry: Vec::new(),
        watch: Default::default(),
        watched_conflicts: HashSet::new(),
    })
}

impl Target {
    async fn open(t: &RedisTarget) -> Result<Self> {
        let mut first = node(t).await?;
        let server = first.conn.info("server").await?;
        let version = info_field(&server, "redis_version")
            .and_then(rdb_version_of)
            .ok_or_else(|| Error::redis(t, "INFO server gives no redis_version"))?;
        let cluster = first.conn.info("cluster").await?;
        if info_field(&cluster, "cluster_enabled") != Some("1") {
            return Ok(Self {
                nodes: vec![first],
                slots: None,
                rdb_version: version,
                watch: Default::default(),
                in_rdb: HashSet::new(),
            });
        }
        let Value::Array(Some(ranges)) = first.conn.checked(&[b"CLUSTER", b"SLOTS"]).await? else {
            return Err(Error::redis(t, "CLUSTER SLOTS gave no ranges"));
        };
        let mut owners: Vec<(String, u16)> = Vec::new();
        let mut slots = vec![u16::MAX; fleetsnap_core::keys::SLOTS as usize];
        for r in ranges {
            let Value::Array(Some(r)) = r else { continue };
            let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(Some(p)))) =
                (r.first(), r.get(1), r.get(2))
            else {
                continue;
            };
            let host = p.first().and_then(Value::text).unwrap_or_default();
            let host = if host.is_empty() {
                t.host.clone()
            } else {
                host
            };
            let port = match p.get(1) {
                Some(Value::Int(p)) => *p as u16,
                _ => continue,
            };
            let i = match owners.iter().position(|o| *o == (host.clone(), port)) {
                Some(i) => i,
                None => {
                    owners.push((host, port));
                    owners.len() - 1
                }
            };
            for s in *lo..=*hi {
                slots[s as usize] = i as u16;
            }
        }
        if let Some(s) = slots.iter().position(|o| *o == u16::MAX) {
            return Err(Error::redis(
                t,
                format!(
                    "slot {s} has no primary in CLUSTER SLOTS: the target cluster is not ready for traffic"
                ),
            ));
        }
        let mut nodes = Vec::new();
        for (host, port) in owners {
            let mut each = t.clone();
            each.host = host;
            each.port = port;
            nodes.push(node(&each).await?);
        }
        Ok(Self {
            nodes,
            slots: Some(slots),
            rdb_version: version,
            watch: Default::default(),
            in_rdb: HashSet::new(),
        })
    }

    fn route(&self, key: &[u8]) -> usize {
        match &self.slots {
            Some(s) => s[key_slot(key) as usize] as usize,
            None => 0,
        }
    }

    async fn flush_all(&mut self, report: &mut OnlineReport, replace: bool) -> Result<()> {
        for n in &mut self.nodes {
            n.drain(report, replace).await?;
        }
        Ok(())
    }
}

/// What a probe of a running target found.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeReport {
    /// The target probed.
    pub target: String,
    /// Whether it is a Redis Cluster.
    pub cluster: bool,
    /// Its primaries (`host:port`).
    pub primaries: Vec<String>,
    /// Keys on them, all databases.
    pub keys: u64,
    /// The bounds checked.
    pub min: u64,
    /// See `min`.
    pub max: u64,
}

/// A runbook's check of a running target: it answers, a Redis Cluster has every slot served
/// and `cluster_state:ok`, and its primaries hold between the wanted numbers of keys.
pub async fn probe(task: ProbeTask) -> Result<JobResult> {
    let (min, max) = match task.want {
        ProbeWant::Empty => (0, 0),
        ProbeWant::Keys { min, max } => (min, max),
        ProbeWant::Restored => {
            return Err(Error::Input(
                "the probe's bounds were not filled in from the restore before it: is the coordinator older than this agent?".into(),
            ));
        }
    };
    let target = RedisTarget::parse(&task.target)?;
    let mut t = Target::open(&target).await?;
    let mut primaries = Vec::new();
    let mut keys = 0;
    for n in &mut t.nodes {
        let name = n.conn.target().to_string();
        if t.slots.is_some()
            && let Value::Bulk(Some(b)) = n.conn.checked(&[b"CLUSTER", b"INFO"]).await?
            && !String::from_utf8_lossy(&b).contains("cluster_state:ok")
        {
            return Err(Error::Failed(format!(
                "{name} does not report cluster_state:ok (CLUSTER INFO): the cluster is not ready for traffic"
            )));
        }
        keys += resp::keyspace_keys(&n.conn.info("keyspace").await?);
        primaries.push(name);
    }
    let report = ProbeReport {
        target: target.to_string(),
        cluster: t.slots.is_some(),
        primaries,
        keys,
        min,
        max,
    };
    if keys < min || keys > max {
        let want = if max == 0 {
            "none: restore into an empty target, or empty this one first".to_string()
        } else if min == max {
            format!("{min}")
        } else {
            format!("between {min} and {max}")
        };
        return Err(Error::Failed(format!(
            "{} holds {keys} keys on {} primaries; wanted {want}",
            report.target,
            report.primaries.len()
        )));
    }
    Ok(JobResult::Step {
        report_json: serde_json::to_string(&report).expect("reports serialise"),
    })
}

/// A batch of items from the reader thread, and how far into the file it got.
struct Batch {
    items: Vec<Item>,
    at: u64,
}

/// Reads `rdb` on a thread of its own, in batches.
fn read_in_thread(rdb: &Path) -> Result<(mpsc::Receiver<Result<Batch>>, u16, u64)> {
    let file = std::fs::File::open(rdb).map_err(|e| Error::file("cannot open", rdb, e))?;
    let size = file
        .metadata()
        .map_err(|e| Error::file("cannot read", rdb, e))?
        .len();
    let bad =
        |e: fleetsnap_core::rdbread::ReadError| Error::Decode(format!("{}: {e}", rdb.display()));
    // The copy's size, sha256 and CRC-64 were checked as it was fetched.
    let mut reader = RdbReader::checked_elsewhere(file).map_err(bad)?;
    let version = reader.version();
    let (tx, rx) = mpsc::channel(4);
    let name = rdb.to_path_buf();
    std::thread::spawn(move || {
        let mut items = Vec::new();
        let mut bytes = 0;
        loop {
            match reader.next_item() {
                Ok(Some(item)) => {
                    if let Item::Entry(e) = &item {
                        bytes += e.payload.len() + e.key.len();
                    }
                    items.push(item);
                    if bytes >= BATCH_BYTES {
                        let at = reader.position();
                        if tx
                            .blocking_send(Ok(Batch {
                                items: std::mem::take(&mut items),
                                at,
                            }))
                            .is_err()
                        {
                            return;
                        }
                        bytes = 0;
                    }
                }
                Ok(None) => {
                    let at = reader.position();
                    let _ = tx.blocking_send(Ok(Batch { items, at }));
                    return;
                }
                Err(e) => {
                    let _ =
                        tx.blocking_send(Err(Error::Decode(format!("{}: {e}", name.display()))));
                    return;
                }
            }
        }
    });
    Ok((rx, version, size))
}

/// Restores `rdb`, a copy verified as it was fetched (and replays `tail`), into the running
/// server at `target`.
pub async fn restore_online(
    rdb: &Path,
    tail: Option<&Path>,
    target: &RedisTarget,
    opts: &OnlineOptions,
) -> Result<OnlineReport> {
    let started = Instant::now();
    let mut t = Target::open(target).await?;
    let (mut rx, version, size) = read_in_thread(rdb)?;
    if version > t.rdb_version {
        return Err(Error::Input(format!(
            "the backup is RDB version {version} but {target} reads at most {}: restore into a Redis as new as the backup's source",
            t.rdb_version
        )));
    }
    let mut report = OnlineReport {
        target: target.to_string(),
        cluster: t.slots.is_some(),
        nodes: t.nodes.len(),
        ..Default::default()
    };
    let commands = tail.map(read_tail).transpose()?;
    // Merging into a target that keeps its own keys: what the tail writes to is watched, so
    // the tail leaves alone every key that was there before, as the RDB's restore does.
    let merging = !opts.replace_existing;
    let had_keys = merging && t.total_keys().await? > 0;
    if merging && let Some(c) = &commands {
        let watch = std::sync::Arc::new(tail_keys(c));
        for n in &mut t.nodes {
            n.watch = watch.clone();
        }
        t.watch = watch;
    }
    let mut progress = Progress::new(opts.progress, size);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    while let Some(batch) = rx.recv().await {
        let batch = batch?;
        for item in batch.items {
            match item {
                Item::Entry(e) => restore_entry(&mut t, e, opts, now_ms, &mut report).await?,
                Item::Function(code) => load_function(&mut t, &code, opts, &mut report).await?,
                Item::ModuleAux(m) => report.module_aux_skipped.push(m),
                Item::Aux(..) | Item::Module { .. } => {}
            }
        }
        report.rdb_bytes = batch.at;
        progress.show(batch.at, report.keys);
    }
    t.flush_all(&mut report, opts.replace_existing).await?;
    if let Some(commands) = commands {
        let guard = if merging {
            Some(TailGuard {
                blocked: t.existing_before().await?,
                had_keys,
            })
        } else {
            None
        };
        report.tail_commands =
            replay_tail(&mut t, commands, opts, guard.as_ref(), &mut report).await?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    progress.done(&report);
    Ok(report)
}

/// What a tail replayed into a target with keys of its own leaves alone.
struct TailGuard {
    /// Keys that existed before the restore: the tail's commands on them are skipped.
    blocked: HashSet<DbKey>,
    /// The target held keys before: `FLUSHALL` and `FLUSHDB` in the tail are skipped.
    had_keys: bool,
}

impl Target {
    /// Keys in all databases of every primary.
    async fn total_keys(&mut self) -> Result<u64> {
        let mut n = 0;
        for node in &mut self.nodes {
            n += resp::keyspace_keys(&node.conn.info("keyspace").await?);
        }
        Ok(n)
    }

    /// Of the keys the tail writes to, those that existed before this restore: the ones the
    /// RDB's restore found there, and those not in the RDB that the target holds now.
    async fn existing_before(&mut self) -> Result<HashSet<DbKey>> {
        let mut existing: HashSet<DbKey> = HashSet::new();
        for n in &mut self.nodes {
            existing.extend(std::mem::take(&mut n.watched_conflicts));
        }
        let watch = self.watch.clone();
        for (db, key) in watch.iter().filter(|k| !self.in_rdb.contains(*k)) {
            let i = self.route(key);
            let cluster = self.slots.is_some();
            let n = &mut self.nodes[i];
            if !cluster && n.db != *db {
                n.conn
                    .checked(&[b"SELECT", db.to_string().as_bytes()])
                    .await?;
                n.db = *db;
            }
            if n.conn.checked(&[b"EXISTS", key]).await? == Value::Int(1) {
                existing.insert((*db, key.clone()));
            }
        }
        Ok(existing)
    }
}

/// Reads and splits a tail file.
fn read_tail(tail: &Path) -> Result<Vec<Vec<Vec<u8>>>> {
    let bytes = std::fs::read(tail).map_err(|e| Error::file("cannot read", tail, e))?;
    parse_commands(&bytes).ok_or_else(|| {
        Error::Decode(format!(
            "{}: the tail is not a RESP command stream",
            tail.display()
        ))
    })
}

/// The keys (first arguments, with their database) a tail's data commands write to.
fn tail_keys(commands: &[Vec<Vec<u8>>]) -> HashSet<DbKey> {
    let mut db = 0;
    let mut keys = HashSet::new();
    for c in commands {
        let name = c[0].as_slice();
        if name.eq_ignore_ascii_case(b"SELECT") {
            db = select_index(c);
        } else if !is_housekeeping(name)
            && !is_everywhere(name)
            && !name.eq_ignore_ascii_case(b"MULTI")
            && !name.eq_ignore_ascii_case(b"EXEC")
            && let Some(k) = c.get(1)
        {
            keys.insert((db, k.clone()));
        }
    }
    keys
}

/// The logical databases a copy writes to: each `SELECT` of its RDB (read through, values
/// skipped) and of its tail, with what comes first in each (`key "k"`, `a SET in the tail`)
/// for messages.
pub fn databases_in(rdb: &Path, tail: Option<&Path>) -> Result<BTreeMap<u64, String>> {
    let file = std::fs::File::open(rdb).map_err(|e| Error::file("cannot open", rdb, e))?;
    let bad =
        |e: fleetsnap_core::rdbread::ReadError| Error::Decode(format!("{}: {e}", rdb.display()));
    let mut reader = RdbReader::checked_elsewhere(file)
        .map_err(bad)?
        .skipping_modules();
    let mut dbs = BTreeMap::new();
    while let Some(item) = reader.next_item().map_err(bad)? {
        match item {
            Item::Entry(e) => {
                dbs.entry(e.db)
                    .or_insert_with(|| format!("key {:?}", e.key_lossy()));
            }
            Item::Module { db, key, .. } => {
                dbs.entry(db).or_insert_with(|| format!("key {key:?}"));
            }
            _ => {}
        }
    }
    if let Some(tail) = tail {
        let bytes = std::fs::read(tail).map_err(|e| Error::file("cannot read", tail, e))?;
        let commands = parse_commands(&bytes).ok_or_else(|| {
            Error::Decode(format!(
                "{}: the tail is not a RESP command stream",
                tail.display()
            ))
        })?;
        let mut db = 0u64;
        for c in commands {
            if c[0].eq_ignore_ascii_case(b"SELECT") {
                db = select_index(&c);
            } else if !is_housekeeping(&c[0]) {
                dbs.entry(db)
                    .or_insert_with(|| format!("a {} in the tail", String::from_utf8_lossy(&c[0])));
            }
        }
    }
    Ok(dbs)
}

/// The database a tail's `SELECT` names.
fn select_index(c: &[Vec<u8>]) -> u64 {
    std::str::from_utf8(c.get(1).map(Vec::as_slice).unwrap_or(b"0"))
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Refuses, before anything is written, a restore whose keys live in databases the target
/// lacks: a Redis Cluster has db 0 only; a standalone server has `databases` of them, which
/// `SELECT` answers for (it needs no CONFIG rights). `needed` maps each database to where its
/// first key comes from.
pub async fn check_databases(
    target: &RedisTarget,
    needed: &BTreeMap<u64, String>,
    opts: &OnlineOptions,
) -> Result<()> {
    let needed: Vec<(&u64, &String)> = needed
        .iter()
        .filter(|(db, _)| opts.db.is_none_or(|d| d == **db))
        .collect();
    if needed.iter().all(|(db, _)| **db == 0) {
        return Ok(());
    }
    let mut conn = Connection::connect(target).await?;
    let cluster = info_field(&conn.info("cluster").await?, "cluster_enabled") == Some("1");
    for (db, from) in &needed {
        if **db == 0 {
            continue;
        }
        if cluster {
            return Err(Error::Input(format!(
                "the backup has keys in db {db} ({from}), but {target} is a Redis Cluster, which has only db 0: restore db 0 alone with --db 0, or restore into a standalone server"
            )));
        }
        if let Value::Error(e) = conn
            .command(&[b"SELECT", db.to_string().as_bytes()])
            .await?
        {
            return Err(Error::Input(format!(
                "the backup has keys in db {db} ({from}), but {target} refuses SELECT {db} ({e}): nothing was written; restore the databases it has with --db N, or into a server with `databases {}` or more",
                **db + 1
            )));
        }
    }
    Ok(())
}

async fn restore_entry(
    t: &mut Target,
    e: Entry,
    opts: &OnlineOptions,
    now_ms: i64,
    report: &mut OnlineReport,
) -> Result<()> {
    if opts.db.is_some_and(|db| db != e.db)
        || opts
            .pattern
            .as_ref()
            .is_some_and(|p| !glob_match(p.as_bytes(), &e.key))
    {
        report.filtered += 1;
        return Ok(());
    }
    if e.expire_ms.is_some_and(|at| at <= now_ms) {
        report.expired += 1;
        return Ok(());
    }
    let cluster = t.slots.is_some();
    if cluster && e.db != 0 {
        return Err(Error::Input(format!(
            "key {:?} is in db {} but a Redis Cluster has only db 0: restore with --db 0, or into a standalone server",
            e.key_lossy(),
            e.db
        )));
    }
    if !t.watch.is_empty() && t.watch.contains(&(e.db, e.key.clone())) {
        t.in_rdb.insert((e.db, e.key.clone()));
    }
    let i = t.route(&e.key);
    let version = t.rdb_version;
    let n = &mut t.nodes[i];
    if !cluster && n.db != e.db {
        n.emit_strings(opts.replace_existing);
        let db = e.db.to_string();
        n.push(&[b"SELECT", db.as_bytes()], Pending::Ok);
        n.db = e.db;
    }
    report.keys += 1;
    // A plain string on a standalone target goes with others in one MSETNX: one command per
    // few hundred keys instead of one each. (In a cluster, keys of one command must share a slot.)
    // A large one goes alone as RESTORE, so a batch never holds large values until its reply.
    if !cluster
        && e.rdb_type() == RDB_TYPE_STRING
        && e.payload.len() <= STRING_BATCHED_MAX
        && e.expire_ms.is_none()
        && e.idle.is_none()
        && e.freq.is_none()
        && let Ok(fleetsnap_core::rdbread::Value::String(v)) = e.value()
    {
        n.hold_string(e.key, v, opts.replace_existing);
    } else {
        // Stamped with the target's own version, which it always accepts: the payload's encoding
        // is at most as new (the file's version was checked against the target's up front).
        encode_restore(&mut n.buf, &e, version, opts.replace_existing);
        n.pending.push(Pending::Key(e.db, e.key));
    }
    if n.buf.len() >= BATCH_BYTES {
        n.flush(report).await?;
    }
    Ok(())
}

/// `RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]` written straight into
/// `out`, the payload (value, RDB version, CRC-64) built in place.
fn encode_restore(out: &mut Vec<u8>, e: &Entry, version: u16, replace: bool) {
    let mut digits = [0; 20];
    let mut small = [0; 20];
    let ttl = e.expire_ms.map_or(0, |t| t.max(0) as u64);
    let idle = e.idle;
    let freq = e.freq.map(u64::from);
    let args = 4
        + usize::from(replace)
        + usize::from(e.expire_ms.is_some())
        + 2 * usize::from(idle.is_some())
        + 2 * usize::from(freq.is_some());
    resp::header(out, b'*', args as u64);
    let bulk = |out: &mut Vec<u8>, a: &[u8]| {
        resp::header(out, b'$', a.len() as u64);
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    };
    bulk(out, b"RESTORE");
    bulk(out, &e.key);
    bulk(out, resp::decimal(ttl, &mut digits));
    resp::header(out, b'$', e.payload.len() as u64 + 10);
    let start = out.len();
    out.extend_from_slice(&e.payload);
    out.extend_from_slice(&version.to_le_bytes());
    let crc = fleetsnap_core::rdbread::dump_crc(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(b"\r\n");
    if replace {
        bulk(out, b"REPLACE");
    }
    if e.expire_ms.is_some() {
        bulk(out, b"ABSTTL");
    }
    if let Some(s) = idle {
        bulk(out, b"IDLETIME");
        bulk(out, resp::decimal(s, &mut small));
    }
    if let Some(f) = freq {
        bulk(out, b"FREQ");
        bulk(out, resp::decimal(f, &mut small));
    }
}

async fn load_function(
    t: &mut Target,
    code: &[u8],
    opts: &OnlineOptions,
    report: &mut OnlineReport,
) -> Result<()> {
    t.flush_all(report, opts.replace_existing).await?;
    for n in &mut t.nodes {
        let mut args: Vec<&[u8]> = vec![b"FUNCTION", b"LOAD"];
        if opts.replace_existing {
            args.push(b"REPLACE");
        }
        args.push(code);
        match n.conn.command(&args).await? {
            // The same library from another shard of the set (or an earlier run) is no conflict.
            Value::Error(e)
                if e.contains("already exists") && same_library(&mut n.conn, code).await? => {}
            Value::Error(e) if e.contains("already exists") => {
                report.conflicts += 1;
                if report.conflicting_keys.len() < CONFLICTS_NAMED {
                    report
                        .conflicting_keys
                        .push(format!("function library ({e})"));
                }
            }
            Value::Error(e) => {
                return Err(Error::redis(
                    n.conn.target(),
                    format!("FUNCTION LOAD refused: {e}{}", hint(&e)),
                ));
            }
            _ => {}
        }
    }
    report.functions += 1;
    Ok(())
}

/// The library name in a function library's shebang line (`#!lua name=NAME`).
fn library_name(code: &[u8]) -> Option<&[u8]> {
    let first = code.split(|b| *b == b'\n').next()?;
    first
        .split(|b| *b == b' ')
        .find_map(|t| t.strip_prefix(b"name="))
}

/// Whether the node already holds this very library, code and all.
async fn same_library(conn: &mut Connection, code: &[u8]) -> Result<bool> {
    let Some(name) = library_name(code) else {
        return Ok(false);
    };
    let reply = conn
        .checked(&[b"FUNCTION", b"LIST", b"LIBRARYNAME", name, b"WITHCODE"])
        .await?;
    let Value::Array(Some(libs)) = reply else {
        return Ok(false);
    };
    Ok(libs.iter().any(|lib| match lib {
        Value::Array(Some(fields)) => fields.chunks(2).any(|kv| {
            kv[0].text().as_deref() == Some("library_code")
                && kv.get(1) == Some(&Value::Bulk(Some(code.to_vec())))
        }),
        _ => false,
    }))
}

/// Replays a tail file into the running server at `target` (a node just restarted on the
/// shard's RDB). Gives the number of commands replayed.
pub async fn replay_tail_into(target: &RedisTarget, tail: &Path) -> Result<u64> {
    let mut t = Target::open(target).await?;
    let commands = read_tail(tail)?;
    let mut report = OnlineReport::default();
    replay_tail(
        &mut t,
        commands,
        &OnlineOptions::default(),
        None,
        &mut report,
    )
    .await
}

/// Commands of the replication stream that carry no data.
fn is_housekeeping(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"PING") || name.eq_ignore_ascii_case(b"REPLCONF")
}

/// Commands without a key that a cluster target runs on every primary.
fn is_everywhere(name: &[u8]) -> bool {
    [&b"FLUSHALL"[..], b"FLUSHDB", b"FUNCTION", b"SCRIPT"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

/// Replays the tail: every command in order, routed by its key in a cluster, transactions kept
/// whole. Gives the number of commands replayed.
async fn replay_tail(
    t: &mut Target,
    commands: Vec<Vec<Vec<u8>>>,
    opts: &OnlineOptions,
    guard: Option<&TailGuard>,
    report: &mut OnlineReport,
) -> Result<u64> {
    let mut db = 0u64;
    let mut replayed = 0;
    let mut transaction: Option<Vec<Vec<Vec<u8>>>> = None;
    for c in commands {
        let name = c[0].as_slice();
        if is_housekeeping(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"SELECT") {
            db = select_index(&c);
            continue;
        }
        if name.eq_ignore_ascii_case(b"MULTI") {
            transaction = Some(Vec::new());
            continue;
        }
        let group = if name.eq_ignore_ascii_case(b"EXEC") {
            match transaction.take() {
                Some(g) => g,
                None => continue,
            }
        } else if let Some(g) = transaction.as_mut() {
            g.push(c);
            continue;
        } else {
            vec![c]
        };
        let group: Vec<Vec<Vec<u8>>> = group
            .into_iter()
            .filter(|c| {
                opts.db.is_none_or(|d| d == db)
                    && match (&opts.pattern, c.get(1)) {
                        (Some(p), Some(k)) if !is_everywhere(&c[0]) => glob_match(p.as_bytes(), k),
                        _ => true,
                    }
            })
            .filter(|c| match guard {
                None => true,
                Some(g) => {
                    let name = c[0].as_slice();
                    let flush = name.eq_ignore_ascii_case(b"FLUSHALL")
                        || name.eq_ignore_ascii_case(b"FLUSHDB");
                    let kept = if flush {
                        !g.had_keys
                    } else {
                        is_everywhere(name)
                            || c.get(1)
                                .is_none_or(|k| !g.blocked.contains(&(db, k.clone())))
                    };
                    if !kept {
                        report.tail_skipped += 1;
                        if report.tail_skipped_commands.len() < CONFLICTS_NAMED {
                            let what: Vec<String> = c
                                .iter()
                                .take(2)
                                .map(|a| String::from_utf8_lossy(a).into_owned())
                                .collect();
                            report.tail_skipped_commands.push(what.join(" "));
                        }
                    }
                    kept
                }
            })
            .collect();
        if group.is_empty() {
            continue;
        }
        if t.slots.is_some() && db != 0 {
            return Err(Error::Input(format!(
                "the tail writes to db {db} but a Redis Cluster has only db 0: restore with --db 0"
            )));
        }
        let targets: Vec<usize> = if is_everywhere(&group[0][0]) {
            (0..t.nodes.len()).collect()
        } else {
            let key = group
                .iter()
                .find_map(|c| c.get(1))
                .map(Vec::as_slice)
                .unwrap_or(b"");
            vec![t.route(key)]
        };
        for i in targets {
            let n = &mut t.nodes[i];
            if t.slots.is_none() && n.db != db {
                let d = db.to_string();
                n.push(&[b"SELECT", d.as_bytes()], Pending::Ok);
                n.db = db;
            }
            let wrap = group.len() > 1;
            if wrap {
                n.push(&[b"MULTI"], Pending::Ok);
            }
            for c in &group {
                let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                n.push(&args, Pending::Ok);
            }
            if wrap {
                n.push(&[b"EXEC"], Pending::Ok);
            }
            if n.buf.len() >= BATCH_BYTES {
                n.flush(report).await?;
            }
        }
        replayed += group.len() as u64;
    }
    t.flush_all(report, opts.replace_existing).await?;
    Ok(replayed)
}

/// Progress on standard error: a redrawn line on a terminal, a line every 10 s otherwise.
struct Progress {
    on: bool,
    tty: bool,
    total: u64,
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new(on: bool, total: u64) -> Self {
        let now = Instant::now();
        Self {
            on,
            tty: std::io::stderr().is_terminal(),
            total,
            started: now,
            last: now,
        }
    }

    fn show(&mut self, at: u64, keys: u64) {
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if !self.on || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = at as f64 / secs;
        let left = self.total.saturating_sub(at) as f64 / rate.max(1.0);
        let pct = if self.total > 0 {
            at as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let filled = (pct / 5.0) as usize;
        let line = format!(
            "[{}{}] {pct:5.1}%  {:.1}/{:.1} MB  {:.1} MB/s  {keys} keys  ETA {left:.0}s",
            "#".repeat(filled.min(20)),
            " ".repeat(20 - filled.min(20)),
            at as f64 / 1e6,
            self.total as f64 / 1e6,
            rate / 1e6,
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    fn done(&self, r: &OnlineReport) {
        if !self.on {
            return;
        }
        if self.tty {
            eprintln!();
        }
        eprintln!(
            "{} keys restored from {:.1} MB of RDB in {:.1}s ({:.1} MB/s), {} tail commands replayed",
            r.keys,
            r.rdb_bytes as f64 / 1e6,
            r.seconds,
            r.rdb_bytes as f64 / 1e6 / r.seconds.max(1e-3),
            r.tail_commands
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restores_are_encoded_in_place_as_the_generic_encoder_would() {
        for (expire_ms, idle, freq, replace) in [
            (None, None, None, false),
            (Some(1_900_000_000_123), Some(7), None, true),
            (None, None, Some(255), false),
            (Some(10), Some(0), Some(0), true),
        ] {
            let e = Entry {
                db: 0,
                key: b"user:1".to_vec(),
                expire_ms,
                idle,
                freq,
                payload: vec![0, 3, b'a', b'b', b'c'],
                decoded: None,
            };
            let ttl = expire_ms.unwrap_or(0).to_string();
            let payload = e.dump_payload(10);
            let mut args: Vec<&[u8]> = vec![b"RESTORE", &e.key, ttl.as_bytes(), &payload];
            if replace {
                args.push(b"REPLACE");
            }
            if expire_ms.is_some() {
                args.push(b"ABSTTL");
            }
            let (i, f) = (idle.map(|s| s.to_string()), freq.map(|f| f.to_string()));
            if let Some(i) = &i {
                args.extend([&b"IDLETIME"[..], i.as_bytes()]);
            }
            if let Some(f) = &f {
                args.extend([&b"FREQ"[..], f.as_bytes()]);
            }
            let mut want = Vec::new();
            resp::encode(&mut want, &args);
            let mut got = Vec::new();
            encode_restore(&mut got, &e, 10, replace);
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(&want)
            );
        }
        let mut b = [0; 20];
        assert_eq!(resp::decimal(0, &mut b), b"0");
        assert_eq!(
            resp::decimal(u64::MAX, &mut b),
            u64::MAX.to_string().as_bytes()
        );
    }

    #[test]
    fn rdb_versions_follow_redis_releases() {
        assert_eq!(rdb_version_of("7.0.15"), Some(10));
        assert_eq!(rdb_version_of("7.2.4"), Some(11));
        assert_eq!(rdb_version_of("7.4.0"), Some(12));
        assert_eq!(rdb_version_of("8.0.1"), Some(12));
        assert_eq!(rdb_version_of("6.2.14"), Some(9));
        assert_eq!(rdb_version_of("x"), None);
    }
}
