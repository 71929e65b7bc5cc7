//! An archive job: one shard's continuous archive, held for as long as the agent holds the lease
//! (a session with a leader), stopped by the leader's `StopJob`, and shown in every report.

use std::sync::Arc;
use std::time::Duration;

use fleetsnap_core::records::{ArchiveSpec, PointSpec};
use fleetsnap_core::{ClusterId, ShardId};
use fleetsnap_proto::v1;
use tokio::sync::watch;

use super::shared::*;
use super::snapshot_job::{encode_options, instance_named};
use crate::archive::{ArchiveRequest, Live, archive, prune};
use crate::error::{Error, Result};
use crate::snapshot::SourceOptions;
use crate::storage::{DestSpec, SpoolLimits};

/// How often the archiving agent deletes what the policy's `keep` no longer needs.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs job `id`'s archive until it fails, the leader stops it, or the agent has had no leader
/// for the lease; an archive never ends well, so the result is always a failure with the reason.
pub(super) async fn run(shared: &Arc<Shared>, id: u64, spec: ArchiveSpec) -> Result<v1::Finished> {
    let instance = instance_named(shared, &spec.instance)?;
    let destinations = spec
        .destinations
        .iter()
        .map(|d| DestSpec::parse(d))
        .collect::<Result<Vec<_>>>()?;
    let cluster = ClusterId::new(&spec.cluster).map_err(|e| Error::Input(e.to_string()))?;
    let shard = ShardId::new(&spec.shard).map_err(|e| Error::Input(e.to_string()))?;
    let settings = &shared.config.snapshot;
    // Each agent's own: agents that share a spool directory (one host, several agents) never
    // share an archive's position.
    let spool_dir = settings
        .spool_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("fleetsnap-{}", shared.config.agent_id));
    // An earlier job of this shard here (a lease that lapsed and came back) may still be sending
    // its last segments from the same spool: it ends first.
    let earlier: Vec<Arc<Held>> = shared
        .archives
        .lock()
        .expect("lock")
        .values()
        .filter(|h| h.cluster == spec.cluster && h.shard == spec.shard)
        .cloned()
        .collect();
    for h in &earlier {
        h.stop(format!("job {id} took the shard's archive over"));
    }
    let waited = std::time::Instant::now();
    while shared
        .archives
        .lock()
        .expect("lock")
        .values()
        .any(|h| h.cluster == spec.cluster && h.shard == spec.shard)
    {
        if waited.elapsed() > Duration::from_secs(90) {
            return Err(Error::Failed(format!(
                "an earlier archive of shard {} of {} on this agent did not stop within 90 s",
                spec.shard, spec.cluster
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stop_tx, stop) = watch::channel(false);
    let held = Arc::new(Held::new(
        spec.cluster.clone(),
        spec.shard.clone(),
        instance.target.to_string(),
        Arc::new(Live::with_regions(spec.regions.clone())),
        stop_tx,
    ));
    let req = ArchiveRequest {
        target: instance.target.clone(),
        destinations: destinations.clone(),
        encode: encode_options(&spec.compress, &spec.encrypt_to)?,
        cluster: cluster.clone(),
        shard: shard.clone(),
        spool: SpoolLimits {
            memory_bytes: 8 << 20,
            dir: settings
                .spool_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir),
            max_bytes: crate::config::parse_size(&settings.spool_max)?,
        },
        spool_dir,
        segment: Duration::from_secs(spec.segment_seconds.max(1)),
        segment_max_bytes: spec.segment_max_bytes.max(1),
        spool_max_bytes: spec.spool_max_bytes.max(spec.segment_max_bytes),
        source_options: SourceOptions {
            idle_timeout: Duration::from_secs(settings.idle_timeout_seconds.max(1)),
            ..Default::default()
        },
        metrics_listen: None,
        live: Some(held.live.clone()),
    };
    shared
        .archives
        .lock()
        .expect("lock")
        .insert(id, held.clone());
    tracing::info!(job = id, cluster = %cluster, shard = %shard, source = %held.source, "archiving");
    let lease = Duration::from_millis(spec.lease_ms.max(1000));
    let watchdog = tokio::spawn(lease_watch(shared.clone(), lease, held.clone()));
    let pruner = spec.keep_seconds.map(|keep| {
        let (d, c, s) = (destinations, cluster.clone(), shard.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PRUNE_EVERY).await;
                match prune(&d, &c, &s, Duration::from_secs(keep), false).await {
                    Ok(r) => tracing::info!(cluster = %c, shard = %s, deleted = r.deleted.len(), kept = r.kept, failed = r.failed.len(), "archive pruned"),
                    Err(e) => tracing::warn!(cluster = %c, shard = %s, error = %e, "the archive could not be pruned"),
                }
            }
        })
    });
    let ended = archive(req, stop).await;
    watchdog.abort();
    if let Some(p) = pruner {
        p.abort();
    }
    shared.archives.lock().expect("lock").remove(&id);
    let why = held.why();
    let error = match ended {
        Ok(summary) => format!(
            "the archive of shard {shard} of {cluster} stopped ({}) after {} segments{}",
            why.unwrap_or_else(|| "asked to".into()),
            summary.segments,
            summary
                .position
                .map(|p| format!(", at offset {} of {}", p.offset, p.replid))
                .unwrap_or_default()
        ),
        Err(e) => format!("the archive of shard {shard} of {cluster} failed: {e}"),
    };
    tracing::info!(job = id, %error, "archive ended");
    Ok(v1::Finished {
        ok: false,
        error,
        ..Default::default()
    })
}

/// Stops the archive once the agent has gone `lease` without a session with a leader: by then
/// the leader has failed the job and leased the shard to another agent.
async fn lease_watch(shared: Arc<Shared>, lease: Duration, held: Arc<Held>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let lost = *shared.lost_at.lock().expect("lock");
        if let Some(since) = lost
            && since.elapsed() >= lease
        {
            held.stop(format!(
                "no session with a coordinator leader for {} s, the lease: another agent may hold the shard now",
                lease.as_secs()
            ));
            return;
        }
    }
}

/// Stores the exact point of job `id` in its regions.
pub(super) async fn store_point(id: u64, spec: PointSpec) -> Result<v1::Finished> {
    let to = spec
        .destinations
        .iter()
        .map(|d| DestSpec::parse(d))
        .collect::<Result<Vec<_>>>()?;
    let failed = crate::archive::store_point(&spec.point, &to).await?;
    tracing::info!(job = id, cluster = %spec.point.cluster, at_ms = spec.point.at_ms, failed = failed.len(), "exact point stored");
    Ok(v1::Finished {
        ok: true,
        error: failed.join("; "),
        ..Default::default()
    })
}
