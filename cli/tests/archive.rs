//! The continuous archive run by the coordinators: a policy's `[archive]` leases each shard to
//! one agent; when that agent is SIGKILLed, the leader hands the shard to the agent of another
//! replica within the lease, the chain goes on without a gap, and a FLUSHALL written after the
//! takeover is undone from it with every acknowledged write. A 3-shard cluster archived into
//! Garage and moto: exact points, `archive find` of a FLUSHALL on every primary, restores to
//! just before it (also by the restore-cluster runbook) and to T − 5 s. A graceful failover
//! while archiving leaves no gap.

use std::process::Command;
use std::time::Duration;

use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::fleet::{Agent, Cli, Coordinator, FleetDir, Logs, Watched, bin};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};
use fleetsnap_testkit::s3::{Garage, Moto, credentials_file};
use serde_json::Value as Json;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Runs `fleetsnap-agent ARGS` (reading the regions); its JSON output.
fn agent_json(args: &[&str]) -> Json {
    agent_json_with(args, None)
}

/// [`agent_json`] with the S3 regions' credentials file.
fn agent_json_with(args: &[&str], credentials: Option<&std::path::Path>) -> Json {
    let mut c = Command::new(bin("fleetsnap-agent"));
    c.args(args).env("AWS_EC2_METADATA_DISABLED", "true");
    if let Some(f) = credentials {
        c.env("AWS_SHARED_CREDENTIALS_FILE", f);
    }
    let o = c.output().expect("fleetsnap-agent runs");
    assert!(
        o.status.success(),
        "fleetsnap-agent {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON")
}

/// `fleetsnap archive status --json`: the archived shards.
fn rows(cli: &Cli) -> Option<Vec<Json>> {
    cli.json(&["archive", "status", "--json"])
        .ok()?
        .as_array()
        .cloned()
}

/// Waits for the shard's archive to be held by an agent other than `not` with its stream open
/// and `segments` or more segments stored; the row.
async fn held(cli: &Cli, not: Option<&str>, segments: u64) -> Json {
    poll_until(
        "an agent holds the archive",
        Duration::from_secs(60),
        || async {
            let r = rows(cli)?.into_iter().next()?;
            (r["job"].is_u64()
                && Some(r["agent"].as_str()?) != not
                && r["connected"] == true
                && r["segments"].as_u64()? >= segments)
                .then_some(r)
        },
    )
    .await
    .unwrap()
}

/// Writes `n` keys `prefix:i`, each after the previous one's acknowledgement.
async fn write(server: &RedisServer, prefix: &str, n: usize, gap: Duration) -> Vec<String> {
    let mut conn = server.conn().await.unwrap();
    let mut keys = Vec::new();
    for i in 0..n {
        let key = format!("{prefix}:{i}");
        conn.checked(&[b"SET", key.as_bytes(), i.to_string().as_bytes()])
            .await
            .unwrap();
        keys.push(key);
        tokio::time::sleep(gap).await;
    }
    keys
}

fn from_args(dests: &[String]) -> Vec<&str> {
    dests.iter().flat_map(|d| ["--from", d.as_str()]).collect()
}

/// Policy `name`, which archives `cluster` in 1 s segments (with `extra` lines in its
/// `[archive]`) into two file regions, east and west, under `dir`: the regions' URLs and the
/// policy's text.
fn archive_to_two_regions(
    dir: &std::path::Path,
    name: &str,
    cluster: &str,
    extra: &str,
) -> (Vec<String>, String) {
    let dests: Vec<String> = ["east", "west"]
        .iter()
        .map(|r| format!("file://{}", dir.join(r).display()))
        .collect();
    let policy = format!(
        r#"
name = "{name}"
clusters = ["{cluster}"]

[[destinations]]
region = "east"
url = "{}"

[[destinations]]
region = "west"
url = "{}"

[archive]
segment_seconds = 1
{extra}"#,
        dests[0], dests[1]
    );
    (dests, policy)
}

/// Waits for the regions to hold `shard`'s archive past `last` (Unix ms); its status then.
async fn archived_past(dests: &[String], cluster: &str, shard: &str, last: i64) -> Json {
    let mut args = vec![
        "archive",
        "status",
        "--cluster",
        cluster,
        "--shard",
        shard,
        "--json",
    ];
    args.extend(from_args(dests));
    poll_until(
        "the regions hold the archive past the last write",
        Duration::from_secs(90),
        || async {
            let s = agent_json(&args);
            let end = s["chains"]
                .as_array()?
                .iter()
                .filter_map(|c| c["end_ms"].as_i64())
                .max()?;
            (end >= last).then_some(s)
        },
    )
    .await
    .unwrap()
}

/// `shard` restored from the archive to `point` (`--at T` or `--before H`) into an AOF
/// directory `dir`, and a redis-server that loaded it.
async fn restored_to(
    dests: &[String],
    cluster: &str,
    shard: &str,
    point: [&str; 2],
    dir: &std::path::Path,
) -> RedisServer {
    let d = dir.display().to_string();
    let mut args = vec!["restore", "--cluster", cluster, "--shard", shard];
    args.extend(point);
    args.extend(["--aof-dir", &d, "--json"]);
    args.extend(from_args(dests));
    agent_json(&args);
    RedisServer::start_with(RedisOptions {
        aof_dir: Some(dir.to_path_buf()),
        ..Default::default()
    })
    .await
    .expect("the restored AOF directory loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_archiving_agent_is_replaced_within_the_lease_without_a_gap() {
    let fleet = FleetDir::new(&[1, 2, 3], &["a1", "a2", "a3"]).unwrap();
    let initial = Coordinator::addresses(3);
    let opts = fleetsnap_testkit::fleet::CoordinatorOptions {
        lease_seconds: 4,
        ..Default::default()
    };
    let mut coordinators: Vec<Coordinator> = initial
        .iter()
        .map(|(id, _)| Coordinator::configure(&fleet, *id, &initial, &opts).unwrap())
        .collect();
    for c in &mut coordinators {
        c.start().await.unwrap();
    }
    let addresses: Vec<String> = initial.iter().map(|(_, a)| a.clone()).collect();
    let set = ReplicaSet::start(2, RedisOptions::default()).await.unwrap();
    // a1 watches the primary; a2 and a3 one replica each: either replica's agent can archive.
    let watched = [
        vec![Watched::new("primary", set.primary.url(), "shop")],
        vec![Watched::new("replica-1", set.replicas[0].url(), "shop")],
        vec![Watched::new("replica-2", set.replicas[1].url(), "shop")],
    ];
    let mut agents: Vec<Agent> = ["a1", "a2", "a3"]
        .iter()
        .zip(&watched)
        .map(|(id, w)| Agent::configure(&fleet, id, &addresses, w, false).unwrap())
        .collect();
    let mut metrics = std::collections::HashMap::new();
    for a in &mut agents {
        let port = fleetsnap_testkit::free_port();
        a.add_config(&format!(
            "[telemetry]\nmetrics_listen = \"127.0.0.1:{port}\"\n"
        ))
        .unwrap();
        metrics.insert(a.id.clone(), format!("127.0.0.1:{port}").parse().unwrap());
        a.start().unwrap();
    }
    let _logs = Logs::of(&coordinators, &agents);
    let cli = fleet.cli(&addresses);
    cli.wait_for_shards(1, 3).await.unwrap();

    // The catalog reads the regions once when the policy comes, then hourly: the rebuild below
    // is what brings the chains in.
    let (dests, policy) = archive_to_two_regions(
        fleet.path(),
        "shop-pitr",
        "shop",
        "keep = \"7d\"\ncatalog_every = \"1h\"\n",
    );
    let mut keys = write(&set.primary, "seed", 50, Duration::ZERO).await;
    cli.set_policy(fleet.path(), "shop-pitr", &policy).unwrap();

    // The leader leases the shard to a replica's agent; the archive's base and segments come.
    keys.extend(write(&set.primary, "a", 100, Duration::from_millis(5)).await);
    let first = held(&cli, None, 1).await;
    let holder = first["agent"].as_str().unwrap().to_string();
    assert_ne!(
        holder, "a1",
        "a replica is archived, not the primary: {first:#}"
    );
    assert_eq!(first["shard"], "primary", "{first:#}");
    let shard = "primary";
    // The holder's /metrics has the archive's families, for its shard and the policy's regions.
    let (_, text) = fleetsnap_telemetry::http::get(metrics[&holder], "/metrics")
        .await
        .unwrap();
    for want in [
        "fleetsnap_archive_lag_seconds{cluster=\"shop\",shard=\"primary\"}",
        "fleetsnap_archive_connected{cluster=\"shop\",shard=\"primary\"} 1",
        "fleetsnap_archive_restorable_until_seconds{cluster=\"shop\",shard=\"primary\",region=\"east\"}",
    ] {
        assert!(
            text.contains(want),
            "{want} is not in the agent's metrics:\n{text}"
        );
    }

    // The holder dies; writes go on. Another agent holds the shard within the lease (4 s) and
    // the leader's round, and its archiver continues the chain from the regions.
    let killed_at = std::time::Instant::now();
    agents.iter_mut().find(|a| a.id == holder).unwrap().kill();
    keys.extend(write(&set.primary, "b", 100, Duration::from_millis(20)).await);
    let second = held(&cli, Some(&holder), 1).await;
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "the takeover took {took:?}: {second:#}"
    );
    assert_ne!(second["agent"], "a1", "{second:#}");

    // After the takeover: more writes, a FLUSHALL, writes after it.
    keys.extend(write(&set.primary, "c", 100, Duration::from_millis(5)).await);
    let mut conn = set.primary.conn().await.unwrap();
    conn.checked(&[b"FLUSHALL"]).await.unwrap();
    let after = write(&set.primary, "after", 10, Duration::from_millis(5)).await;
    let status = archived_past(&dests, "shop", shard, now_ms()).await;
    assert_eq!(
        status["chains"].as_array().unwrap().len(),
        1,
        "the takeover left no gap: one chain, one base\n{status:#}"
    );
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status:#}");

    // The FLUSHALL is found once, though two archivers may both hold its stretch.
    // `fleetsnap archive find` runs on an agent, which reads the regions.
    let found = cli
        .json(&[
            "archive",
            "find",
            "--cluster",
            "shop",
            "--command",
            "flushall",
            "--since",
            "0",
            "--json",
        ])
        .unwrap();
    let found = found.as_array().unwrap();
    assert_eq!(found[0]["shard"], shard, "{found:#?}");
    assert_eq!(found.len(), 1, "{found:#?}");
    let before = found[0]["before"].as_str().unwrap().to_string();

    // Restored to just before it: every acknowledged write, nothing after.
    let server = restored_to(
        &dests,
        "shop",
        shard,
        ["--before", &before],
        &fleet.path().join("restored"),
    )
    .await;
    let mut missing = Vec::new();
    for k in &keys {
        if !matches!(server.cmd(&["EXISTS", k]).await.unwrap(), Value::Int(1)) {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    let n = match server.cmd(&["DBSIZE"]).await.unwrap() {
        Value::Int(n) => n as usize,
        v => panic!("DBSIZE answered {v:?}"),
    };
    assert_eq!(
        n,
        keys.len(),
        "nothing after the FLUSHALL ({after:?}) is restored"
    );

    // The same through the coordinators: `fleetsnap restore --before` into a fresh server.
    let fresh = RedisServer::start().await.unwrap();
    let (ok, doc) = cli
        .run_json(&[
            "restore",
            "--cluster",
            "shop",
            "--before",
            &before,
            "--mode",
            "online",
            "--target",
            &fresh.url(),
            "--wait",
            "120",
            "--json",
        ])
        .unwrap();
    assert!(ok, "{doc:#}");
    let mut missing = Vec::new();
    for k in &keys {
        if !matches!(fresh.cmd(&["EXISTS", k]).await.unwrap(), Value::Int(1)) {
            missing.push(k.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "acknowledged writes missing: {missing:?}"
    );
    assert!(
        matches!(fresh.cmd(&["DBSIZE"]).await.unwrap(), Value::Int(n) if n as usize == keys.len())
    );

    // The replicated catalog: a catalog rebuild has an agent read the archive's chains from the
    // regions into the state; every coordinator holds them, so the next leader shows the same
    // chains, from the same read, without reading a region.
    let base = status["chains"][0]["base"]["backup_id"].clone();
    let reached = status["chains"][0]["end_ms"].as_i64().unwrap();
    let out = cli
        .run(&["catalog", "rebuild", "--from", &dests[0], "--wait", "120"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let catalogued = |cli: &Cli| {
        let cli = cli.clone();
        async move {
            poll_until("the catalog's chains", Duration::from_secs(60), || async {
                let r = rows(&cli)?.into_iter().find(|r| r["shard"] == shard)?;
                (r["chains"].as_array()?.len() == 1
                    && r["chains"][0]["end_ms"].as_i64()? >= reached)
                    .then_some(r)
            })
            .await
            .unwrap()
        }
    };
    let row = catalogued(&cli).await;
    assert_eq!(row["chains"][0]["base"], base, "{row:#}");
    let text = String::from_utf8(cli.run(&["archive", "status"]).unwrap().stdout).unwrap();
    assert!(
        text.contains("cluster shop, in the catalog") && text.contains("restorable as a whole in"),
        "{text}"
    );
    let leader = cli.json(&["status", "--json"]).unwrap()["leader"]
        .as_u64()
        .unwrap();
    coordinators
        .iter_mut()
        .find(|c| c.id == leader)
        .unwrap()
        .kill();
    let others: Vec<String> = initial
        .iter()
        .filter(|(id, _)| *id != leader)
        .map(|(_, a)| a.clone())
        .collect();
    let after = catalogued(&cli.to(&others)).await;
    assert_eq!(
        after["catalog_scanned_at_ms"], row["catalog_scanned_at_ms"],
        "the new leader shows the read its predecessor applied: {after:#}"
    );
    assert_eq!(after["chains"], row["chains"]);
}

/// Unix ms as RFC 3339 with milliseconds.
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// A tag whose keys primary `p` serves.
async fn tag_of(p: &RedisServer, name: &str) -> String {
    for t in 0.. {
        let tag = format!("{{{name}{t}}}");
        // A key another primary serves is refused (MOVED).
        if p.cmd(&["SET", &format!("{tag}:probe"), "x"]).await.is_ok() {
            return tag;
        }
    }
    unreachable!()
}

/// A 3-shard Redis Cluster with replicas archived into two S3 regions (Garage and moto).
/// Exact points on the policy's schedule, taken by the leader through the primaries' agents: a
/// writer increments a counter on shards A, B and C in that order, each after the previous
/// acknowledgement; every shard restored `--exact` to the last point holds a ≥ b ≥ c and
/// a − c ≤ 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_exact_points_restore_a_cluster_at_one_instant() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let ids = ["a1", "a2", "a3", "a4", "a5", "a6"];
    let fleet = FleetDir::new(&[1], &ids).unwrap();
    let (one, cli) = fleetsnap_testkit::fleet::single_node(&fleet, &Default::default())
        .await
        .unwrap();
    let cluster = fleetsnap_testkit::redis::RedisCluster::start(3, 1)
        .await
        .unwrap();
    // Two S3 regions: Garage and moto.
    let garage = Garage::start().await.unwrap();
    let moto = Moto::start().await.unwrap();
    garage.create_bucket("fleet").await.unwrap();
    moto.region.create_bucket("fleet").await.unwrap();
    let creds = credentials_file(fleet.path(), &[&garage.region, &moto.region]).unwrap();
    let mut agents = Vec::new();
    for (i, n) in cluster.nodes.iter().enumerate() {
        let mut a = Agent::configure(
            &fleet,
            ids[i],
            std::slice::from_ref(&one.address),
            &[Watched::new(format!("node{i}"), n.url(), "bank")],
            false,
        )
        .unwrap();
        a.env("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap());
        a.start().unwrap();
        agents.push(a);
    }
    let _logs = Logs::of(std::slice::from_ref(&one), &agents);
    cli.wait_for_shards(3, 2).await.unwrap();
    let mut primaries = Vec::new();
    for n in &cluster.nodes {
        if n.info("replication", "role").await.unwrap().as_deref() == Some("master") {
            primaries.push(n);
        }
    }
    let mut tags = Vec::new();
    for (k, p) in primaries.iter().enumerate() {
        tags.push(tag_of(p, &format!("s{k}")).await);
    }
    let dest = garage.region.dest("fleet", "pitr");
    let west = moto.region.dest("fleet", "pitr");
    let policy = format!(
        r#"
name = "bank-pitr"
clusters = ["bank"]
write_pause_budget_ms = 1000

[[destinations]]
region = "east"
url = "{dest}"

[[destinations]]
region = "west"
url = "{west}"

[archive]
segment_seconds = 1
exact_points_every = "10s"
"#
    );
    cli.set_policy(fleet.path(), "bank-pitr", &policy).unwrap();
    let archived = poll_until("every shard archived", Duration::from_secs(60), || async {
        let r = rows(&cli)?;
        (r.len() == 3
            && r.iter()
                .all(|r| r["connected"] == true && r["segments"].as_u64() >= Some(1)))
        .then_some(r)
    })
    .await
    .unwrap();

    // The writer: a, then b, then c, each after the one before was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let mut conns = Vec::new();
        for p in &primaries {
            conns.push(p.conn().await.unwrap());
        }
        let keys: Vec<String> = tags.iter().map(|t| format!("{t}:ctr")).collect();
        tokio::spawn(async move {
            let mut rounds = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (c, k) in conns.iter_mut().zip(&keys) {
                    c.checked(&[b"INCR", k.as_bytes()]).await.unwrap();
                }
                rounds += 1;
            }
            rounds
        })
    };
    let count = || async {
        garage.region.keys("fleet").await.map_or(0, |k| {
            k.iter()
                .filter(|k| k.contains("bank/archive-points/"))
                .count()
        })
    };
    let before = count().await;
    poll_until(
        "two exact points while writing",
        Duration::from_secs(60),
        || async { (count().await >= before + 2).then_some(()) },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    let last = now_ms();
    poll_until(
        "every shard archived past the writes",
        Duration::from_secs(60),
        || async {
            let r = rows(&cli)?;
            r.iter()
                .all(|r| r["restorable_until_ms"].as_i64() >= Some(last))
                .then_some(())
        },
    )
    .await
    .unwrap();

    let t = last.to_string();
    let mut counters = Vec::new();
    for (k, p) in primaries.iter().enumerate() {
        // The shard a primary serves, by the slots its name carries.
        let slot = match p
            .cmd(&["CLUSTER", "KEYSLOT", &format!("{}:ctr", tags[k])])
            .await
            .unwrap()
        {
            Value::Int(s) => s as u16,
            v => panic!("KEYSLOT answered {v:?}"),
        };
        let shard = archived
            .iter()
            .map(|r| r["shard"].as_str().unwrap().to_string())
            .find(|s| {
                s.split('_').any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot)
                })
            })
            .expect("a shard serves the slot");
        let aof = fleet.path().join(format!("aof-{k}"));
        let a = aof.display().to_string();
        agent_json_with(
            &[
                "restore",
                "--cluster",
                "bank",
                "--shard",
                &shard,
                "--at",
                &t,
                "--exact",
                "--aof-dir",
                &a,
                "--from",
                &dest,
                "--from",
                &west,
                "--json",
            ],
            Some(&creds),
        );
        let s = RedisServer::start_with(RedisOptions {
            aof_dir: Some(aof),
            ..Default::default()
        })
        .await
        .unwrap();
        let key = format!("{}:ctr", tags[k]);
        let v = match s.cmd(&["GET", &key]).await.unwrap() {
            Value::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse::<u64>().unwrap(),
            other => panic!("{key} is {other:?}"),
        };
        counters.push(v);
    }
    let (a, b, c) = (counters[0], counters[1], counters[2]);
    assert!(
        a >= b && b >= c && a - c <= 1,
        "restored counters {counters:?} are not one instant"
    );
    // The whole cluster through the coordinators, to the same point, into one server.
    let fresh = RedisServer::start().await.unwrap();
    let (ok, doc) = cli
        .run_json(&[
            "restore",
            "--cluster",
            "bank",
            "--at",
            &rfc3339(last),
            "--exact",
            "--mode",
            "online",
            "--target",
            &fresh.url(),
            "--wait",
            "120",
            "--json",
        ])
        .unwrap();
    assert!(ok, "{doc:#}");
    let mut again = Vec::new();
    for t in &tags {
        let key = format!("{t}:ctr");
        again.push(match fresh.cmd(&["GET", &key]).await.unwrap() {
            Value::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse::<u64>().unwrap(),
            other => panic!("{key} is {other:?}"),
        });
    }
    assert_eq!(
        again, counters,
        "the coordinators' restore reached the same exact point"
    );
    assert!(
        a > 0 && a < rounds,
        "the last point lies inside the writes: {counters:?} of {rounds}"
    );

    // Undo a FLUSHALL: keys written to every shard, each with its acknowledgement's time, for
    // 7 s; a FLUSHALL on every primary at T; writes after it.
    let mut conns = Vec::new();
    for p in &primaries {
        conns.push(p.conn().await.unwrap());
    }
    let mut acked: Vec<(String, i64)> = Vec::new();
    let since = now_ms();
    let mut i = 0;
    while now_ms() < since + 7_000 {
        for (c, t) in conns.iter_mut().zip(&tags) {
            let key = format!("{t}:k{i}");
            c.checked(&[b"SET", key.as_bytes(), b"v"]).await.unwrap();
            acked.push((key, now_ms()));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let flushed_at = now_ms();
    for c in &mut conns {
        c.checked(&[b"FLUSHALL"]).await.unwrap();
    }
    for (c, t) in conns.iter_mut().zip(&tags) {
        for j in 0..20 {
            let key = format!("{t}:after{j}");
            c.checked(&[b"SET", key.as_bytes(), b"v"]).await.unwrap();
        }
    }
    let last = now_ms();
    poll_until(
        "every shard archived past the FLUSHALL",
        Duration::from_secs(60),
        || async {
            let r = rows(&cli)?;
            r.iter()
                .all(|r| r["restorable_until_ms"].as_i64() >= Some(last))
                .then_some(())
        },
    )
    .await
    .unwrap();
    // A command's stamp is when the archiver received it, or up to one sample (100 ms) later:
    // by now the regions hold all.
    let seen = now_ms();
    let found = cli
        .json(&[
            "archive",
            "find",
            "--cluster",
            "bank",
            "--command",
            "FLUSHALL",
            "--since",
            &since.to_string(),
            "--json",
        ])
        .unwrap();
    let found = found.as_array().unwrap().clone();
    assert_eq!(found.len(), 3, "one FLUSHALL per shard: {found:#?}");
    for f in &found {
        let t = f["time_ms"].as_i64().unwrap();
        assert!(
            t >= flushed_at && t <= seen,
            "the FLUSHALL is found when it was run (between {flushed_at} and {seen}): {f:#}"
        );
    }
    // Restored to just before it, the whole cluster into one fresh server: every acknowledged
    // write, nothing after.
    let fresh = RedisServer::start().await.unwrap();
    let mut args = vec!["restore", "--cluster", "bank"];
    for f in &found {
        args.extend(["--before", f["before"].as_str().unwrap()]);
    }
    let target = fresh.url();
    args.extend([
        "--mode", "online", "--target", &target, "--wait", "120", "--json",
    ]);
    let (ok, doc) = cli.run_json(&args).unwrap();
    assert!(ok, "{doc:#}");
    let keys = all_keys(&fresh).await;
    for (k, _) in &acked {
        assert!(keys.contains(k), "{k} was acknowledged before the FLUSHALL");
    }
    // Besides: each shard's counter and the probe that found its tag.
    assert_eq!(
        keys.len(),
        acked.len() + 2 * tags.len(),
        "nothing after the FLUSHALL: {:?}",
        keys.iter()
            .filter(|k| k.contains(":after"))
            .collect::<Vec<_>>()
    );

    // The restore-cluster runbook does the same through its steps: checked empty, restored
    // from the archive, checked; the same keys.
    let again = RedisServer::start().await.unwrap();
    let target = again.url();
    let mut runbook = vec!["runbook", "restore-cluster", "--cluster", "bank"];
    for f in &found {
        runbook.extend(["--before", f["before"].as_str().unwrap()]);
    }
    runbook.extend(["--target", &target, "--yes", "--json"]);
    let (ok, rb) = cli.run_json(&runbook).unwrap();
    assert!(ok, "{rb:#}");
    assert!(
        rb["steps"][1]["outcome"]
            .as_str()
            .unwrap()
            .contains("restored from the archive"),
        "{rb:#}"
    );
    assert_eq!(
        all_keys(&again).await,
        keys,
        "the runbook restored the same keys"
    );

    // Restored to T − 5 s: every write acknowledged before it less the shards' stamp spread,
    // none acknowledged after it plus the spread. The archiver stamps a command as it receives
    // it and the writer as the reply comes: either may come first by a few ms on one host, so
    // the bounds take 20 ms more.
    let at = flushed_at - 5_000;
    let fresh = RedisServer::start().await.unwrap();
    let target = fresh.url();
    let (ok, doc) = cli
        .run_json(&[
            "restore",
            "--cluster",
            "bank",
            "--at",
            &rfc3339(at),
            "--mode",
            "online",
            "--target",
            &target,
            "--wait",
            "120",
            "--json",
        ])
        .unwrap();
    assert!(ok, "{doc:#}");
    let spread = find_key(&doc, "stamp_spread_ms")
        .and_then(Json::as_i64)
        .unwrap_or_else(|| panic!("the restore reports its stamps' spread: {doc:#}"));
    let keys = all_keys(&fresh).await;
    for (k, t) in &acked {
        if *t < at - spread - 20 {
            assert!(keys.contains(k), "{k} acknowledged at {t}, before {at}");
        }
        if *t > at + spread + 20 {
            assert!(!keys.contains(k), "{k} acknowledged at {t}, after {at}");
        }
    }
}

/// Every key of a server (one database).
async fn all_keys(s: &RedisServer) -> std::collections::HashSet<String> {
    match s.cmd(&["KEYS", "*"]).await.unwrap() {
        Value::Array(Some(v)) => v
            .into_iter()
            .map(|k| match k {
                Value::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
                other => panic!("KEYS answered {other:?}"),
            })
            .collect(),
        other => panic!("KEYS answered {other:?}"),
    }
}

/// The first value named `key` anywhere in a JSON document.
fn find_key<'a>(doc: &'a Json, key: &str) -> Option<&'a Json> {
    match doc {
        Json::Object(m) => m
            .get(key)
            .or_else(|| m.values().find_map(|v| find_key(v, key))),
        Json::Array(a) => a.iter().find_map(|v| find_key(v, key)),
        _ => None,
    }
}

/// A graceful failover while the shard is archived: a writer's acknowledged writes before and
/// after it, the runbook promoting a replica in between. The archive has one chain (the
/// promotion is a replid switch, not a gap), and restored to its end holds every acknowledged
/// write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_failover_while_archiving_leaves_no_gap() {
    let fleet = FleetDir::new(&[1], &["a0", "a1", "a2"]).unwrap();
    let (one, cli) = fleetsnap_testkit::fleet::single_node(&fleet, &Default::default())
        .await
        .unwrap();
    let set = ReplicaSet::start(2, RedisOptions::default()).await.unwrap();
    let mut agents = Vec::new();
    for (id, name, server) in [
        ("a0", "p", &set.primary),
        ("a1", "r1", &set.replicas[0]),
        ("a2", "r2", &set.replicas[1]),
    ] {
        let mut a = Agent::configure(
            &fleet,
            id,
            std::slice::from_ref(&one.address),
            &[Watched::new(name, server.url(), "ha")],
            false,
        )
        .unwrap();
        a.start().unwrap();
        agents.push(a);
    }
    let _logs = Logs::of(std::slice::from_ref(&one), &agents);
    cli.wait_for_shards(1, 3).await.unwrap();
    let (dests, policy) = archive_to_two_regions(fleet.path(), "ha-pitr", "ha", "");
    cli.set_policy(fleet.path(), "ha-pitr", &policy).unwrap();
    let mut keys = write(&set.primary, "before", 100, Duration::from_millis(5)).await;
    let row = held(&cli, None, 1).await;
    let shard = row["shard"].as_str().unwrap().to_string();

    // The runbook: writes paused until the chosen replica has them all, then promoted.
    let (ok, rb) = {
        let cli = cli.clone();
        tokio::task::spawn_blocking(move || {
            cli.run_json(&[
                "runbook",
                "failover",
                "--cluster",
                "ha",
                "--shard",
                "p",
                "--yes",
                "--json",
            ])
            .unwrap()
        })
        .await
        .unwrap()
    };
    assert!(ok, "{rb:#}");
    let mut primary = None;
    for s in std::iter::once(&set.primary).chain(&set.replicas) {
        if s.info("replication", "role").await.unwrap().as_deref() == Some("master") {
            primary = Some(s);
        }
    }
    let primary = primary.expect("a primary after the failover");
    assert_ne!(primary.port(), set.primary.port(), "{rb:#}");
    keys.extend(write(primary, "after", 100, Duration::from_millis(5)).await);

    // The archive reaches past the last write, in one chain across the two histories.
    let status = archived_past(&dests, "ha", &shard, now_ms()).await;
    assert_eq!(
        status["chains"].as_array().unwrap().len(),
        1,
        "the failover left no gap: one chain\n{status:#}"
    );
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status:#}");
    let end = status["chains"][0]["end_ms"].as_i64().unwrap().to_string();
    let restored = restored_to(
        &dests,
        "ha",
        &shard,
        ["--at", &end],
        &fleet.path().join("restored"),
    )
    .await;
    for k in &keys {
        assert!(
            matches!(restored.cmd(&["EXISTS", k]).await.unwrap(), Value::Int(1)),
            "{k} was acknowledged and is not restored\n{status:#}"
        );
    }
}
