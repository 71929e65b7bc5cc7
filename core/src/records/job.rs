//! Jobs in the replicated state: what an agent is asked to do, the term and log index that fence
//! it, and how it ended.

use crate::records::CatalogSpec;
use crate::window::JobResult;
use crate::{BackupId, ClusterId};
use serde::{Deserialize, Serialize};

/// A job an agent can run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Snapshot one Redis node to destinations (the agent's `snapshot` command).
    Snapshot(SnapshotSpec),
    /// Write a backup set's manifest to regions (a window's last step).
    WriteManifest(ManifestSpec),
    /// Work on stored sets: repair, verify, delete, scan, collect orphans.
    Catalog(CatalogSpec),
    /// Archive one shard's replication stream for as long as the agent holds the lease
    /// (docs/archive.md); it ends only when it fails or the leader stops it.
    Archive(ArchiveSpec),
    /// Store an exact point the leader took (every primary of a cluster paused at once) in
    /// every region of its archive.
    StorePoint(PointSpec),
}

/// What a store-point job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointSpec {
    /// Destination URLs.
    pub destinations: Vec<String>,
    /// The point.
    pub point: crate::archive::ExactPoint,
}

/// What an archive job does: the archiver of one shard, its source a node the agent watches.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveSpec {
    /// The policy whose `[policy.archive]` asked for it.
    pub policy: String,
    /// The source node, as the agent's config names it.
    pub instance: String,
    /// Cluster name in the storage layout.
    pub cluster: String,
    /// Shard name in the storage layout.
    pub shard: String,
    /// Destination URLs.
    pub destinations: Vec<String>,
    /// Their region names.
    pub regions: Vec<String>,
    /// `zstd:LEVEL` or `none`.
    pub compress: String,
    /// age recipients.
    #[serde(default)]
    pub encrypt_to: Vec<String>,
    /// A segment is cut this long after its first byte.
    pub segment_seconds: u64,
    /// … or at this many stream bytes.
    pub segment_max_bytes: u64,
    /// The most bytes of segments waiting locally for a region.
    pub spool_max_bytes: u64,
    /// The archive's reach: segments no time within it needs are pruned (seconds; none: kept).
    #[serde(default)]
    pub keep_seconds: Option<u64>,
    /// The leader's lease: an agent that has had no session with a leader for this long stops
    /// archiving, for by then the leader has handed the shard to another agent.
    pub lease_ms: u64,
}

/// What a manifest job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSpec {
    /// The window.
    pub window: u64,
    /// The set's cluster.
    pub cluster: ClusterId,
    /// The set's id.
    pub backup_id: BackupId,
    /// Destination URLs that hold every shard.
    pub destinations: Vec<String>,
    /// Their region names.
    pub regions: Vec<String>,
    /// The manifest.
    pub manifest_json: String,
}

/// What a snapshot job does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// The instance, as the agent's config names it.
    pub instance: String,
    /// Destination URLs.
    pub destinations: Vec<String>,
    /// Cluster name in the storage layout (empty: the instance's cluster in the agent's config).
    pub cluster: String,
    /// Shard name in the storage layout (empty: the agent chooses HOST-PORT).
    pub shard: String,
    /// `zstd:LEVEL` or `none` (empty: zstd:3).
    pub compress: String,
    /// age recipients.
    pub encrypt_to: Vec<String>,
    /// `replication` or `bgsave-file` (empty: replication).
    pub source: String,
    /// A window's set id (empty: the agent makes one and writes the manifest itself).
    #[serde(default)]
    pub backup_id: String,
    /// The window, for a window's job.
    #[serde(default)]
    pub window: Option<u64>,
    /// Region names, in the order of destinations.
    #[serde(default)]
    pub regions: Vec<String>,
    /// `simultaneous`: when to read the source (Unix milliseconds).
    #[serde(default)]
    pub fire_at_ms: Option<i64>,
    /// `consistent` windows: keep the replication stream and store it up to the cut.
    #[serde(default)]
    pub consistent_cut: bool,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Done; for snapshots, the backup id; for a window's jobs, what was stored where.
    Succeeded {
        backup_id: Option<String>,
        #[serde(default)]
        result: Option<JobResult>,
    },
    /// Failed, with the reason the agent gave (or the lease expiry).
    Failed { reason: String },
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its agent.
    Pending,
    /// Handed to the agent process `incarnation`.
    Running { incarnation: u64 },
    /// It ended.
    Done(JobOutcome),
}

/// A job with its fencing token: the term and index of the log entry that created it, then of the
/// entry that dispatched it. An agent refuses a job whose term is older than the newest it has
/// seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id, unique in the fleet.
    pub id: u64,
    /// The agent that runs it.
    pub agent: String,
    /// What to do.
    pub kind: JobKind,
    /// Raft term of the creating (then dispatching) entry.
    pub term: u64,
    /// Raft log index of the creating (then dispatching) entry.
    pub index: u64,
    /// Log index of the entry that created the job.
    pub created_index: u64,
    /// How many times it was handed to its agent.
    pub dispatches: u32,
    /// Progress.
    pub state: JobState,
}

impl JobKind {
    /// `snapshot`, `manifest`, `archive`, `exact_point`, `restore`, `drill`, `runbook_step`,
    /// `archive_find`, `catalog`: a bounded name
    /// for metrics.
    pub fn name(&self) -> &'static str {
        use crate::window::{CatalogTask, RestoreMode};
        match self {
            JobKind::Snapshot(_) => "snapshot",
            JobKind::WriteManifest(_) => "manifest",
            JobKind::Archive(_) => "archive",
            JobKind::StorePoint(_) => "exact_point",
            JobKind::Catalog(c) => match &c.task {
                CatalogTask::Restore(r) if r.mode == RestoreMode::Drill => "drill",
                CatalogTask::Restore(_) | CatalogTask::RestoreAt(_) => "restore",
                CatalogTask::Node(_) | CatalogTask::Probe(_) => "runbook_step",
                CatalogTask::Find(_) => "archive_find",
                _ => "catalog",
            },
        }
    }
}

impl JobState {
    /// The word in documents and tables (as serialised): `pending`, `running` or `done`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running { .. } => "running",
            JobState::Done(_) => "done",
        }
    }

    /// How it ended, once done.
    pub fn outcome(&self) -> Option<&JobOutcome> {
        match self {
            JobState::Done(o) => Some(o),
            _ => None,
        }
    }

    /// Why it failed, when it did.
    pub fn failure(&self) -> Option<&str> {
        match self {
            JobState::Done(JobOutcome::Failed { reason }) => Some(reason),
            _ => None,
        }
    }

    /// What the agent sent back, when it succeeded with a result.
    pub fn result(&self) -> Option<&JobResult> {
        match self {
            JobState::Done(JobOutcome::Succeeded { result, .. }) => result.as_ref(),
            _ => None,
        }
    }
}
