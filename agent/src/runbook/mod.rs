//! A runbook's steps run by the agent: the failover step beside the replica to promote.

mod failover;

pub use failover::{PromoteReport, run as failover};
