//! A runbook's steps run by the agent: the failover step beside the replica to promote, and the
//! probe of a running target.

mod failover;
mod probe;

pub use failover::run as failover;
pub use fleetsnap_core::outcomes::{ProbeReport, PromoteReport};
pub use probe::probe;
