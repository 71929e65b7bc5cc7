//! The agent service: a session stream per agent, and the calls that keep spare connections up.

use std::time::Instant;

use fleetsnap_proto::tls::{self, Role};
use fleetsnap_proto::v1::{self};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::api::Services;

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for Services {
    /// The session's messages, a domain error at its end turned into a status.
    type SessionStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>,
    >;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = tls::require(&req, Role::Agent, "the agent service")?;
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(self.0.clone().run_session(identity, req.into_inner(), tx));
        let stream = ReceiverStream::new(rx).map(|m| m.map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn standby(
        &self,
        req: Request<v1::StandbyRequest>,
    ) -> Result<Response<v1::StandbyReply>, Status> {
        let identity = tls::require(&req, Role::Agent, "the agent service")?;
        let agent = identity.map_or_else(|| req.into_inner().agent_id, |id| id.name);
        self.0
            .spares
            .lock()
            .expect("lock")
            .insert(agent, Instant::now());
        Ok(Response::new(v1::StandbyReply {}))
    }
}
