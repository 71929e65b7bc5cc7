//! The replicated state of the fleet and the commands that change it.
//!
//! `apply` is a pure function of the state, the command and the log id that carries it: every
//! coordinator applies the same entries and reaches the same state.

use std::collections::BTreeMap;

use fleetsnap_core::policy::Policy;
use fleetsnap_core::records::{
    BackupSet, CatalogSpec, CutOutcome, Job, JobKind, JobOutcome, Runbook, Window, WindowPlan,
};
use serde::{Deserialize, Serialize};

/// A state change, the only way the replicated state changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// The cluster's identity (applied once; later ones change nothing).
    SetClusterId { id: String },
    /// Agents joined (identities come from their certificates). One entry for every agent that
    /// said Hello while the previous such entry was being committed: after a leader change the
    /// whole fleet registers in a few entries, not one each.
    RegisterAgents { agents: Vec<String> },
    /// A job for an agent.
    CreateJob { agent: String, job: JobKind },
    /// The leader hands a job to the agent process `incarnation`; the entry's (term, index) is the
    /// job's fencing token from then on. Handing it again to the same incarnation (the agent said
    /// it never received it) is allowed; to another incarnation it is not: the job could then run
    /// twice.
    DispatchJob { job: u64, incarnation: u64 },
    /// A job ended.
    FinishJob { job: u64, outcome: JobOutcome },
    /// Adds or replaces a policy (already validated).
    SetPolicy { policy: Policy },
    /// Removes a policy; its sets stay in the catalog.
    DeletePolicy { name: String },
    /// Opens a backup window as the leader planned it.
    OpenWindow { plan: WindowPlan },
    /// A consistent window's snapshot job has its replication stream, from `offset` of `replid`.
    ShardSynced {
        job: u64,
        replid: String,
        offset: u64,
    },
    /// The leader's attempt at a consistent window's cut.
    CommitCut { window: u64, outcome: CutOutcome },
    /// Work on stored sets for an agent (the leader chose the agent and the regions).
    CreateCatalogJob { agent: String, spec: CatalogSpec },
    /// Starts a runbook as the leader planned it.
    StartRunbook { runbook: Runbook },
    /// Creates the job of a runbook's current step.
    RunbookStep { runbook: u64, step: usize },
    /// The leader's check of a runbook's current step.
    RunbookCheck {
        runbook: u64,
        step: usize,
        ok: bool,
        detail: String,
    },
}

/// What applying a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The id of a job created by the command.
    pub job: Option<u64>,
    /// Why the command changed nothing.
    pub refused: Option<String>,
    /// The id of a window opened by the command.
    #[serde(default)]
    pub window: Option<u64>,
    /// The id of a runbook started by the command.
    #[serde(default)]
    pub runbook: Option<u64>,
}

/// An agent known to the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's identity.
    pub agent: String,
    /// Log index at which it registered.
    pub registered_at: u64,
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// Agents by identity.
    pub agents: BTreeMap<String, AgentRecord>,
    /// Jobs by id.
    pub jobs: BTreeMap<u64, Job>,
    /// The next job id.
    pub next_job: u64,
    /// Policies by name.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// Windows by id.
    #[serde(default)]
    pub windows: BTreeMap<u64, Window>,
    /// The last window id.
    #[serde(default)]
    pub next_window: u64,
    /// The catalog: sets by `cluster/backup_id`.
    #[serde(default)]
    pub sets: BTreeMap<String, BackupSet>,
    /// When each policy last opened a window (Unix milliseconds): the scheduler's memory.
    #[serde(default)]
    pub last_window: BTreeMap<String, i64>,
    /// When each policy's drill schedule last ran its drills (Unix milliseconds).
    #[serde(default)]
    pub last_drill: BTreeMap<String, i64>,
    /// Runbooks by id.
    #[serde(default)]
    pub runbooks: BTreeMap<u64, Runbook>,
    /// The last runbook id.
    #[serde(default)]
    pub next_runbook: u64,
    /// This coordinator cluster's identity, set once by its first leader. Agents fence by term
    /// within one cluster; a cluster rebuilt from nothing has a new identity.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Failed jobs since the cluster began, by `kind/reason` (see [`failure_reason`]): the
    /// same count on every coordinator, and it never goes back.
    #[serde(default)]
    pub job_failures: BTreeMap<String, u64>,
    /// The continuous archive of each archived cluster, as an agent last read it from the
    /// regions (`catalog_every`, and at a catalog rebuild).
    #[serde(default)]
    pub archive: BTreeMap<String, fleetsnap_core::archive::ArchiveCatalog>,
}

impl FleetState {
    /// The trace a job belongs to: its window's, or its restore's, drill's or runbook's.
    pub fn trace_of(&self, job: &Job) -> Option<String> {
        match &job.kind {
            JobKind::Snapshot(s) => s
                .window
                .and_then(|w| self.windows.get(&w))
                .and_then(|w| w.plan.trace.clone()),
            JobKind::WriteManifest(m) => self
                .windows
                .get(&m.window)
                .and_then(|w| w.plan.trace.clone()),
            JobKind::Catalog(c) => c.trace.clone(),
            JobKind::Archive(_) | JobKind::StorePoint(_) => None,
        }
    }
}
