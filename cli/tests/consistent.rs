//! A `consistent` window under a steady write load: the bounds check of docs/design.md §6.
//!
//! Writers increment one counter per shard of a 3-shard Redis Cluster in turn, each waiting for
//! the acknowledgement before the next, and record when each write was sent and acknowledged.
//! Restored from the backup (RDB plus tail, loaded by redis-server as an AOF directory), every
//! writer's counters must be exactly the state after some number `n` of its writes — the same
//! instant on every shard — with every write acknowledged before the pause among the first `n`
//! and none sent after the pause ended. The set restored online (RESTORE key by key, tails
//! replayed) into a 5-shard cluster holds the same data, and so does the source cluster after
//! `replace` restores of its primaries. It runs on Redis and on Valkey.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::fleet::{
    Agent, FleetDir, Logs, Placed, Watched, restore, restore_and_serve_as, single_node,
};
use fleetsnap_testkit::redis::{Flavour, RedisCluster, RedisOptions, RedisServer};
use fleetsnap_testkit::{assert_same_data_across, poll_until};

const WRITERS: usize = 4;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A key of writer `w` that the primary `p` owns.
async fn owned_key(p: &RedisServer, w: usize) -> String {
    for tag in 0.. {
        let key = format!("w{w}:{{t{tag}}}");
        if let Ok(Value::Int(0)) = p.cmd(&["INCRBY", &key, "0"]).await {
            return key;
        }
    }
    unreachable!()
}

/// One write: when it was sent, when it was acknowledged.
#[derive(Clone, Copy)]
struct Write {
    sent_us: i64,
    acked_us: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_window_restores_every_shard_to_one_instant() {
    consistent_window(Flavour::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consistent_window_of_a_valkey_cluster_restores_every_shard_to_one_instant() {
    consistent_window(Flavour::Valkey).await;
}

async fn consistent_window(flavour: Flavour) {
    let servers = RedisOptions {
        flavour,
        ..Default::default()
    };
    let ids = ["a1", "a2", "a3", "a4", "a5", "a6"];
    let fleet = FleetDir::new(&[1], &ids).unwrap();
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await.unwrap();
    let cluster = RedisCluster::start_with(3, 1, servers.clone())
        .await
        .unwrap();
    let coords = vec![coordinator.address.clone()];
    let mut agents = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut a = Agent::configure(
            &fleet,
            ids[i],
            &coords,
            &[Watched::new(format!("node{i}"), n.url(), "shop").started_by(&n.start_command())],
            false,
        )
        .unwrap();
        a.start().unwrap();
        agents.push(a);
    }
    let _logs = Logs::of(std::slice::from_ref(&coordinator), &agents);

    let region = fleet.path().join("region-a");
    let policy = format!(
        r#"
name = "cut"
clusters = ["shop"]
consistency = "consistent"
write_pause_budget_ms = 500
min_regions = 1

[[destinations]]
region = "a"
url = "file://{}"
"#,
        region.display()
    );
    cli.set_policy(fleet.path(), "cut", &policy).unwrap();
    cli.wait_for_shards(3, 2).await.unwrap();

    // The writers: each increments its counter on shard 0, 1, 2, 0, 1, … waiting for every
    // acknowledgement.
    let primaries = cluster.primaries().await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WRITERS).map(|_| AtomicUsize::new(0)).collect());
    let mut tasks = Vec::new();
    let mut keys: Vec<Vec<String>> = Vec::new();
    for w in 0..WRITERS {
        let mut mine = Vec::new();
        let mut conns = Vec::new();
        for p in &primaries {
            mine.push(owned_key(p, w).await);
            conns.push(p.conn().await.unwrap());
        }
        keys.push(mine.clone());
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            let mut log: Vec<Write> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let shard = log.len() % conns.len();
                let sent_us = now_us();
                let v = conns[shard]
                    .command(&[b"INCR", mine[shard].as_bytes()])
                    .await
                    .unwrap();
                let acked_us = now_us();
                let expected = (log.len() / conns.len() + 1) as i64;
                assert!(matches!(v, Value::Int(n) if n == expected), "{v:?}");
                log.push(Write { sent_us, acked_us });
                acked[w].store(log.len(), Ordering::Relaxed);
            }
            log
        }));
    }
    // Every writer well under way before the window, and well on after it: the cut falls inside
    // the load.
    let every_writer_past = |floor: Vec<usize>| {
        let acked = acked.clone();
        poll_until(
            "every writer's writes",
            Duration::from_secs(30),
            move || {
                let ok = acked
                    .iter()
                    .zip(&floor)
                    .all(|(a, f)| a.load(Ordering::Relaxed) >= f + 200);
                async move { ok.then_some(()) }
            },
        )
    };
    every_writer_past(vec![0; WRITERS]).await.unwrap();
    let (ok, doc) = cli.backup_run("cut").unwrap();
    every_writer_past(acked.iter().map(|a| a.load(Ordering::Relaxed)).collect())
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut logs = Vec::new();
    for t in tasks {
        logs.push(t.await.unwrap());
    }
    assert!(ok, "{doc}");
    assert_eq!(doc["consistency"], "consistent");
    let cut = &doc["cut"];
    let paused_at = cut["paused_at_us"].as_i64().unwrap();
    let released_by = paused_at + cut["round_us"].as_i64().unwrap();
    assert!(cut["pause_us"].as_u64().unwrap() > 0, "{cut}");
    let set = &doc["sets"][0];
    assert_eq!(set["state"], "complete", "{set}");
    assert!(set["write_pause_us"].as_u64().is_some(), "{set}");
    let id = doc["backup_id"].as_str().unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(region.join("shop").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["consistency"], "consistent");

    // Restore every shard and read the counters.
    let mut restored: Vec<RedisServer> = Vec::new();
    for (i, s) in doc["shards"].as_array().unwrap().iter().enumerate() {
        let shard = s["plan"]["shard"].as_str().unwrap().replace(',', "_");
        let entry = manifest["shards"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["shard"] == shard.as_str())
            .unwrap();
        assert!(entry["cut_offset"].as_u64().is_some(), "{entry}");
        eprintln!(
            "shard {shard}: snapshot at offset {}, cut at {}",
            entry["start_offset"], entry["cut_offset"]
        );
        assert!(
            entry["objects"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["kind"] == "tail"),
            "{entry}"
        );
        let from = format!("file://{}", region.display());
        restored.push(
            restore_and_serve_as(
                flavour,
                &["--from", &from, "--backup", &id, "--shard", &shard],
                &[],
                &fleet.path().join(format!("restored-{i}")),
                Placed::AofDir,
            )
            .await
            .unwrap(),
        );
    }
    let mut checked = 0;
    for (w, log) in logs.iter().enumerate() {
        let mut counters = Vec::new();
        for key in &keys[w] {
            let mut found = 0;
            for r in &restored {
                if let Value::Bulk(Some(b)) = r.cmd(&["GET", key]).await.unwrap() {
                    found = String::from_utf8_lossy(&b).parse::<usize>().unwrap();
                }
            }
            counters.push(found);
        }
        // Counters after `n` writes in turn: shard j holds ceil((n - j) / 3).
        let n: usize = counters.iter().sum();
        let shards = counters.len();
        let expected: Vec<usize> = (0..shards).map(|j| (n + shards - 1 - j) / shards).collect();
        assert_eq!(
            counters, expected,
            "writer {w}: the restored counters are no single instant of its writes"
        );
        let acked_before = log.iter().filter(|x| x.acked_us < paused_at).count();
        let sent_before_release = log.iter().filter(|x| x.sent_us <= released_by).count();
        eprintln!(
            "writer {w}: {n} of {} writes restored; {acked_before} acknowledged before the pause, {sent_before_release} sent before it ended",
            log.len()
        );
        assert!(
            acked_before <= n && n <= sent_before_release,
            "writer {w}: {n} writes restored; {acked_before} were acknowledged before the pause, {sent_before_release} sent before it ended"
        );
        assert!(
            n > 0 && n < log.len(),
            "writer {w}: the cut fell outside the load"
        );
        checked += 1;
    }
    assert_eq!(checked, WRITERS);

    // Online, key by key into a running cluster of another shape, tails replayed: the same data
    // as the shards restored one by one.
    let five = RedisCluster::start_with(5, 0, servers.clone())
        .await
        .unwrap();
    let from = format!("file://{}", region.display());
    // The set restored online into `url`: the agent's JSON report.
    let online = |url: String| -> serde_json::Value {
        let out = restore(
            &["--from", &from, "--backup", &id, "--online", &url, "--json"],
            &[],
        )
        .unwrap();
        serde_json::from_str(&out).unwrap()
    };
    let out = online(five.nodes[0].url());
    assert_eq!(out["shards"].as_array().unwrap().len(), 3, "{out:#}");
    let replayed: u64 = out["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["applied"]["tail_commands"].as_u64().unwrap())
        .sum();
    assert!(
        replayed > 0,
        "the writes after the snapshots are in the tails: {out:#}"
    );
    let expected: Vec<&RedisServer> = restored.iter().collect();
    let actual: Vec<&RedisServer> = five.nodes.iter().collect();
    assert_same_data_across(&expected, &actual).await.unwrap();

    // Into a cluster of the other server: Valkey 8.1's RDB 11 into Redis 7.0, which reads 10,
    // goes across versions (re-encoded for RESTORE); Redis 7.0's into Valkey as it is. The same
    // data either way.
    let other = match flavour {
        Flavour::Valkey => Flavour::Redis,
        _ => Flavour::Valkey,
    };
    let across = RedisCluster::start_with(
        3,
        0,
        RedisOptions {
            flavour: other,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let out = online(across.nodes[0].url());
    for s in out["shards"].as_array().unwrap() {
        assert_eq!(
            s["applied"]["across_versions"],
            flavour == Flavour::Valkey,
            "{out:#}"
        );
    }
    let nodes: Vec<&RedisServer> = across.nodes.iter().collect();
    assert_same_data_across(&expected, &nodes).await.unwrap();
    drop(nodes);
    drop(across);

    // One key of each source shard deleted from the target, then the set restored again, through
    // the agent and through the coordinator: every shard's missing key comes back, the keys
    // already there are left alone and counted, and the exit code says the restore is not whole.
    for through_coordinator in [false, true] {
        for s in &restored {
            let Value::Array(Some(scan)) = s.cmd(&["SCAN", "0", "COUNT", "100"]).await.unwrap()
            else {
                panic!("SCAN")
            };
            let Value::Array(Some(keys)) = &scan[1] else {
                panic!("SCAN keys")
            };
            let key = keys[0].text().unwrap();
            for n in &five.nodes {
                // Only the owner deletes it; the others answer MOVED.
                let _ = n.cmd(&["DEL", &key]).await;
            }
        }
        let said = if through_coordinator {
            let set = format!("shop/{id}");
            let target = five.nodes[0].url();
            let (ok, doc) = cli
                .run_json(&[
                    "restore", &set, "--mode", "online", "--target", &target, "--wait", "60",
                    "--json",
                ])
                .unwrap();
            assert!(!ok, "{doc:#}");
            doc.to_string()
        } else {
            restore(
                &[
                    "--from",
                    &from,
                    "--backup",
                    &id,
                    "--online",
                    &five.nodes[0].url(),
                ],
                &[],
            )
            .unwrap_err()
            .to_string()
        };
        assert!(
            said.contains("already existed") && said.contains("--replace-existing"),
            "{said}"
        );
        assert_same_data_across(&expected, &actual).await.unwrap();
    }

    // The restore-cluster runbook does the same through the coordinator. Into the five-shard
    // cluster while it still holds those keys, it stops at its first check and restores nothing.
    let set = format!("shop/{id}");
    let target = five.nodes[0].url();
    let runbook = [
        "runbook",
        "restore-cluster",
        "--set",
        &set,
        "--target",
        &target,
        "--yes",
        "--json",
    ];
    let (ok, rb) = cli.run_json(&runbook).unwrap();
    assert!(!ok, "{rb:#}");
    assert_eq!(rb["steps"][0]["ok"], false, "{rb:#}");
    assert!(
        rb["steps"][0]["outcome"]
            .as_str()
            .unwrap()
            .contains("wanted none"),
        "{rb:#}"
    );
    assert!(rb["steps"][1]["job"].is_null(), "{rb:#}");
    // Emptied, it is restored, tails replayed, and checked: the same data as the cut.
    for n in &five.nodes {
        n.cmd(&["FLUSHALL"]).await.unwrap();
    }
    let (ok, rb) = cli.run_json(&runbook).unwrap();
    assert!(ok, "{rb:#}");
    assert_eq!(rb["state"]["state"], "succeeded", "{rb:#}");
    let restored_step = rb["steps"][1]["outcome"].as_str().unwrap();
    assert!(
        restored_step.contains("of 3 shards") && !restored_step.contains("; 0 tail commands"),
        "{rb:#}"
    );
    assert_same_data_across(&expected, &actual).await.unwrap();

    // `replace`: each primary of the source cluster (which has moved on since) is stopped, given
    // its shard's RDB, started by a hook, checked and sent the tail: it holds the cut again.
    // One shard's entry loses its key counts, as in a set written before they were recorded:
    // its replace counts the keys of the copy instead.
    let manifest_path = region.join("shop").join(&id).join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    // Recorded even when empty: a replica may answer with an empty RDB at offset 0 and the whole
    // history as the tail.
    assert!(m["shards"][0]["dbs"].is_array(), "{m:#}");
    m["shards"][0].as_object_mut().unwrap().remove("dbs");
    std::fs::write(&manifest_path, serde_json::to_vec(&m).unwrap()).unwrap();
    // Through the coordinator: one replace job per shard, on the agent beside its primary.
    let (ok, jobs) = cli
        .run_json(&[
            "restore", &set, "--mode", "replace", "--wait", "120", "--json",
        ])
        .unwrap();
    assert!(ok, "{jobs:#}");
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs.len(), 3, "one job per shard: {jobs:#?}");
    let mut tails = 0;
    for j in jobs {
        let r = &j["report"];
        assert_eq!(r["keys_loaded"], r["keys_in_backup"], "{j:#}");
        tails += r["tail_commands"].as_u64().unwrap();
    }
    assert!(tails > 0);
    assert_same_data_across(&expected, &primaries)
        .await
        .unwrap();
}
