//! Runbooks in the replicated state: a plan of steps, each an agent job or a check the leader
//! makes against the fleet's reports.

use std::collections::BTreeMap;

use crate::window::{CatalogTask, RegionUrl};
use serde::{Deserialize, Serialize};

/// A runbook and where it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runbook {
    /// Its id (0 until started).
    pub id: u64,
    /// `failover`, `rebuild-coordinator`.
    pub name: String,
    /// What it was asked, for people.
    pub args: String,
    /// The plan.
    pub steps: Vec<Step>,
    /// The step being run.
    pub next: usize,
    /// Where it stands.
    pub state: RunbookState,
    /// When it started (Unix milliseconds, the leader's clock).
    pub started_at_ms: i64,
    /// What it found along the way (`lost_bytes`, `primary_last_offset`, …).
    pub findings: BTreeMap<String, String>,
    /// Its trace (W3C `traceparent`): its steps' jobs carry it to their agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Where a runbook stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunbookState {
    /// Steps are being run.
    Running,
    /// Every step, the final check included, succeeded.
    Succeeded,
    /// A step failed; the steps after it were not run.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// What it does, for people.
    pub title: String,
    /// How.
    pub action: Action,
    /// Its job, once created.
    pub job: Option<u64>,
    /// What came of it.
    pub outcome: Option<String>,
    /// Whether it succeeded.
    pub ok: Option<bool>,
}

/// What a step does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// A job for an agent.
    Agent {
        /// The agent.
        agent: String,
        /// The task.
        task: CatalogTask,
    },
    /// The leader waits until the reports show `address` as its shard's primary and `replicas`
    /// replicating from it.
    CheckPrimary {
        /// The cluster.
        cluster: String,
        /// The new primary.
        address: String,
        /// Nodes that must replicate from it.
        replicas: Vec<String>,
        /// How long it may take.
        timeout_ms: u64,
    },
    /// The leader checks that the catalog holds a set for every one the previous step's scan
    /// found (`sets_found` in the findings).
    CheckCatalog,
    /// The leader rewrites every policy that lists `lost` to list `standby` in its place.
    SwitchPolicies {
        /// The region lost.
        lost: String,
        /// The region taking its place.
        standby: RegionUrl,
    },
    /// The leader checks that every set in `sets` is complete in `standby` and that no policy
    /// lists `lost`.
    CheckStandby {
        /// The region lost.
        lost: String,
        /// The standby region.
        standby: String,
        /// Set keys (`CLUSTER/BACKUP_ID`) that must be there.
        sets: Vec<String>,
    },
}

impl RunbookState {
    /// The word in documents and tables (as serialised): `running`, `succeeded` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunbookState::Running => "running",
            RunbookState::Succeeded => "succeeded",
            RunbookState::Failed { .. } => "failed",
        }
    }
}
