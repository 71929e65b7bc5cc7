//! Raft's parts: the log, the vote and the applied state machine in redb ([`store`]), and the
//! network that carries Raft between coordinators over kept gRPC channels ([`network`]).

mod network;
mod store;

pub use network::{Network, Peer, RAFT_MESSAGE_BYTES, keep_warm};
pub use store::{Applied, LogStore, OpenError, StateMachine, claim_node_id, open};
