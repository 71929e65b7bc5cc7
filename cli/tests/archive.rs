//! The continuous archive run by the coordinators: a policy's `[archive]` leases each shard to
//! one agent; when that agent is SIGKILLed, the leader hands the shard to the agent of another
//! replica within the lease, the chain goes on without a gap, and a FLUSHALL written after the
//! takeover is undone from it with every acknowledged write.

use std::process::Command;
use std::time::Duration;

use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::fleet::{Agent, Cli, Coordinator, FleetDir, Logs, Watched, bin};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, RedisServer, ReplicaSet};
use serde_json::Value as Json;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Runs `fleetsnap-agent ARGS` (reading the regions); its JSON output.
fn agent_json(args: &[&str]) -> Json {
    let o = Command::new(bin("fleetsnap-agent"))
        .args(args)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("fleetsnap-agent runs");
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
    for a in &mut agents {
        a.start().unwrap();
    }
    let _logs = Logs::of(&coordinators, &agents);
    let cli = fleet.cli(&addresses);
    cli.wait_for_shards(1, 3).await.unwrap();

    let dirs = [fleet.path().join("east"), fleet.path().join("west")];
    let dests: Vec<String> = dirs
        .iter()
        .map(|d| format!("file://{}", d.display()))
        .collect();
    let policy = format!(
        r#"
name = "shop-pitr"
clusters = ["shop"]

[[destinations]]
region = "east"
url = "{}"

[[destinations]]
region = "west"
url = "{}"

[archive]
segment_seconds = 1
keep = "7d"
"#,
        dests[0], dests[1]
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
    let last = now_ms();
    let mut status_args = vec![
        "archive",
        "status",
        "--cluster",
        "shop",
        "--shard",
        shard,
        "--json",
    ];
    status_args.extend(from_args(&dests));
    let status = poll_until(
        "the regions hold the archive past the last write",
        Duration::from_secs(60),
        || async {
            let s = agent_json(&status_args);
            let end = s["chains"]
                .as_array()?
                .iter()
                .filter_map(|c| c["end_ms"].as_i64())
                .max()?;
            (end >= last).then_some(s)
        },
    )
    .await
    .unwrap();
    assert_eq!(
        status["chains"].as_array().unwrap().len(),
        1,
        "the takeover left no gap: one chain, one base\n{status:#}"
    );
    assert!(status["gaps"].as_array().unwrap().is_empty(), "{status:#}");

    // The FLUSHALL is found once, though two archivers may both hold its stretch.
    let mut find = vec![
        "archive",
        "find",
        "--cluster",
        "shop",
        "--shard",
        shard,
        "--command",
        "FLUSHALL",
        "--since",
        "0",
        "--json",
    ];
    find.extend(from_args(&dests));
    let found = agent_json(&find);
    let found = found.as_array().unwrap();
    assert_eq!(found.len(), 1, "{found:#?}");
    let before = found[0]["before"].as_str().unwrap().to_string();

    // Restored to just before it: every acknowledged write, nothing after.
    let aof = fleet.path().join("restored");
    let aof_s = aof.display().to_string();
    let mut restore = vec![
        "restore",
        "--cluster",
        "shop",
        "--shard",
        shard,
        "--before",
        &before,
        "--aof-dir",
        &aof_s,
        "--json",
    ];
    restore.extend(from_args(&dests));
    agent_json(&restore);
    let server = RedisServer::start_with(RedisOptions {
        aof_dir: Some(aof.clone()),
        ..Default::default()
    })
    .await
    .expect("the restored AOF directory loads");
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
}
