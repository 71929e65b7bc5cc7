//! Storage and snapshots as untrusted input, through the real `fleetsnap-agent` binary: a
//! tampered region cannot make the agent read or write outside it, hang it, or pass off a set
//! that is not one; a snapshot Redis would refuse to load is never stored; a restore never
//! clobbers a file, follows a link or writes into a region; an online restore puts every key in
//! its own database or writes nothing.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use fleetsnap_testkit::redis::RedisOptions;
use fleetsnap_testkit::{RedisCluster, RedisServer, filled_server};

/// The files of one set in a file region.
struct Set {
    id: String,
    dir: PathBuf,
    manifest: PathBuf,
    object: PathBuf,
}

/// Snapshots `server` into the file region at `root`; gives the set's files.
async fn stored(server: &RedisServer, root: &Path) -> Set {
    let dest = format!("file://{}", root.display());
    let id = backed_up(&server.url(), &dest).await;
    let dir = root.join("standalone").join(&id);
    let object = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".rdb.zst"))
        .expect("the set's RDB");
    Set {
        id,
        manifest: dir.join("manifest.json"),
        dir,
        object,
    }
}

fn read_json(p: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &serde_json::Value) {
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn sha256_hex(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a NUL-terminated path in the test's own temporary directory.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
        0,
        "mkfifo {}",
        p.display()
    );
}

/// Runs the agent, which must answer within 30 s (a FIFO in a region must not hang it).
async fn prompt(args: &[&str]) -> Run {
    tokio::time::timeout(Duration::from_secs(30), agent(None, args))
        .await
        .unwrap_or_else(|_| panic!("{args:?} did not end within 30 s"))
}

/// verify, restore and ls of the set, each of which must fail naming `needle`; gives verify's
/// error.
async fn all_refuse(region: &str, id: &str, work: &Path, needle: &str) -> String {
    let verify = prompt(&["verify", "--from", region, "--backup", id]).await;
    assert_eq!(verify.code, 1, "verify passed: {}", verify.stdout);
    assert!(verify.stderr.contains(needle), "verify: {}", verify.stderr);
    let out = work.join(format!("out-{}.rdb", rand_suffix()));
    let o = out.display().to_string();
    let restore = prompt(&["restore", "--from", region, "--backup", id, "--to-file", &o]).await;
    assert_eq!(restore.code, 1, "restore passed: {}", restore.stdout);
    assert!(
        restore.stderr.contains(needle),
        "restore: {}",
        restore.stderr
    );
    assert!(!out.exists(), "restore wrote {}", out.display());
    let ls = prompt(&["ls", "--from", region, "--json"]).await;
    assert_eq!(ls.code, 1, "ls said nothing of it: {}", ls.stdout);
    assert!(ls.stderr.contains(needle), "ls: {}", ls.stderr);
    assert!(
        !ls.stdout.contains(id),
        "ls listed the refused set: {}",
        ls.stdout
    );
    verify.stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_region_reaches_nothing_outside_itself() {
    let server = filled_server(RedisOptions::default(), 2000, 4096)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let region = format!("file://{}", root.display());
    let set = stored(&server, &root).await;
    let original = read_json(&set.manifest);

    // A manifest naming an object outside the region, with the outside file's true size and
    // sha256: nothing is read from it, and its digest is not printed.
    let outside = work.path().join("pwned.rdb.zst");
    std::fs::copy(&set.object, &outside).unwrap();
    let outside_sha = sha256_hex(&outside);
    let mut m = original.clone();
    m["shards"][0]["objects"][0]["name"] = "../../../pwned.rdb.zst".into();
    write_json(&set.manifest, &m);
    let e = all_refuse(&region, &set.id, work.path(), "pwned").await;
    assert!(e.contains("layout says"), "{e}");
    assert!(
        !e.contains(&outside_sha),
        "the outside file's digest was printed: {e}"
    );

    // The same through a tail object.
    let mut m = original.clone();
    let mut tail = m["shards"][0]["objects"][0].clone();
    tail["kind"] = "tail".into();
    tail["name"] = "../../../pwned.tail.zst".into();
    m["shards"][0]["objects"].as_array_mut().unwrap().push(tail);
    write_json(&set.manifest, &m);
    all_refuse(&region, &set.id, work.path(), "pwned.tail").await;

    // No shards, the same object twice, and a manifest moved into another set's directory.
    let mut m = original.clone();
    m["shards"] = serde_json::json!([]);
    write_json(&set.manifest, &m);
    all_refuse(&region, &set.id, work.path(), "lists no shards").await;
    let mut m = original.clone();
    let dup = m["shards"][0]["objects"][0].clone();
    m["shards"][0]["objects"].as_array_mut().unwrap().push(dup);
    write_json(&set.manifest, &m);
    all_refuse(&region, &set.id, work.path(), "2 RDB").await;
    write_json(&set.manifest, &original);
    let other = root.join("standalone").join("20200101T000000Z-000001");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::copy(&set.manifest, other.join("manifest.json")).unwrap();
    let ls = prompt(&["ls", "--from", &region, "--json"]).await;
    assert_eq!(ls.code, 1);
    assert!(ls.stderr.contains("belongs at"), "{}", ls.stderr);
    assert!(
        ls.stdout.contains(&set.id),
        "the sound set is still listed: {}",
        ls.stdout
    );
    std::fs::remove_dir_all(&other).unwrap();

    // The object replaced by a link to a file outside: refused, not followed.
    let kept = work.path().join("kept.rdb.zst");
    std::fs::rename(&set.object, &kept).unwrap();
    std::os::unix::fs::symlink(&outside, &set.object).unwrap();
    let v = prompt(&["verify", "--from", &region, "--backup", &set.id]).await;
    assert_eq!(v.code, 1);
    assert!(v.stderr.contains("symbolic link"), "{}", v.stderr);
    assert!(!v.stderr.contains(&outside_sha), "{}", v.stderr);
    std::fs::remove_file(&set.object).unwrap();

    // A FIFO in its place, then as the manifest: refused at once, never waited on.
    mkfifo(&set.object);
    let v = prompt(&["verify", "--from", &region, "--backup", &set.id]).await;
    assert_eq!(v.code, 1);
    assert!(v.stderr.contains("FIFO"), "{}", v.stderr);
    std::fs::remove_file(&set.object).unwrap();
    std::fs::rename(&kept, &set.object).unwrap();
    let real_manifest = work.path().join("manifest.json");
    std::fs::rename(&set.manifest, &real_manifest).unwrap();
    mkfifo(&set.manifest);
    all_refuse(&region, &set.id, work.path(), "FIFO").await;
    std::fs::remove_file(&set.manifest).unwrap();
    std::fs::rename(&real_manifest, &set.manifest).unwrap();

    // An object longer than its manifest says, by 64 GiB (sparse): refused before it is read.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&set.object)
        .unwrap();
    let size = f.metadata().unwrap().len();
    f.set_len(size + (64 << 30)).unwrap();
    drop(f);
    let v = prompt(&["verify", "--from", &region, "--backup", &set.id]).await;
    assert_eq!(v.code, 1);
    assert!(v.stderr.contains("more than the"), "{}", v.stderr);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&set.object)
        .unwrap()
        .set_len(size)
        .unwrap();

    // Put back as it was, the set verifies and restores again.
    prompt(&["verify", "--from", &region, "--backup", &set.id])
        .await
        .ok();
}

/// An RDB file of version 11 around `body` (opcodes and keys), with the EOF opcode and a correct
/// CRC-64 trailer: only its structure can be wrong.
fn rdb_file(body: &[u8]) -> Vec<u8> {
    let mut b = b"REDIS0011".to_vec();
    b.extend_from_slice(body);
    b.push(0xff);
    let crc = fleetsnap_core::rdbread::dump_crc(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// A string key in RDB form.
fn string_key(key: &str, value: &str) -> Vec<u8> {
    let mut b = vec![0u8, key.len() as u8];
    b.extend_from_slice(key.as_bytes());
    b.push(value.len() as u8);
    b.extend_from_slice(value.as_bytes());
    b
}

fn keys(range: std::ops::Range<usize>) -> Vec<u8> {
    range
        .flat_map(|i| string_key(&format!("key:{i}"), "value"))
        .collect()
}

/// Snapshots the RDB file `bytes` into two file regions.
async fn snapshot_file(work: &Path, name: &str, bytes: &[u8]) -> (Run, [PathBuf; 2]) {
    let file = work.join(name);
    std::fs::write(&file, bytes).unwrap();
    let regions = [
        work.join(format!("{name}-a")),
        work.join(format!("{name}-b")),
    ];
    let source = format!("file:{}", file.display());
    let (a, b) = (
        format!("file://{}", regions[0].display()),
        format!("file://{}", regions[1].display()),
    );
    let run = agent(
        None,
        &[
            "snapshot", "--source", &source, "--to", &a, "--to", &b, "--json",
        ],
    )
    .await;
    (run, regions)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_redis_would_refuse_is_stored_nowhere() {
    let work = tempfile::tempdir().unwrap();
    // The reproduction: an end marker in the middle of the body, the CRC recomputed over all.
    let mut mid = vec![0xfe, 0x00];
    mid.extend(keys(0..50));
    mid.push(0xff);
    mid.extend_from_slice(&[0; 8]);
    mid.extend(keys(50..100));
    // A database no server has, and a key length of 2^62, each with a valid CRC.
    let mut far_db = vec![0xfe, 0x81];
    far_db.extend_from_slice(&(1u64 << 40).to_be_bytes());
    far_db.extend(keys(0..3));
    let mut long_key = vec![0xfe, 0x00];
    long_key.extend(keys(0..3));
    long_key.extend([0x00, 0x81]);
    long_key.extend_from_slice(&(1u64 << 62).to_be_bytes());
    long_key.extend_from_slice(b"abc");
    // A value of an unknown type.
    let mut unknown = vec![0xfe, 0x00];
    unknown.extend(keys(0..3));
    unknown.extend([0x63, 0x01, b'k', 0x01, b'v']);
    for (name, body, needle) in [
        ("mid-eof", mid, "followed by"),
        ("far-db", far_db, "SELECTDB"),
        ("long-key", long_key, "implausible string length"),
        ("unknown-type", unknown, "key \"k\""),
    ] {
        let (run, regions) = snapshot_file(work.path(), name, &rdb_file(&body)).await;
        assert_eq!(run.code, 1, "{name} was stored: {}", run.stdout);
        assert!(
            run.stderr.contains("Redis would refuse") && run.stderr.contains(needle),
            "{name}: {}",
            run.stderr
        );
        for r in &regions {
            let files = files_under(r);
            assert!(
                !files
                    .iter()
                    .any(|f| f.ends_with("manifest.json") || f.ends_with(".rdb.zst")),
                "{name}: {} holds {files:?}",
                r.display()
            );
        }
    }

    // A module value stays a warning naming the key and module: the set is stored, without
    // counts, and every other key is still read.
    let mut module = vec![0xfe, 0x00];
    module.extend(keys(0..3));
    module.extend([0x07, 0x04]);
    module.extend_from_slice(b"vec1");
    module.push(0x81);
    module.extend_from_slice(&(0x0123_4567_89ab_cdefu64 << 10).to_be_bytes());
    module.push(0x00);
    module.extend(keys(3..6));
    let (run, regions) = snapshot_file(work.path(), "module", &rdb_file(&module)).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("\"vec1\"") && run.stderr.contains("module"),
        "{}",
        run.stderr
    );
    let manifest = files_under(&regions[0])
        .into_iter()
        .find(|f| f.ends_with("manifest.json"))
        .expect("stored");
    let m = read_json(&regions[0].join(manifest));
    assert!(m["shards"][0].get("dbs").is_none(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_never_clobber_follow_or_write_into_a_region() {
    let server = filled_server(RedisOptions::default(), 500, 4096)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("region");
    let region = format!("file://{}", root.display());
    let set = stored(&server, &root).await;
    let victim = work.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let restore = |to: &Path, extra: &[&str]| {
        let mut args: Vec<String> = ["restore", "--from", &region, "--backup", &set.id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--to-file".into());
        args.push(to.display().to_string());
        async move {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            prompt(&a).await
        }
    };
    let untouched = || assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // A link planted as the temporary file, then as the final file: never written through,
    // even with --force.
    let out = work.path().join("out.rdb");
    std::os::unix::fs::symlink(&victim, work.path().join("out.rdb.partial")).unwrap();
    let r = restore(&out, &[]).await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    untouched();
    std::fs::remove_file(work.path().join("out.rdb.partial")).unwrap();
    std::os::unix::fs::symlink(&victim, &out).unwrap();
    for extra in [&[][..], &["--force"][..]] {
        let r = restore(&out, extra).await;
        assert_eq!(r.code, 1, "{extra:?}: {}", r.stdout);
        assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
        untouched();
    }
    std::fs::remove_file(&out).unwrap();

    // A file already there: refused unless --force, which replaces it.
    std::fs::write(&out, b"old").unwrap();
    let r = restore(&out, &[]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
    assert_eq!(std::fs::read(&out).unwrap(), b"old");
    restore(&out, &["--force"]).await.ok();
    assert!(std::fs::read(&out).unwrap().starts_with(b"REDIS"));

    // The stored object itself, and any path inside the region: refused, the copy intact.
    let before = sha256_hex(&set.object);
    for to in [set.object.clone(), set.dir.join("new.rdb")] {
        let r = restore(&to, &["--force"]).await;
        assert_eq!(r.code, 1, "{}", r.stdout);
        assert!(r.stderr.contains("inside region"), "{}", r.stderr);
    }
    assert_eq!(sha256_hex(&set.object), before);
    prompt(&["verify", "--from", &region, "--backup", &set.id])
        .await
        .ok();

    // Something not a file (a FIFO here stands for /dev/full): refused, left as it is.
    let fifo = work.path().join("device");
    mkfifo(&fifo);
    let r = restore(&fifo, &["--force"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not a file"), "{}", r.stderr);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );

    // An AOF directory whose manifest is a link, and one that is itself a link.
    let aof = work.path().join("aof");
    std::fs::create_dir(&aof).unwrap();
    std::os::unix::fs::symlink(&victim, aof.join("appendonly.aof.manifest")).unwrap();
    let a = aof.display().to_string();
    let r = prompt(&[
        "restore",
        "--from",
        &region,
        "--backup",
        &set.id,
        "--aof-dir",
        &a,
        "--force",
    ])
    .await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    untouched();
    let linked = work.path().join("aof-link");
    std::os::unix::fs::symlink(&aof, &linked).unwrap();
    let l = linked.display().to_string();
    let r = prompt(&[
        "restore",
        "--from",
        &region,
        "--backup",
        &set.id,
        "--aof-dir",
        &l,
    ])
    .await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("link or not a directory"), "{}", r.stderr);
    untouched();
}

/// Keys per database of a standalone server, as INFO keyspace says.
async fn keyspace(server: &RedisServer) -> String {
    server
        .cmd(&["INFO", "keyspace"])
        .await
        .unwrap()
        .text()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_restores_put_every_key_in_its_own_database_or_write_nothing() {
    let source = RedisServer::start_with(RedisOptions::default().arg("databases", "32"))
        .await
        .unwrap();
    for (db, value) in [("0", "from-db0"), ("20", "from-db20")] {
        let mut c = source.conn().await.unwrap();
        c.command(&[b"SELECT", db.as_bytes()]).await.unwrap();
        c.command(&[b"SET", b"b", value.as_bytes()]).await.unwrap();
        c.command(&[b"SET", format!("only-{db}").as_bytes(), b"1"])
            .await
            .unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let region = format!("file://{}/r", work.path().display());
    let id = backed_up(&source.url(), &region).await;

    // A target with the default 16 databases, holding its own `b`.
    let target = RedisServer::start().await.unwrap();
    target.cmd(&["SET", "b", "target-b"]).await.unwrap();
    let before = keyspace(&target).await;
    for extra in [&[][..], &["--replace-existing"][..]] {
        let mut args = vec!["restore", "--from", &region, "--backup", &id];
        let url = target.url();
        args.extend(["--online", &url]);
        args.extend(extra);
        let r = prompt(&args).await;
        assert_eq!(r.code, 1, "{extra:?}: {}", r.stdout);
        assert!(
            r.stderr.contains("db 20")
                && r.stderr.contains("--db")
                && r.stderr.contains("nothing was written"),
            "{}",
            r.stderr
        );
        assert_eq!(
            keyspace(&target).await,
            before,
            "{extra:?} wrote into the target"
        );
        assert_eq!(
            target.cmd(&["GET", "b"]).await.unwrap(),
            fleetsnap_agent::redis::Value::Bulk(Some(b"target-b".to_vec()))
        );
    }
    // What the target has room for goes with --db.
    let url = target.url();
    prompt(&[
        "restore",
        "--from",
        &region,
        "--backup",
        &id,
        "--online",
        &url,
        "--db",
        "0",
        "--replace-existing",
    ])
    .await
    .ok();
    assert_eq!(
        target.cmd(&["GET", "b"]).await.unwrap(),
        fleetsnap_agent::redis::Value::Bulk(Some(b"from-db0".to_vec()))
    );

    // A Redis Cluster has db 0 only: a set with keys in another is refused there too.
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let node = cluster.primaries().await.unwrap()[0].url();
    let r = prompt(&[
        "restore", "--from", &region, "--backup", &id, "--online", &node,
    ])
    .await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("db 20") && r.stderr.contains("Redis Cluster"),
        "{}",
        r.stderr
    );
    for p in cluster.primaries().await.unwrap() {
        assert_eq!(
            p.cmd(&["DBSIZE"]).await.unwrap(),
            fleetsnap_agent::redis::Value::Int(0),
            "the cluster was written to"
        );
    }

    // A tail that writes to db 20 (an AOF directory's incremental file) is checked the same.
    let aof = work.path().join("appendonlydir");
    std::fs::create_dir(&aof).unwrap();
    std::fs::write(aof.join("base.rdb"), rdb_file(&keys(0..3))).unwrap();
    std::fs::write(
        aof.join("incr.aof"),
        b"*2\r\n$6\r\nSELECT\r\n$2\r\n20\r\n*3\r\n$3\r\nSET\r\n$4\r\nlate\r\n$1\r\n1\r\n",
    )
    .unwrap();
    std::fs::write(
        aof.join("appendonly.aof.manifest"),
        "file base.rdb seq 1 type b\nfile incr.aof seq 1 type i\n",
    )
    .unwrap();
    let tailed = format!("file://{}/t", work.path().display());
    let source_dir = format!("file:{}", aof.display());
    let run = agent(
        None,
        &[
            "snapshot",
            "--source",
            &source_dir,
            "--to",
            &tailed,
            "--json",
        ],
    )
    .await
    .ok();
    let tid = run.json()["backup_id"].as_str().unwrap().to_string();
    let fresh = RedisServer::start().await.unwrap();
    let url = fresh.url();
    let r = prompt(&[
        "restore", "--from", &tailed, "--backup", &tid, "--online", &url,
    ])
    .await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("db 20") && r.stderr.contains("tail"),
        "{}",
        r.stderr
    );
    assert_eq!(
        fresh.cmd(&["DBSIZE"]).await.unwrap(),
        fleetsnap_agent::redis::Value::Int(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_restore_restores_what_is_missing_and_names_what_was_there() {
    let source = filled_server(RedisOptions::default(), 300, 100)
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let region = format!("file://{}/r", work.path().display());
    let id = backed_up(&source.url(), &region).await;
    let target = RedisServer::start().await.unwrap();
    let url = target.url();
    prompt(&[
        "restore", "--from", &region, "--backup", &id, "--online", &url,
    ])
    .await
    .ok();
    let all = target.cmd(&["DBSIZE"]).await.unwrap();
    // Two keys deleted, one changed: the two come back, the changed one is left and named.
    let fleetsnap_agent::redis::Value::Array(Some(scan)) =
        target.cmd(&["SCAN", "0", "COUNT", "1000"]).await.unwrap()
    else {
        panic!("SCAN")
    };
    let fleetsnap_agent::redis::Value::Array(Some(keys)) = &scan[1] else {
        panic!("SCAN keys")
    };
    let name = |i: usize| keys[i].text().unwrap();
    target.cmd(&["DEL", &name(0), &name(1)]).await.unwrap();
    target.cmd(&["SET", &name(2), "changed"]).await.unwrap();
    let r = prompt(&[
        "restore", "--from", &region, "--backup", &id, "--online", &url,
    ])
    .await;
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stderr.contains("already existed") && r.stderr.contains("--replace-existing"),
        "{}",
        r.stderr
    );
    assert_eq!(
        target.cmd(&["DBSIZE"]).await.unwrap(),
        all,
        "the deleted keys came back"
    );
    assert_eq!(
        target.cmd(&["GET", &name(2)]).await.unwrap(),
        fleetsnap_agent::redis::Value::Bulk(Some(b"changed".to_vec()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_without_credentials_fails_at_once_naming_what_it_looked_for() {
    let server = filled_server(RedisOptions::default(), 10, 10)
        .await
        .unwrap();
    let nowhere = "http://127.0.0.1:1";
    for (dest, needle) in [
        (
            format!("s3://some-bucket?region=r&endpoint={nowhere}&profile=nosuch"),
            "\"nosuch\"",
        ),
        (
            format!("s3://some-bucket?region=r&endpoint={nowhere}"),
            "no AWS credentials",
        ),
    ] {
        let r = prompt(&["snapshot", "--redis", &server.url(), "--to", &dest]).await;
        assert_eq!(r.code, 1, "{}", r.stdout);
        // The destination's row says why; the last line that nothing was stored.
        let said = format!("{}{}", r.stdout, r.stderr);
        assert!(said.contains(needle), "{dest}: {said}");
        assert!(
            r.stderr.contains("stored in no destination"),
            "{}",
            r.stderr
        );
    }
}
