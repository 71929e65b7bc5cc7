//! The gRPC services, thin: each call checks the caller's certificate role, turns the request into
//! a call on the [`Node`], and the answer (or a domain error) into a reply.

mod admin;
mod agent;
mod raft;
mod status;

use std::sync::Arc;

use fleetsnap_proto::tls::{self, Role};
use tonic::{Request, Status};

use crate::leader::Node;

/// The three services, sharing one node.
#[derive(Clone)]
pub struct Services(pub Arc<Node>);

/// Refuses a caller without the admin role.
pub(crate) fn admin<T>(req: &Request<T>) -> Result<(), Status> {
    tls::require(req, Role::Admin, "the admin service").map(|_| ())
}
