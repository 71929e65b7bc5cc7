//! Admin calls on the coordinator cluster: status, membership, the leader's own figures.


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

/// How long a new member may take to catch up before `add-node` gives up.
const CATCH_UP: Duration = Duration::from_secs(20);

pub(super) async fn status(
    svc: &Services,
    req: Request<v1::StatusRequest>,
) -> Result<Response<v1::StatusReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    Ok(Response::new(v1::StatusReply {
        json: svc.0.status_json(&req.get_ref().cluster),
    }))
}

pub(super) async fn cluster_status(
    svc: &Services,
    req: Request<v1::ClusterStatusRequest>,
) -> Result<Response<v1::ClusterStatusReply>, Status> {
    admin(&req)?;
    if !req.get_ref().local {
        svc.0.linearizable().await?;
    }
    Ok(Response::new(svc.0.cluster_status()))
}

pub(super) async fn add_node(
    svc: &Services,
    req: Request<v1::AddNodeRequest>,
) -> Result<Response<v1::ClusterStatusReply>, Status> {
    admin(&req)?;
    let r = req.into_inner();
    if r.id == 0 || r.address.is_empty() {
        return Err(Status::invalid_argument(
            "add-node needs a node id (1 or more) and its address",
        ));
    }
    let node = &svc.0;
    let existing = node
        .raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .get_node(&r.id)
        .cloned();
    if let Some(existing) = existing
        && existing.addr != r.address
    {
        return Err(Status::already_exists(format!(
            "node {} is already a member at {}; remove it first to move it",
            r.id, existing.addr
        )));
    }
    // A learner first: it catches up on the log (or a snapshot) before it counts for quorum.
    node.raft
        .add_learner(r.id, BasicNode::new(&r.address), false)
        .await
        .map_err(|e| node.write_error(e))?;
    let mut metrics = node.raft.metrics();
    let id = r.id;
    let caught_up = tokio::time::timeout(
        CATCH_UP,
        metrics.wait_for(|m| {
            let matched = m
                .replication
                .as_ref()
                .and_then(|rep| rep.get(&id).cloned().flatten())
                .map(|l| l.index);
            matched.is_some() && matched >= m.last_log_index.map(|i| i.saturating_sub(1))
        }),
    )
    .await
    .is_ok();
    if !caught_up {
        let _ = node
            .raft
            .change_membership(
                openraft::ChangeMembers::RemoveNodes(BTreeSet::from([r.id])),
                false,
            )
            .await;
        return Err(Status::deadline_exceeded(format!(
            "node {} at {} did not catch up within {} s, so it was not added: is it                  running and reachable from the leader, and does it hold a peer certificate                  from this fleet's CA? Its log says which",
            r.id,
            r.address,
            CATCH_UP.as_secs()
        )));
    }
    let mut voters = node.voters();
    voters.insert(r.id);
    node.raft
        .change_membership(voters, false)
        .await
        .map_err(|e| node.write_error(e))?;
    Ok(Response::new(node.cluster_status()))
}

pub(super) async fn remove_node(
    svc: &Services,
    req: Request<v1::RemoveNodeRequest>,
) -> Result<Response<v1::ClusterStatusReply>, Status> {
    admin(&req)?;
    let id = req.into_inner().id;
    let node = &svc.0;
    let voters = node.voters();
    if !voters.contains(&id) {
        return Err(Status::not_found(format!(
            "node {id} is not a voting member"
        )));
    }
    if voters.len() == 1 {
        return Err(Status::failed_precondition(
            "cannot remove the last voting member",
        ));
    }
    let rest: BTreeSet<NodeId> = voters.into_iter().filter(|v| *v != id).collect();
    node.raft
        .change_membership(rest, false)
        .await
        .map_err(|e| node.write_error(e))?;
    Ok(Response::new(node.cluster_status()))
}

pub(super) async fn leader_stats(
    svc: &Services,
    req: Request<v1::LeaderStatsRequest>,
) -> Result<Response<v1::LeaderStatsReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let fleet = &svc.0.fleet;
    let mut samples = {
        let mut s = fleet.latency_us.lock().expect("lock");
        if req.get_ref().reset {
            std::mem::take(&mut *s)
        } else {
            s.clone()
        }
    };
    samples.sort_unstable();
    let pct = |p: f64| -> u64 {
        if samples.is_empty() {
            0
        } else {
            let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
            samples[i].into()
        }
    };
    let connected = fleet
        .agents
        .lock()
        .expect("lock")
        .values()
        .filter(|a| a.tx.is_some() && a.last_report.is_some())
        .count();
    Ok(Response::new(v1::LeaderStatsReply {
        node_id: svc.0.id,
        connected_agents: connected as u64,
        reports: fleet.reports.load(Ordering::Relaxed),
        latency_p50_us: pct(0.5),
        latency_p99_us: pct(0.99),
        latency_max_us: samples.last().copied().unwrap_or_default().into(),
        samples: samples.len() as u64,
    }))
}
