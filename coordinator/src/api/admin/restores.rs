//! Admin calls that read backups back: restores and drills.


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

pub(super) async fn restore(
    svc: &Services,
    req: Request<v1::RestoreRequest>,
) -> Result<Response<v1::CatalogReply>, Status> {
    admin(&req)?;
    let span = tracing::info_span!(parent: None, "restore", set = Empty, trace_id = Empty);
    let started = svc
        .0
        .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
            svc.0.linearizable().await?;
            let started = svc.0.restore(req.get_ref()).await?;
            tracing::Span::current().record("set", started.set.as_str());
            tracing::info!(set = %started.set, jobs = ?started.jobs, "restore started");
            Ok(started)
        })
        .await?;
    Ok(Response::new(v1::CatalogReply {
        jobs: started.jobs,
        agent: started.agents.join(","),
    }))
}

pub(super) async fn run_drill(
    svc: &Services,
    req: Request<v1::DrillRequest>,
) -> Result<Response<v1::CatalogReply>, Status> {
    admin(&req)?;
    let r = req.get_ref();
    let span = tracing::info_span!(parent: None, "drill", set = Empty, trace_id = Empty);
    let started = svc
        .0
        .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
            svc.0.linearizable().await?;
            let started = svc
                .0
                .drill(
                    r.cluster.trim(),
                    r.set.trim(),
                    r.shard.trim(),
                    r.agent.trim(),
                    None,
                )
                .await?;
            tracing::Span::current().record("set", started.set.as_str());
            Ok(started)
        })
        .await?;
    Ok(Response::new(v1::CatalogReply {
        jobs: started.jobs,
        agent: started.agents.join(","),
    }))
}

pub(super) async fn list_drills(
    svc: &Services,
    req: Request<v1::ListBackupsRequest>,
) -> Result<Response<v1::JsonReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    Ok(Response::new(v1::JsonReply {
        json: svc.0.drills_json(req.get_ref().cluster.trim()),
    }))
}
