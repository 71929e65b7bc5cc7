//! Raft between coordinators: openraft's requests and responses as JSON inside the gRPC
//! `RaftService`, over the same mutual TLS as everything else (peer certificates only).

use std::sync::Arc;

use fleetsnap_proto::tls::Transport;
use fleetsnap_proto::v1::RaftPayload;
use fleetsnap_proto::v1::raft_service_client::RaftServiceClient;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::{NodeId, TypeConfig};

/// Makes a client per peer.
#[derive(Clone)]
pub struct Network {
    transport: Arc<Transport>,
}

impl Network {
    /// Peers are reached with `transport`.
    pub fn new(transport: Arc<Transport>) -> Self {
        Self { transport }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            node: node.clone(),
            transport: self.transport.clone(),
            client: None,
        }
    }
}

/// One peer, connected lazily and again after every failure.
pub struct Peer {
    target: NodeId,
    node: BasicNode,
    transport: Arc<Transport>,
    client: Option<RaftServiceClient<Channel>>,
}

type RpcErr<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Some(c) => c,
            None => {
                let endpoint = self
                    .transport
                    .endpoint(&self.node.addr)
                    .map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))?;
                let channel = endpoint.connect_lazy();
                self.client.insert(RaftServiceClient::new(channel))
            }
        };
        let body = serde_json::to_vec(req).expect("raft requests serialise");
        let mut request = tonic::Request::new(RaftPayload { json: body });
        request.set_timeout(option.hard_ttl());
        let reply = match method {
            Method::Append => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // Reconnect next time: the peer may have restarted at the same address.
                self.client = None;
                let e = AnyError::error(format!(
                    "coordinator {} at {}: {}",
                    self.target,
                    self.node.addr,
                    status.message()
                ));
                return Err(match status.code() {
                    tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        let result: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

#[derive(Clone, Copy)]
enum Method {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        self.call(Method::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}
