//! Starting a coordinator from its config: the data directory, Raft, the gRPC server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fleetsnap_proto::tls::{Role, Transport};
use fleetsnap_proto::v1::admin_service_server::AdminServiceServer;
use fleetsnap_proto::v1::agent_service_server::AgentServiceServer;
use fleetsnap_proto::v1::raft_service_server::RaftServiceServer;
use openraft::{BasicNode, Raft, SnapshotPolicy};
use tokio::net::TcpSocket;
use tokio_stream::wrappers::TcpListenerStream;

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
        ..Default::default()
    }
    .validate()
    .map_err(|e| format!("raft settings: {e}"))?;
    let transport = Arc::new(transport);
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        Network::new(transport.clone()),
        log,
        sm,
    )
    .await
    .map_err(|e| format!("raft did not start: {e}"))?;

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
    );
    let services = Services(node);
    let listener = listen(config.listen)?;
    let mut server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true);
    if let Transport::Tls(files) = &*transport {
        server = server
            .tls_config(files.server())
            .map_err(|e| format!("TLS settings: {e}"))?;
    }
    tracing::info!(node = config.node_id, listen = %config.listen, "coordinator serving");
    let result = server
        .add_service(RaftServiceServer::new(services.clone()))
        .add_service(AgentServiceServer::new(services.clone()))
        .add_service(AdminServiceServer::new(services))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    let _ = raft.shutdown().await;
    result.map_err(|e| format!("gRPC server on {}: {e}", config.listen))
}

/// Binds with a backlog deep enough for thousands of agents reconnecting at once.
fn listen(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
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
