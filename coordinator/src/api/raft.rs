//! The Raft service between coordinators: openraft's messages as JSON payloads, peers only.

use fleetsnap_proto::tls::{self, Role};
use fleetsnap_proto::v1::{self};
use serde::Serialize;
use tonic::{Request, Response, Status};

use crate::api::Services;

fn raft_reply<T: Serialize>(v: &T) -> Response<v1::RaftPayload> {
    Response::new(v1::RaftPayload {
        json: serde_json::to_vec(v).expect("raft replies serialise"),
    })
}

fn raft_request<T: serde::de::DeserializeOwned>(
    req: Request<v1::RaftPayload>,
) -> Result<T, Status> {
    tls::require(&req, Role::Peer, "the Raft service")?;
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("a Raft message that does not parse: {e}")))
}

#[tonic::async_trait]
impl v1::raft_service_server::RaftService for Services {
    async fn append_entries(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        let r = self.0.raft.append_entries(raft_request(req)?).await;
        Ok(raft_reply(&r))
    }

    async fn vote(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        let r = self.0.raft.vote(raft_request(req)?).await;
        Ok(raft_reply(&r))
    }

    async fn install_snapshot(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        let r = self.0.raft.install_snapshot(raft_request(req)?).await;
        Ok(raft_reply(&r))
    }

    async fn ping(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        tls::require(&req, Role::Peer, "the Raft service")?;
        Ok(Response::new(v1::RaftPayload::default()))
    }
}
