//! Replaying a consistent cut's tail into a target: every command in order, routed by slot; when
//! merging into a target that keeps its own keys, commands on keys that were there before (and
//! `FLUSHALL`/`FLUSHDB` of a target that held keys) are left out and reported.

use std::collections::HashSet;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use fleetsnap_core::keys::glob_match;
use fleetsnap_core::resp::{CommandReader, StreamError};

use super::report::*;
use super::target::*;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{self as resp, Value};
use fleetsnap_core::outcomes::OnlineReport;

/// What a tail replayed into a target with keys of its own leaves alone.
pub(super) struct TailGuard {
    /// Keys that existed before the restore: the tail's commands on them are skipped.
    pub(super) blocked: HashSet<DbKey>,
    /// The target held keys before: `FLUSHALL` and `FLUSHDB` in the tail are skipped.
    pub(super) had_keys: bool,
}

impl Target {
    /// Keys in all databases of every primary.
    pub(super) async fn total_keys(&mut self) -> Result<u64> {
        let mut n = 0;
        for node in &mut self.nodes {
            n += resp::keyspace_keys(&node.conn.info("keyspace").await?);
        }
        Ok(n)
    }

    /// Of the keys the tail writes to, those that existed before this restore: the ones the
    /// RDB's restore found there, and those not in the RDB that the target holds now.
    pub(super) async fn existing_before(&mut self) -> Result<HashSet<DbKey>> {
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

/// A tail file read one command at a time (`CommandReader`): memory holds one command, however
/// long the tail.
pub struct TailCommands {
    r: CommandReader<BufReader<std::fs::File>>,
    path: PathBuf,
}

impl TailCommands {
    /// Opens `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| Error::file("cannot open", path, e))?;
        Ok(Self {
            r: CommandReader::new(BufReader::with_capacity(1 << 20, f)),
            path: path.to_path_buf(),
        })
    }

    /// The next command, `None` at the end.
    pub fn next_command(&mut self) -> Result<Option<Vec<Vec<u8>>>> {
        self.r.next_command().map_err(|e| match e {
            StreamError::Io(e) => Error::file("cannot read", &self.path, e),
            StreamError::Bad(what) => Error::Decode(format!(
                "{}: the tail is not a RESP command stream ({what})",
                self.path.display()
            )),
        })
    }
}

/// The keys (first arguments, with their database) a tail's data commands write to, read
/// through the file once.
pub(super) fn tail_keys(tail: &Path) -> Result<HashSet<DbKey>> {
    let mut commands = TailCommands::open(tail)?;
    let mut db = 0;
    let mut keys = HashSet::new();
    while let Some(c) = commands.next_command()? {
        let name = c[0].as_slice();
        if name.eq_ignore_ascii_case(b"SELECT") {
            db = select_index(&c);
        } else if !is_housekeeping(name)
            && !is_everywhere(name)
            && !name.eq_ignore_ascii_case(b"MULTI")
            && !name.eq_ignore_ascii_case(b"EXEC")
            && let Some(k) = c.into_iter().nth(1)
        {
            keys.insert((db, k));
        }
    }
    Ok(keys)
}

/// How many commands a tail file holds.
pub fn count_commands(tail: &Path) -> Result<u64> {
    let mut commands = TailCommands::open(tail)?;
    let mut n = 0;
    while commands.next_command()?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// The database a tail's `SELECT` names.
pub(super) fn select_index(c: &[Vec<u8>]) -> u64 {
    std::str::from_utf8(c.get(1).map(Vec::as_slice).unwrap_or(b"0"))
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Replays a tail file into the running server at `target` (a node just restarted on the
/// shard's RDB). Gives the number of commands replayed.
pub async fn replay_tail_into(target: &RedisTarget, tail: &Path) -> Result<u64> {
    let mut t = Target::open(target).await?;
    let commands = TailCommands::open(tail)?;
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
pub(super) fn is_housekeeping(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"PING") || name.eq_ignore_ascii_case(b"REPLCONF")
}

/// `RESTORE` or `RESTORE-ASKING` without `REPLACE`.
fn is_restore(args: &[&[u8]]) -> bool {
    args.first().is_some_and(|n| {
        n.eq_ignore_ascii_case(b"RESTORE") || n.eq_ignore_ascii_case(b"RESTORE-ASKING")
    }) && !args
        .iter()
        .skip(4)
        .any(|a| a.eq_ignore_ascii_case(b"REPLACE"))
}

/// Commands without a key that a cluster target runs on every primary.
pub(super) fn is_everywhere(name: &[u8]) -> bool {
    [&b"FLUSHALL"[..], b"FLUSHDB", b"FUNCTION", b"SCRIPT"]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

/// Replays the tail: every command in order, routed by its key in a cluster, transactions kept
/// whole. Gives the number of commands replayed.
pub(super) async fn replay_tail(
    t: &mut Target,
    mut commands: TailCommands,
    opts: &OnlineOptions,
    guard: Option<&TailGuard>,
    report: &mut OnlineReport,
) -> Result<u64> {
    let mut db = 0u64;
    let mut replayed = 0;
    let mut transaction: Option<Vec<Vec<Vec<u8>>>> = None;
    while let Some(c) = commands.next_command()? {
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
            .filter(|c| match c.get(1) {
                Some(k) if !is_everywhere(&c[0]) && opts.elsewhere(k) => {
                    report.moved_elsewhere += 1;
                    false
                }
                _ => true,
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
                let mut args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                // A key the restore was told to overwrite: the tail's RESTORE (a migration's
                // RESTORE-ASKING among them) overwrites it too instead of failing on it.
                if opts.replace_existing && is_restore(&args) {
                    args.push(b"REPLACE");
                }
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
