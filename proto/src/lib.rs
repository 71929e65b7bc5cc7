//! fleetsnap's gRPC API, generated from `proto/fleetsnap/v1/*.proto`.
//!
//! Wire types stay here: the agent and the coordinator convert them to domain types at the
//! boundary.

/// Version 1 of the API: `AgentService`, `AdminService`, `RaftService`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fleetsnap.v1");
}
