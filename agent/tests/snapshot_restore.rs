//! End to end: a varied dataset snapshotted through every source to Garage, moto and a file region,
//! restored from each, loaded into a fresh redis-server and compared key by key with the source.

mod common;

use common::*;
use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::redis::{RedisOptions, TlsFiles};
use fleetsnap_testkit::{
    Dataset, RedisServer, ReplicaSet, assert_same_data, filled_server, write_dataset,
};

fn backup_id(run: &Run) -> String {
    run.json()["backup_id"]
        .as_str()
        .expect("backup_id")
        .to_string()
}

fn assert_all_complete(run: &Run, n: usize) {
    let j = run.json();
    let dests = j["destinations"].as_array().expect("destinations");
    assert_eq!(dests.len(), n);
    for d in dests {
        assert_eq!(d["result"], "complete", "destination failed: {d}");
        assert!(d["stored_bytes"].as_u64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_source_lands_in_every_region_and_restores_equal() {
    let regions = Regions::start().await;
    let set = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
    let keys = write_dataset(&set.primary, &Dataset::default())
        .await
        .unwrap();
    assert!(keys > 100_000);
    set.wait_synced().await.unwrap();
    let replica = &set.replicas[0];
    let work = tempfile::tempdir().unwrap();
    let file_dest = format!("file://{}/region-c", work.path().display());
    let creds = Some(regions.creds.as_path());

    // bgsave-file writes the replica's dump.rdb, which the file source then reads.
    let rdb_path = replica.dir().join("dump.rdb");
    let file_source = format!("file:{}", rdb_path.display());
    for (n, source) in ["replication", "bgsave-file", file_source.as_str()]
        .into_iter()
        .enumerate()
    {
        let prefix = format!("p{n}");
        let (g, m) = (regions.garage_dest(&prefix), regions.moto_dest(&prefix));
        let run = agent(
            creds,
            &[
                "snapshot",
                "--redis",
                &replica.url(),
                "--source",
                source,
                "--to",
                &g,
                "--to",
                &m,
                "--to",
                &file_dest,
                "--cluster",
                "orders",
                "--shard",
                "s0",
                "--json",
            ],
        )
        .await
        .ok();
        assert_all_complete(&run, 3);
        let id = backup_id(&run);
        assert_eq!(run.json()["source_kind"], source.split(':').next().unwrap());
        for dest in [&g, &m, &file_dest] {
            let listed = agent(creds, &["ls", "--from", dest, "--json"])
                .await
                .ok()
                .json();
            assert!(
                listed
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|b| b["backup_id"] == id.as_str()),
                "{id} not listed in {dest}"
            );
            agent(creds, &["verify", "--from", dest, "--backup", &id])
                .await
                .ok();
            let restored = restore_and_load(creds, &[dest], &id, work.path(), &[]).await;
            assert_same_data(&set.primary, &restored)
                .await
                .unwrap_or_else(|e| panic!("{source} via {dest}: {e}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_falls_back_past_a_damaged_and_a_dead_region() {
    let server = filled_server(RedisOptions::default(), 2000, 1 << 20)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let (a, b) = (
        format!("file://{}/a", work.path().display()),
        format!("file://{}/b", work.path().display()),
    );
    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &a,
            "--to",
            &b,
            "--json",
        ],
    )
    .await
    .ok();
    let id = backup_id(&run);
    // Flip one byte of region a's copy: its sha256 no longer matches the manifest.
    flip_byte(&work.path().join("a"), ".rdb.zst", 0.5);
    let verify = agent(None, &["verify", "--from", &a, "--backup", &id]).await;
    assert_eq!(verify.code, 1);
    assert!(
        verify.stderr.contains("does not match its manifest"),
        "{}",
        verify.stderr
    );
    let dead = "s3://fleetsnap-gone?region=x&endpoint=http://127.0.0.1:9&profile=none";
    // The target directory does not exist yet: restore creates it.
    let file = work.path().join("new/dir/r.rdb");
    let run = agent(
        None,
        &[
            "restore",
            "--from",
            dead,
            "--from",
            &a,
            "--from",
            &b,
            "--backup",
            &id,
            "--to-file",
            &file.display().to_string(),
            "--json",
        ],
    )
    .await
    .ok();
    let j = run.json();
    assert_eq!(j["destination"].as_str().unwrap(), b);
    assert_eq!(j["skipped"].as_array().unwrap().len(), 2, "{j}");
    let restored = RedisServer::start_with(RedisOptions {
        rdb: Some(file),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_same_data(&server, &restored).await.unwrap();

    // `replace` streams the copy into the node as it starts. A node with data of its own, saved.
    let target = RedisServer::start().await.unwrap();
    target.cmd(&["SET", "mine", "kept"]).await.unwrap();
    target.cmd(&["SAVE"]).await.unwrap();
    let (url, start) = (target.url(), target.start_command());
    let replace_args = |from: &[&str]| -> Vec<String> {
        let mut args = vec!["restore".to_string()];
        for f in from {
            args.extend(["--from".to_string(), f.to_string()]);
        }
        args.extend(
            [
                "--backup",
                &id,
                "--replace",
                &url,
                "--start",
                &start,
                "--json",
            ]
            .map(String::from),
        );
        args
    };
    let replace = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        agent(None, &args).await
    };
    // Only the damaged copy: the node refuses the load cut short, and comes back on its own data.
    let run = replace(replace_args(&[&a])).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("does not match its manifest")
            && run.stderr.contains("started again on its previous data"),
        "{}",
        run.stderr
    );
    assert_eq!(target.cmd(&["DBSIZE"]).await.unwrap(), Value::Int(1));
    assert_eq!(
        target.cmd(&["GET", "mine"]).await.unwrap(),
        Value::Bulk(Some(b"kept".to_vec()))
    );
    // A dead region, the damaged one, then a good one: the node loads the good copy.
    let run = replace(replace_args(&[dead, &a, &b])).await.ok();
    let j = run.json();
    assert_eq!(j["read"]["destination"].as_str().unwrap(), b, "{j}");
    assert_eq!(j["read"]["skipped"].as_array().unwrap().len(), 2, "{j}");
    assert!(
        j["read"]["skipped"][1][1]
            .as_str()
            .unwrap()
            .contains("does not match its manifest"),
        "{j}"
    );
    assert_same_data(&server, &target).await.unwrap();
    // The node's data file is the restored copy (not the pipe it loaded from), and its own is kept.
    let data = target.dir().join("dump.rdb");
    assert!(std::fs::metadata(&data).unwrap().is_file());
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        std::fs::metadata(work.path().join("new/dir/r.rdb"))
            .unwrap()
            .len()
    );
    assert!(target.dir().join("dump.rdb.fleetsnap-old").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_snapshot_needs_the_identity_to_restore() {
    use age::secrecy::ExposeSecret;
    let server = filled_server(RedisOptions::default(), 5000, 1 << 20)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let key_file = work.path().join("key.txt");
    std::fs::write(
        &key_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let recipient = identity.to_public().to_string();
    let dest = format!("file://{}/enc", work.path().display());
    let run = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &dest,
            "--encrypt-to",
            &recipient,
            "--compress",
            "zstd:5",
            "--json",
        ],
    )
    .await
    .ok();
    let id = backup_id(&run);
    assert!(
        files_under(&work.path().join("enc"))
            .iter()
            .any(|f| f.ends_with(".rdb.zst.age"))
    );
    let file = work.path().join("r.rdb");
    let no_key = agent(
        None,
        &[
            "restore",
            "--from",
            &dest,
            "--backup",
            &id,
            "--to-file",
            &file.display().to_string(),
        ],
    )
    .await;
    assert_eq!(no_key.code, 1);
    assert!(no_key.stderr.contains("--identity"), "{}", no_key.stderr);
    assert!(!file.exists());
    let k = key_file.display().to_string();
    agent(
        None,
        &["verify", "--from", &dest, "--backup", &id, "--identity", &k],
    )
    .await
    .ok();
    let restored = restore_and_load(None, &[&dest], &id, work.path(), &["--identity", &k]).await;
    assert_same_data(&server, &restored).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_a_minimal_acl_user_are_enough() {
    let certs_dir = tempfile::tempdir().unwrap();
    let tls = TlsFiles::generate(certs_dir.path()).unwrap();
    let opts = RedisOptions {
        tls: Some(tls),
        acl_users: vec![
            "user backup on >backup-pw -@all +psync +replconf +sync +info +ping".into(),
        ],
        ..Default::default()
    };
    let server = filled_server(opts, 3000, 1 << 20).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/tls", work.path().display());
    let url = server
        .url()
        .replace("rediss://", "rediss://backup:backup-pw@");
    round_trip(&server, work.path(), &dest, &["--redis", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_directory_is_stored_as_rdb_plus_tail() {
    let server = filled_server(
        RedisOptions::default()
            .arg("appendonly", "yes")
            .arg("appenddirname", "appendonlydir"),
        3000,
        1 << 20,
    )
    .await
    .unwrap();
    server.cmd(&["BGREWRITEAOF"]).await.unwrap();
    fleetsnap_testkit::poll_until(
        "AOF rewrite",
        std::time::Duration::from_secs(60),
        || async {
            (server
                .info("persistence", "aof_rewrite_in_progress")
                .await
                .ok()??
                == "0"
                && server
                    .info("persistence", "aof_rewrite_scheduled")
                    .await
                    .ok()??
                    == "0")
                .then_some(())
        },
    )
    .await
    .unwrap();
    // Written after the rewrite: these live only in the incremental AOF.
    for i in 0..500 {
        server
            .cmd(&["SET", &format!("after:{i}"), "tail"])
            .await
            .unwrap();
    }
    server.cmd(&["INCRBY", "k:1", "0"]).await.ok();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/aof", work.path().display());
    let source = format!("file:{}", server.dir().join("appendonlydir").display());
    let run = agent(
        None,
        &["snapshot", "--source", &source, "--to", &dest, "--json"],
    )
    .await
    .ok();
    let id = backup_id(&run);
    let file = work.path().join("aof.rdb");
    restored_to_file(&dest, &id, &file).await;
    let tail = work.path().join("aof.rdb.tail");
    assert!(tail.exists(), "no tail restored");
    let restored = RedisServer::start_with(RedisOptions {
        rdb: Some(file),
        ..Default::default()
    })
    .await
    .unwrap();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "redis-cli -p {} --pipe < {}",
            restored.port(),
            tail.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_same_data(&server, &restored).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shards_snapshot_from_their_replicas() {
    let cluster = fleetsnap_testkit::RedisCluster::start(3, 1).await.unwrap();
    let primaries = cluster.primaries().await.unwrap();
    assert_eq!(primaries.len(), 3);
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/cluster", work.path().display());
    for (n, primary) in primaries.iter().enumerate() {
        // Find a hash tag this primary owns, then write keys under it.
        let mut c = primary.conn().await.unwrap();
        let mut tag = None;
        for t in 0..1000 {
            let probe = format!("{{t{t}}}:probe");
            if let Value::Simple(_) = c.command(&[b"SET", probe.as_bytes(), b"x"]).await.unwrap() {
                tag = Some(t);
                break;
            }
        }
        let tag = tag.expect("a hash tag owned by this primary");
        for i in 0..2000 {
            c.command(&[
                b"HSET",
                format!("{{t{tag}}}:h:{i}").as_bytes(),
                b"n",
                i.to_string().as_bytes(),
            ])
            .await
            .unwrap();
        }
        // The replica of this primary.
        let mut replica = None;
        for node in &cluster.nodes {
            if node
                .info("replication", "master_port")
                .await
                .unwrap()
                .as_deref()
                == Some(primary.port().to_string().as_str())
            {
                replica = Some(node);
            }
        }
        let replica = replica.expect("each shard has a replica");
        let want = primary
            .info("replication", "master_repl_offset")
            .await
            .unwrap()
            .unwrap();
        fleetsnap_testkit::poll_until(
            "replica caught up",
            std::time::Duration::from_secs(30),
            || async {
                (replica
                    .info("replication", "master_repl_offset")
                    .await
                    .ok()??
                    == want)
                    .then_some(())
            },
        )
        .await
        .unwrap();
        let shard = format!("shard-{n}");
        let run = agent(
            None,
            &[
                "snapshot",
                "--redis",
                &replica.url(),
                "--to",
                &dest,
                "--cluster",
                "c1",
                "--shard",
                &shard,
                "--json",
            ],
        )
        .await
        .ok();
        let j = run.json();
        assert_eq!(j["source"], format!("127.0.0.1:{}", replica.port()));
        let restored = restore_and_load(
            None,
            &[&dest],
            &backup_id(&run),
            work.path(),
            &["--shard", &shard],
        )
        .await;
        assert_same_data(primary, &restored).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_based_replication_sends_a_length_prefixed_payload() {
    // With repl-diskless-sync off the node writes the RDB to disk first and sends `$<len>`,
    // keeping the link alive with newlines meanwhile; the default (diskless) sends `$EOF:<mark>`.
    let server = filled_server(
        RedisOptions {
            password: Some("pw-1".into()),
            ..Default::default()
        }
        .arg("repl-diskless-sync", "no"),
        20_000,
        2 << 20,
    )
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/disk", work.path().display());
    let pw_file = work.path().join("pw");
    std::fs::write(&pw_file, "pw-1\n").unwrap();
    let url = format!(
        "redis://127.0.0.1:{}?password_file={}",
        server.port(),
        pw_file.display()
    );
    round_trip(&server, work.path(), &dest, &["--redis", &url]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalives_while_the_node_waits_to_fork_are_skipped() {
    // With a diskless sync delay the node answers FULLRESYNC, then sends a bare newline every
    // second until it forks.
    let server = filled_server(
        RedisOptions::default().arg("repl-diskless-sync-delay", "3"),
        5000,
        1 << 20,
    )
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/ka", work.path().display());
    let report = round_trip(
        &server,
        work.path(),
        &dest,
        &["--redis", &server.url(), "--idle-timeout-seconds", "2"],
    )
    .await;
    // The snapshot outlived the idle timeout: only the keepalives kept it going.
    let took = report["destinations"][0]["duration_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        took >= 2.0,
        "the node did not wait ({took}s): nothing was tested"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgsave_file_reuses_a_bgsave_in_progress() {
    // A slow BGSAVE already running when the agent arrives.
    let server = slow_rdb_server(3000, 500).await;
    server.cmd(&["BGSAVE"]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/reuse", work.path().display());
    let report = round_trip(
        &server,
        work.path(),
        &dest,
        &["--redis", &server.url(), "--source", "bgsave-file"],
    )
    .await;
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("reused"),
        "the running BGSAVE was not reused: {notes}"
    );
    assert_eq!(
        server
            .info("persistence", "rdb_saves")
            .await
            .unwrap()
            .as_deref(),
        Some("1"),
        "a second BGSAVE ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bgsave_file_does_not_mistake_a_diskless_sync_for_a_bgsave() {
    // A replication snapshot forks an RDB child that writes no file; bgsave-file arriving meanwhile
    // must wait for it and run its own BGSAVE.
    let server = slow_rdb_server(3000, 500).await;
    let work = tempfile::tempdir().unwrap();
    let sync_dest = format!("file://{}/sync", work.path().display());
    let url = server.url();
    let sync = tokio::spawn(async move {
        agent(None, &["snapshot", "--redis", &url, "--to", &sync_dest]).await
    });
    wait_for_rdb_child(&server).await;
    let dest = format!("file://{}/file", work.path().display());
    let report = round_trip(
        &server,
        work.path(),
        &dest,
        &["--redis", &server.url(), "--source", "bgsave-file"],
    )
    .await;
    assert!(
        !report["notes"].to_string().contains("reused"),
        "a diskless sync was taken for a BGSAVE: {report}"
    );
    assert!(server.dir().join("dump.rdb").exists());
    sync.await.unwrap().ok();
}
