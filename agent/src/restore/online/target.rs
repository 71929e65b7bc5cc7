//! The target of an online restore: its primaries (every one of a Redis Cluster, with the slot
//! map), each written to in pipelined batches whose replies are read in order; keys that already
//! exist are counted and named, never overwritten unless asked.

use std::collections::{HashSet, VecDeque};

use fleetsnap_core::keys::key_slot;

use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{self as resp, Connection, Value, info_field};
use fleetsnap_core::outcomes::OnlineReport;

/// Bytes of commands written to a node before its replies are read.
pub(super) const BATCH_BYTES: usize = 512 * 1024;

/// Keys reported by name when some already existed.
pub(super) const CONFLICTS_NAMED: usize = 10;

/// Keys and values of plain strings.
pub(super) type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// What a command written to a node restores, for reading its reply.
pub(super) enum Pending {
    /// A command whose reply only needs to be OK (`SELECT`, a tail's command).
    Ok,
    /// `RESTORE` of this key of this database (`BUSYKEY`: it existed).
    Key(u64, Vec<u8>),
    /// `MSETNX` (or `MSET` when replacing) of plain strings in database `db`; when `MSETNX`
    /// finds one of them existing it sets none, and each is sent again as `SET … NX`.
    Strings { db: u64, pairs: Pairs },
    /// `SET key value NX` in this database (a nil reply: it existed).
    SetNx(u64, Vec<u8>),
    /// One call of the commands script writing these keys of this database: an array reply,
    /// one element per key (`BUSYKEY`: it existed).
    Keys(u64, Vec<Vec<u8>>),
}

/// Keys one call of the commands script writes at most (a standalone target; in a cluster, one
/// key a call, since a script's keys must share a slot), and the argument bytes at which a call
/// goes anyway: the script holds the server for the whole call.
pub(super) const SCRIPT_KEYS: usize = 64;
pub(super) const SCRIPT_BYTES: usize = 256 * 1024;

/// The RDB type byte of a string value.
pub(super) const RDB_TYPE_STRING: u8 = 0;

/// Plain strings (no expiry, no LRU/LFU field) held back to go as one command.
pub(super) const STRINGS_BYTES: usize = 256 * 1024;

/// Larger strings go as `RESTORE`.
pub(super) const STRING_BATCHED_MAX: usize = 16 * 1024;

pub(super) const STRINGS_KEYS: usize = 2000;

/// One primary of the target.
pub(super) struct Node {
    pub(super) conn: Connection,
    pub(super) buf: Vec<u8>,
    /// What each command in `buf` restores.
    pub(super) pending: Vec<Pending>,
    /// Batches written and not yet answered.
    pub(super) in_flight: VecDeque<Vec<Pending>>,
    pub(super) db: u64,
    /// Plain strings of database `db` waiting for their `MSETNX`.
    pub(super) strings: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) strings_bytes: usize,
    /// Strings an `MSETNX` did not set, to send again one by one.
    pub(super) retry: Vec<(u64, Pairs)>,
    /// Keys (with their database) the tail writes to: a conflict on one is remembered in
    /// `watched_conflicts`, so the tail leaves that key alone too.
    pub(super) watch: std::sync::Arc<HashSet<DbKey>>,
    pub(super) watched_conflicts: HashSet<DbKey>,
    /// The commands script's SHA1, once values go as commands; the keys held for its next
    /// call, their arguments, and the arguments' bytes.
    pub(super) script: Option<Vec<u8>>,
    pub(super) script_keys: Vec<Vec<u8>>,
    pub(super) script_args: Vec<Vec<u8>>,
    pub(super) script_bytes: usize,
}

/// A key with its logical database.
pub(super) type DbKey = (u64, Vec<u8>);

impl Node {
    pub(super) fn push(&mut self, args: &[&[u8]], what: Pending) {
        resp::encode(&mut self.buf, args);
        self.pending.push(what);
    }

    /// Holds back a plain string for the next `MSETNX`.
    pub(super) fn hold_string(&mut self, key: Vec<u8>, value: Vec<u8>, replace: bool) {
        self.strings_bytes += key.len() + value.len();
        self.strings.push((key, value));
        if self.strings_bytes >= STRINGS_BYTES || self.strings.len() >= STRINGS_KEYS {
            self.emit_strings(replace);
        }
    }

    /// Writes the held strings as one `MSETNX` (`MSET` when replacing) into the batch.
    pub(super) fn emit_strings(&mut self, replace: bool) {
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

    /// Holds key `key` (its script arguments: `args`) for the next call of the commands
    /// script, and makes the call when it is full (at once with `alone`).
    pub(super) fn hold_script(
        &mut self,
        key: Vec<u8>,
        args: Vec<Vec<u8>>,
        replace: bool,
        alone: bool,
    ) {
        self.script_bytes += key.len() + args.iter().map(Vec::len).sum::<usize>();
        self.script_keys.push(key);
        self.script_args.extend(args);
        if alone || self.script_keys.len() >= SCRIPT_KEYS || self.script_bytes >= SCRIPT_BYTES {
            self.emit_script(replace);
        }
    }

    /// Writes the held keys as one `EVALSHA` of the commands script into the batch.
    pub(super) fn emit_script(&mut self, replace: bool) {
        let Some(sha) = &self.script else { return };
        if self.script_keys.is_empty() {
            return;
        }
        let keys = std::mem::take(&mut self.script_keys);
        let args = std::mem::take(&mut self.script_args);
        self.script_bytes = 0;
        let n = keys.len().to_string();
        let head: [&[u8]; 3] = [b"EVALSHA", sha, n.as_bytes()];
        let flag: &[u8] = if replace { b"1" } else { b"0" };
        let all: Vec<&[u8]> = head
            .into_iter()
            .chain(keys.iter().map(Vec::as_slice))
            .chain(std::iter::once(flag))
            .chain(args.iter().map(Vec::as_slice))
            .collect();
        resp::encode(&mut self.buf, &all);
        self.pending.push(Pending::Keys(self.db, keys));
    }

    /// Sends each string an `MSETNX` refused as `SET … NX`, in its own database.
    pub(super) fn push_retries(&mut self) {
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
    pub(super) async fn flush(&mut self, report: &mut OnlineReport) -> Result<()> {
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

    pub(super) async fn drain(&mut self, report: &mut OnlineReport, replace: bool) -> Result<()> {
        self.emit_strings(replace);
        self.emit_script(replace);
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

    pub(super) async fn answer(&mut self, report: &mut OnlineReport) -> Result<()> {
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
                (Pending::Keys(db, keys), Some(Value::Array(Some(each))))
                    if each.len() == keys.len() =>
                {
                    let mut bad = None;
                    for (key, r) in keys.into_iter().zip(each) {
                        match r {
                            Value::Error(e) if e.starts_with("BUSYKEY") => {
                                conflict(db, key, report)
                            }
                            Value::Error(e) if bad.is_none() => {
                                bad = Some(format!(
                                    "writing key {:?} as commands refused: {e}{}",
                                    String::from_utf8_lossy(&key),
                                    hint(&e)
                                ));
                            }
                            _ => {}
                        }
                    }
                    match bad {
                        Some(b) => b,
                        None => continue,
                    }
                }
                (Pending::Keys(_, keys), Some(other)) if !matches!(other, Value::Error(_)) => {
                    format!(
                        "writing {} keys as commands from {:?}: the script answered {other:?}",
                        keys.len(),
                        String::from_utf8_lossy(&keys[0])
                    )
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
                        Pending::Keys(_, keys) => format!(
                            "writing {} keys as commands from {:?}",
                            keys.len(),
                            String::from_utf8_lossy(&keys[0])
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

pub(super) fn hint(e: &str) -> &'static str {
    if e.starts_with("OOM") {
        " (the target reached maxmemory: raise it or restore into a larger target)"
    } else if e.contains("payload version") {
        " (the target refuses the payload's RDB version though the version INFO server gives reads it: a proxy in front may answer INFO for another server)"
    } else if e.starts_with("MOVED") || e.starts_with("ASK") {
        " (the target's slots moved during the restore: wait for resharding to end and run it again)"
    } else {
        resp::refusal_hint(e)
    }
}

/// The target: its primaries and, for a cluster, which one owns each slot.
pub(crate) struct Target {
    pub(super) nodes: Vec<Node>,
    pub(super) slots: Option<Vec<u16>>,
    pub(super) rdb_version: u16,
    /// The server (a cluster's: its first node's).
    pub(super) server: fleetsnap_core::server::Server,
    /// Whether it has hash fields' expiries (HPEXPIREAT), for values written as commands.
    pub(super) field_expiry: bool,
    /// Keys the tail writes to (merging into a target that keeps its own keys), and those of
    /// them the RDB restored or tried to.
    pub(super) watch: std::sync::Arc<HashSet<DbKey>>,
    pub(super) in_rdb: HashSet<DbKey>,
}

pub(super) async fn node(target: &RedisTarget) -> Result<Node> {
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
        script: None,
        script_keys: Vec::new(),
        script_args: Vec::new(),
        script_bytes: 0,
    })
}

impl Target {
    pub(crate) async fn open(t: &RedisTarget) -> Result<Self> {
        let mut first = node(t).await?;
        let server = first.conn.info("server").await?;
        let server = fleetsnap_core::server::Server::from_info(|k| info_field(&server, k))
            .ok_or_else(|| Error::redis(t, "INFO server gives no version"))?;
        let version = server
            .rdb_version()
            .ok_or_else(|| Error::redis(t, "INFO server gives no version"))?;
        let cluster = first.conn.info("cluster").await?;
        if info_field(&cluster, "cluster_enabled") != Some("1") {
            return Ok(Self {
                nodes: vec![first],
                slots: None,
                rdb_version: version,
                field_expiry: server.has_hash_field_expiry(),
                server,
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
            field_expiry: server.has_hash_field_expiry(),
            server,
            watch: Default::default(),
            in_rdb: HashSet::new(),
        })
    }

    pub(super) fn route(&self, key: &[u8]) -> usize {
        match &self.slots {
            Some(s) => s[key_slot(key) as usize] as usize,
            None => 0,
        }
    }

    pub(super) async fn flush_all(
        &mut self,
        report: &mut OnlineReport,
        replace: bool,
    ) -> Result<()> {
        for n in &mut self.nodes {
            n.drain(report, replace).await?;
        }
        Ok(())
    }
}

impl Target {
    /// Whether the target is a Redis Cluster.
    pub(crate) fn is_cluster(&self) -> bool {
        self.slots.is_some()
    }

    /// A connection to each primary.
    pub(crate) fn primaries(&mut self) -> impl Iterator<Item = &mut Connection> {
        self.nodes.iter_mut().map(|n| &mut n.conn)
    }
}
