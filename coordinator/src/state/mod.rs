//! The fleet's replicated state and the commands that change it. State changes only through
//! [`Command`]s, applied by [`FleetState::apply`] deterministically and without I/O: every
//! coordinator applies the same log entries and reaches the same state.
//!
//! The types of each topic (jobs, windows, sets, catalog tasks, runbooks) are records in
//! `fleetsnap_core::records`, shared with the CLI that reads them; `apply` and its per-topic
//! modules are the only code that changes them.

mod apply;
mod failures;
mod fleet;

#[cfg(test)]
mod tests;

pub use fleet::{AgentRecord, Command, FleetState, Response};
pub use fleetsnap_core::records::{
    Action, BackupSet, CatalogSpec, Cut, CutOutcome, Job, JobKind, JobOutcome, JobState,
    ManifestSpec, RegionState, RegionStatus, Runbook, RunbookState, SetShard, ShardState,
    SnapshotSpec, Step, Verified, Window, WindowPlan, WindowShard, set_key,
};

/// Attempts at a window's cut before its running shards fail.
pub const MAX_CUT_ATTEMPTS: usize = 3;
