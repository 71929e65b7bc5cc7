//! The continuous archive against real servers and real S3 regions: an archiver follows a
//! replica's stream into Garage and moto, a FLUSHALL is found and undone, a time is restored, a
//! killed archiver continues its chain without a gap, and a promotion switches the chain's
//! replication id without a break.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Regions, agent};
use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::redis::{RedisOptions, ReplicaSet};
use fleetsnap_testkit::{RedisServer, poll_until};
use tokio::process::{Child, Command};

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One shard's archive in its regions: how the tests start its archivers and read its status.
struct Archived {
    dests: Vec<String>,
    creds: Option<PathBuf>,
    cluster: String,
    shard: String,
}

impl Archived {
    fn new(dests: &[String], creds: Option<&Path>, cluster: &str, shard: &str) -> Self {
        Archived {
            dests: dests.to_vec(),
            creds: creds.map(Path::to_path_buf),
            cluster: cluster.into(),
            shard: shard.into(),
        }
    }

    /// Starts `archive run` of `url` into the regions in the background, with half-second
    /// segments and `extra` arguments.
    fn start(&self, url: &str, spool: &Path, extra: &[&str]) -> Child {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetsnap-agent"));
        cmd.args(["archive", "run", "--redis", url, "--cluster", &self.cluster])
            .args([
                "--shard",
                &self.shard,
                "--segment-seconds",
                "0.5",
                "--spool-dir",
            ])
            .arg(spool)
            .args(extra)
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.creds
                    .as_deref()
                    .unwrap_or(Path::new("/nonexistent-fleetsnap-aws-credentials")),
            )
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for d in &self.dests {
            cmd.args(["--to", d]);
        }
        cmd.spawn().expect("the archiver starts")
    }

    /// `archive status` of the shard, read from the regions.
    async fn status(&self) -> serde_json::Value {
        let mut args = vec![
            "archive",
            "status",
            "--cluster",
            &self.cluster,
            "--shard",
            &self.shard,
            "--json",
        ];
        args.extend(from_args(&self.dests));
        agent(self.creds.as_deref(), &args).await.ok().json()
    }

    /// Waits for the chain's base.
    async fn base(&self) {
        poll_until("the chain's base", Duration::from_secs(60), || async {
            (self.status().await["chains"].as_array()?.len() == 1).then_some(())
        })
        .await
        .unwrap();
    }

    /// Waits until the regions hold the archive up to `ms`.
    /// The archive's end as the regions hold it (the newest chain's last stamp), in Unix ms:
    /// where a restore holding every command archived goes. A command is stamped when the
    /// archiver received it, which can be a few ms after the writer's acknowledgement.
    async fn end(&self) -> String {
        let s = self.status().await;
        s["chains"]
            .as_array()
            .and_then(|c| c.iter().filter_map(|c| c["end_ms"].as_i64()).max())
            .unwrap_or_else(|| panic!("no chain: {s:#}"))
            .to_string()
    }

    async fn reaches(&self, ms: i64) {
        poll_until(
            "the archive to reach the last write",
            Duration::from_secs(60),
            || async {
                let s = self.status().await;
                let until = s["chains"]
                    .as_array()?
                    .iter()
                    .filter_map(|c| c["end_ms"].as_i64())
                    .max()?;
                (until >= ms).then_some(())
            },
        )
        .await
        .unwrap();
    }
}

/// Stops an archiver with SIGINT and waits for it, asserting it ended well.
async fn stop(child: Child) {
    let pid = child.id().expect("running") as i32;
    // SAFETY: a signal to a child this test started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the archiver stops within 90 s of SIGINT")
        .unwrap();
    assert!(
        out.status.success(),
        "archiver failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn from_args(dests: &[String]) -> Vec<&str> {
    dests.iter().flat_map(|d| ["--from", d.as_str()]).collect()
}

/// One write as the writer saw it.
struct Write {
    key: String,
    sent_ms: i64,
    acked_ms: i64,
}

/// Writes `n` keys `prefix:i` one after the other, each after the previous acknowledgement.
async fn write(server: &RedisServer, prefix: &str, n: usize, gap: Duration) -> Vec<Write> {
    let mut conn = server.conn().await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}:{i}");
        let sent_ms = now_ms();
        conn.checked(&[b"SET", key.as_bytes(), i.to_string().as_bytes()])
            .await
            .unwrap();
        out.push(Write {
            key,
            sent_ms,
            acked_ms: now_ms(),
        });
        tokio::time::sleep(gap).await;
    }
    out
}

/// Restores the archive to `how` (`--at T` or `--before B`) into an AOF directory and starts a
/// server on it; gives the server and the restore's report.
async fn restored(
    r: &Regions,
    dests: &[String],
    how: &[&str],
    work: &Path,
) -> (RedisServer, serde_json::Value) {
    let dir = work.join(format!("aof-{}", common::rand_suffix()));
    let d = dir.display().to_string();
    let mut args = vec![
        "restore",
        "--cluster",
        "standalone",
        "--shard",
        "s0",
        "--aof-dir",
        &d,
        "--json",
    ];
    args.extend(from_args(dests));
    args.extend(how);
    let report = agent(Some(&r.creds), &args).await.ok().json();
    let server = RedisServer::start_with(RedisOptions {
        aof_dir: Some(dir),
        ..Default::default()
    })
    .await
    .expect("the restored AOF directory loads");
    (server, report)
}

async fn dbsize(s: &RedisServer) -> i64 {
    match s.cmd(&["DBSIZE"]).await.unwrap() {
        fleetsnap_agent::redis::Value::Int(n) => n,
        v => panic!("DBSIZE answered {v:?}"),
    }
}

async fn has(s: &RedisServer, key: &str) -> bool {
    matches!(
        s.cmd(&["EXISTS", key]).await.unwrap(),
        fleetsnap_agent::redis::Value::Int(1)
    )
}

/// The user's story: a replica archived into two S3 regions, its archiver killed and started
/// again mid-way (the chain continues, no gap), a FLUSHALL on the primary; `archive find` names
/// it, a restore `--before` it holds every acknowledged write and nothing after, and a restore
/// `--at` a time between holds a prefix of the writes that includes every one acknowledged
/// before the time and none sent after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushall_is_found_and_undone_and_any_time_restores() {
    let r = Regions::start().await;
    let dests = vec![r.garage_dest("pitr"), r.moto_dest("pitr")];
    let set = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let spool = work.path().join("spool");
    let seed = write(&set.primary, "seed", 50, Duration::ZERO).await;
    let w = Archived::new(&dests, Some(&r.creds), "standalone", "s0");
    let a = w.start(&set.replicas[0].url(), &spool, &[]);
    w.base().await;

    let mut writes = write(&set.primary, "a", 150, Duration::from_millis(5)).await;
    // A transaction is restored whole or not at all.
    let mut conn = set.primary.conn().await.unwrap();
    conn.checked(&[b"MULTI"]).await.unwrap();
    conn.command(&[b"SET", b"tx:1", b"x"]).await.unwrap();
    conn.command(&[b"SET", b"tx:2", b"x"]).await.unwrap();
    conn.checked(&[b"EXEC"]).await.unwrap();
    // SIGKILL: the spool keeps the chain's position; writes go on meanwhile.
    let mut a = a;
    a.kill().await.unwrap();
    writes.extend(write(&set.primary, "b", 100, Duration::from_millis(5)).await);
    let a = w.start(&set.replicas[0].url(), &spool, &[]);
    // What was written while it was down is stamped when it catches up: the archive's time is
    // when it received a command.
    w.reaches(writes.last().unwrap().acked_ms).await;
    writes.extend(write(&set.primary, "c", 150, Duration::from_millis(5)).await);
    let mid = writes[writes.len() - 75].acked_ms;
    let flush_sent = now_ms();
    conn.checked(&[b"FLUSHALL"]).await.unwrap();
    let after = write(&set.primary, "after", 20, Duration::from_millis(5)).await;
    w.reaches(after.last().unwrap().acked_ms).await;
    stop(a).await;

    let s = w.status().await;
    assert_eq!(
        s["chains"].as_array().unwrap().len(),
        1,
        "a killed archiver continues its chain: no gap, no second base\n{s:#}"
    );

    let mut args = vec![
        "archive",
        "find",
        "--shard",
        "s0",
        "--command",
        "FLUSHALL",
        "--since",
        "0",
        "--json",
    ];
    args.extend(from_args(&dests));
    let found = agent(Some(&r.creds), &args).await.ok().json();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0]["time_ms"].as_i64().unwrap() >= flush_sent);
    let before = found[0]["before"].as_str().unwrap().to_string();

    // Before the FLUSHALL: every acknowledged write, nothing after.
    let (server, report) = restored(&r, &dests, &["--before", &before], work.path()).await;
    for w in seed.iter().chain(&writes) {
        assert!(has(&server, &w.key).await, "{} is missing", w.key);
    }
    assert!(has(&server, "tx:1").await && has(&server, "tx:2").await);
    assert_eq!(
        dbsize(&server).await,
        (seed.len() + writes.len() + 2) as i64,
        "nothing written after the FLUSHALL is restored: {report:#}"
    );

    // At a time between: a prefix of the writes.
    let t = mid.to_string();
    let (server, report) = restored(&r, &dests, &["--at", &t], work.path()).await;
    let stamp = report["point_in_time"]["stamp_ms"].as_i64().unwrap();
    assert!(
        stamp <= mid,
        "the last command restored was received after --at: {report:#}"
    );
    let mut present = Vec::new();
    for w in &writes {
        present.push(has(&server, &w.key).await);
    }
    let n = present.iter().take_while(|p| **p).count();
    assert!(
        present[n..].iter().all(|p| !p),
        "the restored writes are not a prefix of the acknowledged ones"
    );
    assert!(n > 0 && n < writes.len());
    assert!(
        writes[..n].iter().all(|w| w.sent_ms <= mid),
        "a write sent after --at was restored"
    );
    // Every write acknowledged well before the time (a replica's stream lags the primary by
    // its propagation delay) is there.
    let missing: Vec<(&str, i64)> = writes[n..]
        .iter()
        .filter(|w| w.acked_ms + 250 <= mid)
        .map(|w| (w.key.as_str(), w.acked_ms))
        .collect();
    assert!(
        missing.is_empty(),
        "writes acknowledged before --at {mid} are missing: {missing:?}; {n} restored: {report:#}"
    );

    // A time the archive does not reach is refused with the restorable stretch.
    let f = work.path().join("never.rdb").display().to_string();
    let refused = restore_s0_at(Some(&r.creds), &dests, "1000", &["--to-file", &f]).await;
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("before the archive's first base")
            && refused.stderr.contains("restorable stretches"),
        "{}",
        refused.stderr
    );
}

/// A promotion of the archived replica: the node drops its replicas so they learn its new
/// history; the archiver continues with `+CONTINUE <new id>`, and a restore to after the
/// promotion replays the writes of both histories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_continues_the_chain_on_the_new_history() {
    let r = Regions::start().await;
    let dests = vec![r.garage_dest("promo"), r.moto_dest("promo")];
    let set = ReplicaSet::start(1, RedisOptions::default()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let replica = &set.replicas[0];
    let w = Archived::new(&dests, Some(&r.creds), "standalone", "s0");
    let a = w.start(&replica.url(), &work.path().join("spool"), &[]);
    w.base().await;
    let old = write(&set.primary, "old", 50, Duration::from_millis(2)).await;
    set.wait_synced().await.unwrap();
    replica.cmd(&["REPLICAOF", "NO", "ONE"]).await.unwrap();
    let new = write(replica, "new", 50, Duration::from_millis(2)).await;
    w.reaches(new.last().unwrap().acked_ms).await;
    stop(a).await;
    let s = w.status().await;
    let chains = s["chains"].as_array().unwrap();
    assert_eq!(chains.len(), 1, "{s:#}");
    assert_eq!(
        chains[0]["replids"].as_array().unwrap().len(),
        2,
        "the chain passes from the old history to the new: {s:#}"
    );
    // The archive's reach: every acknowledged write of both histories is in it.
    let t = chains[0]["end_ms"].as_i64().unwrap().to_string();
    let (server, report) = restored(&r, &dests, &["--at", &t], work.path()).await;
    for w in old.iter().chain(&new) {
        assert!(
            has(&server, &w.key).await,
            "{} is missing: {report:#}\n{s:#}",
            w.key
        );
    }
    // The same point online, into a running server: the base key by key, then the archive.
    let target = RedisServer::start().await.unwrap();
    restore_s0_at(Some(&r.creds), &dests, &t, &["--online", &target.url()])
        .await
        .ok();
    for w in old.iter().chain(&new) {
        assert!(has(&target, &w.key).await, "{} is missing online", w.key);
    }
    assert_eq!(dbsize(&target).await, dbsize(&server).await);
}

/// A damaged segment in one region is read from the other (and said so); damaged or missing in
/// every region, the restore is refused naming the segment, never replayed in part. A stray
/// object in the archive's folder is not taken for a segment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_segment_is_read_from_another_region_or_refused_by_name() {
    let server = RedisServer::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let (ra, rb) = (work.path().join("ra"), work.path().join("rb"));
    let dests = vec![
        format!("file://{}", ra.display()),
        format!("file://{}", rb.display()),
    ];
    let w = Archived::new(&dests, None, "standalone", "s0");
    let a = w.start(&server.url(), &work.path().join("spool"), &[]);
    w.base().await;
    let writes = write(&server, "k", 40, Duration::from_millis(2)).await;
    let last = writes.last().unwrap().acked_ms;
    w.reaches(last).await;
    stop(a).await;
    let segments: Vec<String> = common::files_under(&ra)
        .into_iter()
        .filter(|f| f.contains("/archive/") && f.contains(".seg"))
        .collect();
    assert!(!segments.is_empty());
    let seg = segments.iter().min().unwrap().clone();
    std::fs::write(
        ra.join(seg.rsplit_once('/').unwrap().0).join("notes.txt"),
        b"not a segment",
    )
    .unwrap();
    let mut bytes = std::fs::read(ra.join(&seg)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(ra.join(&seg), bytes).unwrap();

    let t = w.end().await;
    let out = work.path().join("both.rdb").display().to_string();
    let run = restore_s0_at(None, &dests, &t, &["--to-file", &out])
        .await
        .ok();
    let name = seg.rsplit_once('/').unwrap().1;
    assert!(
        run.stdout.contains(&format!("{name} read from")),
        "the fallback is said: {}",
        run.stdout
    );
    let tail = std::fs::read(format!("{out}.tail")).unwrap();
    let text = String::from_utf8_lossy(&tail);
    assert!(writes.iter().all(|w| text.contains(&w.key)));

    std::fs::remove_file(rb.join(&seg)).unwrap();
    let out = work.path().join("none.rdb").display().to_string();
    let run = restore_s0_at(None, &dests, &t, &["--to-file", &out]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains(name),
        "the refusal names the segment: {}",
        run.stderr
    );
    assert!(
        !Path::new(&out).exists() && !Path::new(&format!("{out}.tail")).exists(),
        "nothing is restored in part"
    );

    // `replace` builds the tail while the base loads: the node has been stopped by the time the
    // segment fails, and is started again on its own data.
    let target = RedisServer::start().await.unwrap();
    target.cmd(&["SET", "mine", "x"]).await.unwrap();
    target.cmd(&["SAVE"]).await.unwrap();
    let (url, start) = (target.url(), target.start_command());
    let run = restore_s0_at(None, &dests, &t, &["--replace", &url, "--start", &start]).await;
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains(name) && run.stderr.contains("started again on its previous data"),
        "the refusal names the segment and what became of the node: {}",
        run.stderr
    );
    assert!(
        has(&target, "mine").await,
        "the node is back on its own data"
    );
    assert_eq!(dbsize(&target).await, 1);
}

/// Both regions stop answering for 20 s while writes go on, and the archiver's spool fills: it
/// stops reading, its lag metric grows, and once the regions answer it catches up: one chain,
/// no gap, every acknowledged write restorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regions_cut_off_for_a_while_make_lag_then_the_archive_catches_up() {
    use fleetsnap_testkit::proxy::Relay;
    let r = Regions::start().await;
    let upstream = |dest: &str| -> std::net::SocketAddr {
        let e = dest.split("endpoint=").nth(1).unwrap();
        let e = e.split('&').next().unwrap();
        e.trim_start_matches("http://").parse().unwrap()
    };
    let (g, m) = (r.garage_dest("cut"), r.moto_dest("cut"));
    let (rg, rm) = (
        Relay::start(upstream(&g)).await.unwrap(),
        Relay::start(upstream(&m)).await.unwrap(),
    );
    let via = |dest: &str, relay: &Relay| {
        dest.replace(&upstream(dest).to_string(), &relay.addr.to_string())
    };
    let relayed = vec![via(&g, &rg), via(&m, &rm)];
    let direct = vec![g.clone(), m.clone()];
    let server = RedisServer::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let port = fleetsnap_testkit::free_port();
    let w = Archived::new(&direct, Some(&r.creds), "standalone", "s0");
    let listen = format!("127.0.0.1:{port}");
    // A spool this small fills while the regions are away: the archiver stops reading until
    // they answer, and nothing is lost or corrupted.
    let a = Archived::new(&relayed, Some(&r.creds), "standalone", "s0").start(
        &server.url(),
        &work.path().join("spool"),
        &["--metrics-listen", &listen, "--spool-max", "4KiB"],
    );
    let metrics: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let lag = || async move {
        let (_, text) = fleetsnap_telemetry::http::get(metrics, "/metrics")
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with("fleetsnap_archive_lag_seconds{"))?
            .rsplit_once(' ')?
            .1
            .parse::<f64>()
            .ok()
    };
    w.base().await;
    let mut writes = write(&server, "before", 50, Duration::from_millis(10)).await;
    rg.hold();
    rm.hold();
    writes.extend(write(&server, "during", 200, Duration::from_millis(100)).await);
    let behind = lag().await.expect("the archiver serves its lag");
    assert!(
        behind >= 10.0,
        "20 s without regions, yet the lag is {behind} s"
    );
    rg.release();
    rm.release();
    writes.extend(write(&server, "after", 50, Duration::from_millis(10)).await);
    let last = writes.last().unwrap().acked_ms;
    w.reaches(last).await;
    poll_until("the lag to fall back", Duration::from_secs(60), || async {
        (lag().await? < 3.0).then_some(())
    })
    .await
    .unwrap();
    stop(a).await;
    let s = w.status().await;
    assert_eq!(s["chains"].as_array().unwrap().len(), 1, "no gap: {s:#}");
    let end = s["chains"][0]["end_ms"].as_i64().unwrap().to_string();
    let (restored, _) = restored(&r, &direct, &["--at", &end], work.path()).await;
    for w in &writes {
        assert!(has(&restored, &w.key).await, "{} is missing", w.key);
    }
}

/// The slot ranges each primary of a cluster serves, from `CLUSTER NODES`: `(port, ranges)`.
async fn owners(node: &RedisServer) -> Vec<(u16, Vec<(u16, u16)>)> {
    let fleetsnap_agent::redis::Value::Bulk(Some(text)) =
        node.cmd(&["CLUSTER", "NODES"]).await.unwrap()
    else {
        panic!("CLUSTER NODES")
    };
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.contains("master"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = f[1].split(['@', ':']).nth(1).unwrap().parse().unwrap();
            let ranges = f[8..]
                .iter()
                .filter(|r| !r.starts_with('['))
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            (port, ranges)
        })
        .collect()
}

/// The port of the primary that serves `slot`, from `owners`' answer.
fn port_serving(served: &[(u16, Vec<(u16, u16)>)], slot: u16) -> u16 {
    served
        .iter()
        .find(|(_, r)| r.iter().any(|(a, b)| *a <= slot && slot <= *b))
        .expect("a primary serves every slot")
        .0
}

/// A Redis Cluster of three shards archived from its replicas: a FLUSHALL on every primary is
/// found in every shard, and the whole cluster is restored online into a fresh cluster to just
/// before each shard's own FLUSHALL: every key written before, nothing after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_is_restored_to_just_before_a_flushall_on_every_primary() {
    use fleetsnap_testkit::RedisCluster;
    let cluster = RedisCluster::start(3, 1).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dests = vec![
        format!("file://{}", work.path().join("ra").display()),
        format!("file://{}", work.path().join("rb").display()),
    ];
    let served = owners(&cluster.nodes[0]).await;
    let primaries = cluster.primaries().await.unwrap();
    let (mut archivers, mut shards) = (Vec::new(), Vec::new());
    for (i, p) in primaries.iter().enumerate() {
        let mut replica = None;
        for n in &cluster.nodes {
            if n.info("replication", "master_port")
                .await
                .unwrap()
                .as_deref()
                == Some(p.port().to_string().as_str())
            {
                replica = Some(n);
            }
        }
        let replica = replica.expect("each primary has a replica");
        let shard = Archived::new(&dests, None, "shop", &format!("c{i}"));
        archivers.push(shard.start(&replica.url(), &work.path().join(format!("spool-{i}")), &[]));
        shards.push(shard);
    }
    for shard in &shards {
        shard.base().await;
    }
    // Each key written to the primary that owns its slot.
    let owner_of = |key: &str| {
        let slot = fleetsnap_core::keys::key_slot(key.as_bytes());
        let port = port_serving(&served, slot);
        primaries.iter().find(|p| p.port() == port).unwrap()
    };
    let mut written = Vec::new();
    for n in 0..300 {
        let key = format!("k:{n}");
        owner_of(&key)
            .cmd(&["SET", &key, &n.to_string()])
            .await
            .unwrap();
        written.push(key);
    }
    for p in &primaries {
        p.cmd(&["FLUSHALL"]).await.unwrap();
    }
    let mut last = 0;
    for n in 0..30 {
        let key = format!("after:{n}");
        owner_of(&key).cmd(&["SET", &key, "x"]).await.unwrap();
        last = now_ms();
    }
    for shard in &shards {
        shard.reaches(last).await;
    }
    for a in archivers {
        stop(a).await;
    }

    // The cluster restores where every shard does: from the latest base to the earliest end.
    let mut args = vec!["archive", "status", "--cluster", "shop", "--json"];
    args.extend(from_args(&dests));
    let whole = agent(None, &args).await.ok().json();
    let stretches = whole["cluster_restorable"].as_array().unwrap();
    assert_eq!(stretches.len(), 1, "{whole:#}");
    let ends: Vec<i64> = whole["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["chains"][0]["end_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(
        stretches[0][1].as_i64(),
        ends.iter().min().copied(),
        "{whole:#}"
    );

    let mut args = vec![
        "archive",
        "find",
        "--cluster",
        "shop",
        "--command",
        "FLUSHALL",
        "--since",
        "0",
        "--json",
    ];
    args.extend(from_args(&dests));
    let found = agent(None, &args).await.ok().json();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 3, "one FLUSHALL per shard: {found:#?}");
    let handles: Vec<String> = found
        .iter()
        .map(|f| f["before"].as_str().unwrap().to_string())
        .collect();

    let fresh = RedisCluster::start(3, 0).await.unwrap();
    let before = handles.join(",");
    let url = fresh.nodes[0].url();
    let mut args = vec![
        "restore",
        "--cluster",
        "shop",
        "--before",
        &before,
        "--online",
        &url,
        "--json",
    ];
    args.extend(from_args(&dests));
    let report = agent(None, &args).await.ok().json();
    assert_eq!(report["shards"].as_array().unwrap().len(), 3, "{report:#}");
    let fresh_owners = owners(&fresh.nodes[0]).await;
    let mut total = 0;
    for n in &fresh.nodes {
        total += dbsize(n).await;
    }
    assert_eq!(
        total,
        written.len() as i64,
        "nothing after the FLUSHALLs: {report:#}"
    );
    for (n, key) in written.iter().enumerate() {
        let slot = fleetsnap_core::keys::key_slot(key.as_bytes());
        let port = port_serving(&fresh_owners, slot);
        let node = fresh.nodes.iter().find(|s| s.port() == port).unwrap();
        assert_eq!(
            node.cmd(&["GET", key]).await.unwrap(),
            fleetsnap_agent::redis::Value::Bulk(Some(n.to_string().into_bytes())),
            "{key}"
        );
    }
}

/// Exact points pass the causal check: a writer increments a counter on shard a, then b, then c,
/// each after the previous acknowledgement, while exact points are taken; every shard restored
/// `--exact` holds counters with a ≥ b ≥ c and a − c ≤ 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_points_restore_every_shard_at_one_instant() {
    let work = tempfile::tempdir().unwrap();
    let dests = vec![
        format!("file://{}", work.path().join("ra").display()),
        format!("file://{}", work.path().join("rb").display()),
    ];
    let names = ["a", "b", "c"];
    let mut servers = Vec::new();
    for _ in names {
        servers.push(RedisServer::start().await.unwrap());
    }
    let (mut archivers, mut shards) = (Vec::new(), Vec::new());
    for (name, s) in names.iter().zip(&servers) {
        let shard = Archived::new(&dests, None, "bank", name);
        archivers.push(shard.start(&s.url(), &work.path().join(format!("spool-{name}")), &[]));
        shard.base().await;
        shards.push(shard);
    }
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let stop_writing = std::sync::Arc::new(AtomicBool::new(false));
    let rounds = std::sync::Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, rounds) = (stop_writing.clone(), rounds.clone());
        let mut conns = Vec::new();
        for s in &servers {
            conns.push(s.conn().await.unwrap());
        }
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for c in conns.iter_mut() {
                    c.checked(&[b"INCR", b"ctr"]).await.unwrap();
                }
                rounds.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    // Each point is taken after the writer has gone 50 more rounds.
    let written = |after: u64| {
        let rounds = rounds.clone();
        async move {
            poll_until("the writer to go on", Duration::from_secs(60), || async {
                (rounds.load(Ordering::Relaxed) >= after + 50).then_some(())
            })
            .await
            .unwrap();
        }
    };
    let mut mark = vec![
        "archive".to_string(),
        "mark".into(),
        "--cluster".into(),
        "bank".into(),
        "--json".into(),
    ];
    for (name, s) in names.iter().zip(&servers) {
        mark.extend(["--node".into(), format!("{name}={}", s.url())]);
    }
    for d in &dests {
        mark.extend(["--to".into(), d.clone()]);
    }
    let mark: Vec<&str> = mark.iter().map(String::as_str).collect();
    let mut points = Vec::new();
    for _ in 0..3 {
        written(rounds.load(Ordering::Relaxed)).await;
        points.push(agent(None, &mark).await.ok().json());
    }
    written(rounds.load(Ordering::Relaxed)).await;
    stop_writing.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let rounds = rounds.load(Ordering::Relaxed);
    let last = now_ms();
    for shard in &shards {
        shard.reaches(last).await;
    }
    for a in archivers {
        stop(a).await;
    }
    let t = last.to_string();
    let mut counters = Vec::new();
    for name in names {
        let dir = work.path().join(format!("aof-{name}"));
        let d = dir.display().to_string();
        let mut args = vec![
            "restore",
            "--cluster",
            "bank",
            "--shard",
            name,
            "--at",
            &t,
            "--exact",
            "--aof-dir",
            &d,
            "--json",
        ];
        args.extend(from_args(&dests));
        agent(None, &args).await.ok();
        let s = RedisServer::start_with(RedisOptions {
            aof_dir: Some(dir),
            ..Default::default()
        })
        .await
        .unwrap();
        let v = match s.cmd(&["GET", "ctr"]).await.unwrap() {
            fleetsnap_agent::redis::Value::Bulk(Some(b)) => {
                String::from_utf8(b).unwrap().parse::<u64>().unwrap()
            }
            other => panic!("ctr is {other:?}"),
        };
        counters.push(v);
    }
    let (a, b, c) = (counters[0], counters[1], counters[2]);
    assert!(
        a >= b && b >= c && a - c <= 1,
        "restored counters {counters:?} are not one instant (points {points:#?})"
    );
    assert!(
        a > 0 && a < rounds,
        "the last point lies inside the writes: {counters:?} of {rounds}"
    );
}

/// An archiver on another host (a spool of its own) takes over from one that was killed: it
/// continues the chain from where the regions hold it, so the archive has no gap and every
/// write is restorable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_archiver_takes_over_the_chain_from_the_regions() {
    let server = RedisServer::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dests = vec![
        format!("file://{}", work.path().join("ra").display()),
        format!("file://{}", work.path().join("rb").display()),
    ];
    let w = Archived::new(&dests, None, "standalone", "s0");
    let mut first = w.start(&server.url(), &work.path().join("host-1"), &[]);
    w.base().await;
    let mut writes = write(&server, "one", 50, Duration::from_millis(5)).await;
    let reached = writes.last().unwrap().acked_ms;
    w.reaches(reached).await;
    first.kill().await.unwrap();
    writes.extend(write(&server, "two", 50, Duration::from_millis(5)).await);
    let second = w.start(&server.url(), &work.path().join("host-2"), &[]);
    writes.extend(write(&server, "three", 50, Duration::from_millis(5)).await);
    let last = writes.last().unwrap().acked_ms;
    w.reaches(last).await;
    stop(second).await;
    let s = w.status().await;
    assert_eq!(
        s["chains"].as_array().unwrap().len(),
        1,
        "the takeover continued the chain: no second base\n{s:#}"
    );
    let end = s["chains"][0]["end_ms"].as_i64().unwrap().to_string();
    let out = work.path().join("taken.rdb");
    let o = out.display().to_string();
    restore_s0_at(None, &dests, &end, &["--to-file", &o])
        .await
        .ok();
    let tail = String::from_utf8_lossy(&std::fs::read(format!("{o}.tail")).unwrap()).into_owned();
    for w in &writes {
        assert!(
            tail.contains(&format!("{}\r\n", w.key)),
            "{} is missing",
            w.key
        );
    }
}

/// Two archivers of one shard at once (a lease that lapsed while its holder still ran): their
/// segments overlap, cut at other places. The archive is still one chain, a command is found
/// once, and a restore replays every command exactly once (counters, not idempotent SETs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_archivers_at_once_replay_every_command_once() {
    let server = RedisServer::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dests = vec![
        format!("file://{}", work.path().join("ra").display()),
        format!("file://{}", work.path().join("rb").display()),
    ];
    let w = Archived::new(&dests, None, "standalone", "s0");
    let first = w.start(&server.url(), &work.path().join("host-1"), &[]);
    w.base().await;
    let mut conn = server.conn().await.unwrap();
    let mut incr = async |n: usize| {
        for _ in 0..n {
            conn.checked(&[b"INCR", b"counter"]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    };
    incr(100).await;
    w.reaches(now_ms()).await;
    // The second starts on an empty spool: it continues from where the regions end, while the
    // first goes on.
    let second = w.start(&server.url(), &work.path().join("host-2"), &[]);
    incr(400).await;
    let mut conn = server.conn().await.unwrap();
    conn.checked(&[b"FLUSHALL"]).await.unwrap();
    conn.checked(&[b"SET", b"after", b"1"]).await.unwrap();
    w.reaches(now_ms()).await;
    stop(first).await;
    stop(second).await;

    // The regions hold segments of both archivers over the same offsets: cut at other places,
    // or at the same places when their clocks' cuts happened to agree (two files either way).
    let replid_dir = std::fs::read_dir(work.path().join("ra/standalone/archive/s0"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let spans: Vec<(u64, u64)> = std::fs::read_dir(&replid_dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let mut parts = name.split('-');
            let a = parts.next().unwrap().parse().unwrap();
            let b = parts.next().unwrap().parse().unwrap();
            (a, b)
        })
        .collect();
    let overlap = spans.iter().enumerate().any(|(i, x)| {
        spans
            .iter()
            .enumerate()
            .any(|(j, y)| i != j && x.0 < y.1 && y.0 < x.1)
    });
    assert!(
        overlap,
        "the two archivers' segments do not overlap: {spans:?}"
    );

    let s = w.status().await;
    assert_eq!(s["chains"].as_array().unwrap().len(), 1, "{s:#}");
    let mut args = vec![
        "archive",
        "find",
        "--shard",
        "s0",
        "--command",
        "FLUSHALL",
        "--since",
        "0",
        "--json",
    ];
    args.extend(from_args(&dests));
    let found = agent(None, &args).await.ok().json();
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "one FLUSHALL, named once: {found:#?}");
    let before = found[0]["before"].as_str().unwrap().to_string();
    let dir = work.path().join("aof");
    let d = dir.display().to_string();
    let mut args = vec![
        "restore",
        "--cluster",
        "standalone",
        "--shard",
        "s0",
        "--before",
        &before,
        "--aof-dir",
        &d,
    ];
    args.extend(from_args(&dests));
    agent(None, &args).await.ok();
    let restored = RedisServer::start_with(RedisOptions {
        aof_dir: Some(dir),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(
        restored.cmd(&["GET", "counter"]).await.unwrap(),
        fleetsnap_agent::redis::Value::Bulk(b"500".to_vec().into()),
        "every INCR replayed once"
    );
    assert_eq!(dbsize(&restored).await, 1);
}

/// An archive encrypted with age: its base and segments are unreadable without the key (a
/// restore says to pass --identity), and with it restore every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_archive_restores_with_its_key_only() {
    use age::secrecy::ExposeSecret;
    let server = RedisServer::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    let key_file = work.path().join("key.txt");
    std::fs::write(
        &key_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let recipient = identity.to_public().to_string();
    let region = work.path().join("ra");
    let dest = format!("file://{}", region.display());
    let w = Archived::new(std::slice::from_ref(&dest), None, "standalone", "s0");
    let a = w.start(
        &server.url(),
        &work.path().join("spool"),
        &["--encrypt-to", &recipient],
    );
    w.base().await;
    let writes = write(&server, "secret", 40, Duration::from_millis(5)).await;
    let last = writes.last().unwrap().acked_ms;
    w.reaches(last).await;
    stop(a).await;
    let stored: Vec<String> = common::files_under(&region)
        .into_iter()
        .filter(|f| f.contains(".seg"))
        .collect();
    assert!(!stored.is_empty() && stored.iter().all(|f| f.ends_with(".seg.zst.age")));
    for f in &stored {
        let bytes = std::fs::read(region.join(f)).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("secret:"),
            "a key name is readable in {f}"
        );
    }
    let t = w.end().await;
    let out = work.path().join("r.rdb").display().to_string();
    let base = [
        "restore",
        "--from",
        &dest,
        "--cluster",
        "standalone",
        "--shard",
        "s0",
        "--at",
        &t,
        "--to-file",
        &out,
    ];
    let refused = agent(None, &base).await;
    assert_eq!(refused.code, 1);
    assert!(refused.stderr.contains("--identity"), "{}", refused.stderr);
    let key = key_file.display().to_string();
    let mut with_key = base.to_vec();
    with_key.extend(["--identity", &key]);
    agent(None, &with_key).await.ok();
    let tail = String::from_utf8_lossy(&std::fs::read(format!("{out}.tail")).unwrap()).into_owned();
    for w in &writes {
        assert!(
            tail.contains(&format!("{}\r\n", w.key)),
            "{} is missing",
            w.key
        );
    }
}

/// Pruning keeps every second within --keep restorable: a later backup of the same history
/// becomes the kept stretch's base, the segments before it go, the base and what follows stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_keeps_what_a_kept_base_needs_and_deletes_the_rest() {
    let server = RedisServer::start().await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let region = work.path().join("ra");
    let dest = format!("file://{}", region.display());
    let dests = vec![dest.clone()];
    let w = Archived::new(&dests, None, "standalone", "s0");
    let a = w.start(&server.url(), &work.path().join("spool"), &[]);
    w.base().await;
    let old = write(&server, "old", 30, Duration::from_millis(5)).await;
    let reached = old.last().unwrap().acked_ms;
    w.reaches(reached).await;
    // A backup of the same history: a later base.
    let snap = agent(
        None,
        &[
            "snapshot",
            "--redis",
            &server.url(),
            "--shard",
            "s0",
            "--to",
            &dest,
            "--json",
        ],
    )
    .await
    .ok()
    .json();
    let second_base = snap["backup_id"].as_str().unwrap().to_string();
    // The second base was taken before now; writes go on for more than a second after it.
    let after_base = now_ms();
    let new = write(&server, "new", 100, Duration::from_millis(15)).await;
    let last = new.last().unwrap().acked_ms;
    w.reaches(last).await;
    stop(a).await;
    let segments_before = common::files_under(&region)
        .into_iter()
        .filter(|f| f.contains(".seg"))
        .count();
    // Whole seconds back to just after the second base (the new writes took more than one): the
    // cutoff falls between it and the last write.
    let keep = format!("{}s", (now_ms() - after_base) / 1000);
    let pruned = agent(
        None,
        &[
            "archive", "prune", "--shard", "s0", "--from", &dest, "--keep", &keep, "--json",
        ],
    )
    .await
    .ok()
    .json();
    let report = &pruned[0][1];
    assert_eq!(report["kept_base"], second_base.as_str(), "{pruned:#}");
    let left = common::files_under(&region)
        .into_iter()
        .filter(|f| f.contains(".seg"))
        .count();
    assert!(left < segments_before, "nothing was pruned: {pruned:#}");
    // Every write since the kept base still restores, to the end of the chain: the last write's
    // acknowledgement can come before the archiver received it, so its time is not the bound.
    let s = w.status().await;
    let t = s["chains"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["end_ms"].as_i64())
        .max()
        .unwrap()
        .to_string();
    let out = work.path().join("after-prune.rdb").display().to_string();
    agent(
        None,
        &[
            "restore",
            "--from",
            &dest,
            "--cluster",
            "standalone",
            "--shard",
            "s0",
            "--at",
            &t,
            "--to-file",
            &out,
        ],
    )
    .await
    .ok();
    let restored = RedisServer::start_with(RedisOptions {
        rdb: Some(out.clone().into()),
        ..Default::default()
    })
    .await
    .unwrap();
    fleetsnap_agent::restore::replay_tail_into(
        &restored.target(),
        Path::new(&format!("{out}.tail")),
    )
    .await
    .unwrap();
    for w in old.iter().chain(&new) {
        assert!(has(&restored, &w.key).await, "{} is missing", w.key);
    }
}

/// `--before` in the other forms: `replace` loads the base into the node through its start
/// command and replays the archive; a drill of the same point checks the base and replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_drill_go_to_a_found_command_too() {
    replace_and_drill(RedisOptions::default()).await;
}

/// The same with valkey-server archived and replaced: the tail goes in as a replication stream
/// there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_and_drill_go_to_a_found_command_on_valkey_too() {
    replace_and_drill(RedisOptions::default().valkey()).await;
}

async fn replace_and_drill(opts: RedisOptions) {
    let is_valkey = opts.flavour == fleetsnap_testkit::redis::Flavour::Valkey;
    let server = RedisServer::start_with(opts.clone()).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dest = format!("file://{}", work.path().join("ra").display());
    let dests = vec![dest.clone()];
    let w = Archived::new(&dests, None, "standalone", "s0");
    let a = w.start(&server.url(), &work.path().join("spool"), &[]);
    w.base().await;
    let writes = write(&server, "w", 60, Duration::from_millis(5)).await;
    server.cmd(&["FLUSHDB"]).await.unwrap();
    let after = write(&server, "after", 5, Duration::from_millis(5)).await;
    let last = after.last().unwrap().acked_ms;
    w.reaches(last).await;
    stop(a).await;
    let found = agent(
        None,
        &[
            "archive",
            "find",
            "--shard",
            "s0",
            "--command",
            "flushdb",
            "--since",
            "0",
            "--json",
            "--from",
            &dest,
        ],
    )
    .await
    .ok()
    .json();
    let before = found[0]["before"].as_str().unwrap().to_string();

    let target = RedisServer::start_with(opts).await.unwrap();
    target.cmd(&["SET", "mine", "x"]).await.unwrap();
    target.cmd(&["SAVE"]).await.unwrap();
    let (url, start) = (target.url(), target.start_command());
    // The point both forms restore to.
    let point = [
        "--from",
        &dest,
        "--cluster",
        "standalone",
        "--shard",
        "s0",
        "--before",
        &before,
        "--json",
    ];
    let replace = ["--replace", &url, "--start", &start];
    let run = agent(None, &[&["restore"][..], &point, &replace].concat())
        .await
        .ok()
        .json();
    assert_eq!(run["restore"]["tail_commands"], 60, "{run:#}");
    // The tail went in as a replication stream, and the node is a primary again that takes
    // writes.
    assert_eq!(run["restore"]["tail_replayed_as"], "replication", "{run:#}");
    for w in &writes {
        assert!(has(&target, &w.key).await, "{} is missing", w.key);
    }
    assert_eq!(dbsize(&target).await, writes.len() as i64, "{run:#}");
    let role = match target.cmd(&["INFO", "replication"]).await.unwrap() {
        Value::Bulk(Some(b)) => String::from_utf8_lossy(&b).into_owned(),
        v => panic!("INFO answered {v:?}"),
    };
    assert!(role.contains("role:master"), "{role}");
    target.cmd(&["SET", "after-restore", "1"]).await.unwrap();

    let mut args = [&["drill"][..], &point].concat();
    let valkey = fleetsnap_testkit::redis::valkey_server()
        .unwrap()
        .display()
        .to_string();
    if is_valkey {
        args.extend(["--valkey-server", &valkey]);
    }
    let drill = agent(None, &args).await.ok().json();
    assert_eq!(drill["ok"], true, "{drill:#}");
}

/// A slot migrated from one shard to another while the cluster is archived: a restore of the
/// whole cluster to a time just after it names the slot as moving (the keys arrived by
/// `RESTORE-ASKING` in one shard's stream and left by `DEL` in the other's), and every key of
/// it is restored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_to_a_time_names_the_slots_a_migration_was_moving() {
    use fleetsnap_testkit::RedisCluster;
    let cluster = RedisCluster::start(3, 0).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let dests = vec![format!("file://{}", work.path().join("ra").display())];
    let primaries = cluster.primaries().await.unwrap();
    let (mut archivers, mut shards) = (Vec::new(), Vec::new());
    for (i, p) in primaries.iter().enumerate() {
        let shard = Archived::new(&dests, None, "moving", &format!("c{i}"));
        archivers.push(shard.start(&p.url(), &work.path().join(format!("spool-{i}")), &[]));
        shards.push(shard);
    }
    for s in &shards {
        s.base().await;
    }
    let served = owners(primaries[0]).await;
    let owner = |slot: u16| {
        let port = port_serving(&served, slot);
        primaries.iter().find(|p| p.port() == port).unwrap()
    };
    let slot = fleetsnap_core::keys::key_slot(b"mv");
    let (from, to) = (
        owner(slot),
        primaries
            .iter()
            .find(|p| p.port() != owner(slot).port())
            .unwrap(),
    );
    let keys: Vec<String> = (0..20).map(|n| format!("{{mv}}:{n}")).collect();
    for k in &keys {
        from.cmd(&["SET", k, "v"]).await.unwrap();
    }
    let (from_id, to_id) = (node_id(from).await, node_id(to).await);
    let s = slot.to_string();
    to.cmd(&["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id])
        .await
        .unwrap();
    from.cmd(&["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id])
        .await
        .unwrap();
    let port = to.port().to_string();
    let mut migrate = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
    migrate.extend(keys.iter().map(String::as_str));
    from.cmd(&migrate).await.unwrap();
    for p in &primaries {
        p.cmd(&["CLUSTER", "SETSLOT", &s, "NODE", &to_id])
            .await
            .unwrap();
    }
    // Written where the key lives now: a restore that let the shard it left write its older
    // value, or delete it, would show.
    to.cmd(&["SET", &keys[0], "changed"]).await.unwrap();
    // The time restored to sits 300 ms clear of the migration before it and of the writes
    // after it: an archiver stamps a command when it receives it, a few ms after the
    // acknowledgement. Not a wait for anything: the archives are waited for below.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A write on every shard after the time, so each archive reaches past it.
    let mut last = 0;
    for p in &primaries {
        let key = (0..)
            .map(|n| format!("later:{n}"))
            .find(|k| {
                let sl = fleetsnap_core::keys::key_slot(k.as_bytes());
                sl != slot && owner(sl).port() == p.port()
            })
            .unwrap();
        p.cmd(&["SET", &key, "x"]).await.unwrap();
        last = now_ms();
    }
    for s in &shards {
        s.reaches(last).await;
    }
    for a in archivers {
        stop(a).await;
    }

    let fresh = RedisCluster::start(3, 0).await.unwrap();
    let (url, at) = (fresh.nodes[0].url(), at.to_string());
    // The whole cluster to `at`, online into the fresh one.
    let mut to_at = vec![
        "restore",
        "--cluster",
        "moving",
        "--at",
        &at,
        "--online",
        &url,
    ];
    to_at.extend(from_args(&dests));
    let report = agent(None, &[&to_at[..], &["--json"]].concat())
        .await
        .ok()
        .json();
    assert_eq!(report["moving_slots"], s.as_str(), "{report:#}");
    let mut total = 0;
    for n in &fresh.nodes {
        total += dbsize(n).await;
    }
    assert_eq!(total, keys.len() as i64, "each moved key once: {report:#}");
    let mut want = vec!["v".to_string(); keys.len()];
    want[0] = "changed".into();
    assert_eq!(cluster_values(&fresh, &keys).await, want, "{report:#}");
    // Said in words too; into a target that holds the keys already, overwritten (the tail's
    // RESTORE-ASKING with them).
    let text = agent(None, &[&to_at[..], &["--replace-existing"]].concat()).await;
    assert_eq!(text.code, 0, "{}", text.stderr);
    assert!(
        text.stdout.contains(&format!("slots {s} were moving")),
        "{}",
        text.stdout
    );
    let mut total = 0;
    for n in &fresh.nodes {
        total += dbsize(n).await;
    }
    assert_eq!(total, keys.len() as i64);
    assert_eq!(cluster_values(&fresh, &keys).await, want);
}

async fn node_id(n: &RedisServer) -> String {
    match n.cmd(&["CLUSTER", "MYID"]).await.unwrap() {
        Value::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        v => panic!("CLUSTER MYID answered {v:?}"),
    }
}

/// The values of `keys` in a cluster, each read from the primary that serves its slot.
async fn cluster_values(c: &fleetsnap_testkit::RedisCluster, keys: &[String]) -> Vec<String> {
    let served = owners(&c.nodes[0]).await;
    let mut out = Vec::new();
    for k in keys {
        let slot = fleetsnap_core::keys::key_slot(k.as_bytes());
        let port = port_serving(&served, slot);
        let n = c.nodes.iter().find(|n| n.port() == port).unwrap();
        out.push(match n.cmd(&["GET", k]).await.unwrap() {
            Value::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
            v => format!("{v:?}"),
        });
    }
    out
}

/// `restore --cluster standalone --shard s0 --at AT` from `dests` (with `creds` for S3 ones), in
/// the form `how` gives.
async fn restore_s0_at(
    creds: Option<&Path>,
    dests: &[String],
    at: &str,
    how: &[&str],
) -> common::Run {
    let mut args = vec![
        "restore",
        "--cluster",
        "standalone",
        "--shard",
        "s0",
        "--at",
        at,
    ];
    args.extend(how);
    args.extend(from_args(dests));
    agent(creds, &args).await
}
