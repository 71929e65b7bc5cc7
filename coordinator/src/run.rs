//! Starting a coordinator from its config: the data directory, Raft, the gRPC server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetsnap_proto::tls::{Role, Transport};
use fleetsnap_proto::v1::admin_service_server::AdminServiceServer;
use fleetsnap_proto::v1::agent_service_server::AgentServiceServer;
use fleetsnap_proto::v1::raft_service_server::RaftServiceServer;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::api::Services;
use crate::config::Config;
use crate::leader::Node;
use crate::raft as store;
use crate::raft::Network;

/// Why a coordinator could not start.
pub type StartError = String;

/// Certificates from the config, or plain text with `--insecure`.
pub fn transport(config: &Config, insecure: bool) -> Result<Transport, StartError> {
    if insecure {
        tracing::warn!(
            "--insecure: gRPC in plain text with no identities; anyone who reaches {} can act \
             as an agent, a peer or an admin. Use it only on a test machine.",
            config.listen
        );
        return Ok(Transport::Insecure);
    }
    let files = config.tls.as_ref().ok_or_else(|| {
        "the config has no [tls] section: add ca, cert and key (a test fleet's come from \
         `fleetsnap certs init`), or run with --insecure on a test machine"
            .to_string()
    })?;
    let loaded = files.load()?;
    let want = config.node_id.to_string();
    if loaded.identity.role != Role::Peer || loaded.identity.name != want {
        return Err(format!(
            "the certificate {} names {}, but coordinator {} needs a peer certificate for node \
             {want} (`fleetsnap certs init --peers …` makes them)",
            files.cert.display(),
            loaded.identity,
            config.node_id
        ));
    }
    Ok(Transport::Tls(loaded))
}

/// Runs a coordinator until `shutdown` resolves.
pub async fn run(
    config: Config,
    transport: Transport,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create the data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let path = config.data_dir.join("coordinator.redb");
    let (log, sm) = store::open(&path).map_err(|e| e.to_string())?;
    store::claim_node_id(&path, &log, config.node_id).map_err(|e| e.to_string())?;
    let shared = sm.shared();

    let r = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: "fleetsnap".into(),
        heartbeat_interval: r.heartbeat_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_every),
        max_in_snapshot_log_to_keep: r.snapshot_every,
        purge_batch_size: 64,
        // A snapshot holds every registered agent; under load its transfer takes longer than
        // openraft's default of 200 ms, and a timeout restarts it from the beginning.
        install_snapshot_timeout: 5000,
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("raft settings: {e}"))?;
    let transport = Arc::new(transport);
    let network = Network::new(transport.clone());
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        network.clone(),
        log,
        sm,
    )
    .await
    .map_err(|e| format!("raft did not start: {e}"))?;
    tokio::spawn(crate::raft::keep_warm(
        network,
        raft.clone(),
        config.node_id,
    ));

    let initialized = raft
        .is_initialized()
        .await
        .map_err(|e| format!("raft stopped: {e}"))?;
    if !initialized && !config.initial_members.is_empty() {
        let members: BTreeMap<u64, BasicNode> = config
            .initial_members
            .iter()
            .map(|m| (m.id, BasicNode::new(&m.address)))
            .collect();
        if let Err(e) = raft.initialize(members).await {
            // Another member may have won the race: its log reaches us as a follower.
            tracing::info!(error = %e, "initial membership not written here");
        }
    } else if !initialized {
        tracing::info!(
            node = config.node_id,
            "empty data directory and no initial_members: waiting to be added with \
             `fleetsnap cluster add-node {} {}`",
            config.node_id,
            config.advertise()
        );
    }

    let node = Node::new(
        config.node_id,
        raft.clone(),
        shared,
        Duration::from_secs(config.jobs.lease_seconds),
        config.policy.clone(),
    );
    if let Some(address) = config.telemetry.metrics_listen {
        let (m, h, r) = (node.clone(), node.clone(), node.clone());
        fleetsnap_telemetry::http::start(
            address,
            fleetsnap_telemetry::http::Probes {
                metrics: Arc::new(move || m.metrics_text()),
                healthy: Arc::new(move || h.healthy()),
                ready: Arc::new(move || r.ready()),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    }
    let services = Services(node);
    let listener = listen(config.listen)?;
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(
            RaftServiceServer::new(services.clone())
                .max_decoding_message_size(crate::raft::RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(crate::raft::RAFT_MESSAGE_BYTES),
        )
        .add_service(AgentServiceServer::new(services.clone()))
        .add_service(AdminServiceServer::new(services));
    tracing::info!(node = config.node_id, listen = %config.listen, "coordinator serving");
    let result = match &*transport {
        Transport::Tls(files) => {
            let handshakes = Handshakes::start(files.server_config()?)?;
            let incoming = handshakes.incoming(listener);
            let result = router
                .serve_with_incoming_shutdown(ReceiverStream::new(incoming), shutdown)
                .await;
            handshakes.stop();
            result
        }
        Transport::Insecure => {
            router
                .serve_with_incoming_shutdown(
                    TcpIncoming::from(listener).with_nodelay(Some(true)),
                    shutdown,
                )
                .await
        }
    };
    let _ = raft.shutdown().await;
    result.map_err(|e| format!("gRPC server on {}: {e}", config.listen))
}

/// TLS handshakes on threads of their own, in front of which no unauthenticated peer can
/// starve the others.
///
/// When a leader dies, thousands of agents reconnect to the survivors at once, each with a full
/// mutual-TLS handshake. Done on the runtime that also runs Raft, those handshakes would queue
/// the election's few messages behind seconds of public-key work; on their own runtime the
/// operating system shares the cores between the two, and Raft stays prompt.
///
/// A connection goes through two stages, each with a deadline of its own. First its client's
/// hello is read: no slot is held, since nothing is computed, and a client that has not sent a
/// whole hello within [`HELLO_TIMEOUT`] is dropped. Then it waits for a slot (one of
/// [`CONCURRENT_HANDSHAKES`], and one of [`HANDSHAKES_PER_PEER`] of its address) and the
/// handshake runs, which must end within [`HANDSHAKE_TIMEOUT`]. One address may hold at most
/// [`PENDING_PER_PEER`] connections in either stage; more are closed at once. So idle or
/// stalling sockets cost their sender its own slots only, for a second or two, and an operator's
/// or an agent's handshake from any other address always finds a slot.
struct Handshakes {
    runtime: tokio::runtime::Runtime,
    config: Arc<tokio_rustls::rustls::ServerConfig>,
}

/// From accept to the client's whole hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// From a slot to the end of the handshake: the client's certificate and its proof.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// Handshakes in progress at once; the rest wait their turn in arrival order. Without a bound,
/// thousands of half-done handshakes share the cores, every one of them slows down, and past
/// the timeout they all fail and start again: an overload would never drain.
const CONCURRENT_HANDSHAKES: usize = 64;

/// Of those, what one peer address may hold.
const HANDSHAKES_PER_PEER: usize = 16;

/// Connections one peer address may have that have not finished their handshake.
const PENDING_PER_PEER: usize = 256;

/// Per peer address: connections not yet through their handshake, and its handshake slots.
#[derive(Default)]
struct Peers {
    map: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, Peer>>,
    refused: std::sync::atomic::AtomicU64,
}

struct Peer {
    pending: usize,
    slots: Arc<tokio::sync::Semaphore>,
}

/// A connection counted against its address until dropped.
struct Admitted {
    peers: Arc<Peers>,
    ip: std::net::IpAddr,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Peers {
    /// Counts a new connection from `ip`, or refuses it when the address has too many.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<Admitted> {
        let mut map = self.map.lock().expect("peers lock");
        let peer = map.entry(ip).or_insert_with(|| Peer {
            pending: 0,
            slots: Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_PER_PEER)),
        });
        if peer.pending >= PENDING_PER_PEER {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        peer.pending += 1;
        Some(Admitted {
            peers: self.clone(),
            ip,
            slots: peer.slots.clone(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut map = self.peers.map.lock().expect("peers lock");
        if let Some(p) = map.get_mut(&self.ip) {
            p.pending -= 1;
            if p.pending == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Handshakes {
    fn start(config: Arc<tokio_rustls::rustls::ServerConfig>) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tls-handshake")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the TLS handshake threads: {e}"))?;
        Ok(Self { runtime, config })
    }

    /// Accepts connections and yields those whose handshake succeeded.
    fn incoming(
        &self,
        listener: TcpListener,
    ) -> mpsc::Receiver<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(1024);
        let config = self.config.clone();
        let handle = self.runtime.handle().clone();
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
        let peers = Arc::new(Peers::default());
        tokio::spawn(report_refusals(peers.clone()));
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = tx.closed() => return,
                };
                let (tcp, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors, mostly: wait for some to close.
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(admitted) = peers.admit(peer.ip()) else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (config, tx, permits) = (config.clone(), tx.clone(), permits.clone());
                handle.spawn(async move {
                    let _counted = &admitted;
                    let hello = tokio_rustls::LazyConfigAcceptor::new(
                        tokio_rustls::rustls::server::Acceptor::default(),
                        tcp,
                    );
                    let start = match tokio::time::timeout(HELLO_TIMEOUT, hello).await {
                        Ok(Ok(start)) => start,
                        Ok(Err(e)) => return handshake_failed(peer, &e),
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS hello within {HELLO_TIMEOUT:?}; dropped");
                            return;
                        }
                    };
                    let Ok(_mine) = admitted.slots.acquire().await else {
                        return;
                    };
                    let Ok(_permit) = permits.acquire().await else {
                        return;
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, start.into_stream(config)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => handshake_failed(peer, &e),
                        Err(_) => tracing::debug!(
                            %peer,
                            "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}; dropped"
                        ),
                    }
                });
            }
        });
        rx
    }

    fn stop(self) {
        self.runtime.shutdown_background();
    }
}

/// Says, at most every 10 s, how many connections were closed at once because their address
/// had too many unfinished ones: a flood is visible without a log line per connection.
async fn report_refusals(peers: Arc<Peers>) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tick.tick().await;
        if Arc::strong_count(&peers) == 1 {
            return;
        }
        let n = peers.refused.swap(0, Ordering::Relaxed);
        if n > 0 {
            let busiest = peers
                .map
                .lock()
                .expect("peers lock")
                .iter()
                .max_by_key(|(_, p)| p.pending)
                .map(|(ip, p)| format!("{ip} ({} unfinished)", p.pending))
                .unwrap_or_default();
            tracing::warn!(
                refused = n,
                busiest = %busiest,
                "connections closed unanswered in the last 10 s: their addresses had {PENDING_PER_PEER} \
                 handshakes unfinished; a client that opens sockets and sends nothing (or too \
                 little) is flooding this coordinator"
            );
        }
    }
}

/// Logs a failed handshake: a certificate problem is the operator's to fix and is a warning that
/// says so; a client that went away mid-handshake (say, one that gave up waiting) is not.
fn handshake_failed(peer: std::net::SocketAddr, e: &std::io::Error) {
    let text = fleetsnap_proto::tls::describe(e);
    match fleetsnap_proto::tls::certificate_problem(&text) {
        Some(hint) => tracing::warn!(%peer, error = %text, "TLS handshake refused: {hint}"),
        None => tracing::debug!(%peer, error = %text, "TLS handshake did not finish"),
    }
}

/// Binds with a backlog deep enough for thousands of agents reconnecting at once.
fn listen(addr: std::net::SocketAddr) -> Result<TcpListener, StartError> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(8192)
    };
    bind().map_err(|e| format!("cannot listen on {addr}: {e}; is another process using it?"))
}

/// Raises the open-file limit to its hard maximum: every agent holds a connection.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
