//! The fleet's replicated state and the commands that change it. State changes only through
//! [`Command`]s, applied by [`FleetState::apply`] deterministically and without I/O: every
//! coordinator applies the same log entries and reaches the same state.
//!
//! The types of each topic (jobs, windows, sets, catalog tasks, runbooks) are leaves; `apply`
//! and its per-topic modules are the only code that changes them.

mod apply;
mod catalog;
mod fleet;
mod job;
mod runbook;
mod set;
mod window;

#[cfg(test)]
mod tests;

pub use catalog::{CatalogSpec, Verified};
pub use fleet::{AgentRecord, Command, FleetState, Response};
pub use job::{Job, JobKind, JobOutcome, JobState, ManifestSpec, SnapshotSpec};
pub use runbook::{Action, Runbook, RunbookState, Step};
pub use set::{BackupSet, RegionState, RegionStatus, SetShard, set_key};
pub use window::{Cut, CutOutcome, MAX_CUT_ATTEMPTS, ShardState, Window, WindowPlan, WindowShard};
