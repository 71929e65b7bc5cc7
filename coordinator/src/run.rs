//! Starting a coordinator from its config: the data directory, Raft, the gRPC server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetsnap_proto::tls::{Role, Transport};
use fleetsnap_proto::v1::admin_service_server::AdminServiceServer;
use fleetsnap_proto::v1::agent_service_server::AgentServiceServer;
use fleetsnap_proto::v1::raft_service_server::RaftServiceServer;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::network::Network;
use crate::server::{Node, Services};
use crate::store;

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
    tokio::spawn(crate::network::keep_warm(
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
        .add_service(RaftServiceServer::new(services.clone()))
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

/// TLS handshakes on threads of their own.
///
/// When a leader dies, thousands of agents reconnect to the survivors at once, each with a full
/// mutual-TLS handshake. Done on the runtime that also runs Raft, those handshakes would queue
/// the election's few messages behind seconds of public-key work; on their own runtime the
/// operating system shares the cores between the two, and Raft stays prompt.
struct Handshakes {
    runtime: tokio::runtime::Runtime,
    acceptor: TlsAcceptor,
}

/// A handshake that has not finished by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; the rest wait their turn in arrival order. Without a bound,
/// thousands of half-done handshakes share the cores, every one of them slows down, and past
/// the timeout they all fail and start again: an overload would never drain.
const CONCURRENT_HANDSHAKES: usize = 64;

impl Handshakes {
    fn start(config: Arc<tokio_rustls::rustls::ServerConfig>) -> Result<Self, StartError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("tls-handshake")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the TLS handshake threads: {e}"))?;
        Ok(Self {
            runtime,
            acceptor: TlsAcceptor::from(config),
        })
    }

    /// Accepts connections and yields those whose handshake succeeded.
    fn incoming(
        &self,
        listener: TcpListener,
    ) -> mpsc::Receiver<std::io::Result<TlsStream<TcpStream>>> {
        let (tx, rx) = mpsc::channel(1024);
        let acceptor = self.acceptor.clone();
        let handle = self.runtime.handle().clone();
        let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_HANDSHAKES));
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
                let _ = tcp.set_nodelay(true);
                let (acceptor, tx, permits) = (acceptor.clone(), tx.clone(), permits.clone());
                handle.spawn(async move {
                    // A client that has sent nothing yet holds no permit: idle connections
                    // cannot starve the others.
                    if tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.readable())
                        .await
                        .is_err()
                    {
                        tracing::warn!(%peer, "no TLS hello within {HANDSHAKE_TIMEOUT:?}; dropped");
                        return;
                    }
                    let Ok(_permit) = permits.acquire().await else {
                        return;
                    };
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(tls)).await;
                        }
                        Ok(Err(e)) => handshake_failed(peer, &e),
                        Err(_) => tracing::warn!(
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
