//! `fleetsnap runbook failover` with real Redis, agents and a coordinator: graceful while a
//! writer records every acknowledged write (none may be lost), also through a real Sentinel that
//! manages the set, and forced after the primary is killed with its replicas behind (the bytes
//! lost are reported exactly).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::fleet::{Agent, Cli, FleetDir, Logs, Watched, single_node};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};

/// A redis-server in Sentinel mode monitoring a set as "ha" (quorum 1, no automatic failover
/// within the test's time), stopped when dropped.
struct SentinelProcess {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SentinelProcess {
    async fn start(primary: &RedisServer, replicas: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = fleetsnap_testkit::free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\nsentinel monitor ha 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds ha 60000\nsentinel failover-timeout ha 60000\n",
                dir.path().display(),
                primary.port()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let s = Self {
            child,
            port,
            _dir: dir,
        };
        // SENTINEL FAILOVER picks only replicas it has heard from lately: wait until it knows
        // every replica as a replica.
        poll_until(
            "the Sentinel knowing the replicas",
            Duration::from_secs(40),
            || async {
                let t = fleetsnap_agent::redis::RedisTarget::parse(&s.url()).ok()?;
                let mut c = fleetsnap_agent::redis::Connection::connect(&t).await.ok()?;
                let Value::Array(Some(rs)) =
                    c.command(&[b"SENTINEL", b"REPLICAS", b"ha"]).await.ok()?
                else {
                    return None;
                };
                let ready = rs
                    .iter()
                    .filter(|r| {
                        let Value::Array(Some(kv)) = r else {
                            return false;
                        };
                        let field = |name: &str| {
                            kv.chunks(2)
                                .find(|p| p[0].text().as_deref() == Some(name))
                                .and_then(|p| p[1].text())
                        };
                        field("flags").as_deref() == Some("slave")
                            && field("master-link-status").as_deref() == Some("ok")
                    })
                    .count();
                (ready == replicas).then_some(())
            },
        )
        .await
        .unwrap();
        s
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A coordinator and one agent per node of a primary with two replicas, cluster "ha"; with
/// `sentinel`, a Sentinel monitors the set and the agents' instances name it.
async fn fleet(
    sentinel: bool,
    servers: RedisOptions,
) -> (
    FleetDir,
    fleetsnap_testkit::fleet::Coordinator,
    Cli,
    ReplicaSet,
    Vec<Agent>,
    Option<SentinelProcess>,
) {
    let fleet = FleetDir::new(&[1], &["a0", "a1", "a2"]).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let set = ReplicaSet::start(2, servers).await.unwrap();
    let sentinel = if sentinel {
        set.wait_synced().await.unwrap();
        Some(SentinelProcess::start(&set.primary, 2).await)
    } else {
        None
    };
    let coords = vec![coordinator.address.clone()];
    let mut agents = Vec::new();
    for (id, name, server) in [
        ("a0", "p", &set.primary),
        ("a1", "r1", &set.replicas[0]),
        ("a2", "r2", &set.replicas[1]),
    ] {
        let mut watched = Watched::new(name, server.url(), "ha");
        if let Some(s) = &sentinel {
            watched.extra = format!("sentinel = \"{}\"\nsentinel_master = \"ha\"\n", s.url());
        }
        let mut a = Agent::configure(&fleet, id, &coords, &[watched], false).unwrap();
        a.start().unwrap();
        agents.push(a);
    }
    cli.wait_for_shards(1, 3).await.unwrap();
    (fleet, coordinator, cli, set, agents, sentinel)
}

/// Every node the status shows, by address: (offset, role).
fn nodes(cli: &Cli) -> BTreeMap<String, (u64, String)> {
    let s = cli.json(&["status", "--json"]).unwrap_or_default();
    let mut out = BTreeMap::new();
    for c in s["clusters"].as_array().into_iter().flatten() {
        for sh in c["shards"].as_array().into_iter().flatten() {
            for n in sh["nodes"].as_array().into_iter().flatten() {
                out.insert(
                    n["address"].as_str().unwrap_or("").to_string(),
                    (
                        n["offset"].as_u64().unwrap_or(0),
                        n["role"].as_str().unwrap_or("").to_string(),
                    ),
                );
            }
        }
    }
    out
}

async fn offset(s: &RedisServer) -> u64 {
    let role = s.info("replication", "role").await.unwrap().unwrap();
    let field = if role == "slave" {
        "slave_repl_offset"
    } else {
        "master_repl_offset"
    };
    s.info("replication", field)
        .await
        .unwrap()
        .unwrap()
        .parse()
        .unwrap()
}

/// `runbook failover --cluster ha --shard p --pause-ms MS --yes --json`, off the runtime's
/// threads (the writers and pollers keep running): whether it succeeded, and the runbook as it
/// ended.
async fn failover(cli: &Cli, pause_ms: u64) -> (bool, serde_json::Value) {
    let cli = cli.clone();
    tokio::task::spawn_blocking(move || {
        let pause = pause_ms.to_string();
        cli.run_json(&[
            "runbook",
            "failover",
            "--cluster",
            "ha",
            "--shard",
            "p",
            "--pause-ms",
            &pause,
            "--yes",
            "--json",
        ])
        .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_loses_no_acknowledged_write() {
    graceful(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_through_sentinel_loses_no_acknowledged_write() {
    graceful(true).await;
}

/// The same runbook on Valkey 8.1 (`REPLICAOF`, `FAILOVER` and `WAIT` as Redis has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_of_valkey_loses_no_acknowledged_write() {
    graceful_on(false, RedisOptions::default().valkey()).await;
}

/// A writer records every acknowledged write through a graceful failover; every one of them must
/// be on the new primary, and the old one must refuse writes after.
async fn graceful(with_sentinel: bool) {
    graceful_on(with_sentinel, RedisOptions::default()).await;
}

async fn graceful_on(with_sentinel: bool, servers: RedisOptions) {
    let (_dir, coordinator, cli, set, agents, sentinel) = fleet(with_sentinel, servers).await;
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);
    // A dry run plans without changing anything.
    let o = cli
        .run(&[
            "runbook",
            "failover",
            "--cluster",
            "ha",
            "--shard",
            "p",
            "--dry-run",
        ])
        .unwrap();
    let plan = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && plan.contains("pause writes"),
        "{plan}"
    );
    assert_eq!(
        plan.contains("SENTINEL FAILOVER ha"),
        with_sentinel,
        "{plan}"
    );
    assert_eq!(
        set.primary
            .info("replication", "role")
            .await
            .unwrap()
            .unwrap(),
        "master"
    );
    // Without a terminal and without --yes, nothing runs.
    let o = cli
        .run(&["runbook", "failover", "--cluster", "ha", "--shard", "p"])
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--yes"));

    // A writer on the primary records every write it was told succeeded.
    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(AtomicU64::new(0));
    let primary = set.primary.target();
    let writer = {
        let (stop, refusals) = (stop.clone(), refusals.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut c = fleetsnap_agent::redis::Connection::connect(&primary)
                .await
                .unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("ack:{i}");
                match c
                    .command(&[b"SET", k.as_bytes(), i.to_string().as_bytes()])
                    .await
                {
                    Ok(Value::Simple(s)) if s == "OK" => acked.push(i),
                    Ok(_) => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        refusals.fetch_add(1, Ordering::Relaxed);
                        c = match fleetsnap_agent::redis::Connection::connect(&primary).await {
                            Ok(c) => c,
                            Err(_) => break,
                        };
                    }
                }
                i += 1;
            }
            acked
        })
    };
    poll_until("writes flowing", Duration::from_secs(10), || async {
        (set.primary.cmd(&["DBSIZE"]).await.ok()? != Value::Int(0)).then_some(())
    })
    .await
    .unwrap();
    // The Sentinel's own steps take a few seconds: the pause allows for them.
    let (ok, doc) = failover(&cli, if with_sentinel { 20_000 } else { 5000 }).await;
    assert!(ok, "{doc:#}");
    // The writer goes on until the old primary refuses it.
    let seen = poll_until(
        "the old primary refusing writes",
        Duration::from_secs(10),
        || async {
            let n = refusals.load(Ordering::Relaxed);
            (n > 0).then_some(n)
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let acked = writer.await.unwrap();
    let refused = seen.unwrap_or(0);
    assert_eq!(doc["findings"]["mode"], "graceful", "{doc:#}");
    assert_eq!(doc["findings"]["lost_bytes"], "0", "{doc:#}");
    assert!(acked.len() > 100, "{} acknowledged", acked.len());
    assert!(refused > 0, "the old primary went on accepting writes");
    let promoted = doc["findings"]["promote"].as_str().unwrap();
    let new = set
        .replicas
        .iter()
        .find(|r| r.target().address() == promoted)
        .unwrap();
    assert_eq!(
        new.info("replication", "role").await.unwrap().unwrap(),
        "master"
    );
    assert_eq!(
        set.primary
            .info("replication", "role")
            .await
            .unwrap()
            .unwrap(),
        "slave"
    );
    let mut c = new.conn().await.unwrap();
    let mut missing = Vec::new();
    for i in &acked {
        let k = format!("ack:{i}");
        match c.command(&[b"GET", k.as_bytes()]).await.unwrap() {
            Value::Bulk(Some(v)) if v == i.to_string().as_bytes() => {}
            other => missing.push((i, other)),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes are not on the new primary, first {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    if let Some(s) = &sentinel {
        // The Sentinel itself now names the promoted replica as the master.
        let t = fleetsnap_agent::redis::RedisTarget::parse(&s.url()).unwrap();
        let mut c = fleetsnap_agent::redis::Connection::connect(&t)
            .await
            .unwrap();
        let Value::Array(Some(addr)) = c
            .command(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", b"ha"])
            .await
            .unwrap()
        else {
            panic!("the Sentinel names no master");
        };
        let named = format!("{}:{}", addr[0].text().unwrap(), addr[1].text().unwrap());
        assert_eq!(named, promoted);
        assert!(
            doc["steps"][0]["outcome"]
                .as_str()
                .unwrap()
                .contains("\"sentinel\""),
            "{doc:#}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_failover_reports_the_replication_lost() {
    let (_dir, coordinator, cli, mut set, agents, _) = fleet(false, RedisOptions::default()).await;
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);
    let write = |n: usize, tag: &'static str| {
        let p = set.primary.target();
        async move {
            let mut c = fleetsnap_agent::redis::Connection::connect(&p)
                .await
                .unwrap();
            for i in 0..n {
                let k = format!("{tag}:{i}");
                c.checked(&[b"SET", k.as_bytes(), b"some value of a few bytes"])
                    .await
                    .unwrap();
            }
        }
    };
    write(500, "base").await;
    set.wait_synced().await.unwrap();
    // Each replica is cut off from the primary (it cannot authenticate any more), r1 first.
    let cut = |r: &RedisServer| {
        let r = r.target();
        async move {
            let mut c = fleetsnap_agent::redis::Connection::connect(&r)
                .await
                .unwrap();
            c.checked(&[b"CONFIG", b"SET", b"masterauth", b"wrong"])
                .await
                .unwrap();
            c.checked(&[b"CLIENT", b"KILL", b"TYPE", b"master"])
                .await
                .unwrap();
        }
    };
    cut(&set.replicas[0]).await;
    write(300, "after-r1").await;
    cut(&set.replicas[1]).await;
    write(200, "after-r2").await;
    let last = offset(&set.primary).await;
    let (y1, y2) = (
        offset(&set.replicas[0]).await,
        offset(&set.replicas[1]).await,
    );
    assert!(y1 < y2 && y2 < last, "{y1} {y2} {last}");
    let (pa, r2a) = (
        set.primary.target().address(),
        set.replicas[1].target().address(),
    );
    // The leader has seen the primary's last offset and each replica's.
    poll_until(
        "the last offsets reported",
        Duration::from_secs(20),
        || async {
            let n = nodes(&cli);
            (n.get(&pa)?.0 == last && n.get(&r2a)?.0 == y2).then_some(())
        },
    )
    .await
    .unwrap();
    set.primary.kill();
    // r1 may authenticate again (to whoever it is pointed at next).
    set.replicas[0]
        .cmd(&["CONFIG", "SET", "masterauth", ""])
        .await
        .unwrap();
    poll_until(
        "the primary reported dead",
        Duration::from_secs(20),
        || async {
            let n = nodes(&cli);
            (n.get(&pa)?.1 != "primary").then_some(())
        },
    )
    .await
    .unwrap();
    let (ok, doc) = failover(&cli, 5000).await;
    assert!(ok, "{doc:#}");
    assert_eq!(doc["findings"]["mode"], "forced", "{doc:#}");
    assert_eq!(
        doc["findings"]["promote"],
        r2a.as_str(),
        "the replica with the highest offset: {doc:#}"
    );
    assert_eq!(
        doc["findings"]["promoted_offset"],
        y2.to_string(),
        "{doc:#}"
    );
    assert_eq!(
        doc["findings"]["lost_bytes"],
        (last - y2).to_string(),
        "{doc:#}"
    );
    assert_eq!(
        set.replicas[1]
            .info("replication", "role")
            .await
            .unwrap()
            .unwrap(),
        "master"
    );
    // r1 follows the new primary and gets what it had missed.
    poll_until("r1 caught up from r2", Duration::from_secs(20), || async {
        let v = set.replicas[0].cmd(&["GET", "after-r1:299"]).await.ok()?;
        (v != Value::Bulk(None)).then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        set.replicas[1].cmd(&["GET", "after-r2:0"]).await.unwrap(),
        Value::Bulk(None),
        "what only the dead primary had is lost, as reported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_shard_fails_over_through_cluster_failover() {
    cluster_failover(RedisOptions::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valkey_cluster_shard_fails_over_through_cluster_failover() {
    cluster_failover(RedisOptions::default().valkey()).await;
}

async fn cluster_failover(servers: RedisOptions) {
    let ids = ["c1", "c2", "c3", "c4", "c5", "c6"];
    let fleet = FleetDir::new(&[1], &ids).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let cluster = fleetsnap_testkit::redis::RedisCluster::start_with(3, 1, servers)
        .await
        .unwrap();
    let coords = vec![coordinator.address.clone()];
    let mut agents = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut a = Agent::configure(
            &fleet,
            ids[i],
            &coords,
            &[Watched::new(format!("node{i}"), n.url(), "cc")],
            false,
        )
        .unwrap();
        a.start().unwrap();
        agents.push(a);
    }
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);
    let shard = cli.wait_for_shards(3, 2).await.unwrap().remove(0);
    let id = shard["id"].as_str().unwrap().to_string();
    let role_of = |address: &str| {
        let address = address.to_string();
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.target().address() == address)
            .unwrap();
        async move { node.info("replication", "role").await.unwrap().unwrap() }
    };
    let node = |role: &str| {
        shard["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["role"] == role)
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (old, replica) = (node("primary"), node("replica"));
    let cli2 = cli.clone();
    let (ok, doc) = tokio::task::spawn_blocking(move || {
        cli2.run_json(&[
            "runbook",
            "failover",
            "--cluster",
            "cc",
            "--shard",
            &id,
            "--yes",
            "--json",
        ])
        .unwrap()
    })
    .await
    .unwrap();
    if !ok {
        // What the nodes said about the manual failover.
        for n in &cluster.nodes {
            let log = std::fs::read_to_string(n.dir().join("redis.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- node {} ---\n{}",
                n.port(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            );
        }
    }
    assert!(ok, "{doc:#}");
    assert!(
        doc["steps"][0]["title"]
            .as_str()
            .unwrap()
            .contains("CLUSTER FAILOVER"),
        "{doc:#}"
    );
    assert_eq!(doc["findings"]["promote"], replica.as_str(), "{doc:#}");
    assert_eq!(role_of(&replica).await, "master");
    assert_eq!(role_of(&old).await, "slave");
    // The cluster itself agrees: the promoted node owns the shard's slots.
    let Value::Bulk(Some(nodes)) = cluster.nodes[0].cmd(&["CLUSTER", "NODES"]).await.unwrap()
    else {
        panic!("CLUSTER NODES");
    };
    let text = String::from_utf8_lossy(&nodes).into_owned();
    let line = text
        .lines()
        .find(|l| l.split(' ').nth(1).is_some_and(|a| a.starts_with(&replica)))
        .unwrap();
    assert!(line.contains("master"), "{text}");
}
