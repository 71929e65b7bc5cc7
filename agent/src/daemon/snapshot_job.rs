//! A snapshot job: the leader's spec, resolved against the agent's config into the snapshot
//! request the data path runs, and its result as the leader reads it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetsnap_core::codec::Compression;
use fleetsnap_core::records::SnapshotSpec;
use fleetsnap_core::window::{JobResult, RegionResult, ShardResult};
use fleetsnap_core::{ClusterId, ShardId};
use fleetsnap_proto::v1;

use super::shared::*;
use crate::error::{Error, Result};
use crate::snapshot::{self, SnapshotRequest};
use crate::snapshot::{EncodeOptions, Progress, parse_recipient};
use crate::snapshot::{SourceKind, SourceOptions};
use crate::storage::DestSpec;
use crate::storage::SpoolLimits;

/// The instance of the agent's config that a job names.
pub(super) fn instance_named<'a>(shared: &'a Shared, name: &str) -> Result<&'a Instance> {
    shared
        .instances
        .iter()
        .find(|i| i.config.name == name)
        .ok_or_else(|| {
            Error::Input(format!(
                "agent {:?} watches no instance named {name:?} (it watches {})",
                shared.config.agent_id,
                shared
                    .instances
                    .iter()
                    .map(|i| i.config.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// A job's codecs: `zstd:LEVEL` or `none` (empty: zstd:3), and age recipients.
pub(super) fn encode_options(compress: &str, encrypt_to: &[String]) -> Result<EncodeOptions> {
    let compression: Compression = if compress.is_empty() {
        "zstd:3"
    } else {
        compress
    }
    .parse()
    .map_err(|e: fleetsnap_core::codec::BadCompression| Error::Input(e.to_string()))?;
    let recipients = encrypt_to
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>>>()?;
    Ok(EncodeOptions {
        compression,
        recipients,
    })
}

/// Runs job `id`'s snapshot; its result for the leader.
pub(super) async fn run(shared: &Arc<Shared>, id: u64, s: SnapshotSpec) -> Result<v1::Finished> {
    let instance = instance_named(shared, &s.instance)?;
    let source = match s.source.as_str() {
        "" | "replication" => SourceKind::Replication,
        "bgsave-file" => SourceKind::BgsaveFile,
        "scan" => SourceKind::Scan,
        "auto" => SourceKind::Auto,
        other => {
            return Err(Error::Input(format!(
                "job source {other:?}: a coordinator job takes replication, bgsave-file, scan or auto"
            )));
        }
    };
    let encode = encode_options(&s.compress, &s.encrypt_to)?;
    let destinations = s
        .destinations
        .iter()
        .map(|d| DestSpec::parse(d))
        .collect::<Result<Vec<_>>>()?;
    let cluster = if s.cluster.is_empty() {
        instance.config.cluster.clone()
    } else {
        s.cluster
    };
    let shard = if s.shard.is_empty() {
        format!("{}-{}", instance.target.host, instance.target.port)
    } else {
        s.shard
    };
    let settings = &shared.config.snapshot;
    let window = s.window.is_some();
    let regions = s.regions.clone();
    if window && regions.len() != s.destinations.len() {
        return Err(Error::Input(format!(
            "job {id} names {} regions for {} destinations",
            regions.len(),
            s.destinations.len()
        )));
    }
    let req = SnapshotRequest {
        target: Some(instance.target.clone()),
        source,
        destinations,
        encode,
        cluster: ClusterId::new(cluster).map_err(|e| Error::Input(e.to_string()))?,
        shard: ShardId::new(shard).map_err(|e| Error::Input(e.to_string()))?,
        spool: SpoolLimits {
            memory_bytes: 8 << 20,
            dir: settings
                .spool_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            max_bytes: crate::config::parse_size(&settings.spool_max)?,
        },
        source_options: SourceOptions {
            idle_timeout: Duration::from_secs(settings.idle_timeout_seconds),
            ..Default::default()
        },
        backup_id: if s.backup_id.is_empty() {
            None
        } else {
            Some(
                s.backup_id
                    .parse()
                    .map_err(|e: fleetsnap_core::IdError| Error::Input(e.to_string()))?,
            )
        },
        write_manifest: !window,
        start_at_ms: s.fire_at_ms,
        archive: None,
        cut: s.consistent_cut.then(|| {
            let verdict = shared.cuts.join(id);
            let shared = shared.clone();
            snapshot::CutHooks {
                synced: Arc::new(move |replid, offset| {
                    shared.cuts.synced(id, replid, offset);
                    shared.synced_ready.notify_one();
                }),
                verdict,
            }
        }),
    };
    let started = Instant::now();
    let report = snapshot::snapshot(&req, Arc::new(Progress::default())).await?;
    shared.count_snapshot(&report, &regions);
    tracing::info!(
        job = id,
        backup = %report.backup_id,
        seconds = started.elapsed().as_secs_f64(),
        "snapshot stored"
    );
    let error = report
        .destinations
        .iter()
        .filter_map(|d| d.error.as_ref().map(|e| format!("{}: {e}", d.destination)))
        .collect::<Vec<_>>()
        .join("; ");
    let result_json = match (window, report.entry.clone()) {
        (true, Some(entry)) => serde_json::to_string(&JobResult::Shard(Box::new(ShardResult {
            entry,
            regions: report
                .destinations
                .iter()
                .zip(&regions)
                .map(|(d, region)| RegionResult {
                    region: region.clone(),
                    ok: d.error.is_none(),
                    error: d.error.clone(),
                    stored_bytes: d.stored_bytes,
                })
                .collect(),
            started_at_ms: report.started_at_ms,
            started_at_us: Some(report.started_at_us),
            finished_at_ms: fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc()),
        })))
        .expect("results serialise"),
        _ => String::new(),
    };
    Ok(v1::Finished {
        ok: report.complete() > 0,
        error,
        backup_id: report.backup_id.clone(),
        result_json,
        ..Default::default()
    })
}
