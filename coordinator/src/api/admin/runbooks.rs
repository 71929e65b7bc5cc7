//! Admin calls on runbooks.


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

pub(super) async fn start_runbook(
    svc: &Services,
    req: Request<v1::RunbookRequest>,
) -> Result<Response<v1::JsonReply>, Status> {
    admin(&req)?;
    let r = req.get_ref();
    let span = tracing::info_span!(
        parent: None,
        "runbook",
        name = %r.name,
        runbook = Empty,
        trace_id = Empty
    );
    let json = svc
        .0
        .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
            svc.0.linearizable().await?;
            let plan = svc.0.plan_runbook(r)?;
            if r.dry_run {
                return Ok(serde_json::to_string_pretty(&plan).expect("runbooks serialise"));
            }
            let id = svc.0.start_runbook(plan).await?;
            tracing::Span::current().record("runbook", id);
            tracing::info!(runbook = id, name = %r.name, "runbook started");
            svc.0.runbook_json(id)
        })
        .await?;
    Ok(Response::new(v1::JsonReply { json }))
}

pub(super) async fn get_runbook(
    svc: &Services,
    req: Request<v1::GetJobRequest>,
) -> Result<Response<v1::JsonReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    Ok(Response::new(v1::JsonReply {
        json: svc.0.runbook_json(req.get_ref().job_id)?,
    }))
}
