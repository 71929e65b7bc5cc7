//! The `scan` source against a server that refuses what managed services refuse (`SYNC`, `PSYNC`
//! and `BGSAVE` renamed away): the snapshot restores equal key by key when nothing writes, and
//! under writes holds every key that was not written during the scan, each as it was; the
//! manifest and the report say the set is not one point in time. A service that grants a renamed
//! `PSYNC` is snapshotted through the replication source with `?psync_command=`; `--source auto`
//! scans only a node that refuses replication.

mod common;

use common::*;
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{Dataset, RedisServer, assert_same_data, write_dataset};

/// A server as a managed service offers it: no SYNC, PSYNC or BGSAVE.
async fn managed() -> RedisServer {
    RedisServer::start_with(
        RedisOptions::default()
            .arg("rename-command", "SYNC \"\"")
            .arg("rename-command", "PSYNC \"\"")
            .arg("rename-command", "BGSAVE \"\""),
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_sync_or_bgsave_is_backed_up_by_scan() {
    let server = managed().await;
    write_dataset(
        &server,
        &Dataset {
            small_keys: 20_000,
            big_value_bytes: 1 << 20,
        },
    )
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let dest = format!("file://{}", root.display());

    // Replication and bgsave-file are refused, by name.
    for source in ["replication", "bgsave-file"] {
        let r = agent(
            None,
            &[
                "snapshot",
                "--redis",
                &server.url(),
                "--source",
                source,
                "--to",
                &dest,
            ],
        )
        .await;
        assert_ne!(r.code, 0, "{source} worked against a server without it");
    }

    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--source",
            "scan",
            "--max-ops-per-sec",
            "200000",
            "--to",
            &dest,
            "--json",
        ],
    )
    .await
    .ok();
    let j = run.json();
    assert_eq!(j["source_kind"], "scan", "{j:#}");
    let id = j["backup_id"].as_str().unwrap().to_string();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("standalone").join(&id).join("manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["shards"][0]["source_kind"], "scan");
    assert!(
        j.to_string().contains("not one point in time"),
        "the report says what a scan snapshot is: {j:#}"
    );
    agent(None, &["verify", "--from", &dest, "--backup", &id])
        .await
        .ok();
    let restored = restore_and_load(None, &[&dest], &id, work.path(), &[]).await;
    assert_same_data(&server, &restored).await.unwrap();
}

/// `--source auto`: replication where the node allows it; a scan where it refuses, said in the
/// report's notes and recorded as a scan in the manifest; either restores equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_scans_only_the_node_that_refuses_replication() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let dest = format!("file://{}", root.display());
    let data = Dataset {
        small_keys: 2_000,
        big_value_bytes: 64 << 10,
    };
    for (refuses, server) in [
        (true, managed().await),
        (false, RedisServer::start().await.unwrap()),
    ] {
        write_dataset(&server, &data).await.unwrap();
        let j = agent(
            None,
            &[
                "snapshot",
                "--redis",
                &server.url(),
                "--source",
                "auto",
                "--to",
                &dest,
                "--json",
            ],
        )
        .await
        .ok()
        .json();
        let id = j["backup_id"].as_str().unwrap().to_string();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(root.join("standalone").join(&id).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let want = if refuses { "scan" } else { "replication" };
        assert_eq!(j["source_kind"], want, "{j:#}");
        assert_eq!(manifest["shards"][0]["source_kind"], want);
        let said = j["notes"].to_string();
        assert_eq!(
            said.contains("source auto") && said.contains("not one point in time"),
            refuses,
            "{j:#}"
        );
        let restored = restore_and_load(None, &[&dest], &id, work.path(), &[]).await;
        assert_same_data(&server, &restored).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_writes_a_scan_holds_every_key_not_written_meanwhile() {
    let server = managed().await;
    let mut c = server.conn().await.unwrap();
    for i in 0..30_000 {
        c.send(&[
            b"SET",
            format!("k:{i}").as_bytes(),
            format!("v{i}").as_bytes(),
        ])
        .await
        .unwrap();
    }
    for _ in 0..30_000 {
        c.read_value().await.unwrap();
    }
    // A writer rewrites keys of its own while the scan runs (slowed to let it).
    let writer = {
        let url = server.url();
        tokio::spawn(async move {
            let t = fleetsnap_agent::redis::RedisTarget::parse(&url).unwrap();
            let mut c = fleetsnap_agent::redis::Connection::connect(&t)
                .await
                .unwrap();
            let mut n = 0u64;
            let stop = std::time::Instant::now() + std::time::Duration::from_secs(3);
            while std::time::Instant::now() < stop {
                let k = format!("k:{}", n % 1000);
                c.checked(&[b"SET", k.as_bytes(), format!("w{n}").as_bytes()])
                    .await
                    .unwrap();
                n += 1;
            }
        })
    };
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", work.path().join("region").display());
    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--source",
            "scan",
            "--max-ops-per-sec",
            "20000",
            "--to",
            &dest,
            "--json",
        ],
    )
    .await
    .ok();
    writer.await.unwrap();
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let restored = restore_and_load(None, &[&dest], &id, work.path(), &[]).await;
    let mut r = restored.conn().await.unwrap();
    let mut s = server.conn().await.unwrap();
    // Keys the writer never touched: k:1000 and up, each equal to its one value.
    for i in (1000..30_000).step_by(7) {
        let k = format!("k:{i}");
        let a = r.command(&[b"GET", k.as_bytes()]).await.unwrap();
        let b = s.command(&[b"GET", k.as_bytes()]).await.unwrap();
        assert_eq!(a, b, "{k}");
    }
    // Keys it rewrote are there, each with one of the values it had.
    for i in 0..1000 {
        let k = format!("k:{i}");
        match r.command(&[b"GET", k.as_bytes()]).await.unwrap() {
            fleetsnap_agent::redis::Value::Bulk(Some(v)) => {
                let v = String::from_utf8(v).unwrap();
                assert!(v == format!("v{i}") || v.starts_with('w'), "{k} = {v}");
            }
            other => panic!("{k} is {other:?}"),
        }
    }
}

/// Cluster-aware: a Redis Cluster replica answers the scan of its shard's keys (after
/// `READONLY`), and a Valkey server is scanned like a Redis one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replica_and_a_valkey_server_are_scanned() {
    let cluster = fleetsnap_testkit::RedisCluster::start(3, 1).await.unwrap();
    // The first primary and its replica.
    let mut primary = None;
    for n in &cluster.nodes {
        if n.info("replication", "role").await.unwrap().as_deref() == Some("master") {
            primary = Some(n);
            break;
        }
    }
    let primary = primary.unwrap();
    let port = primary.port().to_string();
    let mut replica = None;
    for n in &cluster.nodes {
        if n.info("replication", "master_port")
            .await
            .unwrap()
            .as_deref()
            == Some(port.as_str())
        {
            replica = Some(n);
        }
    }
    let replica = replica.unwrap();
    let mut written = 0;
    for i in 0..2000 {
        // Keys another primary serves are refused (MOVED): only this shard's are written.
        if primary
            .cmd(&["SET", &format!("c:{i}"), &format!("v{i}")])
            .await
            .is_ok()
        {
            written += 1;
        }
    }
    assert!(written > 100);
    fleetsnap_testkit::poll_until(
        "the replica in sync",
        std::time::Duration::from_secs(20),
        || async {
            let a = primary
                .info("replication", "master_repl_offset")
                .await
                .ok()?;
            let b = replica
                .info("replication", "master_repl_offset")
                .await
                .ok()?;
            (a == b).then_some(())
        },
    )
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", work.path().join("region").display());
    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &replica.url(),
            "--source",
            "scan",
            "--to",
            &dest,
            "--json",
        ],
    )
    .await
    .ok();
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let restored = restore_and_load(None, &[&dest], &id, work.path(), &[]).await;
    assert!(matches!(
        restored.cmd(&["DBSIZE"]).await.unwrap(),
        fleetsnap_agent::redis::Value::Int(n) if n == written
    ));

    let valkey = RedisServer::start_with(RedisOptions::default().valkey())
        .await
        .unwrap();
    write_dataset(&valkey, &Dataset::default()).await.unwrap();
    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &valkey.url(),
            "--source",
            "scan",
            "--to",
            &dest,
            "--json",
        ],
    )
    .await
    .ok();
    let id = run.json()["backup_id"].as_str().unwrap().to_string();
    let file = work.path().join("valkey.rdb");
    let f = file.display().to_string();
    agent(
        None,
        &["restore", "--from", &dest, "--backup", &id, "--to-file", &f],
    )
    .await
    .ok();
    let loaded = RedisServer::start_with(RedisOptions {
        rdb: Some(file),
        flavour: fleetsnap_testkit::Flavour::Valkey,
        ..Default::default()
    })
    .await
    .unwrap();
    assert_same_data(&valkey, &loaded).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_psync_is_used_where_the_url_names_it() {
    let server = RedisServer::start_with(
        RedisOptions::default()
            .arg("rename-command", "SYNC \"\"")
            .arg("rename-command", "PSYNC XPSYNC-fleetsnap"),
    )
    .await
    .unwrap();
    write_dataset(&server, &Dataset::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", work.path().join("region").display());
    let refused = agent(None, &["snapshot", "--redis", &server.url(), "--to", &dest]).await;
    assert_ne!(
        refused.code, 0,
        "PSYNC is renamed: the plain name is refused"
    );
    let url = format!("{}?psync_command=XPSYNC-fleetsnap", server.url());
    let id = backed_up(&url, &dest).await;
    let restored = restore_and_load(None, &[&dest], &id, work.path(), &[]).await;
    assert_same_data(&server, &restored).await.unwrap();
}
