//! The admin API's documents that gather several records: `fleetsnap status`, a window with its
//! sets and jobs, the drills, and retention's decisions. Fields are in alphabetical order where
//! the document was first written as a JSON object, so its `--json` text is unchanged.

use serde::{Deserialize, Serialize};

use crate::outcomes::DrillReport;
use crate::records::{BackupSet, Cut, Job, WindowShard};
use crate::retention::{self, SetState};
use crate::topology::ClusterView;
use crate::{BackupId, ClusterId};

/// `fleetsnap status`: the leader, its term, the agents and what their instances report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusDoc {
    /// The leader's node id.
    pub leader: u64,
    /// Its term.
    pub term: u64,
    /// Agents in the replicated state.
    pub registered_agents: usize,
    /// Jobs not yet done.
    pub open_jobs: usize,
    /// Every agent the leader knows.
    pub agents: Vec<AgentRow>,
    /// The clusters as the reports show them.
    pub clusters: Vec<ClusterView>,
    /// Every shard a policy archives: who holds its archive and how far behind it is.
    #[serde(default)]
    pub archives: Vec<ArchiveRow>,
}

/// One archived shard in [`StatusDoc`] (`fleetsnap archive status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ArchiveRow {
    /// The policy that archives it.
    pub policy: String,
    /// Its cluster.
    pub cluster: String,
    /// Its name in the storage layout.
    pub shard: String,
    /// The archive job holding the lease (none while the shard waits for one).
    pub job: Option<u64>,
    /// The agent running it.
    pub agent: String,
    /// The source node (`host:port`).
    pub source: String,
    /// Whether the archiver holds the node's replication stream.
    pub connected: bool,
    /// The live recovery point in seconds, as the agent last reported it.
    pub lag_seconds: Option<f64>,
    /// Where the chain stands: its replication id and offset.
    pub replid: String,
    /// See `replid`.
    pub offset: u64,
    /// Segments made durable since the job began.
    pub segments: u64,
    /// Gaps found since the job began (each a new base).
    pub gaps: u64,
    /// The newest time every region holds (Unix ms; none yet: `None`).
    pub restorable_until_ms: Option<i64>,
    /// What holds it up, when something does (no source node, the last job's failure).
    pub note: String,
    /// Its chains as the replicated catalog holds them (read from the regions at
    /// `catalog_scanned_at_ms`), oldest base first; more than one means gaps between them.
    #[serde(default)]
    pub chains: Vec<crate::archive::ArchiveChain>,
    /// When the catalog's chains were read (none yet: `None`).
    #[serde(default)]
    pub catalog_scanned_at_ms: Option<i64>,
}

/// An agent in [`StatusDoc`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentRow {
    /// Its id.
    pub agent: String,
    /// Whether it holds a session with the leader.
    pub connected: bool,
    /// Its version, as its Hello said.
    #[serde(default)]
    pub version: String,
    /// How long ago its last report came (none yet: `None`).
    pub last_report_age_ms: Option<u64>,
    /// Instances it reports.
    pub instances: usize,
}

/// `fleetsnap backup show`: a window, its shards, its cut, its sets and its jobs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WindowDoc {
    /// The backup id every set of the window shares.
    pub backup_id: BackupId,
    /// Its consistency mode.
    pub consistency: String,
    /// Its consistent cut, when it took one.
    pub cut: Option<Cut>,
    /// Why cut attempts failed.
    #[serde(default)]
    pub cut_failures: Vec<String>,
    /// Whether the window has ended.
    pub done: bool,
    /// When its snapshots were asked to start (Unix milliseconds).
    pub fire_at_ms: Option<i64>,
    /// The snapshot, manifest and catalog jobs of the window.
    #[serde(default)]
    pub jobs: Vec<Job>,
    /// Clusters of the policy with no shard to snapshot, and why.
    #[serde(default)]
    pub missing: Vec<(ClusterId, String)>,
    /// When it opened (Unix milliseconds).
    pub opened_at_ms: i64,
    /// Its policy's name.
    pub policy: String,
    /// The sets it made.
    #[serde(default)]
    pub sets: Vec<BackupSet>,
    /// Each shard: the plan, the attempts, the state.
    #[serde(default)]
    pub shards: Vec<WindowShard>,
    /// Its trace, when it was traced.
    pub trace_id: Option<String>,
    /// Its id.
    pub window: u64,
}

/// A drill in `fleetsnap drill list`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DrillRow {
    /// The agent that ran it.
    pub agent: String,
    /// The set drilled.
    pub backup_id: BackupId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// The drill's job.
    pub job: u64,
    /// Whether it passed (still running: `None`).
    pub ok: Option<bool>,
    /// Why it failed.
    pub problem: Option<String>,
    /// The agent's report.
    pub report: Option<DrillReport>,
    /// The policy whose schedule started it (asked for by hand: `None`).
    pub scheduled_by: Option<String>,
    /// Only this shard.
    pub shard: Option<String>,
    /// `running`, `passed` or `failed`.
    pub state: String,
}

/// Retention's decision for one set in `fleetsnap backup prune`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PruneRow {
    /// The set.
    pub backup_id: BackupId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// What retention decided.
    pub decision: retention::Action,
    /// Why its deletion did not start.
    pub error: Option<String>,
    /// The job deleting it.
    pub job: Option<u64>,
    /// The policy.
    pub policy: String,
    /// The set's state.
    pub state: SetState,
}
