//! The control plane against hostile peers, tampered regions and careless operators, with real
//! coordinator, agent and redis-server processes: a flood of idle and stalled connections from
//! one address locks no operator or agent out; a repair from a tampered region writes nothing
//! outside the destination; a catalog of 10,000 sets is rebuilt through one agent, whose session
//! survives it; policies and configs that would fail later, or carry secrets, are refused when
//! they are given.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fleetsnap_testkit::fleet::{Agent, Coordinator, FleetDir, Logs, Watched, bin, single_node};
use fleetsnap_testkit::redis::{RedisOptions, RedisServer};
use fleetsnap_testkit::{filled_server, output_within, poll_until};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

/// The first flight of a real TLS client: a whole ClientHello, after which a stalling client
/// sends nothing more.
fn client_hello() -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "fleetsnap".try_into().unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// A connection to `to` from 127.0.0.2 (the flooder's own loopback address) that sends `first`
/// and then nothing.
async fn stalled(to: std::net::SocketAddr, first: &[u8]) -> Option<TcpStream> {
    let s = TcpSocket::new_v4().ok()?;
    s.bind("127.0.0.2:0".parse().unwrap()).ok()?;
    let mut c = tokio::time::timeout(Duration::from_secs(2), s.connect(to))
        .await
        .ok()?
        .ok()?;
    c.write_all(first).await.ok()?;
    Some(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_and_stalled_connections_locks_nobody_out() {
    let fleet = FleetDir::new(&[1], &["a1", "a2"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let server = RedisServer::start().await.unwrap();
    let coords = vec![coordinator.address.clone()];
    let mut first = Agent::configure(
        &fleet,
        "a1",
        &coords,
        &[Watched::new("one", server.url(), "flood")],
        false,
    )
    .unwrap();
    first.start().unwrap();
    let _logs = Logs::of(
        std::slice::from_ref(&coordinator),
        std::slice::from_ref(&first),
    );
    let agents = |n: usize| {
        let cli = &cli;
        async move {
            poll_until("agents reporting", Duration::from_secs(30), || async {
                let s = cli.json(&["status", "--json"]).ok()?;
                (s["agents"].as_array()?.len() == n).then_some(())
            })
            .await
        }
    };
    agents(1).await.unwrap();

    // 200 sockets at once from one address: idle, a partial record, a whole hello, then silence;
    // and 20 more such every second while the operator and a new agent go about their work.
    let to: std::net::SocketAddr = coordinator.address.parse().unwrap();
    let hello = client_hello();
    let firsts: [Vec<u8>; 3] = [Vec::new(), vec![0x16, 0x03, 0x01, 0x02, 0x00], hello];
    let mut held = Vec::new();
    for i in 0..200 {
        if let Some(c) = stalled(to, &firsts[i % 3]).await {
            held.push(c);
        }
    }
    assert!(
        held.len() >= 150,
        "only {} flood sockets opened",
        held.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let (stop, firsts) = (stop.clone(), firsts.clone());
        tokio::spawn(async move {
            let mut more = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..20 {
                    if let Some(c) = stalled(to, &firsts[i % 3]).await {
                        more.push(c);
                    }
                    i += 1;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            more.len()
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut second = Agent::configure(
        &fleet,
        "a2",
        &coords,
        &[Watched::new("two", server.url(), "flood")],
        false,
    )
    .unwrap();
    second.start().unwrap();
    for _ in 0..5 {
        let o = cli.run(&["status", "--json"]).unwrap();
        assert!(
            o.status.success(),
            "status failed under the flood: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    agents(2)
        .await
        .expect("a new agent is welcomed under the flood");
    stop.store(true, Ordering::Relaxed);
    let opened = flooder.await.unwrap();
    assert!(opened > 60, "the flood ran: {opened} connections");
    drop(held);
    second.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_from_a_tampered_region_writes_nothing_outside_the_destination() {
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let server = filled_server(RedisOptions::default(), 500, 4096)
        .await
        .unwrap();
    let mut agent = Agent::configure(
        &fleet,
        "a1",
        std::slice::from_ref(&coordinator.address),
        &[Watched::new("solo", server.url(), "shop")],
        false,
    )
    .unwrap();
    agent.start().unwrap();
    let _logs = Logs::of(
        std::slice::from_ref(&coordinator),
        std::slice::from_ref(&agent),
    );
    let (a, b) = (fleet.path().join("a"), fleet.path().join("deep/b"));
    cli.set_policy(
        fleet.path(),
        "two",
        &format!(
            "name = \"two\"\nclusters = [\"shop\"]\nmin_regions = 2\n\n\
             [[destinations]]\nregion = \"a\"\nurl = \"file://{}\"\n\n\
             [[destinations]]\nregion = \"b\"\nurl = \"file://{}\"\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    cli.wait_for_shards(1, 1).await.unwrap();
    let (complete, window) = cli.backup_run("two").unwrap();
    assert!(complete, "{window:#}");
    let id = window["backup_id"].as_str().unwrap().to_string();

    // b loses its copy; a's manifest is altered to name, three levels up, a file planted there
    // with the size and sha256 the manifest lists: read from outside a, it would be written
    // outside b.
    std::fs::remove_dir_all(b.join("shop")).unwrap();
    let manifest = a.join("shop").join(&id).join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let object = a
        .join("shop")
        .join(&id)
        .join(m["shards"][0]["objects"][0]["name"].as_str().unwrap());
    let planted = fleet.path().join("x").join("pwned.rdb.zst");
    std::fs::create_dir_all(planted.parent().unwrap()).unwrap();
    std::fs::copy(&object, &planted).unwrap();
    m["shards"][0]["objects"][0]["name"] = "../../../x/pwned.rdb.zst".into();
    std::fs::write(&manifest, serde_json::to_vec(&m).unwrap()).unwrap();
    let o = cli.run(&["backup", "verify", &id, "--wait", "60"]).unwrap();
    assert!(!o.status.success());
    let o = cli.run(&["backup", "repair", &id, "--wait", "60"]).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "{text}");
    let mut stack = vec![fleet.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            assert!(
                !e.file_name().to_string_lossy().contains("pwned") || e.path() == planted,
                "written outside the destination: {}",
                e.path().display()
            );
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
}

/// Copies `from`'s set into `count` sets of new ids (hard links to its objects, a manifest of
/// its own each), as if windows had written them over the years.
fn fabricate_many(region: &Path, cluster: &str, from: &str, count: usize) {
    let src = region.join(cluster).join(from);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("manifest.json")).unwrap()).unwrap();
    let objects: Vec<_> = std::fs::read_dir(&src)
        .unwrap()
        .flatten()
        .filter(|f| f.file_name() != "manifest.json")
        .collect();
    let start = time::macros::datetime!(2020-01-01 00:00 UTC);
    for i in 0..count {
        let id = fleetsnap_core::BackupId::from_parts(
            start + time::Duration::minutes(i as i64),
            i as u32,
        )
        .to_string();
        let dst = region.join(cluster).join(&id);
        std::fs::create_dir_all(&dst).unwrap();
        for f in &objects {
            std::fs::hard_link(f.path(), dst.join(f.file_name())).unwrap();
        }
        m["backup_id"] = id.into();
        std::fs::write(dst.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_of_ten_thousand_sets_is_rebuilt_and_the_agent_stays_in() {
    const SETS: usize = 10_000;
    let fleet = FleetDir::new(&[1], &["a1"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let server = filled_server(RedisOptions::default(), 100, 100)
        .await
        .unwrap();
    let region = fleet.path().join("region");
    let dest = format!("file://{}", region.display());
    let o = output_within(
        std::process::Command::new(bin("fleetsnap-agent")).args([
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &dest,
            "--cluster",
            "many",
            "--json",
        ]),
        Duration::from_secs(60),
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let first = report["backup_id"].as_str().unwrap().to_string();
    fabricate_many(&region, "many", &first, SETS - 1);

    let mut agent = Agent::configure(
        &fleet,
        "a1",
        std::slice::from_ref(&coordinator.address),
        &[],
        false,
    )
    .unwrap();
    agent.start().unwrap();
    let _logs = Logs::of(
        std::slice::from_ref(&coordinator),
        std::slice::from_ref(&agent),
    );
    poll_until("the agent reports", Duration::from_secs(30), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (s["agents"].as_array()?.len() == 1).then_some(())
    })
    .await
    .unwrap();
    let started = Instant::now();
    let from = format!("r={dest}");
    let o = cli
        .run(&["catalog", "rebuild", "--from", &from, "--wait", "600"])
        .unwrap();
    let took = started.elapsed();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("catalog rebuild of {SETS} sets in one file region: {took:.1?}");
    let list = cli
        .json(&["backup", "list", "--cluster", "many", "--json"])
        .unwrap();
    let sets = list.as_array().unwrap();
    assert_eq!(sets.len(), SETS);
    assert!(
        sets.iter().all(|s| s["state"] == "complete"),
        "a set is not complete"
    );

    // The agent is still in: its session took the large result and runs the next job.
    let o = cli
        .run(&["catalog", "rebuild", "--from", &from, "--wait", "600"])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(&agent.log).unwrap();
    assert!(!log.contains("starts with Hello"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_would_fail_later_or_carries_a_secret_is_refused_when_given() {
    let fleet = FleetDir::new(&[1, 2], &["a1"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let recipient = age::x25519::Identity::generate().to_public().to_string();
    let policy = |dests: &str, extra: &str| {
        format!("name = \"p\"\nclusters = [\"c\"]\nmin_regions = 1\n{extra}\n{dests}")
    };
    let file_dest = |name: &str, url: &str| {
        format!("[[destinations]]\nregion = \"{name}\"\nurl = \"{url}\"\n\n")
    };
    for (text, needle) in [
        (
            policy(
                &file_dest("s", "s3://AKIAFLEETSNAP:Sup3rSecret@bucket/x?region=r"),
                "",
            ),
            "carries credentials",
        ),
        (
            policy(
                &(file_dest("a", "file:///var/backups/x")
                    + &file_dest("b", "file:///var/backups/x/")),
                "",
            ),
            "same url",
        ),
        (
            policy(
                &file_dest("a", "file:///var/backups/x"),
                &format!("encrypt_to = [\"{}\"]", mistyped(&recipient)),
            ),
            "not an age recipient",
        ),
    ] {
        let path = fleet.path().join("policy.toml");
        std::fs::write(&path, &text).unwrap();
        let o = cli
            .run(&["policy", "set", "--file", path.to_str().unwrap()])
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{text}: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("Sup3rSecret"), "the secret was shown: {err}");
    }
    let list = cli.json(&["policy", "list", "--json"]).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "a refused policy was stored: {list}"
    );

    // A name that breaks the rules is bad usage: exit 2, before any call.
    for args in [
        &["backup", "verify", "shop/../x"][..],
        &["status", "--cluster", "a b"],
        &[
            "restore",
            "--cluster",
            "../c",
            "--mode",
            "online",
            "--target",
            "redis://h",
        ],
    ] {
        let o = cli.run(args).unwrap();
        assert_eq!(
            o.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    // check-config refuses a data directory it cannot make, and an agent config's bad sizes and
    // names.
    let other = Coordinator::configure(&fleet, 2, &[], &Default::default()).unwrap();
    let text = std::fs::read_to_string(&other.config).unwrap();
    let blocker = fleet.path().join("a-file");
    std::fs::write(&blocker, b"").unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("data_dir") {
                format!("data_dir = \"{}\"", blocker.join("data").display())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&other.config, text).unwrap();
    let o = output_within(
        std::process::Command::new(bin("fleetsnap-coordinator"))
            .args(["check-config", "--config"])
            .arg(&other.config),
        Duration::from_secs(20),
    )
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("data_dir") && err.contains("a-file"), "{err}");
    let agent = Agent::configure(
        &fleet,
        "a1",
        std::slice::from_ref(&coordinator.address),
        &[],
        false,
    )
    .unwrap();
    let base = std::fs::read_to_string(&agent.config).unwrap();
    for (change, needle) in [
        (
            base.replace("[snapshot]\n", "[snapshot]\nspool_max = \"lots\"\n"),
            "spool_max",
        ),
        (
            base.clone() + "[[instance]]\nname = \"a/b\"\nurl = \"redis://127.0.0.1:1\"\n",
            "instance name",
        ),
        (
            base.clone()
                + "[[instance]]\nname = \"x\"\nurl = \"redis://127.0.0.1:1\"\ncluster = \"../up\"\n",
            "cluster name",
        ),
        (
            base.clone() + "[[instance]]\nname = \"y\"\nurl = \"redis://:Sup3rSecret@h:99999\"\n",
            "Redis URL",
        ),
    ] {
        std::fs::write(&agent.config, &change).unwrap();
        let o = output_within(
            std::process::Command::new(bin("fleetsnap-agent"))
                .args(["check-config", "--config"])
                .arg(&agent.config),
            Duration::from_secs(20),
        )
        .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{change}: {err}");
        assert!(err.contains(needle), "{err}");
        assert!(!err.contains("Sup3rSecret"), "the secret was shown: {err}");
    }
}

/// `recipient` with its last character changed, which its checksum catches.
fn mistyped(recipient: &str) -> String {
    let mut s = recipient.to_string();
    let last = s.pop().expect("a recipient");
    s.push(if last == 'q' { 'p' } else { 'q' });
    s
}
