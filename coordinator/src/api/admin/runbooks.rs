//! Admin calls on runbooks.

use fleetsnap_proto::v1::{self};
use fleetsnap_telemetry::trace;
use tonic::{Request, Response, Status};
use tracing::field::Empty;

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
