//! Catalog jobs in the replicated state: the task an agent runs on stored sets, and what a
//! verification found.

use crate::window::{CatalogTask, RegionResult};
use serde::{Deserialize, Serialize};

/// A catalog job: the task, the set it works on and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogSpec {
    /// What the agent does.
    pub task: CatalogTask,
    /// The set's catalog key (repair, verify, delete).
    pub set: Option<String>,
    /// Why (a deletion's retention reason, "asked by an operator", …).
    pub reason: String,
    /// A scheduled drill: the policy whose schedule called for it, and when it was due (Unix
    /// milliseconds); the scheduler counts the next one from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill_of: Option<(String, i64)>,
    /// The trace of the restore, drill or runbook it belongs to (W3C `traceparent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// The last verification of a set, per region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// The job that verified it.
    pub job: u64,
    /// Per region.
    pub regions: Vec<RegionResult>,
}
