//! Applying a verified RDB to a running target key by key: read on a thread of its own, routed
//! by slot, strings batched and everything else sent as `RESTORE … ABSTTL`; function libraries;
//! the databases a copy needs, checked against the target before anything is written.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use fleetsnap_core::keys::glob_match;
use fleetsnap_core::rdbread::{Entry, Item, RdbReader};
use tokio::sync::mpsc;

use super::report::*;
use super::tail::*;
use super::target::*;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{self as resp, Connection, Value, info_field};
use fleetsnap_core::outcomes::OnlineReport;

/// A batch of items from the reader thread, and how far into the file it got.
pub(super) struct Batch {
    pub(super) items: Vec<Item>,
    pub(super) at: u64,
}

/// Reads `rdb` on a thread of its own, in batches.
pub(super) fn read_in_thread(rdb: &Path) -> Result<(mpsc::Receiver<Result<Batch>>, u16, u64)> {
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
    // A target that cannot read the backup's RDB version gets each value as commands.
    let across_versions = !t.server.reads_rdb(version);
    if across_versions {
        super::commands::load_script(&mut t).await?;
    }
    let mut report = OnlineReport {
        target: target.to_string(),
        cluster: t.slots.is_some(),
        nodes: t.nodes.len(),
        across_versions,
        ..Default::default()
    };
    // Merging into a target that keeps its own keys: what the tail writes to is watched, so
    // the tail leaves alone every key that was there before, as the RDB's restore does.
    let merging = !opts.replace_existing;
    let had_keys = merging && t.total_keys().await? > 0;
    if merging && let Some(tail) = tail {
        let watch = std::sync::Arc::new(tail_keys(tail)?);
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
    if let Some(tail) = tail {
        let commands = TailCommands::open(tail)?;
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
        let mut commands = TailCommands::open(tail)?;
        let mut db = 0u64;
        while let Some(c) = commands.next_command()? {
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

pub(super) async fn restore_entry(
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
    if opts.elsewhere(&e.key) {
        report.moved_elsewhere += 1;
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
        n.emit_script(opts.replace_existing);
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
    } else if n.script.is_some() {
        // A target that cannot read the backup's RDB version: the value re-encoded in the
        // plainest types, which every version loads; what they cannot hold, as commands.
        match e.value() {
            Err(err) => refused(report, &e, err.to_string()),
            Ok(v) => match fleetsnap_core::rdbwrite::portable_payload(&v) {
                Some(payload) => {
                    let e = Entry {
                        payload,
                        decoded: None,
                        ..e
                    };
                    encode_restore(&mut n.buf, &e, version, opts.replace_existing);
                    n.pending.push(Pending::Key(e.db, e.key));
                }
                None => match super::commands::key_args(&e, v, t.field_expiry) {
                    Ok(args) => {
                        report.as_commands += 1;
                        n.hold_script(e.key, args, opts.replace_existing, cluster);
                    }
                    Err(why) => refused(report, &e, why),
                },
            },
        }
    } else {
        // Stamped with the target's own version, which it always accepts: the payload's encoding
        // is at most as new (the target reads the file's version, checked up front).
        encode_restore(&mut n.buf, &e, version, opts.replace_existing);
        n.pending.push(Pending::Key(e.db, e.key));
    }
    if n.buf.len() >= BATCH_BYTES {
        n.flush(report).await?;
    }
    Ok(())
}

/// `e` left out, as no command can write it into the target: counted and named with `why`.
fn refused(report: &mut OnlineReport, e: &Entry, why: String) {
    report.keys -= 1;
    report.refused += 1;
    if report.refused_keys.len() < CONFLICTS_NAMED {
        report
            .refused_keys
            .push(format!("{:?} in db {}: {why}", e.key_lossy(), e.db));
    }
}

/// `RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]` written straight into
/// `out`, the payload (value, RDB version, CRC-64) built in place.
pub(super) fn encode_restore(out: &mut Vec<u8>, e: &Entry, version: u16, replace: bool) {
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

pub(super) async fn load_function(
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
pub(super) fn library_name(code: &[u8]) -> Option<&[u8]> {
    let first = code.split(|b| *b == b'\n').next()?;
    first
        .split(|b| *b == b' ')
        .find_map(|t| t.strip_prefix(b"name="))
}

/// Whether the node already holds this very library, code and all.
pub(super) async fn same_library(conn: &mut Connection, code: &[u8]) -> Result<bool> {
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
}
