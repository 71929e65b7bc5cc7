//! The `scan` source, for servers that refuse `SYNC`, `PSYNC` and `BGSAVE` (managed services):
//! every key found with `SCAN` is read with `DUMP` and its expiry inside one `MULTI`
//! (`PEXPIRETIME`, the exact instant, on Redis 7 and Valkey; `PTTL` before), and written as
//! a key of an RDB file ([`fleetsnap_core::rdbwrite`]) that the rest of the data path verifies,
//! stores and restores like any other. Each key is as it was at one moment; the set as a whole
//! is not one point in time, and its manifest and reports say so.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetsnap_core::rdbwrite::RdbWriter;
use fleetsnap_core::server::Server;

use crate::error::{Error, Result};
use crate::redis::{Connection, RedisTarget, Value, info_field};

/// Keys asked for per `SCAN`.
const SCAN_COUNT: &[u8] = b"1000";

/// What a scan snapshot tells the operator about itself.
pub const NOT_POINT_IN_TIME: &str = "taken with SCAN, DUMP and PTTL: each key is as it was when it was read, but the set is not one point in time (keys written during the scan may be older or newer than each other)";

/// A scan in progress, giving RDB bytes as it goes.
pub struct ScanStream {
    conn: Connection,
    writer: Option<RdbWriter>,
    /// The databases holding keys, in order, and the next to scan.
    dbs: Vec<u64>,
    next_db: usize,
    /// The SCAN cursor of the database being scanned (`None`: not started).
    cursor: Option<Vec<u8>>,
    max_ops_per_sec: Option<u32>,
    started: Instant,
    ops: u64,
    /// `PEXPIRETIME` (an absolute instant) where the server has it, else `PTTL`.
    expiry: &'static [u8],
}

/// What a scan learned of its node before it began.
pub(super) struct Scanned {
    /// The server and its own version.
    pub(super) server: Server,
    /// Its `redis_version`.
    pub(super) redis_version: String,
    /// Its run id.
    pub(super) run_id: Option<String>,
}

/// Opens a scan of `target`'s keys, at most `max_ops_per_sec` `DUMP`s and expiries a second.
pub(super) async fn open_scan(
    target: &RedisTarget,
    max_ops_per_sec: Option<u32>,
) -> Result<(Scanned, ScanStream)> {
    let mut conn = Connection::connect(target).await?;
    let server_info = conn.info("server").await?;
    let server = Server::from_info(|k| info_field(&server_info, k))
        .ok_or_else(|| Error::redis(target, "INFO server gives no version"))?;
    let version = server
        .rdb_version()
        .filter(|v| {
            fleetsnap_core::rdb::version_supported(false, *v)
                || fleetsnap_core::rdb::VALKEY_RDB_VERSIONS.contains(v)
        })
        .ok_or_else(|| {
            Error::Input(format!(
                "{target} runs {server}, whose RDB version this fleetsnap cannot write: a scan snapshot writes REDIS RDB up to version {} and VALKEY 80",
                fleetsnap_core::rdb::MAX_RDB_VERSION
            ))
        })?;
    // A Redis Cluster replica answers reads of its own slots after READONLY.
    let cluster = conn.info("cluster").await?;
    if info_field(&cluster, "cluster_enabled") == Some("1") {
        conn.checked(&[b"READONLY"]).await?;
    }
    let keyspace = conn.info("keyspace").await?;
    let mut dbs: Vec<u64> = keyspace
        .iter()
        .filter_map(|(k, _)| k.strip_prefix("db")?.parse().ok())
        .collect();
    dbs.sort_unstable();
    let redis_version = info_field(&server_info, "redis_version").unwrap_or("0.0.0");
    let ctime = (time::OffsetDateTime::now_utc().unix_timestamp()).to_string();
    let writer = RdbWriter::new(
        version,
        &[
            ("redis-ver", redis_version),
            ("ctime", &ctime),
            ("fleetsnap-source", "scan"),
        ],
    );
    let scanned = Scanned {
        run_id: info_field(&server_info, "run_id").map(str::to_string),
        redis_version: redis_version.to_string(),
        server,
    };
    let stream = ScanStream {
        conn,
        writer: Some(writer),
        dbs,
        next_db: 0,
        cursor: None,
        max_ops_per_sec: max_ops_per_sec.filter(|r| *r > 0),
        started: Instant::now(),
        ops: 0,
        expiry: if version >= 10 {
            b"PEXPIRETIME"
        } else {
            b"PTTL"
        },
    };
    Ok((scanned, stream))
}

fn unexpected(t: &RedisTarget, what: &str, v: &Value) -> Error {
    let shown: String = format!("{v:?}").chars().take(200).collect();
    Error::redis(t, format!("{what} answered {shown}"))
}

impl ScanStream {
    /// Waits as long as the rate limit asks before `ops` more commands.
    async fn pace(&mut self, ops: u64) {
        self.ops += ops;
        if let Some(rate) = self.max_ops_per_sec {
            let due = Duration::from_secs_f64(self.ops as f64 / f64::from(rate));
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }

    /// The next RDB bytes; `None` once the file has ended.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        loop {
            if self.writer.is_none() {
                return Ok(None);
            }
            if self.next_db >= self.dbs.len() {
                let w = self.writer.take().expect("checked");
                return Ok(Some(Bytes::from(w.finish())));
            }
            let db = self.dbs[self.next_db];
            let cursor = match self.cursor.take() {
                Some(c) => c,
                None => {
                    if self.dbs != [0] || db != 0 {
                        self.conn
                            .checked(&[b"SELECT", db.to_string().as_bytes()])
                            .await?;
                    }
                    self.writer.as_mut().expect("checked").select_db(db);
                    b"0".to_vec()
                }
            };
            let t = self.conn.target().clone();
            let reply = self
                .conn
                .checked(&[b"SCAN", &cursor, b"COUNT", SCAN_COUNT])
                .await?;
            let (next, keys) = match reply {
                Value::Array(Some(mut parts)) if parts.len() == 2 => {
                    let keys = parts.pop().expect("two");
                    let next = parts.pop().expect("two");
                    match (next, keys) {
                        (Value::Bulk(Some(n)), Value::Array(Some(k))) => (n, k),
                        (n, k) => {
                            return Err(unexpected(&t, "SCAN", &Value::Array(Some(vec![n, k]))));
                        }
                    }
                }
                other => return Err(unexpected(&t, "SCAN", &other)),
            };
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter_map(|k| match k {
                    Value::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                self.pace(2 * keys.len() as u64).await;
                let mut cmds = Vec::with_capacity(4 * keys.len());
                for k in &keys {
                    cmds.push(vec![b"MULTI".to_vec()]);
                    cmds.push(vec![b"DUMP".to_vec(), k.clone()]);
                    cmds.push(vec![self.expiry.to_vec(), k.clone()]);
                    cmds.push(vec![b"EXEC".to_vec()]);
                }
                self.conn.send_pipeline(&cmds).await?;
                for k in &keys {
                    for what in ["MULTI", "DUMP", "the expiry"] {
                        let v = self.conn.read_value().await?;
                        if matches!(v, Value::Error(_)) {
                            return Err(unexpected(&t, what, &v));
                        }
                    }
                    let exec = self.conn.read_value().await?;
                    let now = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
                    match exec {
                        Value::Array(Some(r)) if r.len() == 2 => match (&r[0], &r[1]) {
                            // Gone since SCAN named it.
                            (Value::Bulk(None), _) | (_, Value::Int(-2)) => {}
                            (Value::Bulk(Some(payload)), Value::Int(t)) => {
                                let expire = match (*t >= 0, self.expiry == b"PTTL") {
                                    (false, _) => None,
                                    (true, true) => Some(now + t),
                                    (true, false) => Some(*t),
                                };
                                self.writer
                                    .as_mut()
                                    .expect("checked")
                                    .key(k, payload, expire)
                                    .map_err(|e| Error::Failed(format!("{t}: {e}")))?;
                            }
                            _ => {
                                return Err(unexpected(
                                    &t,
                                    "EXEC of DUMP and PTTL",
                                    &Value::Array(Some(r)),
                                ));
                            }
                        },
                        other => return Err(unexpected(&t, "EXEC of DUMP and PTTL", &other)),
                    }
                }
            }
            if next == b"0" {
                self.next_db += 1;
            } else {
                self.cursor = Some(next);
            }
            let bytes = self.writer.as_mut().expect("checked").take();
            if !bytes.is_empty() {
                return Ok(Some(Bytes::from(bytes)));
            }
        }
    }
}
