//! Bad input at the control plane: unknown config keys, corrupt and foreign data directories,
//! certificates from another CA or with the wrong role, a CLI pointed at a dead node, plain text
//! only behind --insecure. Each gets a clear error, no panic, no state lost.

use std::process::Command;
use std::time::Duration;

use fleetsnap_proto::tls::{TlsFiles, Transport};
use fleetsnap_proto::v1;
use fleetsnap_testkit::fleet::{
    Agent, Coordinator, CoordinatorOptions, FleetDir, Watched, bin, single_node,
};
use fleetsnap_testkit::{RedisServer, free_port, output_within, poll_until};

fn stderr_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Rewrites an agent's config (`from` becomes `to`) and runs the agent on it: it must stop with
/// an error; returns what it said.
fn agent_refuses(config: &std::path::Path, from: &str, to: &str) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    std::fs::write(config, text.replace(from, to)).unwrap();
    let o = run_to_exit(
        Command::new(bin("fleetsnap-agent"))
            .args(["run", "--config"])
            .arg(config),
    );
    assert!(
        !o.status.success(),
        "the agent accepted {to:?} in its config"
    );
    stderr_of(&o)
}

/// Runs a process that must exit by itself within 20 s.
fn run_to_exit(cmd: &mut Command) -> std::process::Output {
    output_within(cmd, Duration::from_secs(20)).unwrap()
}

#[test]
fn unknown_config_keys_are_named() {
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let c = Coordinator::configure(
        &fleet,
        1,
        &Coordinator::addresses(1),
        &CoordinatorOptions::default(),
    )
    .unwrap();
    let text = std::fs::read_to_string(&c.config).unwrap();
    std::fs::write(&c.config, text.replace("snapshot_every", "snapshot_evry")).unwrap();
    let o = run_to_exit(
        Command::new(bin("fleetsnap-coordinator"))
            .arg("--config")
            .arg(&c.config),
    );
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("snapshot_evry") && e.contains(&c.config.display().to_string()),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");

    let a = Agent::configure(&fleet, "a1", &["127.0.0.1:1".into()], &[], false).unwrap();
    let e = agent_refuses(&a.config, "coordinators =", "coordinator =");
    assert!(
        e.contains("coordinator") && e.contains("unknown field"),
        "{e}"
    );
}

#[tokio::test]
async fn corrupt_and_foreign_data_directories_are_refused() {
    let fleet = FleetDir::new(&[1, 2], &[]).unwrap();
    let opts = CoordinatorOptions::default();
    let (mut one, _) = single_node(&fleet, &opts).await.unwrap();
    one.kill();

    // Node 2 pointed at node 1's data directory.
    let two = Coordinator::configure(&fleet, 2, &[], &opts).unwrap();
    let text = std::fs::read_to_string(&two.config).unwrap();
    std::fs::write(
        &two.config,
        text.replace("coordinator-2\"", "coordinator-1\""),
    )
    .unwrap();
    let o = run_to_exit(
        Command::new(bin("fleetsnap-coordinator"))
            .arg("--config")
            .arg(&two.config),
    );
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("belongs to node 1") && e.contains("configured as 2"),
        "{e}"
    );

    // Node 1's database damaged: refused with the way out, and the file left as it was.
    let db = fleet.path().join("coordinator-1").join("coordinator.redb");
    std::fs::write(&db, vec![0x5a; 16384]).unwrap();
    let o = run_to_exit(
        Command::new(bin("fleetsnap-coordinator"))
            .arg("--config")
            .arg(&one.config),
    );
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(
        e.contains(&db.display().to_string()) && e.contains("move it aside"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        vec![0x5a; 16384],
        "the damaged file was changed"
    );
}

/// A client transport with the certificate `certs/STEM.pem` of the fleet.
fn transport_of(fleet: &FleetDir, stem: &str) -> Transport {
    let files = TlsFiles {
        ca: fleet.path().join("certs/ca.pem"),
        cert: fleet.path().join(format!("certs/{stem}.pem")),
        key: fleet.path().join(format!("certs/{stem}.key")),
    };
    Transport::Tls(files.load().unwrap())
}

#[tokio::test]
async fn certificates_are_checked_on_every_call() {
    let fleet = FleetDir::new(&[1, 2], &["a1"]).unwrap();
    let opts = CoordinatorOptions::default();
    let (one, cli) = single_node(&fleet, &opts).await.unwrap();

    // A peer certificate on the agent service, an agent's on the admin service, an admin's on
    // the Raft service: each refused, naming the role needed and the one presented.
    let peer = transport_of(&fleet, "peer-2");
    let channel = peer.connect(&one.address).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(v1::AgentMessage {
        body: Some(v1::agent_message::Body::Hello(v1::Hello {
            agent_id: "a1".into(),
            ..Default::default()
        })),
    })
    .await
    .unwrap();
    let e = v1::agent_service_client::AgentServiceClient::new(channel)
        .session(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(
        e.message().contains("agent role") && e.message().contains("peer \"2\""),
        "{e}"
    );

    let agent = transport_of(&fleet, "agent-a1");
    let e = v1::admin_service_client::AdminServiceClient::new(
        agent.connect(&one.address).await.unwrap(),
    )
    .status(v1::StatusRequest::default())
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.message().contains("admin role"), "{e}");

    let admin = transport_of(&fleet, "admin-admin");
    let e =
        v1::raft_service_client::RaftServiceClient::new(admin.connect(&one.address).await.unwrap())
            .vote(v1::RaftPayload {
                json: b"{}".to_vec(),
            })
            .await
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");

    // An agent configured with a peer certificate stops at once and says which to use.
    let mut a =
        Agent::configure(&fleet, "a1", std::slice::from_ref(&one.address), &[], false).unwrap();
    let e = agent_refuses(&a.config, "agent-a1.", "peer-2.");
    assert!(e.contains("names peer \"2\"") && e.contains("a1"), "{e}");
    a.kill();

    // A CLI with an admin certificate from another CA: refused during the handshake, said so.
    let other = fleet.certs("other-ca", &[2], &[]).unwrap();
    let o = Command::new(bin("fleetsnap"))
        .args(["--coordinator", &one.address, "status"])
        .env("FLEETSNAP_CA", other.join("ca.pem"))
        .env("FLEETSNAP_CERT", other.join("admin-admin.pem"))
        .env("FLEETSNAP_KEY", other.join("admin-admin.key"))
        .output()
        .unwrap();
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(
        e.contains(&one.address) && e.contains("same `fleetsnap certs init`"),
        "{e}"
    );

    // A coordinator whose peer certificate comes from another CA cannot join: add-node gives up
    // with the reason, and the cluster goes on.
    let mut stranger = Coordinator::configure(&fleet, 2, &[], &opts).unwrap();
    let text = std::fs::read_to_string(&stranger.config).unwrap();
    std::fs::write(&stranger.config, text.replace("/certs/", "/other-ca/")).unwrap();
    stranger.start().await.unwrap();
    let o = cli
        .run(&["cluster", "add-node", "2", &stranger.address])
        .unwrap();
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(
        e.contains("did not catch up") && e.contains("certificate"),
        "{e}"
    );
    let s = cli.json(&["cluster", "status", "--json"]).unwrap();
    let ids: Vec<u64> = s["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1], "{s:#}");
    stranger.kill();
}

#[tokio::test]
async fn the_cli_skips_dead_coordinators_and_says_which_failed() {
    let fleet = FleetDir::new(&[1], &[]).unwrap();
    let mut one = Coordinator::configure(
        &fleet,
        1,
        &Coordinator::addresses(1),
        &CoordinatorOptions::default(),
    )
    .unwrap();
    one.start().await.unwrap();
    let dead = format!("127.0.0.1:{}", free_port());
    let cli = fleet.cli(&[dead.clone(), one.address.clone()]);
    poll_until(
        "status through the live one",
        Duration::from_secs(10),
        || async { cli.json(&["status", "--json"]).ok() },
    )
    .await
    .unwrap();
    let o = fleet
        .cli(std::slice::from_ref(&dead))
        .run(&["status"])
        .unwrap();
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(e.contains(&dead) && e.contains("Connection refused"), "{e}");
    // Without certificates: a plain refusal naming the flags.
    let o = Command::new(bin("fleetsnap"))
        .args(["--coordinator", &one.address, "status"])
        .env_remove("FLEETSNAP_CA")
        .output()
        .unwrap();
    assert!(
        stderr_of(&o).contains("--ca, --cert, --key"),
        "{}",
        stderr_of(&o)
    );
}

#[tokio::test]
async fn plain_text_only_behind_insecure() {
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let opts = CoordinatorOptions {
        insecure: true,
        ..Default::default()
    };
    let mut one = Coordinator::configure(&fleet, 1, &Coordinator::addresses(1), &opts).unwrap();
    // Without --insecure, a config without [tls] is refused.
    let o = run_to_exit(
        Command::new(bin("fleetsnap-coordinator"))
            .arg("--config")
            .arg(&one.config),
    );
    assert!(!o.status.success());
    assert!(
        stderr_of(&o).contains("no [tls] section"),
        "{}",
        stderr_of(&o)
    );
    one.start().await.unwrap();
    let redis = RedisServer::start().await.unwrap();
    let mut agent = Agent::configure(
        &fleet,
        "a1",
        &[one.address.clone()],
        &[Watched::new("r", redis.url(), "plain")],
        true,
    )
    .unwrap();
    agent.start().unwrap();
    let s = poll_until(
        "insecure agent reports",
        Duration::from_secs(15),
        || async {
            let o = Command::new(bin("fleetsnap"))
                .args([
                    "--insecure",
                    "--coordinator",
                    &one.address,
                    "status",
                    "--json",
                ])
                .output()
                .ok()?;
            let s: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
            (s["clusters"][0]["name"] == "plain").then_some(s)
        },
    )
    .await
    .unwrap();
    assert_eq!(s["agents"][0]["agent"], "a1");
    assert!(
        one.log_text().contains("--insecure: gRPC in plain text"),
        "{}",
        one.log_text()
    );
    assert!(
        agent.log_text().contains("--insecure"),
        "{}",
        agent.log_text()
    );
    // A TLS client against it learns why it fails.
    let o = fleet.cli(&[one.address.clone()]).run(&["status"]).unwrap();
    let e = stderr_of(&o);
    assert!(!o.status.success());
    assert!(e.contains(&one.address) && e.contains("--insecure"), "{e}");
    agent.kill();
}
