//! Admin calls that read backups back: restores and drills.

use fleetsnap_proto::v1::{self};
use fleetsnap_telemetry::trace;
use tonic::{Request, Response, Status};
use tracing::field::Empty;

use crate::api::{Services, admin};
use crate::leader::LeaderError;

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
            Ok::<_, LeaderError>(started)
        })
        .await?;
    Ok(Response::new(v1::CatalogReply {
        jobs: started.jobs,
        agent: started.agents.join(","),
    }))
}

pub(super) async fn find_in_archive(
    svc: &Services,
    req: Request<v1::FindRequest>,
) -> Result<Response<v1::CatalogReply>, Status> {
    admin(&req)?;
    let span = tracing::info_span!(parent: None, "archive_find", trace_id = Empty);
    let started = svc
        .0
        .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
            svc.0.linearizable().await?;
            svc.0.find_in_archive(req.get_ref()).await
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
            Ok::<_, LeaderError>(started)
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
