//! `consistent` windows under the failures they must survive, on a real 3-shard Redis Cluster
//! with an agent per node: a shard failing over while the window waits for its cut, and the
//! coordinator leader killed while the window runs. Each window must end with a complete set
//! that restores to the data, never a set reported complete that is not. A runbook whose leader
//! is killed as it starts is finished by the next leader.

use std::path::Path;
use std::time::Duration;

use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::data::{assert_same_data, assert_same_data_across};
use fleetsnap_testkit::fleet::{
    Agent, Cli, Coordinator, FleetDir, Logs, Placed, Watched, restore_and_serve, single_node,
};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisCluster, RedisServer};

const AGENTS: [&str; 6] = ["a1", "a2", "a3", "a4", "a5", "a6"];
/// Keys per shard; with `rdb-key-save-delay` at 20 ms, the slow shard's snapshot takes 20 s,
/// longer than `promote` can take.
const KEYS: usize = 1000;

fn addr(s: &RedisServer) -> String {
    format!("127.0.0.1:{}", s.port())
}

/// Writes `KEYS` keys that primary `p` owns (one hash tag it serves), in one MSET.
async fn fill(p: &RedisServer, name: &str) {
    let mut tag = String::new();
    for t in 0.. {
        tag = format!("{{{name}{t}}}");
        // A key another primary serves is refused (MOVED).
        if p.cmd(&["SET", &format!("{tag}:probe"), "x"]).await.is_ok() {
            break;
        }
    }
    let mut args = vec!["MSET".to_string()];
    for i in 0..KEYS {
        args.push(format!("{tag}:{i}"));
        args.push(format!("value-{i}-{}", "x".repeat(64)));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    p.cmd(&args).await.unwrap();
}

/// The replica of primary `p`, once in sync with it.
async fn replica_of<'a>(cluster: &'a RedisCluster, p: &RedisServer) -> &'a RedisServer {
    let port = p.port().to_string();
    let mut found = None;
    for n in &cluster.nodes {
        if n.info("replication", "master_port")
            .await
            .unwrap()
            .as_deref()
            == Some(port.as_str())
        {
            found = Some(n);
        }
    }
    let r = found.expect("every primary has a replica");
    poll_until("the replica in sync", Duration::from_secs(20), || async {
        let a = p.info("replication", "master_repl_offset").await.ok()?;
        let b = r.info("replication", "master_repl_offset").await.ok()?;
        (a == b).then_some(())
    })
    .await
    .unwrap();
    r
}

/// Promotes replica `r` with `CLUSTER FAILOVER`. A manual failover that does not finish within
/// Redis's own 5 s limit (a loaded machine) is given up by Redis; the replica then takes over
/// without an election, so the history still changes exactly once. At most 16 s.
async fn promote(r: &RedisServer) {
    let promoted = || async {
        (r.info("replication", "role").await.ok()?.as_deref() == Some("master")).then_some(())
    };
    for (how, wait) in [
        (&["CLUSTER", "FAILOVER"][..], 6),
        (&["CLUSTER", "FAILOVER", "TAKEOVER"], 10),
    ] {
        if let Err(e) = r.cmd(how).await {
            // Promoted just after the last poll gave up: a master refuses the command.
            if promoted().await.is_some() {
                return;
            }
            panic!("{how:?} refused by replica {}: {e}", r.port());
        }
        if poll_until("the replica promoted", Duration::from_secs(wait), promoted)
            .await
            .is_ok()
        {
            return;
        }
    }
    panic!(
        "replica {} was not promoted by CLUSTER FAILOVER nor by TAKEOVER",
        r.port()
    );
}

struct Fleet {
    cluster: RedisCluster,
    primaries: Vec<usize>,
    agents: Vec<Agent>,
    region: std::path::PathBuf,
}

/// The cluster, filled, with shard 0's replica made slow; an agent per node; the policy `cut`.
async fn fleet(fleet: &FleetDir, coordinators: &[String], cli: &Cli) -> Fleet {
    let cluster = RedisCluster::start(3, 1).await.unwrap();
    let mut primaries = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        if n.info("replication", "role").await.unwrap().as_deref() == Some("master") {
            primaries.push(i);
        }
    }
    for (k, &i) in primaries.iter().enumerate() {
        fill(&cluster.nodes[i], &format!("s{k}")).await;
    }
    // Shard 0's snapshot is slow, so the window is still waiting for its cut for seconds.
    let slow = replica_of(&cluster, &cluster.nodes[primaries[0]]).await;
    slow.cmd(&["CONFIG", "SET", "rdb-key-save-delay", "20000"])
        .await
        .unwrap();
    let mut agents = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut a = Agent::configure(
            fleet,
            AGENTS[i],
            coordinators,
            &[Watched::new(format!("node{i}"), n.url(), "shop")],
            false,
        )
        .unwrap();
        a.start().unwrap();
        agents.push(a);
    }
    let region = fleet.path().join("region-a");
    let policy = format!(
        "name = \"cut\"\nclusters = [\"shop\"]\nconsistency = \"consistent\"\n\
         write_pause_budget_ms = 500\nmin_regions = 1\n\n\
         [[destinations]]\nregion = \"a\"\nurl = \"file://{}\"\n",
        region.display()
    );
    cli.set_policy(fleet.path(), "cut", &policy).unwrap();
    poll_until(
        "three shards, each replica in sync",
        Duration::from_secs(30),
        || async {
            let s = cli.json(&["status", "--json"]).ok()?;
            let shards = s["clusters"][0]["shards"].as_array()?.clone();
            (shards.len() == 3
                && shards.iter().all(|sh| {
                    sh["nodes"].as_array().is_some_and(|n| {
                        n.len() == 2 && n.iter().all(|n| n["lag_bytes"].as_u64().unwrap_or(0) == 0)
                    })
                }))
            .then_some(())
        },
    )
    .await
    .unwrap();
    Fleet {
        cluster,
        primaries,
        agents,
        region,
    }
}

/// The window's shard whose chosen node (rank 1) is `node`.
fn shard_planned_on<'a>(doc: &'a serde_json::Value, node: &str) -> Option<&'a serde_json::Value> {
    doc["shards"].as_array()?.iter().find(|s| {
        s["plan"]["nodes"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n["rank"] == 1 && n["address"] == node))
    })
}

/// Polls the window until it is done.
async fn done(cli: &Cli, window: &str) -> serde_json::Value {
    poll_until("the window done", Duration::from_secs(90), || async {
        let doc = cli.json(&["backup", "show", window, "--json"]).ok()?;
        (doc["done"] == true).then_some(doc)
    })
    .await
    .unwrap()
}

/// Restores shard `shard` of set `id` as an AOF directory and starts a server on it.
async fn restored(fleet: &FleetDir, region: &Path, id: &str, shard: &str) -> RedisServer {
    let from = format!("file://{}", region.display());
    restore_and_serve(
        &["--from", &from, "--backup", id, "--shard", shard],
        &[],
        &fleet.path().join(format!("restored-{shard}")),
        Placed::AofDir,
    )
    .await
    .unwrap()
}

fn storage_shard(s: &serde_json::Value) -> String {
    s["plan"]["shard"].as_str().unwrap().replace(',', "_")
}

#[tokio::test]
async fn a_shard_that_fails_over_while_the_window_waits_for_its_cut_is_read_again_on_its_new_history()
 {
    let dir = FleetDir::new(&[1], &AGENTS).unwrap();
    let (coordinator, cli) = single_node(&dir, &Default::default()).await.unwrap();
    let coords = vec![coordinator.address.clone()];
    let f = fleet(&dir, &coords, &cli).await;
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &f.agents);
    let p1 = &f.cluster.nodes[f.primaries[1]];
    let r1 = replica_of(&f.cluster, p1).await;

    let opened = cli
        .json(&["backup", "run", "--policy", "cut", "--json"])
        .unwrap();
    let window = opened["window"].as_u64().unwrap().to_string();
    // Shard 1's snapshot is stored and its stream flows; shard 0's is still being read.
    poll_until("shard 1 synced", Duration::from_secs(30), || async {
        let doc = cli.json(&["backup", "show", &window, "--json"]).ok()?;
        let s = shard_planned_on(&doc, &addr(r1))?;
        (!s["synced"].is_null() && doc["cut"].is_null()).then_some(())
    })
    .await
    .unwrap();
    // The replica takes over: it drops the streams it serves, the agent's among them.
    promote(r1).await;
    let during = cli.json(&["backup", "show", &window, "--json"]).unwrap();
    assert!(
        during["cut"].is_null(),
        "the promotion must come while the window waits for its cut (shard 0 is slow): {during:#}"
    );

    let doc = done(&cli, &window).await;
    let set = &doc["sets"][0];
    assert_eq!(set["state"], "complete", "{doc:#}");
    assert!(!doc["cut"].is_null(), "{doc:#}");
    let s1 = shard_planned_on(&doc, &addr(r1)).unwrap();
    let failures = s1["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().contains("the same node once more")),
        "{s1:#}"
    );
    // Read again from the same node, on the history it started as the new primary.
    let entry = &s1["state"]["entry"];
    assert_eq!(entry["source_node"], addr(r1).as_str(), "{s1:#}");
    let new_history = r1
        .info("replication", "master_replid")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(entry["replid"], new_history.as_str(), "{s1:#}");

    // Both the failed-over shard and the slow one restore to their data.
    let id = doc["backup_id"].as_str().unwrap();
    let r = restored(&dir, &f.region, id, &storage_shard(s1)).await;
    assert_same_data(r1, &r).await.unwrap();
    let p0 = &f.cluster.nodes[f.primaries[0]];
    let s0 = shard_planned_on(&doc, &addr(replica_of(&f.cluster, p0).await)).unwrap();
    let r = restored(&dir, &f.region, id, &storage_shard(s0)).await;
    assert_same_data(p0, &r).await.unwrap();
}

#[tokio::test]
async fn a_leader_killed_while_a_window_runs_does_not_lose_the_set() {
    let dir = FleetDir::new(&[1, 2, 3], &AGENTS).unwrap();
    let initial = Coordinator::addresses(3);
    let mut coordinators: Vec<Coordinator> = initial
        .iter()
        .map(|(id, _)| Coordinator::configure(&dir, *id, &initial, &Default::default()).unwrap())
        .collect();
    for c in &mut coordinators {
        c.start().await.unwrap();
    }
    let addresses: Vec<String> = initial.iter().map(|(_, a)| a.clone()).collect();
    let cli = dir.cli(&addresses);
    let f = fleet(&dir, &addresses, &cli).await;
    let _logs = Logs::of(&coordinators, &f.agents);

    let opened = cli
        .json(&["backup", "run", "--policy", "cut", "--json"])
        .unwrap();
    let window = opened["window"].as_u64().unwrap().to_string();
    // Mid-window: some shard synced, the cut not yet taken (shard 0 is slow).
    poll_until("the window under way", Duration::from_secs(30), || async {
        let doc = cli.json(&["backup", "show", &window, "--json"]).ok()?;
        let synced = doc["shards"]
            .as_array()?
            .iter()
            .any(|s| !s["synced"].is_null());
        (synced && doc["cut"].is_null()).then_some(())
    })
    .await
    .unwrap();
    let status = cli.json(&["cluster", "status", "--json"]).unwrap();
    let old = status["leader_id"].as_u64().unwrap();
    let i = coordinators.iter().position(|c| c.id == old).unwrap();
    coordinators[i].kill();
    let survivors: Vec<String> = coordinators
        .iter()
        .filter(|c| c.id != old)
        .map(|c| c.address.clone())
        .collect();
    let cli = cli.to(&survivors);

    let doc = done(&cli, &window).await;
    assert_eq!(doc["sets"][0]["state"], "complete", "{doc:#}");
    assert!(!doc["cut"].is_null(), "{doc:#}");
    let leader = cli.json(&["cluster", "status", "--json"]).unwrap()["leader_id"]
        .as_u64()
        .unwrap();
    assert_ne!(leader, old);
    let id = doc["backup_id"].as_str().unwrap().to_string();
    let list = cli.json(&["backup", "list", "--json"]).unwrap();
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|s| s["backup_id"] == id.as_str() && s["state"] == "complete"),
        "{list:#}"
    );
    // Every shard restores to its primary's data.
    for s in doc["shards"].as_array().unwrap() {
        let chosen = s["plan"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["rank"] == 1)
            .unwrap()["address"]
            .as_str()
            .unwrap()
            .to_string();
        let mut primary = None;
        for &p in &f.primaries {
            let n = &f.cluster.nodes[p];
            if addr(replica_of(&f.cluster, n).await) == chosen {
                primary = Some(n);
            }
        }
        let r = restored(&dir, &f.region, &id, &storage_shard(s)).await;
        assert_same_data(primary.unwrap(), &r).await.unwrap();
        // The restored shard holds its keys, not only an empty server's.
        let Value::Int(keys) = r.cmd(&["DBSIZE"]).await.unwrap() else {
            panic!("DBSIZE")
        };
        assert!(keys as usize > KEYS, "{keys}");
    }

    // A runbook whose leader is killed while it runs: the killed coordinator comes back, the
    // restore-cluster runbook starts into a new cluster, and the leader that started it is killed
    // at once. The next leader carries on from the step in the log and the runbook succeeds.
    coordinators[i].start().await.unwrap();
    let cli = cli.to(&addresses);
    poll_until(
        "every coordinator caught up",
        Duration::from_secs(30),
        || async {
            let s = cli.json(&["cluster", "status", "--json"]).ok()?;
            let last = s["last_log_index"].as_u64()?;
            let members = s["members"].as_array()?;
            (members.len() == 3
                && members
                    .iter()
                    .all(|m| m["matched_index"].as_u64() == Some(last)))
            .then_some(())
        },
    )
    .await
    .unwrap();
    let target = RedisCluster::start(3, 0).await.unwrap();
    let set = format!("shop/{id}");
    let (_, started) = cli
        .run_json(&[
            "runbook",
            "restore-cluster",
            "--set",
            &set,
            "--target",
            &target.nodes[0].url(),
            "--yes",
            "--wait",
            "0",
            "--json",
        ])
        .unwrap();
    assert_eq!(started["state"]["state"], "running", "{started:#}");
    let runbook = started["id"].as_u64().unwrap().to_string();
    let at_start = cli.json(&["cluster", "status", "--json"]).unwrap();
    let starter = at_start["leader_id"].as_u64().unwrap();
    let start_term = at_start["term"].as_u64().unwrap();
    let k = coordinators.iter().position(|c| c.id == starter).unwrap();
    coordinators[k].kill();
    let survivors: Vec<String> = coordinators
        .iter()
        .filter(|c| c.id != starter)
        .map(|c| c.address.clone())
        .collect();
    let cli = cli.to(&survivors);
    let ended = poll_until("the runbook ended", Duration::from_secs(60), || async {
        let doc = cli.json(&["runbook", "show", &runbook, "--json"]).ok()?;
        (doc["state"]["state"] != "running").then_some(doc)
    })
    .await
    .unwrap();
    assert_eq!(ended["state"]["state"], "succeeded", "{ended:#}");
    let leader = cli.json(&["cluster", "status", "--json"]).unwrap()["leader_id"]
        .as_u64()
        .unwrap();
    assert_ne!(leader, starter);
    // Its last step was handed out by the next leader, in a later term.
    let last_job = ended["steps"][2]["job"].as_u64().unwrap().to_string();
    let job = cli.json(&["job", "show", &last_job]).unwrap();
    assert!(
        job["term"].as_u64().unwrap() > start_term,
        "{job:#} {ended:#}"
    );
    let primaries: Vec<&RedisServer> = f.primaries.iter().map(|&p| &f.cluster.nodes[p]).collect();
    let restored: Vec<&RedisServer> = target.nodes.iter().collect();
    assert_same_data_across(&primaries, &restored)
        .await
        .unwrap();
}
