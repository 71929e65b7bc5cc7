//! `fleetsnap-agent run`: the agent's session with the coordinator leader, its reports, and the
//! jobs it runs, each fenced by the leader's term.
//!
//! `session` keeps the stream to the leader (and spare connections to the others); `jobs`
//! fences and runs what the leader sends, one module per job kind where a kind is large
//! (`restore_job`); `shared` is what outlives a session; `metrics` names what `/metrics` shows.

mod archive_job;
mod jobs;
mod metrics;
mod restore_job;
mod session;
mod shared;
mod snapshot_job;

pub use session::{run, run_with_reports};
