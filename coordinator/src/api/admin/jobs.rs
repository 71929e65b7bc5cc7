//! Admin calls on single jobs.

use fleetsnap_proto::v1::{self};
use tonic::{Request, Response, Status};

use crate::api::{Services, admin};
use crate::state::{Command, JobKind, SnapshotSpec};

pub(super) async fn submit_job(
    svc: &Services,
    req: Request<v1::SubmitJobRequest>,
) -> Result<Response<v1::SubmitJobReply>, Status> {
    admin(&req)?;
    let r = req.into_inner();
    if r.instance.is_empty() || r.destinations.is_empty() {
        return Err(Status::invalid_argument(
            "a snapshot job needs an instance and at least one destination",
        ));
    }
    let job = JobKind::Snapshot(SnapshotSpec {
        instance: r.instance,
        destinations: r.destinations,
        cluster: r.cluster,
        shard: r.shard,
        compress: r.compress,
        encrypt_to: r.encrypt_to,
        source: r.source,
        ..SnapshotSpec::default()
    });
    let (resp, term, index) = svc
        .0
        .write(Command::CreateJob {
            agent: r.agent_id,
            job,
        })
        .await?;
    if let Some(why) = resp.refused {
        return Err(Status::failed_precondition(why));
    }
    Ok(Response::new(v1::SubmitJobReply {
        job_id: resp.job.unwrap_or_default(),
        term,
        index,
    }))
}

pub(super) async fn get_job(
    svc: &Services,
    req: Request<v1::GetJobRequest>,
) -> Result<Response<v1::GetJobReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let id = req.get_ref().job_id;
    let s = svc.0.state.read().expect("state lock");
    let job = s
        .state
        .jobs
        .get(&id)
        .ok_or_else(|| Status::not_found(format!("job {id} does not exist")))?;
    Ok(Response::new(v1::GetJobReply {
        json: serde_json::to_string_pretty(job).expect("jobs serialise"),
    }))
}
