//! The fleetsnap coordinator: the fleet's replicated state, kept by openraft with its log and state
//! machine in redb, served over gRPC to agents, peers and the CLI.
//!
//! Folders by role: [`state`] (the replicated state and `apply`, pure), [`raft`] (the log and
//! state machine in redb, the network between coordinators), [`leader`] (the leader's soft state:
//! leadership and its lease, sessions with agents, the job loop, windows, cuts, restores,
//! runbooks, upkeep, what it shows), [`api`] (the thin gRPC services); [`run`] starts a node from
//! its [`config`].

pub mod api;
pub mod config;
pub mod leader;
pub mod raft;
pub mod run;
pub mod state;

use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types of the coordinator: commands in, responses out, nodes by numeric id.
    pub TypeConfig:
        D = state::Command,
        R = state::Response,
);

/// A Raft node id of a coordinator.
pub type NodeId = u64;
