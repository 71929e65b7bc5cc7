//! The Raft service between coordinators: openraft's messages as JSON payloads, peers only.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fleetsnap_core::BackupId;
use fleetsnap_core::InstanceReport;
use fleetsnap_core::planner;
use fleetsnap_core::policy::{Consistency, Policy};
use fleetsnap_core::topology::{self, Observed};
use fleetsnap_core::window::{from_unix_ms, unix_ms};
use fleetsnap_proto::tls::{self, PeerIdentity, Role};
use fleetsnap_proto::v1::{self, agent_message, coordinator_message, job_update};
use fleetsnap_telemetry::trace;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::field::Empty;


use crate::state::{Command, Job, JobKind, JobOutcome, JobState, SnapshotSpec};
use crate::raft::Applied;
use crate::state::WindowPlan;
use crate::leader::{LEADER_KEY, Node};
use crate::{NodeId, TypeConfig};

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
