//! The continuous archive under faults. A policy with `[archive]` has every shard of the chaos
//! cluster archived by one agent; the scenarios cut an archiver's host off from both regions,
//! kill the archiving agent, and kill a primary while the cluster fails over. The checker then
//! restores the whole cluster from the archive to the end of the writes and requires every
//! acknowledged write the cluster itself kept, nothing that was never sent, and one chain per
//! shard in every region (no gap).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fleetsnap_testkit::fleet::bin;
use fleetsnap_testkit::{RedisServer, poll_until};
use rand::Rng;
use serde_json::Value as Json;

use crate::checker::{self, Verdict};
use crate::ctx::{Ctx, primaries};
use crate::fleet::{CLUSTER, SHARDS};
use crate::workload::History;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The suite's archiving policy: both regions, 1 s segments, no windows.
fn set_archive_policy(ctx: &Ctx) -> anyhow::Result<()> {
    let text = ctx.fleet.policy("pitr", "independent", 2) + "\n[archive]\nsegment_seconds = 1\n";
    ctx.fleet.set_policy("pitr", &text)
}

/// `fleetsnap archive status --json`: one row per archived shard.
fn rows(ctx: &Ctx) -> Option<Vec<Json>> {
    ctx.fleet
        .cli
        .json(&["archive", "status", "--json"])
        .ok()?
        .as_array()
        .cloned()
}

/// Waits until every shard is archived (its stream open, a segment stored); the rows.
async fn archived(ctx: &Ctx) -> anyhow::Result<Vec<Json>> {
    poll_until("every shard archived", Duration::from_secs(120), || async {
        let r = rows(ctx)?;
        (r.len() == SHARDS
            && r.iter()
                .all(|r| r["connected"] == true && r["segments"].as_u64() >= Some(1)))
        .then_some(r)
    })
    .await
}

/// Runs `fleetsnap-agent ARGS` with the regions' credentials; its stdout.
fn agent(ctx: &Ctx, args: &[&str]) -> anyhow::Result<String> {
    let out = fleetsnap_testkit::output_within(
        std::process::Command::new(bin("fleetsnap-agent"))
            .args(args)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", &ctx.fleet.creds)
            .env("NO_COLOR", "1"),
        Duration::from_secs(300),
    )?;
    if !out.status.success() {
        bail!(
            "fleetsnap-agent {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The checks after the faults, with every fault healed and the writer stopped.
async fn check_archive(ctx: &mut Ctx, history: &History) -> anyhow::Result<()> {
    let mut v = Verdict::default();
    let end = now_ms();
    let waited = Instant::now();
    let caught_up = poll_until(
        "every shard's archive past the last write in every region",
        Duration::from_secs(180),
        || async {
            let r = rows(ctx)?;
            (r.len() == SHARDS
                && r.iter()
                    .all(|r| r["restorable_until_ms"].as_i64() >= Some(end)))
            .then_some(())
        },
    )
    .await;
    let behind: Vec<String> = rows(ctx)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            format!(
                "{}: restorable to {} ms after the last write",
                r["shard"].as_str().unwrap_or("?"),
                r["restorable_until_ms"]
                    .as_i64()
                    .map_or("-".into(), |t| (t - end).to_string())
            )
        })
        .collect();
    v.add(
        "the archive catches up with the writes once the faults heal",
        caught_up.is_ok(),
        behind.join("; "),
    );
    ctx.figure_since(
        "archive past the last write after the writer stopped (s)",
        waited,
    );
    let shards: Vec<String> = rows(ctx)
        .unwrap_or_default()
        .iter()
        .filter_map(|r| r["shard"].as_str().map(str::to_string))
        .collect();
    let mut chains = Vec::new();
    for r in &ctx.fleet.regions {
        let dest = r.dest();
        for s in &shards {
            let status: Json = serde_json::from_str(&agent(
                ctx,
                &[
                    "archive",
                    "status",
                    "--from",
                    &dest,
                    "--cluster",
                    CLUSTER,
                    "--shard",
                    s,
                    "--json",
                ],
            )?)
            .context("archive status JSON")?;
            let n = status["chains"].as_array().map_or(0, Vec::len);
            chains.push(format!("{}/{s}: {n}", r.name));
            v.add(
                "each shard's archive is one chain in every region (no gap)",
                n == 1,
                format!("{} shard {s}: {n} chains, gaps {}", r.name, status["gaps"]),
            );
        }
    }
    ctx.figure("chains per shard and region", chains.join(", "));

    // The whole cluster restored from the archive to the end of the writes.
    let scratch = RedisServer::start().await?;
    let at = end.to_string();
    let mut args = vec![
        "restore".to_string(),
        "--cluster".into(),
        CLUSTER.into(),
        "--at".into(),
        at,
        "--online".into(),
        scratch.url(),
        "--json".into(),
    ];
    for r in &ctx.fleet.regions {
        args.extend(["--from".into(), r.dest()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let report: Json = serde_json::from_str(&agent(ctx, &args)?).context("restore JSON")?;
    ctx.figure_since(
        "restore of the cluster to the end of the writes (s)",
        started,
    );
    ctx.figure(
        "stamp spread of the restore (ms)",
        report["stamp_spread_ms"].to_string(),
    );
    let mut conn = scratch.conn().await?;
    let restored = checker::scan(&mut conn).await?;
    let live = checker::live_writes(&ctx.fleet).await?;
    let kept: BTreeSet<u64> = history
        .acked
        .keys()
        .filter(|g| live.contains(g))
        .copied()
        .collect();
    let missing: Vec<u64> = kept.difference(&restored).copied().collect();
    v.add(
        "the archive restores every acknowledged write the cluster kept",
        missing.is_empty(),
        format!(
            "{} of {} missing: {:?}",
            missing.len(),
            kept.len(),
            &missing[..missing.len().min(5)]
        ),
    );
    let phantom: Vec<u64> = restored
        .iter()
        .filter(|g| **g >= history.next)
        .copied()
        .collect();
    v.add(
        "the archive restores only writes that were sent",
        phantom.is_empty(),
        format!("{phantom:?}"),
    );
    ctx.figure(
        "writes acknowledged / kept by the cluster / restored",
        format!(
            "{} / {} / {}",
            history.acked.len(),
            kept.len(),
            restored.len()
        ),
    );
    ctx.out.verdict = v;
    Ok(())
}

/// The host of the archive source of shard row `k`.
fn source_node(ctx: &Ctx, row: &Json) -> anyhow::Result<usize> {
    let source = row["source"].as_str().unwrap_or_default().to_string();
    ctx.fleet
        .nodes
        .iter()
        .position(|n| source.ends_with(&n.addr()))
        .with_context(|| format!("no node is the archive's source {source}"))
}

pub async fn host_cut_off(ctx: &mut Ctx) -> anyhow::Result<()> {
    set_archive_policy(ctx)?;
    let writer = ctx.writer();
    let all = archived(ctx).await?;
    let k = ctx.rng.random_range(0..all.len());
    let shard = all[k]["shard"].as_str().unwrap_or_default().to_string();
    let i = source_node(ctx, &all[k])?;
    let host = ctx.fleet.nodes[i].host.clone();
    for r in &ctx.fleet.regions {
        ctx.fleet.lab.partition(&host, &r.host, true)?;
    }
    ctx.fault(format!(
        "{} (archiving shard {shard}) cut off from both regions for 60 s",
        host.name
    ));
    let cut = Instant::now();
    let mut highest = 0.0f64;
    while cut.elapsed() < Duration::from_secs(60) {
        if let Some(r) = rows(ctx).and_then(|r| r.into_iter().find(|r| r["shard"] == shard)) {
            highest = highest.max(r["lag_seconds"].as_f64().unwrap_or(0.0));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    ctx.fleet.lab.heal()?;
    ctx.fault("healed");
    let healed = Instant::now();
    ctx.figure(
        "the shard's archive lag at its highest during the cut (s)",
        format!("{highest:.1}"),
    );
    ctx.out.verdict.add(
        "an archiver cut off from its regions shows its lag (what the alert reads)",
        highest >= 45.0,
        format!("{highest:.1} s"),
    );
    let back = poll_until(
        "the lag back under 5 s",
        Duration::from_secs(120),
        || async {
            let r = rows(ctx)?.into_iter().find(|r| r["shard"] == shard)?;
            (r["lag_seconds"].as_f64()? < 5.0).then_some(())
        },
    )
    .await;
    ctx.figure_since("lag back under 5 s after the heal (s)", healed);
    writer.wait_more(100, Duration::from_secs(60)).await?;
    let history = writer.stop().await;
    let lagged = std::mem::take(&mut ctx.out.verdict);
    check_archive(ctx, &history).await?;
    for f in lagged.findings {
        ctx.out.verdict.add(f.invariant, f.ok, f.detail);
    }
    ctx.out.verdict.add(
        "the archive catches up after the heal",
        back.is_ok(),
        format!("{back:?}"),
    );
    Ok(())
}

pub async fn agent_killed(ctx: &mut Ctx) -> anyhow::Result<()> {
    set_archive_policy(ctx)?;
    let writer = ctx.writer();
    let all = archived(ctx).await?;
    let k = ctx.rng.random_range(0..all.len());
    let shard = all[k]["shard"].as_str().unwrap_or_default().to_string();
    let holder = all[k]["agent"].as_str().unwrap_or_default().to_string();
    let i = ctx
        .fleet
        .nodes
        .iter()
        .position(|n| n.agent_id == holder)
        .with_context(|| format!("no node runs agent {holder}"))?;
    ctx.fleet.nodes[i].agent.kill();
    ctx.fault(format!(
        "kill -9 agent {holder} on {} (archiving shard {shard})",
        ctx.fleet.nodes[i].host.name
    ));
    let killed = Instant::now();
    let taken = poll_until(
        "another agent holds the shard",
        Duration::from_secs(90),
        || async {
            let r = rows(ctx)?.into_iter().find(|r| r["shard"] == shard)?;
            (r["agent"] != holder.as_str() && r["connected"] == true && r["job"].is_u64())
                .then_some(r)
        },
    )
    .await;
    ctx.figure_since(
        "another agent archives the shard after the kill (s)",
        killed,
    );
    writer.wait_more(200, Duration::from_secs(60)).await?;
    ctx.fleet.nodes[i].agent.start()?;
    ctx.fault(format!("agent {holder} restarted"));
    writer.wait_more(100, Duration::from_secs(60)).await?;
    let history = writer.stop().await;
    check_archive(ctx, &history).await?;
    ctx.out.verdict.add(
        "another agent takes over a killed archiver's shard within the lease and a round",
        taken.is_ok(),
        match &taken {
            Ok(r) => format!("agent {} holds it with job {}", r["agent"], r["job"]),
            Err(e) => e.to_string(),
        },
    );
    Ok(())
}

pub async fn primary_killed(ctx: &mut Ctx) -> anyhow::Result<()> {
    set_archive_policy(ctx)?;
    let writer = ctx.writer();
    archived(ctx).await?;
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let ps = primaries(&ctx.fleet).await;
    let victim = ps[ctx.rng.random_range(0..ps.len())];
    ctx.fleet.nodes[victim].redis.kill();
    let name = ctx.fleet.nodes[victim].host.name.clone();
    ctx.fault(format!(
        "kill -9 redis on {name} (a primary) while archiving"
    ));
    let killed = Instant::now();
    writer.wait_more(100, Duration::from_secs(60)).await?;
    ctx.figure_since("writer going again after the kill (s)", killed);
    ctx.fleet.nodes[victim].redis.start()?;
    ctx.fault(format!("redis on {name} restarted"));
    ctx.fleet.wait_ready().await?;
    writer.wait_more(200, Duration::from_secs(60)).await?;
    let history = writer.stop().await;
    check_archive(ctx, &history).await
}
