//! One snapshot of one node to every destination: the library behind `fleetsnap-agent snapshot`
//! (and, later, the coordinator's snapshot job).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fleetsnap_core::manifest::{self, SetFacts};
use fleetsnap_core::policy::Consistency;
use fleetsnap_core::window::unix_ms;
use fleetsnap_core::{BackupId, ClusterId, Manifest, ObjectEntry, ObjectKind, ShardEntry, ShardId};
use serde::Serialize;
use time::OffsetDateTime;

use super::open::{self, SourceOptions};
use super::pipeline::{EncodeOptions, Progress, mb_per_s, store_object};
use super::source::{ByteSource, SourceKind};
use super::tail::{CutVerdict, TailStream};
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::storage::SpoolLimits;
use crate::storage::{DestSpec, Store};

/// What to snapshot and where to put it.
#[derive(Clone)]
pub struct SnapshotRequest {
    /// The node, for `replication` and `bgsave-file`.
    pub target: Option<RedisTarget>,
    /// Where the bytes come from.
    pub source: SourceKind,
    /// Every destination; one read of the source feeds them all.
    pub destinations: Vec<DestSpec>,
    /// Compression and encryption.
    pub encode: EncodeOptions,
    /// Cluster name for the storage layout.
    pub cluster: ClusterId,
    /// Shard name for the storage layout.
    pub shard: ShardId,
    /// Spool limits per destination.
    pub spool: SpoolLimits,
    /// Source timeouts.
    pub source_options: SourceOptions,
    /// A backup window's set id; `None`: a new id.
    pub backup_id: Option<BackupId>,
    /// Write this shard's own manifest (one-shot snapshots); a window's shard leaves the
    /// manifest to the coordinator, which has it written once every shard is stored.
    pub write_manifest: bool,
    /// Read the source at this instant (Unix milliseconds), not before; the source is prepared
    /// (connected, authenticated) before it.
    pub start_at_ms: Option<i64>,
    /// A consistent cut's snapshot: keep the replication stream and store it up to the cut.
    pub cut: Option<CutHooks>,
    /// An archive chain's base: the source is already open, and the stream after the RDB is
    /// handed back instead of stored.
    pub archive: Option<ArchiveHandoff>,
}

/// The stream after an RDB: the connection, bytes read past the RDB, and the RDB's first bytes.
pub type StreamAfter = (crate::redis::Connection, bytes::BytesMut, Vec<u8>);

/// How an archive base goes in and out of [`snapshot`].
#[derive(Clone, Default)]
pub struct ArchiveHandoff {
    /// The source, opened by the archiver's `PSYNC` (taken once).
    pub opened: Arc<std::sync::Mutex<Option<open::OpenedSource>>>,
    /// The stream after the RDB, once it is stored.
    pub stream: Arc<std::sync::Mutex<Option<StreamAfter>>>,
}

/// How a consistent cut's snapshot talks to the coordinator.
#[derive(Clone)]
pub struct CutHooks {
    /// Told the replication id and offset of the RDB as soon as the node announces them.
    pub synced: Arc<dyn Fn(String, u64) + Send + Sync>,
    /// The cut, once taken (or why it was given up).
    pub verdict: tokio::sync::watch::Receiver<Option<CutVerdict>>,
}

/// One destination's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct DestReport {
    /// The destination, without credentials.
    pub destination: String,
    /// Region name.
    pub region: String,
    /// `complete` or `failed`.
    pub result: &'static str,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes stored (objects and manifest excluded when failed).
    pub stored_bytes: u64,
    /// From the start of the snapshot to the manifest being written.
    pub duration_seconds: f64,
    /// Source bytes per second over that duration, in MB/s.
    pub throughput_mb_per_s: f64,
    /// The most bytes that waited on the local spool because the destination was slower.
    pub peak_spooled_bytes: u64,
}

/// The outcome of a snapshot.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    /// The backup id.
    pub backup_id: String,
    /// Cluster name.
    pub cluster: String,
    /// Shard name.
    pub shard: String,
    /// Source node or file.
    pub source: String,
    /// Source kind.
    pub source_kind: &'static str,
    /// Source bytes (RDB plus tail).
    pub raw_bytes: u64,
    /// RDB format version.
    pub rdb_version: u16,
    /// Whether the RDB carried a checksum (false: the writer had checksums off).
    pub rdb_checksum: bool,
    /// Notes for the operator.
    pub notes: Vec<String>,
    /// Per destination.
    pub destinations: Vec<DestReport>,
    /// The manifest entry of the shard.
    #[serde(skip)]
    pub entry: Option<ShardEntry>,
    /// When the source was opened (Unix milliseconds).
    #[serde(skip)]
    pub started_at_ms: i64,
    /// The same in microseconds.
    #[serde(skip)]
    pub started_at_us: i64,
}

impl SnapshotReport {
    /// Destinations that hold a complete backup.
    pub fn complete(&self) -> usize {
        self.destinations
            .iter()
            .filter(|d| d.error.is_none())
            .count()
    }
}

/// Takes the snapshot. Returns an error when nothing could be stored anywhere (a bad source, a
/// corrupt RDB, every destination failed); a partial success is a report with failed destinations.
pub async fn snapshot(req: &SnapshotRequest, progress: Arc<Progress>) -> Result<SnapshotReport> {
    if req.destinations.is_empty() {
        return Err(Error::Input(
            "no destination: give at least one --to DEST".into(),
        ));
    }
    let mut stores = Vec::new();
    for d in &req.destinations {
        stores.push(Store::open(d).await?);
    }
    let handed = req
        .archive
        .as_ref()
        .and_then(|a| a.opened.lock().expect("handoff lock").take());
    let (mut opened, started_at, started) = match handed {
        Some(o) => (o, OffsetDateTime::now_utc(), Instant::now()),
        None => {
            // Everything that can be ready is: wait for the instant, then read the source.
            let prepared =
                open::prepare(&req.source, req.target.as_ref(), req.cut.is_some()).await?;
            let (prepared, started_at) = match req.start_at_ms {
                Some(at) => prepared.fire_at(at).await?,
                None => (prepared, OffsetDateTime::now_utc()),
            };
            let started = Instant::now();
            (
                prepared.start(&req.source_options).await?,
                started_at,
                started,
            )
        }
    };
    let backup_id = req
        .backup_id
        .clone()
        .unwrap_or_else(|| BackupId::from_parts(started_at, rand::random()));
    let mut failures: Vec<Option<String>> = vec![None; stores.len()];
    let mut stored: Vec<u64> = vec![0; stores.len()];
    let mut peak: Vec<u64> = vec![0; stores.len()];
    let info = opened.info.clone();
    let synced = match (&req.cut, &info.replid, info.offset) {
        (Some(_), Some(replid), Some(offset)) => Some((replid.clone(), offset)),
        (Some(_), _, _) => {
            return Err(Error::redis(
                &info.node,
                "the node announced no replication id and offset with its snapshot",
            ));
        }
        (None, _, _) => None,
    };
    let source_name = info.node.clone();
    let chain = req.encode.chain();
    let mut total = 0;
    // `&mut`: a source is Send but not Sync, and this future runs on any worker thread.
    for (_, src) in opened.objects.iter_mut() {
        total += src.total().await.unwrap_or(0);
    }
    progress
        .total
        .store(total, std::sync::atomic::Ordering::Relaxed);
    let mut objects = Vec::new();
    let mut dbs = None;
    let mut rdb_version = 0;
    let mut rdb_checksum = false;
    let mut queue: std::collections::VecDeque<_> = opened.objects.into_iter().collect();
    while let Some((kind, mut src)) = queue.pop_front() {
        let (kind, src) = (&kind, &mut src);
        let name = manifest::object_name(&req.shard, *kind, &chain);
        let dir = |s: &Store| manifest::backup_dir(s.spec().prefix(), &req.cluster, &backup_id);
        let alive: Vec<usize> = (0..stores.len())
            .filter(|i| failures[*i].is_none())
            .collect();
        if alive.is_empty() {
            break;
        }
        let targets: Vec<(Store, String)> = alive
            .iter()
            .map(|i| (stores[*i].clone(), format!("{}/{name}", dir(&stores[*i]))))
            .collect();
        let (verdict, outcomes) = store_object(
            src,
            &source_name,
            *kind == ObjectKind::Rdb,
            &targets,
            &req.encode,
            &req.spool,
            &progress,
        )
        .await;
        let encoded = verdict?;
        for (i, o) in alive.iter().zip(outcomes) {
            peak[*i] = peak[*i].max(o.peak_spooled);
            match o.result {
                Ok(n) => stored[*i] += n,
                Err(e) => failures[*i] = Some(e.to_string()),
            }
        }
        if *kind == ObjectKind::Rdb {
            dbs = encoded.dbs.clone();
        }
        if let Some(rdb) = encoded.rdb {
            rdb_version = rdb.version;
            rdb_checksum = rdb.checksum.is_some();
        }
        if let (Some(a), ObjectKind::Rdb) = (&req.archive, kind) {
            let stream = std::mem::replace(src, ByteSource::Memory(None))
                .into_stream()
                .ok_or_else(|| {
                    Error::redis(&source_name, "the replication stream ended with the RDB")
                })?;
            *a.stream.lock().expect("handoff lock") = Some(stream);
        }
        if let (Some(hooks), Some((replid, offset)), ObjectKind::Rdb) = (&req.cut, &synced, kind) {
            // The cut is taken once every shard's RDB is stored: the pause then meets no fork
            // and no RDB transfer competing for the hosts, and the stream from here to the cut
            // is read as it comes.
            (hooks.synced)(replid.clone(), *offset);
            let stream = std::mem::replace(src, ByteSource::Memory(None))
                .into_stream()
                .ok_or_else(|| {
                    Error::redis(&source_name, "the replication stream ended with the RDB")
                })?;
            queue.push_back((
                ObjectKind::Tail,
                ByteSource::Tail(Box::new(TailStream::new(
                    stream,
                    replid.clone(),
                    *offset,
                    hooks.verdict.clone(),
                    req.source_options.idle_timeout,
                ))),
            ));
        }
        objects.push(ObjectEntry {
            kind: *kind,
            name,
            codecs: chain.clone(),
            raw_bytes: encoded.raw_bytes,
            stored_bytes: encoded.stored_bytes,
            sha256: encoded.sha256,
            crc64: encoded
                .rdb
                .map(|r| format!("{:016x}", r.checksum.unwrap_or(0))),
        });
    }
    let raw_bytes = objects.iter().map(|o| o.raw_bytes).sum();
    let m = Manifest::of_set(
        SetFacts {
            backup_id: backup_id.clone(),
            cluster: req.cluster.clone(),
            policy: None,
            consistency: Consistency::Independent,
            started_at,
            finished_at: OffsetDateTime::now_utc(),
            skew_us: None,
            write_pause_us: None,
            writer: "fleetsnap-agent",
        },
        vec![ShardEntry {
            shard: req.shard.clone(),
            source_node: info.node.clone(),
            source_kind: info.kind.unwrap_or(req.source.name()).into(),
            run_id: info.run_id.clone(),
            replid: info.replid.clone(),
            start_offset: info.offset,
            cut_offset: req.cut.as_ref().and_then(|h| match &*h.verdict.borrow() {
                Some(Ok((_, offset))) => Some(*offset),
                _ => None,
            }),
            rdb_version,
            redis_version: info.redis_version.clone(),
            server: info.server.clone(),
            slot_ranges: Vec::new(),
            dbs,
            objects,
        }],
    );
    let body = Bytes::from(m.to_json());
    let mut reports = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        if failures[i].is_none() && req.write_manifest {
            let key = format!(
                "{}/{}",
                manifest::backup_dir(store.spec().prefix(), &req.cluster, &backup_id),
                manifest::MANIFEST_NAME
            );
            if let Err(e) = store.put(&key, body.clone()).await {
                failures[i] = Some(e.to_string());
            }
        }
        let elapsed = started.elapsed();
        reports.push(DestReport {
            destination: store.to_string(),
            region: store.spec().region_name(),
            result: if failures[i].is_none() {
                "complete"
            } else {
                "failed"
            },
            error: failures[i].clone(),
            stored_bytes: if failures[i].is_none() { stored[i] } else { 0 },
            duration_seconds: round3(elapsed),
            throughput_mb_per_s: (mb_per_s(raw_bytes, elapsed) * 10.0).round() / 10.0,
            peak_spooled_bytes: peak[i],
        });
    }
    let mut notes = info.notes.clone();
    if !rdb_checksum {
        notes.push("the RDB has no checksum (the node writes with rdbchecksum no): only its structure ends were verified".into());
    }
    for r in &reports {
        if r.peak_spooled_bytes > 0 {
            notes.push(format!(
                "{} was slower than the source: up to {} MiB waited on the local spool",
                r.destination,
                r.peak_spooled_bytes >> 20
            ));
        }
    }
    Ok(SnapshotReport {
        backup_id: backup_id.to_string(),
        cluster: req.cluster.to_string(),
        shard: req.shard.to_string(),
        source: info.node,
        source_kind: info.kind.unwrap_or(req.source.name()),
        raw_bytes,
        rdb_version,
        rdb_checksum,
        notes,
        destinations: reports,
        entry: m.shards.into_iter().next(),
        started_at_ms: unix_ms(started_at),
        started_at_us: (started_at.unix_timestamp_nanos() / 1000) as i64,
    })
}

fn round3(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}
