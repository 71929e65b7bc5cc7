//! Restore drills: a shard's latest copy is loaded into a scratch redis-server on this host, what
//! the server then serves is checked against the key counts and digests the manifest recorded at
//! backup time, the tail is replayed, and the server and its files are removed.
//!
//! The check reads the data back as served (`SCAN`, `DUMP`, `PEXPIRETIME`), so it covers the
//! whole path: the object in the region, its decryption and decompression, the RDB and Redis
//! loading it. Keys whose expiry passed before the load are not served; they are taken from the
//! copy, and only if their expiry has passed, so the digest still covers every key.

use fleetsnap_core::outcomes::{DbCheck, DrillReport};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fleetsnap_core::digest::{DatasetDigest, DbDigest, DigestAlg};
use fleetsnap_core::rdbread::{Entry, Item, RdbReader};
use serde::Deserialize;

use super::to_file::{RestoreRequest, restore};
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{Connection, Value};

/// The agent's `[drill]` section: how scratch servers are started.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DrillSettings {
    /// The redis-server binary (a path, or a name on PATH).
    pub redis_server: String,
    /// The valkey-server binary for sets taken from Valkey (their manifests say so); without
    /// one, `redis_server` loads them too, if it reads their RDB version.
    pub valkey_server: Option<String>,
    /// Where scratch servers keep their files (default: the system's temporary directory).
    pub work_dir: Option<PathBuf>,
    /// How long fetching, loading and checking may take in all.
    pub timeout_seconds: u64,
}

impl Default for DrillSettings {
    fn default() -> Self {
        Self {
            redis_server: "redis-server".into(),
            valkey_server: None,
            work_dir: None,
            timeout_seconds: 1800,
        }
    }
}

/// Runs a drill of one shard (`req.shard`, or the only one). `taken_at_ms` is when the set was
/// taken, for the RPO.
pub async fn drill(
    mut req: RestoreRequest,
    settings: &DrillSettings,
    taken_at_ms: Option<i64>,
) -> Result<DrillReport> {
    let base = settings.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let scratch = base.join(format!(
        "fleetsnap-drill-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::file("cannot create the drill's scratch directory", &scratch, e))?;
    req.to_file = scratch.join("shard.rdb");
    let timeout = Duration::from_secs(settings.timeout_seconds.max(1));
    let result = tokio::time::timeout(timeout, run(&req, settings, &scratch, taken_at_ms)).await;
    std::fs::remove_dir_all(&scratch).ok();
    match result {
        Ok(r) => r,
        Err(_) => Err(Error::Failed(format!(
            "the drill did not finish within {} s (the agent's drill.timeout_seconds)",
            timeout.as_secs()
        ))),
    }
}

async fn run(
    req: &RestoreRequest,
    settings: &DrillSettings,
    scratch: &Path,
    taken_at_ms: Option<i64>,
) -> Result<DrillReport> {
    let started = Instant::now();
    let read = restore(req).await?;
    let fetch_seconds = started.elapsed().as_secs_f64();
    let loading = Instant::now();
    // The server the set came from loads it (Valkey's sets in valkey-server, when there is one).
    let bin = match (&read.server, &settings.valkey_server) {
        (Some(s), Some(v)) if s.starts_with("valkey ") => v.as_str(),
        _ => settings.redis_server.as_str(),
    };
    let server = match Scratch::start(bin, scratch, &req.to_file).await {
        Ok(s) => s,
        Err(e) => {
            return Err(match read.server.as_deref() {
                Some(s) if s.starts_with("valkey ") && settings.valkey_server.is_none() => {
                    Error::Failed(format!(
                        "{e}. The set was taken from {s}: give the drill a valkey-server (--valkey-server, or drill.valkey_server in the agent's config)"
                    ))
                }
                _ => e,
            });
        }
    };
    let load_seconds = loading.elapsed().as_secs_f64();
    // The backup's age once its data is served: what a restore now would lose.
    let served_at_ms = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
    let rpo_seconds = taken_at_ms.map(|t| (served_at_ms - t).max(0) as f64 / 1000.0);
    let checking = Instant::now();
    // The digest is taken the way the manifest recorded it, so older sets still check.
    let alg = read
        .dbs
        .as_ref()
        .and_then(|d| d.first())
        .map_or(DigestAlg::default(), |d| DigestAlg::of(&d.digest));
    let (served, seen) = served_digest(&server.target, alg).await?;
    let expired = expired_in_copy(&req.to_file, &seen, alg)?;
    let check_seconds = checking.elapsed().as_secs_f64();
    let mut problems = expired.missing.clone();
    let mut dbs: Vec<DbCheck> = Vec::new();
    let mut all: std::collections::BTreeSet<u64> = served.iter().map(|d| d.db).collect();
    all.extend(expired.dbs.iter().map(|d| d.db));
    if let Some(recorded) = &read.dbs {
        all.extend(recorded.iter().map(|d| d.db));
    }
    for db in all {
        let s = served.iter().find(|d| d.db == db);
        let x = expired.dbs.iter().find(|d| d.db == db);
        let found = alg.xor(
            s.map_or("", |d| d.digest.as_str()),
            x.map_or("", |d| d.digest.as_str()),
        );
        let rec = read
            .dbs
            .as_ref()
            .and_then(|r| r.iter().find(|d| d.db == db));
        let check = DbCheck {
            db,
            keys_recorded: read.dbs.as_ref().map(|_| rec.map_or(0, |d| d.keys)),
            keys_served: s.map_or(0, |d| d.keys),
            keys_expired: x.map_or(0, |d| d.keys),
            digest_recorded: rec.map(|d| d.digest.clone()),
            digest_found: found,
        };
        if let Some(want) = check.keys_recorded {
            let got = check.keys_served + check.keys_expired;
            if got != want {
                problems.push(format!(
                    "db {db}: the manifest recorded {want} keys, the scratch server served {} (and {} had expired)",
                    check.keys_served, check.keys_expired
                ));
            } else if check.digest_recorded.as_deref() != Some(&check.digest_found) {
                problems.push(format!(
                    "db {db}: the data served does not match the digest the manifest recorded at backup time ({} against {})",
                    short(&check.digest_found),
                    short(check.digest_recorded.as_deref().unwrap_or("none"))
                ));
            }
        }
        dbs.push(check);
    }
    let replaying = Instant::now();
    let tail_commands = match &read.tail_file {
        Some(t) => super::online::replay_tail_into(&server.target, Path::new(t)).await?,
        None => 0,
    };
    let rto_seconds = fetch_seconds + load_seconds + replaying.elapsed().as_secs_f64();
    drop(server);
    Ok(DrillReport {
        backup_id: req.backup.to_string(),
        shard: read.shard.clone(),
        destination: read.destination.clone(),
        skipped: read.skipped.clone(),
        ok: problems.is_empty(),
        problems,
        dbs,
        digest_checked: read.dbs.is_some(),
        rdb_bytes: read.raw_bytes,
        tail_commands,
        fetch_seconds,
        load_seconds,
        check_seconds,
        rto_seconds,
        rpo_seconds,
    })
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

/// A scratch redis-server, killed and waited for on drop.
struct Scratch {
    child: std::process::Child,
    target: RedisTarget,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Scratch {
    /// Starts a server on `rdb` (in `dir`) on a free loopback port and waits until it has
    /// loaded it.
    async fn start(bin: &str, dir: &Path, rdb: &Path) -> Result<Scratch> {
        let name = rdb
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("shard.rdb")
            .to_string();
        let log = dir.join("redis.log");
        let mut last = String::new();
        // A port found free can be taken before the server binds it: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::Failed(format!("no free loopback port for the drill: {e}")))?
                .port();
            let child = std::process::Command::new(bin)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .arg("--dir")
                .arg(dir)
                .args(["--dbfilename", &name, "--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--protected-mode", "yes"])
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    Error::Input(format!(
                        "cannot start the drill's scratch server {bin:?}: {e}; set drill.redis_server (drill.valkey_server for sets taken from Valkey) in the agent's config to the server's binary"
                    ))
                })?;
            let target = RedisTarget::parse(&format!("redis://127.0.0.1:{port}"))?;
            let mut s = Scratch { child, target };
            match s.ready(&log).await {
                Ok(()) => return Ok(s),
                Err(e) => {
                    last = e.to_string();
                    if !last.contains("Address already in use") {
                        return Err(e);
                    }
                }
            }
        }
        Err(Error::Failed(last))
    }

    async fn ready(&mut self, log: &Path) -> Result<()> {
        let log_tail = || {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(5)..].join(" | ")
        };
        loop {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                return Err(Error::Failed(format!(
                    "the drill's scratch server exited while loading the copy ({status}): {}",
                    log_tail()
                )));
            }
            if let Ok(mut c) = Connection::connect(&self.target).await
                && let Ok(Value::Simple(s)) = c.command(&[b"PING"]).await
                && s == "PONG"
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Per database, the digest of every key the server serves, and which keys those are.
async fn served_digest(
    target: &RedisTarget,
    alg: DigestAlg,
) -> Result<(Vec<DbDigest>, HashSet<(u64, Vec<u8>)>)> {
    let mut c = Connection::connect(target).await?;
    let keyspace = c.info("keyspace").await?;
    let mut digest = DatasetDigest::new(alg);
    let mut seen = HashSet::new();
    for (name, _) in &keyspace {
        let Some(db) = name.strip_prefix("db").and_then(|d| d.parse::<u64>().ok()) else {
            continue;
        };
        c.checked(&[b"SELECT", db.to_string().as_bytes()]).await?;
        let mut cursor = b"0".to_vec();
        loop {
            let reply = c.checked(&[b"SCAN", &cursor, b"COUNT", b"1000"]).await?;
            let Value::Array(Some(parts)) = reply else {
                return Err(Error::redis(target, "SCAN gave an unexpected reply"));
            };
            let (next, keys) = match parts.as_slice() {
                [Value::Bulk(Some(n)), Value::Array(Some(k))] => (n.clone(), k.clone()),
                _ => return Err(Error::redis(target, "SCAN gave an unexpected reply")),
            };
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter_map(|k| match k {
                    Value::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect();
            let mut batch = Vec::with_capacity(keys.len() * 2);
            for k in &keys {
                batch.push(vec![b"DUMP".to_vec(), k.clone()]);
                batch.push(vec![b"PEXPIRETIME".to_vec(), k.clone()]);
            }
            c.send_pipeline(&batch).await?;
            for k in keys {
                let dump = c.read_value().await?;
                let expire = c.read_value().await?;
                let Value::Bulk(Some(payload)) = dump else {
                    // Expired between SCAN and DUMP: the copy accounts for it.
                    continue;
                };
                if payload.len() < 11 {
                    return Err(Error::redis(target, "DUMP gave a payload too short"));
                }
                let entry = Entry {
                    db,
                    key: k.clone(),
                    expire_ms: match expire {
                        Value::Int(t) if t >= 0 => Some(t),
                        _ => None,
                    },
                    idle: None,
                    freq: None,
                    payload: payload[..payload.len() - 10].to_vec(),
                    decoded: None,
                };
                let value = entry.value().map_err(|e| {
                    Error::Decode(format!(
                        "the scratch server's value of key {:?} (db {db}) cannot be read: {e}",
                        entry.key_lossy()
                    ))
                })?;
                digest.add(&entry, &value);
                seen.insert((db, k));
            }
            if next == b"0" {
                break;
            }
            cursor = next;
        }
    }
    Ok((digest.finish(), seen))
}

/// The keys of the copy the server did not serve.
struct Expired {
    /// Their digest per database (each key's expiry had passed).
    dbs: Vec<DbDigest>,
    /// Keys missing although their expiry had not passed (or they had none).
    missing: Vec<String>,
}

fn expired_in_copy(rdb: &Path, seen: &HashSet<(u64, Vec<u8>)>, alg: DigestAlg) -> Result<Expired> {
    let file = std::fs::File::open(rdb).map_err(|e| Error::file("cannot open", rdb, e))?;
    let mut reader = RdbReader::checked_elsewhere(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| Error::Decode(format!("{}: {e}", rdb.display())))?;
    let now = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
    let mut digest = DatasetDigest::new(alg);
    let mut missing = Vec::new();
    let mut more = 0usize;
    while let Some(item) = reader
        .next_item()
        .map_err(|e| Error::Decode(format!("{}: {e}", rdb.display())))?
    {
        let Item::Entry(e) = item else { continue };
        if seen.contains(&(e.db, e.key.clone())) {
            continue;
        }
        match e.expire_ms {
            Some(t) if t <= now => {
                let v = e
                    .value()
                    .map_err(|err| Error::Decode(format!("{}: {err}", rdb.display())))?;
                digest.add(&e, &v);
            }
            _ if missing.len() < 10 => missing.push(format!(
                "key {:?} (db {}) is in the copy but the scratch server did not serve it",
                e.key_lossy(),
                e.db
            )),
            _ => more += 1,
        }
    }
    if more > 0 {
        missing.push(format!("{more} more keys of the copy were not served"));
    }
    Ok(Expired {
        dbs: digest.finish(),
        missing,
    })
}
