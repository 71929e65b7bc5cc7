//! A real fleet: three coordinators, four agents, a 3-shard Redis Cluster with a replica each and
//! a primary/replica pair. The fleet view must match what Redis says; a SIGKILLed leader must be
//! replaced and every agent must report to the new one within 5 s; a job issued before the kill
//! must end once; the old leader must come back as a follower with its log; coordinators must be
//! added and removed while agents report.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::fleet::Agent;
use fleetsnap_testkit::fleet::{Coordinator, CoordinatorOptions, FleetDir, Logs, Watched, bin};
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{RedisCluster, RedisServer, ReplicaSet, poll_until};
use serde_json::Value as Json;

const AGENTS: [&str; 4] = ["host-a", "host-b", "host-c", "host-d"];

/// What Redis itself says about a node.
#[derive(Debug, PartialEq)]
struct Truth {
    role: String,
    offset: u64,
    primary: Option<String>,
}

async fn truth(n: &RedisServer) -> anyhow::Result<Truth> {
    let role = n.info("replication", "role").await?.unwrap_or_default();
    let (offset, primary) = if role == "slave" {
        let host = n
            .info("replication", "master_host")
            .await?
            .unwrap_or_default();
        let port = n
            .info("replication", "master_port")
            .await?
            .unwrap_or_default();
        (
            n.info("replication", "slave_repl_offset").await?,
            Some(format!("{host}:{port}")),
        )
    } else {
        (n.info("replication", "master_repl_offset").await?, None)
    };
    Ok(Truth {
        role: if role == "slave" {
            "replica"
        } else {
            "primary"
        }
        .into(),
        offset: offset.unwrap_or_default().parse()?,
        primary,
    })
}

/// Slot ranges per primary address, from `CLUSTER NODES` as Redis prints it.
async fn cluster_slots(n: &RedisServer) -> anyhow::Result<BTreeMap<String, Vec<(u64, u64)>>> {
    let Value::Bulk(Some(text)) = n.cmd(&["CLUSTER", "NODES"]).await? else {
        anyhow::bail!("CLUSTER NODES gave no text");
    };
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&text).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if !f[2].contains("master") {
            continue;
        }
        let addr = f[1].split('@').next().unwrap_or_default().to_string();
        let ranges = f[8..]
            .iter()
            .filter(|s| !s.starts_with('['))
            .map(|s| match s.split_once('-') {
                Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                None => (s.parse().unwrap(), s.parse().unwrap()),
            })
            .collect();
        out.insert(addr, ranges);
    }
    Ok(out)
}

fn addr(n: &RedisServer) -> String {
    format!("127.0.0.1:{}", n.port())
}

fn nodes_of(status: &Json) -> Vec<&Json> {
    status["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["shards"].as_array().into_iter().flatten())
        .flat_map(|s| s["nodes"].as_array().into_iter().flatten())
        .collect()
}

fn reporting_agents(status: &Json) -> BTreeSet<String> {
    status["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| {
            a["connected"] == true && a["last_report_age_ms"].as_u64().is_some_and(|ms| ms < 2500)
        })
        .map(|a| a["agent"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The cluster called `name` in a status document.
fn cluster_named<'a>(status: &'a Json, name: &str) -> &'a Json {
    status["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {status:#}"))
}

/// The voting coordinators, as the leader lists them.
fn voters(cli: &fleetsnap_testkit::fleet::Cli) -> BTreeSet<u64> {
    let members = cli.json(&["cluster", "status", "--json"]).unwrap();
    members["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["voter"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect()
}

fn all_agents() -> BTreeSet<String> {
    AGENTS.iter().map(|a| a.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_reports_its_real_topology_and_survives_a_leader_kill() {
    let fleet = FleetDir::new(&[1, 2, 3, 4], &AGENTS).unwrap();
    let cluster = RedisCluster::start(3, 1).await.unwrap();
    let pair = ReplicaSet::start(
        1,
        // The job's snapshot waits for the replica's fork: it is still running when the leader dies.
        RedisOptions::default().arg("repl-diskless-sync-delay", "4"),
    )
    .await
    .unwrap();
    for i in 0..500 {
        pair.primary
            .cmd(&["SET", &format!("session:{i}"), &"x".repeat(100)])
            .await
            .unwrap();
    }
    pair.wait_synced().await.unwrap();

    let initial = Coordinator::addresses(3);
    let opts = CoordinatorOptions {
        snapshot_every: 10,
        ..Default::default()
    };
    let mut coordinators: Vec<Coordinator> = initial
        .iter()
        .map(|(id, _)| Coordinator::configure(&fleet, *id, &initial, &opts).unwrap())
        .collect();
    for c in &mut coordinators {
        c.start().await.unwrap();
    }
    let addresses: Vec<String> = initial.iter().map(|(_, a)| a.clone()).collect();

    // Agents: two cluster nodes each for the first three, the pair for the fourth.
    let mut agents = Vec::new();
    for (i, id) in AGENTS.iter().enumerate() {
        let watched: Vec<Watched> = if i < 3 {
            [i, i + 3]
                .iter()
                .map(|&n| Watched::new(format!("orders-{n}"), cluster.nodes[n].url(), "orders"))
                .collect()
        } else {
            vec![
                Watched::new("sessions-primary", pair.primary.url(), "sessions"),
                Watched::new("sessions-replica", pair.replicas[0].url(), "sessions"),
            ]
        };
        let mut a = Agent::configure(&fleet, id, &addresses, &watched, false).unwrap();
        a.start().unwrap();
        agents.push(a);
    }
    let mut logs = Logs::of(&coordinators, &agents);
    // The CLI starts at a follower or the leader, whichever is first: it must find the leader.
    let cli = fleet.cli(&addresses);

    // 1. The fleet view is the real topology with the real offsets.
    let status = poll_until("all agents reporting", Duration::from_secs(30), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        (reporting_agents(&s) == all_agents() && nodes_of(&s).len() == 8).then_some(s)
    })
    .await
    .unwrap();
    let orders = cluster_named(&status, "orders");
    assert_eq!(orders["mode"], "redis-cluster");
    let slots = cluster_slots(&cluster.nodes[0]).await.unwrap();
    let shards = orders["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 3, "{orders:#}");
    for shard in shards {
        let nodes = shard["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2, "{shard:#}");
        let primary = nodes[0]["address"].as_str().unwrap();
        assert_eq!(nodes[0]["role"], "primary");
        let got: Vec<(u64, u64)> = shard["slots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r[0].as_u64().unwrap(), r[1].as_u64().unwrap()))
            .collect();
        assert_eq!(Some(&got), slots.get(primary), "slots of {primary}");
        assert_eq!(nodes[1]["role"], "replica");
        assert_eq!(nodes[1]["replicating_from"].as_str(), Some(primary));
    }
    let sessions = cluster_named(&status, "sessions");
    assert_eq!(sessions["mode"], "replication");
    let s = &sessions["shards"][0]["nodes"];
    assert_eq!(s[0]["address"].as_str(), Some(addr(&pair.primary).as_str()));
    assert_eq!(s[0]["agent"], "host-d");
    assert_eq!(
        s[1]["address"].as_str(),
        Some(addr(&pair.replicas[0]).as_str())
    );
    // Offsets and roles as Redis reports them, when Redis gave the same answers just before and
    // just after the status (retried: primaries ping their replicas every 10 s, which moves
    // offsets, and a report may predate the latest ping).
    let every: Vec<&RedisServer> = cluster
        .nodes
        .iter()
        .chain([&pair.primary, &pair.replicas[0]])
        .collect();
    poll_until(
        "status offsets equal INFO",
        Duration::from_secs(30),
        || async {
            let mut before = Vec::new();
            for n in &every {
                before.push(truth(n).await.ok()?);
            }
            let s = cli.json(&["status", "--json"]).ok()?;
            let mut after = Vec::new();
            for n in &every {
                after.push(truth(n).await.ok()?);
            }
            if before != after {
                return None;
            }
            let nodes = nodes_of(&s);
            for (n, t) in every.iter().zip(&after) {
                let v = nodes.iter().find(|v| v["address"] == addr(n))?;
                let seen = Truth {
                    role: v["role"].as_str()?.to_string(),
                    offset: v["offset"].as_u64()?,
                    primary: v["replicating_from"].as_str().map(str::to_string),
                };
                if &seen != t {
                    eprintln!("not yet: {} status {seen:?} redis {t:?}", addr(n));
                    return None;
                }
            }
            Some(())
        },
    )
    .await
    .unwrap();
    // The table prints too.
    let table = cli.run(&["status"]).unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("cluster orders (redis-cluster, 3 shards)"),
        "{table}"
    );
    assert!(table.contains("sessions-replica"), "{table}");

    // 2. A job, then the leader dies while the agent runs it.
    let backups = fleet.path().join("backups");
    let dest = format!("file://{}", backups.display());
    let created = cli
        .json(&[
            "job",
            "snapshot",
            "--agent",
            "host-d",
            "--instance",
            "sessions-replica",
            "--to",
            &dest,
            "--json",
        ])
        .unwrap();
    let job = created["job"].as_u64().unwrap().to_string();
    poll_until("job dispatched", Duration::from_secs(10), || async {
        let j = cli.json(&["job", "show", &job]).ok()?;
        (j["state"]["state"] == "running").then_some(())
    })
    .await
    .unwrap();
    // Every agent keeps a spare connection to every coordinator: the re-home below needs no new
    // TLS handshakes.
    for c in &coordinators {
        let one = cli.to(std::slice::from_ref(&c.address));
        poll_until("spare connections", Duration::from_secs(20), || async {
            let s = one.json(&["cluster", "status", "--local", "--json"]).ok()?;
            (s["spare_agents"].as_u64()? as usize == all_agents().len()).then_some(())
        })
        .await
        .unwrap();
    }
    let before = cli.json(&["cluster", "status", "--json"]).unwrap();
    let old = before["leader_id"].as_u64().unwrap();
    let log_before = before["last_log_index"].as_u64().unwrap();
    let old_i = coordinators.iter().position(|c| c.id == old).unwrap();
    coordinators[old_i].kill();
    let killed = Instant::now();
    eprintln!("killed leader {old} at {:?}", std::time::SystemTime::now());
    let survivors: Vec<String> = coordinators
        .iter()
        .filter(|c| c.id != old)
        .map(|c| c.address.clone())
        .collect();
    let cli2 = cli.to(&survivors);
    let (new_leader, rehomed) = poll_until("agents re-homed", Duration::from_secs(20), || async {
        let s = cli2.json(&["status", "--json"]).ok()?;
        let leader = s["leader"].as_u64()?;
        (leader != old && reporting_agents(&s) == all_agents()).then(|| (leader, killed.elapsed()))
    })
    .await
    .unwrap();
    eprintln!(
        "leader {old} killed; coordinator {new_leader} leads, every agent reports to it after {rehomed:?}"
    );
    assert!(
        rehomed <= Duration::from_secs(5),
        "agents took {rehomed:?} to report to the new leader"
    );

    // The job ends once: succeeded, handed out once, one backup in the destination.
    let done = poll_until("job done", Duration::from_secs(60), || async {
        let j = cli2.json(&["job", "show", &job]).ok()?;
        (j["state"]["state"] == "done").then_some(j)
    })
    .await
    .unwrap();
    assert_eq!(done["state"]["outcome"], "succeeded", "{done:#}");
    assert_eq!(done["dispatches"], 1, "{done:#}");
    let ids: Vec<_> = std::fs::read_dir(backups.join("sessions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        ids,
        [done["state"]["backup_id"].as_str().unwrap()],
        "one backup, once"
    );
    let verify = std::process::Command::new(bin("fleetsnap-agent"))
        .args(["verify", "--from", &dest, "--backup", &ids[0]])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // Enough entries for the new leader to snapshot and drop the log the old leader lacks:
    // it must catch up by snapshot.
    for i in 0..12 {
        let o = cli2
            .run(&[
                "job",
                "snapshot",
                "--agent",
                "host-a",
                "--instance",
                &format!("missing-{i}"),
                "--to",
                &dest,
            ])
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let leader_view = poll_until(
        "leader compacted its log",
        Duration::from_secs(30),
        || async {
            let s = cli2.json(&["cluster", "status", "--json"]).ok()?;
            (s["snapshot_index"].as_u64()? > log_before + 10).then_some(s)
        },
    )
    .await
    .unwrap();

    // 3. The old leader returns as a follower, with its log, and catches up.
    coordinators[old_i].start().await.unwrap();
    let old_cli = cli.to(&[coordinators[old_i].address.clone()]);
    let first = poll_until("old leader answers", Duration::from_secs(10), || async {
        old_cli
            .json(&["cluster", "status", "--local", "--json"])
            .ok()
    })
    .await
    .unwrap();
    assert!(
        first["last_log_index"].as_u64().unwrap() >= log_before,
        "the restarted node lost log entries: {first:#} (had {log_before})"
    );
    let target = leader_view["applied_index"].as_u64().unwrap();
    poll_until(
        "old leader caught up as a follower",
        Duration::from_secs(30),
        || async {
            let s = old_cli
                .json(&["cluster", "status", "--local", "--json"])
                .ok()?;
            (s["leader_id"] == new_leader && s["applied_index"].as_u64()? >= target).then_some(())
        },
    )
    .await
    .unwrap();

    // 4. Add a fourth coordinator, then remove one, while agents report.
    let mut fourth = Coordinator::configure(&fleet, 4, &[], &opts).unwrap();
    logs.0.push(fourth.log.clone());
    fourth.start().await.unwrap();
    let all: Vec<String> = coordinators.iter().map(|c| c.address.clone()).collect();
    let cli_all = cli.to(&all);
    let o = cli_all
        .run(&["cluster", "add-node", "4", &fourth.address])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(voters(&cli_all), BTreeSet::from([1, 2, 3, 4]));
    let fourth_cli = cli.to(&[fourth.address.clone()]);
    poll_until(
        "new node has the state",
        Duration::from_secs(30),
        || async {
            let s = fourth_cli
                .json(&["cluster", "status", "--local", "--json"])
                .ok()?;
            (s["leader_id"] == new_leader && s["applied_index"].as_u64()? >= target).then_some(())
        },
    )
    .await
    .unwrap();
    let follower = [1, 2, 3].into_iter().find(|&i| i != new_leader).unwrap();
    let o = cli_all
        .run(&["cluster", "remove-node", &follower.to_string()])
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let now = voters(&cli_all);
    assert!(!now.contains(&follower) && now.contains(&4), "{now:?}");
    // Agents never stopped reporting.
    let s = cli_all.json(&["status", "--json"]).unwrap();
    assert_eq!(reporting_agents(&s), all_agents(), "{s:#}");
    drop(logs);
    fourth.kill();
}
