//! The key-by-key RDB reader against RDB files real Redis writes, and online restores (RESTORE key
//! by key into a running server) through the real agent binary.

mod common;

use common::*;
use fleetsnap_agent::redis::Value;
use fleetsnap_core::digest::DatasetDigest;
use fleetsnap_core::rdbread::{Item, RdbReader};
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{Dataset, RedisServer, assert_same_data, write_dataset, write_extras};

async fn varied_server(opts: RedisOptions) -> RedisServer {
    let s = RedisServer::start_with(opts).await.unwrap();
    write_dataset(
        &s,
        &Dataset {
            small_keys: 2000,
            big_value_bytes: 300_000,
        },
    )
    .await
    .unwrap();
    write_extras(&s).await.unwrap();
    s
}

/// Saves the server's dataset and reads its RDB: every key with its digest.
async fn saved(s: &RedisServer) -> (Vec<fleetsnap_core::rdbread::Entry>, Vec<Vec<u8>>, u16) {
    s.cmd(&["SAVE"]).await.unwrap();
    let file = std::fs::File::open(s.dir().join("dump.rdb")).unwrap();
    let mut r = RdbReader::new(file).unwrap();
    let version = r.version();
    let (mut entries, mut functions) = (Vec::new(), Vec::new());
    while let Some(item) = r.next_item().unwrap() {
        match item {
            Item::Entry(e) => entries.push(e),
            Item::Function(f) => functions.push(f),
            _ => {}
        }
    }
    (entries, functions, version)
}

fn digest(entries: &[fleetsnap_core::rdbread::Entry]) -> Vec<fleetsnap_core::digest::DbDigest> {
    let mut d = DatasetDigest::default();
    for e in entries {
        let v = e
            .value()
            .unwrap_or_else(|err| panic!("key {:?}: {err}", e.key_lossy()));
        d.add(e, &v);
    }
    d.finish()
}

#[tokio::test]
async fn every_key_reads_back_as_dump_gives_it_and_digests_ignore_encodings() {
    let source = varied_server(RedisOptions::default()).await;
    let (entries, functions, version) = saved(&source).await;
    assert!(entries.len() > 2000, "{}", entries.len());
    assert_eq!(functions.len(), 1);
    assert!(entries.iter().any(|e| e.db == 3));
    assert!(entries.iter().any(|e| e.expire_ms.is_some()));
    // The bytes kept for each key are exactly the value's serialization: DUMP gives the same.
    let mut c = source.conn().await.unwrap();
    for e in &entries {
        c.checked(&[b"SELECT", e.db.to_string().as_bytes()])
            .await
            .unwrap();
        let Value::Bulk(Some(dump)) = c.checked(&[b"DUMP", &e.key]).await.unwrap() else {
            panic!("no DUMP for {:?}", e.key_lossy());
        };
        assert_eq!(
            e.dump_payload(version),
            dump,
            "key {:?} (type {})",
            e.key_lossy(),
            e.rdb_type()
        );
    }
    // The same data held in the other encoding of every type digests the same.
    let other = RedisServer::start_with(
        RedisOptions::default()
            .arg("hash-max-listpack-entries", "0")
            .arg("set-max-intset-entries", "0")
            .arg("zset-max-listpack-entries", "0")
            .arg("list-max-listpack-size", "1")
            .arg("rdbcompression", "no"),
    )
    .await
    .unwrap();
    let id = backed_up(
        &source.url(),
        &format!("file://{}/region", other.dir().display()),
    )
    .await;
    // The manifest carries each database's key count and digest, computed while the snapshot
    // streamed: the same as read from the source's own RDB.
    let manifest = files_under(&other.dir().join("region"))
        .into_iter()
        .find(|f| f.ends_with("manifest.json"))
        .unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(other.dir().join("region").join(manifest)).unwrap())
            .unwrap();
    let dbs = &manifest["shards"][0]["dbs"];
    assert_eq!(dbs, &serde_json::to_value(digest(&entries)).unwrap());
    assert_eq!(
        dbs[0]["keys"].as_u64().unwrap() + dbs[1]["keys"].as_u64().unwrap(),
        entries.len() as u64
    );
    agent(
        None,
        &[
            "restore",
            "--from",
            &format!("file://{}/region", other.dir().display()),
            "--backup",
            &id,
            "--online",
            &other.url(),
        ],
    )
    .await
    .ok();
    assert_same_data(&source, &other).await.unwrap();
    let (again, functions_again, _) = saved(&other).await;
    assert_eq!(functions_again, functions);
    let differently_encoded = again
        .iter()
        .zip(&entries)
        .filter(|(a, b)| a.rdb_type() != b.rdb_type())
        .count();
    assert!(differently_encoded > 5, "{differently_encoded}");
    assert_eq!(digest(&again), digest(&entries));
    // A changed value changes the digest.
    other
        .cmd(&["HSET", "hash:small", "a", "changed"])
        .await
        .unwrap();
    let (changed, _, _) = saved(&other).await;
    assert_ne!(digest(&changed), digest(&entries));
}

#[tokio::test]
async fn online_restores_refuse_conflicts_filter_and_replace() {
    let source = varied_server(RedisOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let region = format!("file://{}/region", work.path().display());
    let id = backed_up(&source.url(), &region).await;
    let online = |target: String, extra: &'static [&'static str]| {
        let (region, id) = (region.clone(), id.clone());
        async move {
            let mut args = vec![
                "restore".to_string(),
                "--from".into(),
                region,
                "--backup".into(),
                id,
                "--online".into(),
                target,
                "--json".into(),
            ];
            args.extend(extra.iter().map(|s| s.to_string()));
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            agent(None, &refs).await
        }
    };

    // Only the hashes of db 0.
    let target = RedisServer::start().await.unwrap();
    let r = online(target.url(), &["--match", "hash:*", "--db", "0"])
        .await
        .ok()
        .json();
    assert_eq!(r["keys"], 2, "{r:#}");
    let keys = target.cmd(&["KEYS", "*"]).await.unwrap();
    let Value::Array(Some(mut keys)) = keys else {
        panic!("{keys:?}")
    };
    keys.sort_by_key(|k| k.text());
    assert_eq!(
        keys.iter().map(|k| k.text().unwrap()).collect::<Vec<_>>(),
        ["hash:big", "hash:small"]
    );

    // Into a server already holding some of the keys, changed: refused for those keys, named,
    // and every other key restored. Plain strings go in batches (MSETNX); a batch holding a
    // string that exists is sent again key by key.
    target
        .cmd(&["HSET", "hash:small", "a", "local change"])
        .await
        .unwrap();
    target.cmd(&["DEL", "hash:big"]).await.unwrap();
    target
        .cmd(&["SET", "str:embstr", "local string"])
        .await
        .unwrap();
    let r = online(target.url(), &[]).await;
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("already existed")
            && r.stderr.contains("hash:small")
            && r.stderr.contains("str:embstr"),
        "{}",
        r.stderr
    );
    assert_eq!(
        target.cmd(&["HGET", "hash:small", "a"]).await.unwrap(),
        Value::Bulk(Some(b"local change".to_vec()))
    );
    assert_eq!(
        target.cmd(&["GET", "str:embstr"]).await.unwrap(),
        Value::Bulk(Some(b"local string".to_vec()))
    );
    // Every key but the two refused is there: the batch with the local string was not lost.
    let Value::Int(source_keys) = source.cmd(&["DBSIZE"]).await.unwrap() else {
        panic!("DBSIZE")
    };
    let Value::Int(target_keys) = target.cmd(&["DBSIZE"]).await.unwrap() else {
        panic!("DBSIZE")
    };
    assert_eq!(target_keys, source_keys, "{}", r.stderr);
    assert_eq!(
        target.cmd(&["GET", "str:raw"]).await.unwrap(),
        source.cmd(&["GET", "str:raw"]).await.unwrap()
    );
    // With --replace-existing the backup wins everywhere.
    online(target.url(), &["--replace-existing"]).await.ok();
    assert_same_data(&source, &target).await.unwrap();

    // An unreachable target is named.
    let r = online("redis://127.0.0.1:1".into(), &[]).await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("127.0.0.1:1"), "{}", r.stderr);
}
