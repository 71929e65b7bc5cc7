//! `fleetsnap-agent report` against real nodes: what an agent will send the coordinator every second.

mod common;

use common::*;
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{RedisCluster, RedisServer, ReplicaSet, free_port};

async fn report(url: &str) -> serde_json::Value {
    agent(None, &["report", "--redis", url, "--json"])
        .await
        .ok()
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_and_replica_report_their_link_and_offsets() {
    let set = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
    for i in 0..100 {
        set.primary
            .cmd(&["SET", &format!("k{i}"), "v"])
            .await
            .unwrap();
    }
    set.wait_synced().await.unwrap();
    let p = report(&set.primary.url()).await;
    let r = report(&set.replicas[0].url()).await;
    assert_eq!(p["role"], "primary");
    assert_eq!(r["role"], "replica");
    assert_eq!(r["link_up"], true);
    assert_eq!(
        r["primary_address"],
        format!("127.0.0.1:{}", set.primary.port())
    );
    let replicas = p["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1);
    assert_eq!(
        replicas[0]["address"],
        format!("127.0.0.1:{}", set.replicas[0].port())
    );
    // Chained offsets: the replica's offset equals the primary's once synced.
    assert_eq!(r["master_repl_offset"], p["master_repl_offset"]);
    assert!(p["master_repl_offset"].as_u64().unwrap() > 0);
    assert_eq!(r["replid"], p["replid"]);
    assert_eq!(p["sync_allowed"], true);
    assert!(p["cluster_myid"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_nodes_report_their_shard_slots() {
    let cluster = RedisCluster::start(3, 1).await.unwrap();
    let mut by_slots: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut covered = 0u32;
    for n in &cluster.nodes {
        let r = report(&n.url()).await;
        let slots = r["slots"].as_array().unwrap().clone();
        assert!(!slots.is_empty(), "node {} reports no slots", n.port());
        if r["role"] == "primary" {
            covered += slots
                .iter()
                .map(|s| s[1].as_u64().unwrap() as u32 - s[0].as_u64().unwrap() as u32 + 1)
                .sum::<u32>();
        }
        by_slots
            .entry(serde_json::to_string(&slots).unwrap())
            .or_default()
            .push(r["role"].as_str().unwrap().to_string());
    }
    assert_eq!(
        covered, 16384,
        "the primaries' slots do not cover the key space"
    );
    // Three shards, each a primary and a replica reporting the same slot ranges.
    assert_eq!(by_slots.len(), 3);
    for roles in by_slots.values_mut() {
        roles.sort();
        assert_eq!(roles, &vec!["primary".to_string(), "replica".to_string()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sync_is_reported() {
    let renamed =
        RedisServer::start_with(RedisOptions::default().arg("rename-command", "PSYNC \"\""))
            .await
            .unwrap();
    assert_eq!(report(&renamed.url()).await["sync_allowed"], false);
    let acl = RedisServer::start_with(RedisOptions {
        acl_users: vec![
            "user nosync on >pw -@all +info +ping +command +acl|whoami +acl|dryrun".into(),
            "user sync on >pw -@all +info +ping +command +acl|whoami +acl|dryrun +psync".into(),
            "user quiet on >pw -@all +info +ping +command".into(),
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        report(&acl.url_as("nosync", "pw")).await["sync_allowed"],
        false
    );
    assert_eq!(
        report(&acl.url_as("sync", "pw")).await["sync_allowed"],
        true
    );
    assert!(report(&acl.url_as("quiet", "pw")).await["sync_allowed"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_node_is_reported_with_the_reason() {
    let port = free_port();
    let run = agent(
        None,
        &[
            "report",
            "--redis",
            &format!("redis://127.0.0.1:{port}"),
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    let j = run.json();
    assert_eq!(j["reachable"], false);
    assert!(
        j["error"]
            .as_str()
            .unwrap()
            .contains("check that redis-server is running"),
        "{j}"
    );
}
