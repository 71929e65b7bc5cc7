//! Raft between coordinators: openraft's requests and responses as JSON inside the gRPC
//! `RaftService`, over the same mutual TLS as everything else (peer certificates only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The largest Raft message between coordinators (peers, authenticated by their certificates):
/// an entry holding a large job result or a chunk of a snapshot of a large catalog, as JSON.
pub const RAFT_MESSAGE_BYTES: usize = 512 << 20;

/// Makes a client per peer. Channels are shared by every client of a peer and kept: openraft
/// makes a new client for each vote, and a vote must travel over a connection that is already
/// up (see [`keep_warm`]).
#[derive(Clone)]
pub struct Network {
    transport: Arc<Transport>,
    channels: Arc<Mutex<HashMap<NodeId, (String, Channel)>>>,
}

impl Network {
    /// Peers are reached with `transport`.
    pub fn new(transport: Arc<Transport>) -> Self {
        Self {
            transport,
            channels: Arc::default(),
        }
    }

    /// The channel to `target` at `addr`: the kept one, or a new one (connected on first use).
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("channels lock");
        if let Some((a, c)) = channels.get(&target)
            && a == addr
        {
            return Ok(c.clone());
        }
        let channel = self.transport.endpoint(addr)?.connect_lazy();
        channels.insert(target, (addr.to_string(), channel.clone()));
        Ok(channel)
    }

    /// Drops the channel to `target` after a failure: the peer may have restarted at the same
    /// address, or the connection may hang; the next call connects afresh.
    fn forget(&self, target: NodeId) {
        self.channels.lock().expect("channels lock").remove(&target);
    }
}

/// Pings every other member (as the membership stands at each round) every [`WARM_EVERY`],
/// keeping a connection to each up; returns when Raft stops.
pub async fn keep_warm(network: Network, raft: openraft::Raft<TypeConfig>, me: NodeId) {
    let metrics = raft.metrics();
    // `has_changed` fails once Raft has stopped and dropped its metrics.
    while metrics.has_changed().is_ok() {
        let members: Vec<(NodeId, String)> = metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        for (id, addr) in members {
            let Ok(channel) = network.channel(id, &addr) else {
                continue;
            };
            // One task per peer: a peer that does not answer does not delay the others.
            let network = network.clone();
            tokio::spawn(async move {
                let mut client = RaftServiceClient::new(channel);
                let ping = client.ping(RaftPayload::default());
                match tokio::time::timeout(WARM_EVERY, ping).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(s)) => {
                        tracing::debug!(peer = id, %addr, error = %s.message(), "peer ping failed");
                        network.forget(id);
                    }
                    Err(_) => {
                        tracing::debug!(peer = id, %addr, "no answer to a peer ping");
                        network.forget(id);
                    }
                }
            });
        }
        tokio::time::sleep(WARM_EVERY).await;
    }
}

/// How often peers are pinged.
const WARM_EVERY: Duration = Duration::from_secs(2);

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            node: node.clone(),
            network: self.clone(),
        }
    }
}

/// One peer.
pub struct Peer {
    target: NodeId,
    node: BasicNode,
    network: Network,
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
        let channel = self
            .network
            .channel(self.target, &self.node.addr)
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&AnyError::error(e))))?;
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES);
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
                self.network.forget(self.target);
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
