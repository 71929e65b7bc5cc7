//! fleetsnap's gRPC API, generated from `proto/fleetsnap/v1/*.proto`, the conversions from wire
//! types to domain types, and the mutual TLS every caller and server uses.

pub mod convert;
pub mod host;
pub mod manual;
pub mod tls;

/// Version 1 of the API: `AgentService`, `AdminService`, `RaftService`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("fleetsnap.v1");
}
