//! Admin calls on backup policies.


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
use crate::api::{Services, admin};

pub(super) async fn set_policy(
    svc: &Services,
    req: Request<v1::SetPolicyRequest>,
) -> Result<Response<v1::PolicyReply>, Status> {
    admin(&req)?;
    let policy =
        Policy::from_json(&req.get_ref().policy_json).map_err(Status::invalid_argument)?;
    let json = serde_json::to_string_pretty(&policy).expect("policies serialise");
    let (resp, _, _) = svc.0.write(Command::SetPolicy { policy }).await?;
    if let Some(why) = resp.refused {
        return Err(Status::invalid_argument(why));
    }
    Ok(Response::new(v1::PolicyReply { policy_json: json }))
}

pub(super) async fn get_policy(
    svc: &Services,
    req: Request<v1::GetPolicyRequest>,
) -> Result<Response<v1::PolicyReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let name = &req.get_ref().name;
    let s = svc.0.state.read().expect("state lock");
    let p = s.state.policies.get(name).ok_or_else(|| {
        Status::not_found(format!(
            "there is no policy {name:?}; `fleetsnap policy list` shows those there are"
        ))
    })?;
    Ok(Response::new(v1::PolicyReply {
        policy_json: serde_json::to_string_pretty(p).expect("policies serialise"),
    }))
}

pub(super) async fn list_policies(
    svc: &Services,
    req: Request<v1::ListPoliciesRequest>,
) -> Result<Response<v1::ListPoliciesReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let s = svc.0.state.read().expect("state lock");
    Ok(Response::new(v1::ListPoliciesReply {
        policy_json: s
            .state
            .policies
            .values()
            .map(|p| serde_json::to_string(p).expect("policies serialise"))
            .collect(),
    }))
}

pub(super) async fn delete_policy(
    svc: &Services,
    req: Request<v1::GetPolicyRequest>,
) -> Result<Response<v1::PolicyReply>, Status> {
    admin(&req)?;
    let name = req.into_inner().name;
    let (resp, _, _) = svc
        .0
        .write(Command::DeletePolicy { name: name.clone() })
        .await?;
    if let Some(why) = resp.refused {
        return Err(Status::not_found(why));
    }
    Ok(Response::new(v1::PolicyReply {
        policy_json: String::new(),
    }))
}
