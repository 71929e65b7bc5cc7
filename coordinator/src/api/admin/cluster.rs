//! Admin calls on the coordinator cluster: status, membership, the leader's own figures.

use std::collections::BTreeSet;
use std::time::Duration;

use fleetsnap_proto::v1::{self};
use openraft::BasicNode;
use tonic::{Request, Response, Status};

use crate::NodeId;
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
    Ok(Response::new(svc.0.leader_stats(req.get_ref().reset)))
}
