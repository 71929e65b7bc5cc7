//! The fleetsnap coordinator: the fleet's replicated state, kept by openraft with its log and state
//! machine in redb, served over gRPC to agents, peers and the CLI.
//!
//! State changes only through [`state::Command`], applied deterministically and without I/O by
//! [`state::FleetState::apply`]; [`store`] persists the Raft log, the vote and the applied state;
//! [`network`] carries Raft between coordinators; [`server`] holds the leader's soft state (the
//! agents' reports) and the job loop; [`run`] starts a node from its [`config`].


pub mod config;
pub mod network;
pub mod run;

pub mod server;
pub mod state;
pub mod store;


use std::io::Cursor;

openraft::declare_raft_types!(
    /// Raft types of the coordinator: commands in, responses out, nodes by numeric id.
    pub TypeConfig:
        D = state::Command,
        R = state::Response,
);

/// A Raft node id of a coordinator.
pub type NodeId = u64;
