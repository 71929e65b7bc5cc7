//! The admin service: what `fleetsnap` (the CLI) asks of the cluster, one module per topic. Every
//! call checks that the caller holds the admin role first.

mod backups;
mod cluster;
mod jobs;
mod policies;
mod restores;
mod runbooks;

use fleetsnap_proto::v1::{self};
use tonic::{Request, Response, Status};

use crate::api::Services;

#[tonic::async_trait]
impl v1::admin_service_server::AdminService for Services {
    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        cluster::status(self, req).await
    }

    async fn cluster_status(
        &self,
        req: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusReply>, Status> {
        cluster::cluster_status(self, req).await
    }

    async fn add_node(
        &self,
        req: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::ClusterStatusReply>, Status> {
        cluster::add_node(self, req).await
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::ClusterStatusReply>, Status> {
        cluster::remove_node(self, req).await
    }

    async fn submit_job(
        &self,
        req: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobReply>, Status> {
        jobs::submit_job(self, req).await
    }

    async fn get_job(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobReply>, Status> {
        jobs::get_job(self, req).await
    }

    async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::PolicyReply>, Status> {
        policies::set_policy(self, req).await
    }

    async fn get_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyReply>, Status> {
        policies::get_policy(self, req).await
    }

    async fn list_policies(
        &self,
        req: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesReply>, Status> {
        policies::list_policies(self, req).await
    }

    async fn delete_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyReply>, Status> {
        policies::delete_policy(self, req).await
    }

    async fn run_backup(
        &self,
        req: Request<v1::RunBackupRequest>,
    ) -> Result<Response<v1::RunBackupReply>, Status> {
        backups::run_backup(self, req).await
    }

    async fn list_backups(
        &self,
        req: Request<v1::ListBackupsRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        backups::list_backups(self, req).await
    }

    async fn repair_backup(
        &self,
        req: Request<v1::CatalogRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        backups::repair_backup(self, req).await
    }

    async fn verify_backup(
        &self,
        req: Request<v1::CatalogRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        backups::verify_backup(self, req).await
    }

    async fn rebuild_catalog(
        &self,
        req: Request<v1::RebuildCatalogRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        backups::rebuild_catalog(self, req).await
    }

    async fn prune(
        &self,
        req: Request<v1::PruneRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        backups::prune(self, req).await
    }

    async fn restore(
        &self,
        req: Request<v1::RestoreRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        restores::restore(self, req).await
    }

    async fn find_in_archive(
        &self,
        req: Request<v1::FindRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        restores::find_in_archive(self, req).await
    }

    async fn run_drill(
        &self,
        req: Request<v1::DrillRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        restores::run_drill(self, req).await
    }

    async fn list_drills(
        &self,
        req: Request<v1::ListBackupsRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        restores::list_drills(self, req).await
    }

    async fn start_runbook(
        &self,
        req: Request<v1::RunbookRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        runbooks::start_runbook(self, req).await
    }

    async fn get_runbook(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        runbooks::get_runbook(self, req).await
    }

    async fn show_backup(
        &self,
        req: Request<v1::ShowBackupRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        backups::show_backup(self, req).await
    }

    async fn leader_stats(
        &self,
        req: Request<v1::LeaderStatsRequest>,
    ) -> Result<Response<v1::LeaderStatsReply>, Status> {
        cluster::leader_stats(self, req).await
    }
}
