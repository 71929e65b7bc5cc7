//! Admin calls on backup policies.

use fleetsnap_core::policy::Policy;
use fleetsnap_proto::v1::{self};
use tonic::{Request, Response, Status};

use crate::api::{Services, admin};
use crate::state::Command;

pub(super) async fn set_policy(
    svc: &Services,
    req: Request<v1::SetPolicyRequest>,
) -> Result<Response<v1::PolicyReply>, Status> {
    admin(&req)?;
    let policy = Policy::from_json(&req.get_ref().policy_json).map_err(Status::invalid_argument)?;
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
