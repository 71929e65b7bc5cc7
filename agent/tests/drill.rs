//! Restore drills through the real agent binary: a scratch redis-server loads a real backup and
//! what it serves is checked against the manifest.

mod common;

use common::*;
use fleetsnap_core::digest::{DatasetDigest, DigestAlg};
use fleetsnap_core::rdbread::{Item, RdbReader};
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{Dataset, RedisServer, write_dataset, write_extras};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_passes_on_a_good_backup_and_fails_on_a_tampered_one() {
    let server = RedisServer::start_with(RedisOptions::default())
        .await
        .unwrap();
    write_dataset(
        &server,
        &Dataset {
            small_keys: 3000,
            big_value_bytes: 200_000,
        },
    )
    .await
    .unwrap();
    write_extras(&server).await.unwrap();
    // Keys that expire between the backup and the drill: not served, yet part of the digest.
    for i in 0..20 {
        let k = format!("short:{i}");
        server.cmd(&["SET", &k, "v", "PX", "1500"]).await.unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/a", work.path().display());
    let id = backed_up(&server.url(), &dest).await;
    // Until the source itself has let every short-lived key go.
    fleetsnap_testkit::poll_until(
        "the short keys expired",
        std::time::Duration::from_secs(10),
        || async {
            let keys: Vec<String> = (0..20).map(|i| format!("short:{i}")).collect();
            let mut args = vec!["EXISTS"];
            args.extend(keys.iter().map(String::as_str));
            (server.cmd(&args).await.ok()? == fleetsnap_agent::redis::Value::Int(0)).then_some(())
        },
    )
    .await
    .unwrap();
    let scratch = work.path().join("scratch");
    let scratch_arg = scratch.display().to_string();
    let drill = || {
        let mut args: Vec<String> = ["drill", "--from", &dest, "--backup", &id, "--json"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(["--work-dir".to_string(), scratch_arg.clone()]);
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            agent(None, &refs).await
        }
    };

    let good = drill().await.ok().json();
    assert_eq!(good["ok"], true, "{good:#}");
    assert_eq!(good["digest_checked"], true);
    let dbs = good["dbs"].as_array().unwrap();
    assert!(dbs.len() >= 2, "the dataset spans databases: {good:#}");
    let expired: u64 = dbs
        .iter()
        .map(|d| d["keys_expired"].as_u64().unwrap())
        .sum();
    assert_eq!(
        expired, 20,
        "the short-lived keys expired before the drill: {good:#}"
    );
    for d in dbs {
        assert_eq!(d["digest_found"], d["digest_recorded"], "{d}");
        assert_eq!(
            d["keys_served"].as_u64().unwrap() + d["keys_expired"].as_u64().unwrap(),
            d["keys_recorded"].as_u64().unwrap()
        );
    }
    assert!(good["rto_seconds"].as_f64().unwrap() > 0.0);
    assert!(
        std::fs::read_dir(&scratch).unwrap().next().is_none(),
        "the scratch server's files are removed"
    );

    let manifest = files_under(&work.path().join("a"))
        .into_iter()
        .find(|f| f.ends_with("manifest.json"))
        .unwrap();
    let manifest = work.path().join("a").join(manifest);
    let original = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        good["dbs"][0]["digest_recorded"]
            .as_str()
            .unwrap()
            .starts_with("xxh3:"),
        "snapshots record XXH3 digests: {good:#}"
    );

    // A set recorded before the XXH3 digests, with SHA-256 ones, still drills: the digests are
    // taken again the way the manifest recorded them.
    let copy = work.path().join("copy.rdb");
    restored_to_file(&dest, &id, &copy).await;
    let mut sha = DatasetDigest::new(DigestAlg::Sha256);
    let mut r = RdbReader::new(std::fs::File::open(&copy).unwrap()).unwrap();
    while let Some(item) = r.next_item().unwrap() {
        if let Item::Entry(e) = item {
            let v = e.value().unwrap();
            sha.add(&e, &v);
        }
    }
    let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
    let sha = sha.finish();
    for (d, s) in m["shards"][0]["dbs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .zip(&sha)
    {
        assert_eq!(d["db"].as_u64(), Some(s.db));
        d["digest"] = s.digest.clone().into();
    }
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let old = drill().await.ok().json();
    assert_eq!(old["ok"], true, "{old:#}");
    for d in old["dbs"].as_array().unwrap() {
        assert_eq!(d["digest_recorded"].as_str().unwrap().len(), 64, "{d}");
        assert_eq!(d["digest_found"], d["digest_recorded"], "{d}");
    }

    // The manifest's digest no longer matches what the copy holds: the drill says so.
    let mut m: serde_json::Value = serde_json::from_str(&original).unwrap();
    let recorded = m["shards"][0]["dbs"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let last = recorded.len() - 1;
    let flipped = format!(
        "{}{}",
        &recorded[..last],
        if recorded.ends_with('0') { "1" } else { "0" }
    );
    m["shards"][0]["dbs"][0]["digest"] = flipped.into();
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let run = drill().await;
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    assert_eq!(j["ok"], false);
    let problems = j["problems"].to_string();
    assert!(problems.contains("does not match the digest"), "{problems}");
    std::fs::write(&manifest, original).unwrap();

    // One byte of the object changed: the copy is refused, and with no other region the drill
    // fails naming why.
    flip_byte(&work.path().join("a"), ".rdb.zst", 0.5);
    let run = drill().await;
    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("does not match its manifest") || run.stderr.contains("sha256"),
        "{}",
        run.stderr
    );
}
