//! What the agent knows across sessions: its config, its instances, the newest term it has
//! seen, the jobs it has taken, kept channels to coordinators and its metrics.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use fleetsnap_core::InstanceReport;
use fleetsnap_proto::tls::Transport;
use fleetsnap_proto::v1::{self};
use std::sync::Arc;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::metrics::*;
use crate::config::{AgentConfig, InstanceConfig};

use crate::redis::RedisTarget;
use crate::snapshot::CutBook;
use crate::snapshot::{self};
use fleetsnap_telemetry::metrics::{Exposition, Registry};

pub(super) struct Instance {
    pub(super) config: InstanceConfig,
    pub(super) target: RedisTarget,
}

/// What the agent knows across sessions.
pub(super) struct Shared {
    pub(super) config: AgentConfig,
    pub(super) instances: Vec<Instance>,
    pub(super) transport: Transport,
    pub(super) incarnation: u64,
    pub(super) newest_term: AtomicU64,
    /// The coordinator cluster `newest_term` was seen in ("" before the first welcome).
    pub(super) cluster_id: Mutex<String>,
    pub(super) jobs: Mutex<JobBook>,
    /// The coordinator of the last lost session (0: none).
    pub(super) last_leader: AtomicU64,
    /// A job ended: the current session sends its result.
    pub(super) job_ended: tokio::sync::Notify,
    pub(super) reports: watch::Receiver<Vec<InstanceReport>>,
    /// One channel per coordinator address, kept for the life of the process. Spare ones are
    /// kept up by [`standby_loop`]: when the leader dies, the agent reaches the next one over a
    /// connection whose TLS handshake is long done, instead of adding its own to a storm of them.
    pub(super) channels: Mutex<HashMap<String, Channel>>,
    pub(super) standby_started: AtomicBool,
    /// Consistent cuts in progress.
    pub(super) cuts: CutBook,
    /// A cut's snapshot job announced its RDB: the current session says so.
    pub(super) synced_ready: tokio::sync::Notify,
    /// What `/metrics` shows.
    pub(super) metrics: Registry,
    /// Whether a session with the leader is open (`/readyz`).
    pub(super) connected: AtomicBool,
    /// Since when no session with a leader is open (`None` while one is, and before the first).
    pub(super) lost_at: Mutex<Option<std::time::Instant>>,
    /// The archive jobs running, by job id.
    pub(super) archives: Mutex<HashMap<u64, std::sync::Arc<Held>>>,
}

#[derive(Default)]
pub(super) struct JobBook {
    /// Every job id this process accepted: it never runs one twice.
    pub(super) seen: HashSet<u64>,
    pub(super) running: HashSet<u64>,
    /// The latest results, repeated in every Hello: the leader ignores ones it already has.
    pub(super) finished: VecDeque<v1::JobUpdate>,
}

pub(super) const KEEP_FINISHED: usize = 64;

impl Shared {
    pub(super) fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::SeqCst);
        let mut lost = self.lost_at.lock().expect("lock");
        if up {
            *lost = None;
        } else if lost.is_none() {
            *lost = Some(std::time::Instant::now());
        }
        drop(lost);
        self.metrics.set(CONNECTED, &[], f64::from(u8::from(up)));
    }

    /// Stops a job the leader says has ended (an archive; other kinds end by themselves).
    pub(super) fn stop_job(&self, job: u64, why: String) {
        if let Some(h) = self.archives.lock().expect("lock").get(&job) {
            tracing::info!(job, %why, "the leader stopped a job");
            h.stop(why);
        }
    }

    /// What the reports say of the archives running.
    pub(super) fn archive_progress(&self) -> Vec<v1::ArchiveProgress> {
        self.archives
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, h)| h.progress(*id))
            .collect()
    }

    pub(super) fn metrics_text(&self) -> String {
        let mut e = Exposition::default();
        self.metrics.render(&mut e);
        let held: Vec<Arc<Held>> = self
            .archives
            .lock()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let lives: Vec<&crate::archive::Live> = held.iter().map(|h| h.live.as_ref()).collect();
        crate::archive::render_metrics(&mut e, &lives);
        e.finish()
    }

    /// Counts a snapshot's bytes and times per region (`regions`: the policy's names, in the
    /// order of the destinations; without them, the destinations' own).
    pub(super) fn count_snapshot(&self, report: &snapshot::SnapshotReport, regions: &[String]) {
        let (cluster, shard) = (report.cluster.as_str(), report.shard.as_str());
        self.metrics.add(
            SOURCE_BYTES,
            &[("cluster", cluster), ("shard", shard)],
            report.raw_bytes as f64,
        );
        for (i, d) in report.destinations.iter().enumerate() {
            let region = regions.get(i).unwrap_or(&d.region);
            let labels = [
                ("cluster", cluster),
                ("shard", shard),
                ("region", region.as_str()),
            ];
            if d.error.is_some() {
                self.metrics.add(UPLOAD_FAILURES, &labels, 1.0);
                continue;
            }
            self.metrics.add(UPLOADED, &labels, d.stored_bytes as f64);
            self.metrics
                .set(UPLOAD_SECONDS, &labels, d.duration_seconds);
        }
    }
}

/// An archive this agent runs.
pub(super) struct Held {
    pub(super) cluster: String,
    pub(super) shard: String,
    pub(super) source: String,
    pub(super) live: Arc<crate::archive::Live>,
    stop: watch::Sender<bool>,
    why: Mutex<Option<String>>,
}

impl Held {
    pub(super) fn new(
        cluster: String,
        shard: String,
        source: String,
        live: Arc<crate::archive::Live>,
        stop: watch::Sender<bool>,
    ) -> Self {
        Held {
            cluster,
            shard,
            source,
            live,
            stop,
            why: Mutex::new(None),
        }
    }

    /// Why it was stopped, once it was.
    pub(super) fn why(&self) -> Option<String> {
        self.why.lock().expect("lock").clone()
    }

    /// Stops the archiver (it cuts what it holds and sends it on), saying why.
    pub(super) fn stop(&self, why: String) {
        self.why.lock().expect("lock").get_or_insert(why);
        let _ = self.stop.send(true);
    }

    /// What a report says of it.
    pub(super) fn progress(&self, job_id: u64) -> v1::ArchiveProgress {
        let v = self.live.view().unwrap_or_default();
        let (replid, offset) = v.position.map(|p| (p.replid, p.offset)).unwrap_or_default();
        v1::ArchiveProgress {
            job_id,
            cluster: self.cluster.clone(),
            shard: self.shard.clone(),
            source: self.source.clone(),
            connected: v.connected,
            lag_seconds: v.lag_seconds,
            replid,
            offset,
            segments: v.segments,
            gaps: v.gaps,
            restorable_until_ms: v.restorable_until_ms,
        }
    }
}
