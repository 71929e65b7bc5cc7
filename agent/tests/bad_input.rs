//! Every bad input gets a clear error naming the input and the fix, a non-zero exit, and never a
//! manifest for something incomplete.

mod common;

use common::*;
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{RedisServer, filled_server, free_port};

fn no_manifest_under(root: &std::path::Path) {
    let files = files_under(root);
    assert!(
        !files.iter().any(|f| f.ends_with("manifest.json")),
        "a manifest was written: {files:?}"
    );
    assert!(
        !files.iter().any(|f| f.ends_with(".rdb.zst")),
        "an object was left visible: {files:?}"
    );
}

async fn small_server(opts: RedisOptions) -> RedisServer {
    filled_server(opts, 1000, 1000).await.unwrap()
}

/// Snapshots `url` into a fresh file region and expects a refusal: exit 1, every needle in the
/// error, nothing visible in the region. Returns the error output.
async fn refused_snapshot(url: &str, needles: &[&str]) -> String {
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/r", work.path().display());
    let run = agent(None, &["snapshot", "--redis", url, "--to", &dest]).await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "{needle:?} missing from: {}",
            run.stderr
        );
    }
    no_manifest_under(work.path());
    run.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis() {
    let address = format!("127.0.0.1:{}", free_port());
    refused_snapshot(
        &format!("redis://{address}"),
        &[&address, "check that redis-server is running"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password() {
    let server = small_server(RedisOptions {
        password: Some("right".into()),
        ..Default::default()
    })
    .await;
    let wrong = refused_snapshot(
        &format!("redis://:wrong@127.0.0.1:{}", server.port()),
        &["refused", "password"],
    )
    .await;
    assert!(
        !wrong.contains("wrong"),
        "the password leaked into the error: {wrong}"
    );
    refused_snapshot(
        &format!("redis://127.0.0.1:{}", server.port()),
        &["NOAUTH", "password"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_without_psync() {
    let server = small_server(RedisOptions {
        acl_users: vec!["user reader on >pw ~* +@read +info +ping".into()],
        ..Default::default()
    })
    .await;
    refused_snapshot(
        &server.url_as("reader", "pw"),
        &["NOPERM", "+psync", "bgsave-file"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_renamed_or_refused() {
    let server = small_server(RedisOptions::default().arg("rename-command", "PSYNC \"\"")).await;
    refused_snapshot(
        &server.url(),
        &["refuses replication", "--source bgsave-file"],
    )
    .await;
    // The advised fallback works on the same node.
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/r", work.path().display());
    agent(
        None,
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--source",
            "bgsave-file",
            "--to",
            &dest,
        ],
    )
    .await
    .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_disconnecting_mid_transfer() {
    // A slow RDB writer keeps the transfer running when the node dies.
    let mut server = slow_rdb_server(1000, 2000).await;
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}/r", work.path().display());
    let url = server.url();
    let run =
        tokio::spawn(
            async move { agent(None, &["snapshot", "--redis", &url, "--to", &dest]).await },
        );
    wait_for_rdb_child(&server).await;
    server.kill();
    let run = run.await.unwrap();
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("closed the connection") && run.stderr.contains("check its log"),
        "{}",
        run.stderr
    );
    no_manifest_under(work.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rdb_is_refused_everywhere() {
    let regions = Regions::start().await;
    let server = small_server(RedisOptions::default()).await;
    server.cmd(&["SAVE"]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(server.dir().join("dump.rdb")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x04;
    let corrupt = work.path().join("corrupt.rdb");
    std::fs::write(&corrupt, bytes).unwrap();
    let dest = format!("file://{}/r", work.path().display());
    let run = agent(
        Some(&regions.creds),
        &[
            "snapshot",
            "--source",
            &format!("file:{}", corrupt.display()),
            "--to",
            &dest,
            "--to",
            &regions.garage_dest("c"),
            "--to",
            &regions.moto_dest("c"),
        ],
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("checksum mismatch")
            && run.stderr.contains(&corrupt.display().to_string()),
        "{}",
        run.stderr
    );
    no_manifest_under(&work.path().join("r"));
    for r in [&regions.garage.region, &regions.moto.region] {
        let keys = r.keys(BUCKET).await.unwrap();
        assert!(keys.is_empty(), "objects left in {}: {keys:?}", r.endpoint);
        assert_eq!(
            r.open_uploads(BUCKET).await.unwrap(),
            0,
            "multipart upload left open in {}",
            r.endpoint
        );
    }
}

/// Credentials for the `stalled` profile.
fn stalled_creds(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("stalled-credentials");
    std::fs::write(
        &p,
        "[stalled]\naws_access_key_id = stalled\naws_secret_access_key = stalled\n",
    )
    .unwrap();
    p
}

/// A TCP server that accepts connections and never answers: an S3 region that stalls.
/// The thread blocks in `accept` and ends with the test process.
fn stalled_endpoint() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_region_spools_then_fails_alone() {
    let server = filled_server(RedisOptions::default(), 50_000, 128 << 20)
        .await
        .unwrap();
    let port = stalled_endpoint();
    let work = tempfile::tempdir().unwrap();
    let good = format!("file://{}/good", work.path().display());
    let stalled =
        format!("s3://stalled-bucket?region=x&endpoint=http://127.0.0.1:{port}&profile=stalled");
    let spool = work.path().join("spool");
    let creds = stalled_creds(work.path());
    let run = agent(
        Some(&creds),
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &good,
            "--to",
            &stalled,
            "--compress",
            "none",
            "--spool-dir",
            &spool.display().to_string(),
            "--spool-max",
            "32MiB",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    let d = j["destinations"].as_array().unwrap();
    assert_eq!(d[0]["result"], "complete");
    assert_eq!(d[1]["result"], "failed");
    assert!(
        d[1]["error"].as_str().unwrap().contains("--spool-max"),
        "{}",
        d[1]
    );
    // Redis kept its replica link for the whole snapshot and the good region restores.
    let restored = restore_and_load(
        None,
        &[&good],
        j["backup_id"].as_str().unwrap(),
        work.path(),
        &[],
    )
    .await;
    fleetsnap_testkit::assert_same_data(&server, &restored)
        .await
        .unwrap();
    assert!(files_under(&spool).is_empty(), "spool files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_disk_full() {
    let server = filled_server(RedisOptions::default(), 50_000, 64 << 20)
        .await
        .unwrap();
    let port = stalled_endpoint();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("tiny-disk");
    std::fs::create_dir(&spool).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&spool)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a 2 MiB tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            std::process::Command::new("umount")
                .arg(&self.0)
                .status()
                .ok();
        }
    }
    let _unmount = Unmount(spool.clone());
    let stalled =
        format!("s3://stalled-bucket?region=x&endpoint=http://127.0.0.1:{port}&profile=stalled");
    let creds = stalled_creds(work.path());
    let run = agent(
        Some(&creds),
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &stalled,
            "--compress",
            "none",
            "--spool-dir",
            &spool.display().to_string(),
            "--json",
        ],
    )
    .await;
    // The only destination failed: exit 1, the reason names the spool directory and the fix.
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    let err = j["destinations"][0]["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("spool disk is full") && err.contains(&spool.display().to_string()),
        "{err}"
    );
    assert!(
        run.stderr.contains("stored in no destination"),
        "{}",
        run.stderr
    );
    assert!(files_under(&spool).is_empty(), "spool files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_access_denied_missing_bucket_and_region_down() {
    let regions = Regions::start().await;
    let norights = regions.garage.key_read_only(BUCKET).unwrap();
    let creds = fleetsnap_testkit::credentials_file(
        regions.dir.path(),
        &[&regions.garage.region, &regions.moto.region, &norights],
    )
    .unwrap();
    let server = small_server(RedisOptions::default()).await;
    let work = tempfile::tempdir().unwrap();
    let good = format!("file://{}/good", work.path().display());
    let denied = norights.dest(BUCKET, "denied");
    let missing = regions.moto.region.dest("no-such-bucket", "x");
    let down = format!(
        "s3://{BUCKET}?region=garage&endpoint=http://127.0.0.1:{}&profile=garage",
        free_port()
    );
    let run = agent(
        Some(&creds),
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &good,
            "--to",
            &denied,
            "--to",
            &missing,
            "--to",
            &down,
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    let j = run.json();
    let d = j["destinations"].as_array().unwrap();
    assert_eq!(d[0]["result"], "complete");
    let err = |i: usize| d[i]["error"].as_str().unwrap_or_default().to_string();
    assert!(
        err(1).contains("access denied") && err(1).contains("profile="),
        "{}",
        err(1)
    );
    assert!(
        err(2).contains("no-such-bucket") && err(2).contains("does not exist"),
        "{}",
        err(2)
    );
    assert!(err(3).contains("cannot be reached"), "{}", err(3));
    // Only the good region holds a manifest; every destination failing is a failure.
    let all_bad = agent(
        Some(&creds),
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--to",
            &denied,
            "--to",
            &down,
        ],
    )
    .await;
    assert_eq!(all_bad.code, 1, "{}", all_bad.stderr);
    assert!(
        regions
            .garage
            .region
            .keys(BUCKET)
            .await
            .unwrap()
            .iter()
            .all(|k| !k.ends_with("manifest.json"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_name_the_fix() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["snapshot", "--redis", "http://x", "--to", "file:///tmp/x"],
            "expected redis://",
        ),
        (
            &[
                "snapshot",
                "--redis",
                "redis://127.0.0.1",
                "--to",
                "ftp://x",
            ],
            "expected file:///PATH",
        ),
        (
            &[
                "snapshot",
                "--redis",
                "redis://127.0.0.1",
                "--to",
                "file:///tmp/x",
                "--compress",
                "gzip",
            ],
            "zstd:LEVEL",
        ),
        (
            &[
                "snapshot",
                "--redis",
                "redis://127.0.0.1",
                "--to",
                "file:///tmp/x",
                "--encrypt-to",
                "nope",
            ],
            "age1",
        ),
        (
            &[
                "snapshot",
                "--redis",
                "redis://127.0.0.1",
                "--to",
                "file:///tmp/x",
                "--source",
                "sync",
            ],
            "bgsave-file",
        ),
        (
            &[
                "snapshot",
                "--redis",
                "redis://127.0.0.1",
                "--to",
                "file:///tmp/x",
                "--shard",
                "a/b",
            ],
            "shard name",
        ),
        (
            &["verify", "--from", "file:///tmp/x", "--backup", "latest"],
            "20261121T053729Z-1a2b3c",
        ),
    ];
    for (args, needle) in cases {
        let run = agent(None, args).await;
        // A name or id that breaks its rules is bad usage (exit 2, as docs/quickstart.md says);
        // a value that parses but cannot be used is a failure (exit 1).
        let usage = args.contains(&"--shard") || args.contains(&"--backup");
        assert_eq!(
            run.code,
            if usage { 2 } else { 1 },
            "{args:?}: {}",
            run.stderr
        );
        assert!(run.stderr.contains(needle), "{args:?}: {}", run.stderr);
    }
}
