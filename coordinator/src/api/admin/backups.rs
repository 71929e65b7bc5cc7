//! Admin calls on backups and the catalog: run, list, show, repair, verify, rebuild, prune.

use fleetsnap_proto::v1::{self};
use fleetsnap_telemetry::trace;
use tonic::{Request, Response, Status};

use crate::api::{Services, admin};
use crate::state::Job;
use fleetsnap_core::records::WindowDoc;

pub(super) async fn run_backup(
    svc: &Services,
    req: Request<v1::RunBackupRequest>,
) -> Result<Response<v1::RunBackupReply>, Status> {
    admin(&req)?;
    let parent = trace::extract(req.metadata());
    let (window, backup_id) = svc
        .0
        .open_window(&req.get_ref().policy, parent.as_deref())
        .await?;
    Ok(Response::new(v1::RunBackupReply { window, backup_id }))
}

pub(super) async fn list_backups(
    svc: &Services,
    req: Request<v1::ListBackupsRequest>,
) -> Result<Response<v1::JsonReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let r = req.get_ref();
    let s = svc.0.state.read().expect("state lock");
    let sets: Vec<&crate::state::BackupSet> = s
        .state
        .sets
        .values()
        .filter(|b| r.cluster.is_empty() || b.cluster.as_str() == r.cluster)
        .filter(|b| r.policy.is_empty() || b.policy == r.policy)
        .collect();
    Ok(Response::new(v1::JsonReply {
        json: serde_json::to_string_pretty(&sets).expect("sets serialise"),
    }))
}

pub(super) async fn repair_backup(
    svc: &Services,
    req: Request<v1::CatalogRequest>,
) -> Result<Response<v1::CatalogReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let set = svc.0.resolve_set(req.get_ref().set.trim())?;
    let job = svc.0.repair(&set, "asked by an operator").await?;
    Ok(Response::new(v1::CatalogReply {
        jobs: vec![job],
        agent: String::new(),
    }))
}

pub(super) async fn verify_backup(
    svc: &Services,
    req: Request<v1::CatalogRequest>,
) -> Result<Response<v1::CatalogReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let set = svc.0.resolve_set(req.get_ref().set.trim())?;
    let job = svc.0.verify(&set).await?;
    Ok(Response::new(v1::CatalogReply {
        jobs: vec![job],
        agent: String::new(),
    }))
}

pub(super) async fn rebuild_catalog(
    svc: &Services,
    req: Request<v1::RebuildCatalogRequest>,
) -> Result<Response<v1::CatalogReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let r = req.get_ref();
    if r.regions.is_empty() {
        return Err(Status::invalid_argument(
            "name at least one region to read: --from REGION=URL",
        ));
    }
    let regions = r
        .regions
        .iter()
        .map(|t| fleetsnap_core::window::RegionUrl::from_arg(t))
        .collect();
    let (job, agent) = svc.0.rebuild(regions, &r.agent).await?;
    Ok(Response::new(v1::CatalogReply {
        jobs: vec![job],
        agent,
    }))
}

pub(super) async fn prune(
    svc: &Services,
    req: Request<v1::PruneRequest>,
) -> Result<Response<v1::JsonReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let r = req.get_ref();
    let doc = svc.0.prune(r.policy.trim(), !r.dry_run, !r.dry_run).await?;
    Ok(Response::new(v1::JsonReply {
        json: serde_json::to_string_pretty(&doc).expect("decisions serialise"),
    }))
}

pub(super) async fn show_backup(
    svc: &Services,
    req: Request<v1::ShowBackupRequest>,
) -> Result<Response<v1::JsonReply>, Status> {
    admin(&req)?;
    svc.0.linearizable().await?;
    let id = req.get_ref().id.trim();
    let s = svc.0.state.read().expect("state lock");
    let window = match id.parse::<u64>() {
        Ok(n) => s.state.windows.get(&n),
        Err(_) => s
            .state
            .windows
            .values()
            .find(|w| w.plan.backup_id.as_str() == id),
    }
    .ok_or_else(|| {
        Status::not_found(format!(
            "no window or backup set {id:?}; `fleetsnap backup list` shows them"
        ))
    })?;
    let sets: Vec<&crate::state::BackupSet> = s
        .state
        .sets
        .values()
        .filter(|b| b.window == window.id)
        .collect();
    let jobs: Vec<&Job> = window
        .shards
        .iter()
        .filter_map(|sh| sh.job)
        .chain(window.manifest_jobs.values().copied())
        .filter_map(|j| s.state.jobs.get(&j))
        .collect();
    let doc = WindowDoc {
        window: window.id,
        backup_id: window.plan.backup_id.clone(),
        trace_id: window
            .plan
            .trace
            .as_deref()
            .and_then(trace::trace_id_of)
            .map(str::to_string),
        policy: window.plan.policy.name.clone(),
        consistency: window.plan.policy.consistency.as_str().to_string(),
        opened_at_ms: window.plan.opened_at_ms,
        fire_at_ms: window.plan.fire_at_ms,
        done: window.done,
        cut: window.cut.clone(),
        cut_failures: window.cut_failures.clone(),
        shards: window.shards.clone(),
        missing: window.plan.missing.clone(),
        sets: sets.into_iter().cloned().collect(),
        jobs: jobs.into_iter().cloned().collect(),
    };
    Ok(Response::new(v1::JsonReply {
        json: serde_json::to_string_pretty(&doc).expect("windows serialise"),
    }))
}
