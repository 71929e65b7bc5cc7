//! Scenarios: a fleet, the writer, faults at moments a seed chooses, then the checker.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use rand::Rng;

use crate::checker::{self, Verdict};
pub use crate::ctx::{Ctx, Outcome, primaries};
use crate::workload::{History, Writer};

pub type RunFn = for<'a> fn(&'a mut Ctx) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + 'a>>;

/// A scenario.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    /// In the quick subset `.ci/run` runs.
    pub quick: bool,
    pub run: RunFn,
}

/// Every scenario, in the order the suite runs them.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "leader-killed-consistent",
            about: "the coordinator leader is killed (SIGKILL) while a `consistent` window waits for its cut; it comes back later",
            quick: true,
            run: |c| Box::pin(leader_killed_consistent(c)),
        },
        Scenario {
            name: "agent-partitioned-mid-upload",
            about: "the host of the replica chosen for a shard is cut off from both regions while it uploads, then healed",
            quick: true,
            run: |c| Box::pin(agent_partitioned_mid_upload(c)),
        },
        Scenario {
            name: "primary-killed-mid-window",
            about: "the primary of a shard is killed (SIGKILL) while a window snapshots; Redis Cluster fails it over, and it comes back as a replica",
            quick: false,
            run: |c| Box::pin(primary_killed_mid_window(c)),
        },
        Scenario {
            name: "region-down-window",
            about: "one region is down (its server killed) for a whole window, then comes back and the set is repaired into it",
            quick: true,
            run: |c| Box::pin(region_down_window(c)),
        },
        Scenario {
            name: "agent-clock-skew",
            about: "one agent runs with its clock 7 s ahead (libfaketime) through `simultaneous` and `consistent` windows",
            quick: false,
            run: |c| Box::pin(agent_clock_skew(c)),
        },
        Scenario {
            name: "rolling-restart",
            about: "every coordinator, then every agent, is restarted one at a time while a schedule opens windows every 10 s",
            quick: false,
            run: |c| Box::pin(rolling_restart(c)),
        },
        Scenario {
            name: "failover-runbooks-under-load",
            about: "a graceful `runbook failover` of one shard while the writer writes, then a forced one after its primary is killed",
            quick: false,
            run: |c| Box::pin(failover_runbooks(c)),
        },
        Scenario {
            name: "slow-region-stall",
            about: "one region stalls for 2 minutes in the middle of a window whose shards are larger than the agents' memory queues: they spool to disk, keep reading Redis, and finish once it is back",
            quick: false,
            run: |c| Box::pin(slow_region_stall(c)),
        },
        Scenario {
            name: "spool-disk-full",
            about: "every agent's spool is a 64 KiB tmpfs while one region stalls: the region fails with a clear error, the set is not called complete, and is repaired once the spool has room",
            quick: false,
            run: |c| Box::pin(spool_disk_full(c)),
        },
        Scenario {
            name: "coordinator-majority-loss",
            about: "every coordinator dies with its data: a new coordinator cluster is built, the agents (not restarted) join it, and its catalog is rebuilt from the regions' manifests",
            quick: true,
            run: |c| Box::pin(coordinator_majority_loss(c)),
        },
        Scenario {
            name: "archive-agent-killed",
            about: "the agent archiving a shard is killed (SIGKILL): another agent of the shard takes the archive over within the lease, the chain has no gap, the cluster restores from the archive",
            quick: true,
            run: |c| Box::pin(crate::archive::agent_killed(c)),
        },
        Scenario {
            name: "archive-host-cut-off",
            about: "the host archiving a shard is cut off from both regions for 60 s: the lag grows, the archive catches up after the heal with no gap",
            quick: false,
            run: |c| Box::pin(crate::archive::host_cut_off(c)),
        },
        Scenario {
            name: "archive-primary-killed",
            about: "a primary is killed (SIGKILL) while every shard is archived; Redis Cluster fails it over: the chain continues on the new history, no acknowledged write the cluster kept is lost",
            quick: false,
            run: |c| Box::pin(crate::archive::primary_killed(c)),
        },
        Scenario {
            name: "minority-coordinator-partition",
            about: "one coordinator is cut off from the other two both ways during windows, then healed",
            quick: true,
            run: |c| Box::pin(minority_partition(c)),
        },
    ]
}

/// Opens a window of `policy` and returns its number and the last write acknowledged before.
fn open_window(ctx: &Ctx, writer: &Writer, policy: &str) -> anyhow::Result<(String, u64)> {
    let before = writer.history().last_acked();
    let opened = ctx
        .fleet
        .cli
        .json(&["backup", "run", "--policy", policy, "--json"])?;
    let window = opened["window"]
        .as_u64()
        .with_context(|| format!("no window in {opened}"))?
        .to_string();
    Ok((window, before))
}

/// What a window's set came to, and why its shards failed, for a report.
pub fn window_summary(doc: &serde_json::Value) -> String {
    let mut why = Vec::new();
    for s in doc["shards"].as_array().into_iter().flatten() {
        for f in s["failures"].as_array().into_iter().flatten() {
            why.push(format!("{}: {}", s["plan"]["shard"], f));
        }
    }
    let reason = doc["reason"]
        .as_str()
        .or(doc["sets"][0]["reason"].as_str())
        .unwrap_or("");
    format!("{} {reason} {}", doc["sets"][0]["state"], why.join("; "))
}

/// Polls a window until it is done.
async fn window_done(
    ctx: &Ctx,
    window: &str,
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let cli = ctx.fleet.cli.clone();
    fleetsnap_testkit::poll_until(&format!("window {window} done"), limit, || async {
        let doc = cli.json(&["backup", "show", window, "--json"]).ok()?;
        (doc["done"] == true).then_some(doc)
    })
    .await
}

/// The checks every scenario ends with: every complete set verifies in `min_regions` regions
/// and restores to a prefix of the acknowledged writes; no window's shard finished under two
/// terms. `windows`: the windows opened, with the last write acknowledged before each.
pub async fn check_all(
    ctx: &mut Ctx,
    history: &History,
    windows: &[(String, u64)],
    min_regions: usize,
) -> anyhow::Result<()> {
    let mut v = Verdict::default();
    // Writes the cluster itself lost (a primary killed before its replica had them: Redis
    // replicates asynchronously) cannot be in later sets; they are not held against fleetsnap.
    let live = checker::live_writes(&ctx.fleet).await?;
    let mut history = history.clone();
    let top = live.iter().next_back().copied().unwrap_or(0);
    let lost: Vec<u64> = history
        .acked
        .keys()
        .filter(|g| **g < top && !live.contains(g))
        .copied()
        .collect();
    for g in &lost {
        history.acked.remove(g);
        history.maybe.insert(*g);
    }
    ctx.figure(
        "acknowledged writes the cluster itself lost",
        lost.len().to_string(),
    );
    let history = &history;
    let sets = checker::sets(&ctx.fleet)?;
    let mut newest_ok: Option<u64> = None;
    let jobs = checker::jobs(&ctx.fleet);
    let names: Vec<String> = windows.iter().map(|(w, _)| w.clone()).collect();
    checker::check_terms(&mut v, &jobs, &names);
    ctx.figure("jobs made", jobs.len().to_string());
    for (window, before) in windows {
        let doc = ctx.fleet.cli.json(&["backup", "show", window, "--json"])?;
        let Some(id) = doc["backup_id"].as_str() else {
            continue;
        };
        let complete = sets
            .iter()
            .any(|s| s["backup_id"] == id && s["state"] == "complete");
        if !complete {
            v.add(
                "a set not complete is not offered for restore",
                true,
                format!("window {window}: {id} is {}", doc["sets"][0]["state"]),
            );
            continue;
        }
        let consistent = !doc["cut"].is_null();
        let mut verified = Vec::new();
        for r in &ctx.fleet.regions {
            if checker::verifies(&ctx.fleet, &r.dest(), id)? {
                verified.push(r.name.clone());
            }
        }
        // The fleet prunes on its own (the suite's policies keep the last 2): a set that
        // retention deletes meanwhile loses its manifests first, then leaves the catalog.
        if verified.len() < min_regions && pruned_meanwhile(ctx, id).await {
            v.add(
                "a set retention deleted during the check is not held to the checks",
                true,
                format!("{id}: pruned by retention (keep_last 2) while it was checked"),
            );
            continue;
        }
        v.add(
            "a complete set verifies in min_regions regions",
            verified.len() >= min_regions,
            format!("{id}: verified in {verified:?}, min_regions {min_regions}"),
        );
        // Restored from a region where it verified; a set that verifies nowhere has failed above.
        let Some(region) = ctx
            .fleet
            .regions
            .iter()
            .find(|r| verified.contains(&r.name))
        else {
            continue;
        };
        let writes = checker::restored_writes(&ctx.fleet, &region.dest(), id).await?;
        let last = checker::check_writes(&mut v, id, consistent, &writes, history, *before);
        newest_ok = newest_ok.max(Some(last));
    }
    if let Some(last) = newest_ok
        && let Some(at) = history.acked.get(&last)
    {
        let rpo = SystemTime::now()
            .duration_since(*at)
            .unwrap_or_default()
            .as_secs_f64();
        ctx.figure(
            "newest restored write's age at the check (s)",
            format!("{rpo:.1}"),
        );
    }
    ctx.figure(
        "writes acknowledged / given up",
        format!("{} / {}", history.acked.len(), history.maybe.len()),
    );
    check_retention(ctx, &mut v, &sets, min_regions)?;
    ctx.out.verdict = v;
    Ok(())
}

/// Whether set `id` leaves the catalog within 30 s (retention deleting it).
async fn pruned_meanwhile(ctx: &Ctx, id: &str) -> bool {
    let cli = ctx.fleet.cli.clone();
    fleetsnap_testkit::poll_until("the set pruned", Duration::from_secs(30), || async {
        let sets = cli.json(&["backup", "list", "--json"]).ok()?;
        (!sets.as_array()?.iter().any(|s| s["backup_id"] == id)).then_some(())
    })
    .await
    .is_ok()
}

/// Prunes every policy the sets name (the suite's policies keep the last 2) and checks that the
/// two newest restorable sets of each (complete or degraded) are still there, the complete ones
/// verifying in `min_regions` regions.
fn check_retention(
    ctx: &mut Ctx,
    v: &mut Verdict,
    sets: &[serde_json::Value],
    min_regions: usize,
) -> anyhow::Result<()> {
    let mut policies: Vec<String> = sets
        .iter()
        .filter_map(|s| s["policy"].as_str().map(str::to_string))
        .collect();
    policies.sort();
    policies.dedup();
    for policy in policies {
        let mut restorable: Vec<&serde_json::Value> = sets
            .iter()
            .filter(|s| s["policy"] == policy.as_str())
            .filter(|s| s["state"] == "complete" || s["state"] == "degraded")
            .collect();
        restorable.sort_by_key(|s| std::cmp::Reverse(s["opened_at_ms"].as_i64().unwrap_or(0)));
        let (ok, _) = ctx
            .fleet
            .cli
            .run_json(&["backup", "prune", "--policy", &policy, "--json"])?;
        let after = checker::sets(&ctx.fleet)?;
        let mut kept_ok = ok;
        let mut detail = Vec::new();
        for s in restorable.iter().take(2) {
            let id = s["backup_id"].as_str().unwrap_or_default();
            // Still listed and as restorable: a degraded set that the leader's upkeep repaired
            // while the check ran is complete now, which counts.
            let still = after.iter().any(|a| {
                a["backup_id"] == id && (a["state"] == s["state"] || a["state"] == "complete")
            });
            let verified = if s["state"] == "complete" {
                ctx.fleet
                    .regions
                    .iter()
                    .filter(|r| checker::verifies(&ctx.fleet, &r.dest(), id).unwrap_or(false))
                    .count()
            } else {
                min_regions
            };
            kept_ok &= still && verified >= min_regions;
            detail.push(format!("{id}: kept {still}, verified in {verified}"));
        }
        let deleted = sets.len().saturating_sub(after.len());
        v.add(
            "retention (keep_last 2) keeps the two newest restorable sets, still whole",
            kept_ok,
            format!(
                "policy {policy}: {}; {deleted} sets pruned; prune {}",
                detail.join(", "),
                if ok { "ok" } else { "failed" }
            ),
        );
    }
    Ok(())
}

async fn leader_killed_consistent(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet
        .set_policy("cut", &ctx.fleet.policy("cut", "consistent", 2))?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    // One shard, both its nodes, snapshots slowly: the window waits for its cut for seconds.
    let slow = ctx.rng.random_range(0..crate::fleet::SHARDS);
    slow_shard(ctx, slow).await?;
    let leader = ctx.fleet.leader()?;
    let (window, before) = open_window(ctx, &writer, "cut")?;
    let opened = Instant::now();
    // The seed picks the moment: as the window opens, once a shard's snapshot has synced (the
    // cut still to come), or once the cut is taken (the set not yet written).
    let phase = ctx.rng.random_range(0..3u32);
    let cli = ctx.fleet.cli.clone();
    let at_kill =
        fleetsnap_testkit::poll_until("the moment to kill", Duration::from_secs(60), || async {
            let doc = cli.json(&["backup", "show", &window, "--json"]).ok()?;
            let synced = doc["shards"]
                .as_array()?
                .iter()
                .any(|s| !s["synced"].is_null());
            let reached = match phase {
                0 => true,
                1 => synced,
                _ => !doc["cut"].is_null(),
            };
            (reached || doc["done"] == true).then_some(doc)
        })
        .await?;
    ctx.fleet.coord(leader).proc.kill();
    ctx.fault(format!(
        "kill -9 coordinator {leader} (the leader), {:.2}s into window {window} ({})",
        opened.elapsed().as_secs_f64(),
        if at_kill["done"] == true {
            "already done".to_string()
        } else if at_kill["cut"].is_null() {
            let synced = at_kill["shards"]
                .as_array()
                .map_or(0, |s| s.iter().filter(|s| !s["synced"].is_null()).count());
            format!("before its cut, {synced} shards synced")
        } else {
            "after its cut".to_string()
        }
    ));
    let killed = Instant::now();
    let others = ctx.fleet.cli_without(leader);
    let all = std::mem::replace(&mut ctx.fleet.cli, others);
    let doc = window_done(ctx, &window, Duration::from_secs(180)).await?;
    ctx.figure_since("window done after the kill (s)", killed);
    ctx.figure("window's set", doc["sets"][0]["state"].to_string());
    ctx.fleet.cli = all;
    ctx.fleet.coord(leader).proc.start()?;
    ctx.fault(format!("coordinator {leader} restarted"));
    // One more window with every coordinator back.
    let (again, before2) = open_window(ctx, &writer, "cut")?;
    window_done(ctx, &again, Duration::from_secs(120)).await?;
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window, before), (again, before2)], 2).await?;
    // Whether that set verifies and restores is among the checks above.
    ctx.out.verdict.add(
        "the window whose leader was killed still ends with a complete set",
        doc["sets"][0]["state"] == "complete",
        format!("{}", doc["sets"][0]["state"]),
    );
    Ok(())
}

async fn agent_partitioned_mid_upload(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let (window, before) = open_window(ctx, &writer, "sim")?;
    // The chosen node of a shard the seed picks, once the plan names it.
    let shard = ctx.rng.random_range(0..crate::fleet::SHARDS);
    let cli = ctx.fleet.cli.clone();
    let chosen =
        fleetsnap_testkit::poll_until("the window's plan", Duration::from_secs(30), || async {
            let doc = cli.json(&["backup", "show", &window, "--json"]).ok()?;
            let s = doc["shards"].as_array()?.get(shard)?.clone();
            let nodes = s["plan"]["nodes"].as_array()?.clone();
            nodes
                .iter()
                .find(|n| n["rank"] == 1)
                .and_then(|n| n["address"].as_str().map(str::to_string))
        })
        .await?;
    let host = ctx
        .fleet
        .nodes
        .iter()
        .find(|n| n.addr() == chosen)
        .map(|n| n.host.clone())
        .with_context(|| format!("no node at {chosen}"))?;
    for r in &ctx.fleet.regions {
        ctx.fleet.lab.partition(&host, &r.host, true)?;
    }
    ctx.fault(format!(
        "{} ({chosen}, chosen for shard {shard}) cut off from both regions",
        host.name
    ));
    let cut_off = ctx.between(5.0, 20.0);
    tokio::time::sleep(cut_off).await;
    ctx.fleet.lab.heal()?;
    ctx.fault(format!("healed after {:.1}s", cut_off.as_secs_f64()));
    let healed = Instant::now();
    let doc = window_done(ctx, &window, Duration::from_secs(240)).await?;
    ctx.figure_since("window done after the heal (s)", healed);
    ctx.figure("window's set", doc["sets"][0]["state"].to_string());
    let (again, before2) = open_window(ctx, &writer, "sim")?;
    let doc2 = window_done(ctx, &again, Duration::from_secs(120)).await?;
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window, before), (again, before2)], 2).await?;
    ctx.out.verdict.add(
        "the next window, with the network healed, is complete",
        doc2["sets"][0]["state"] == "complete",
        format!("{}", doc2["sets"][0]["state"]),
    );
    Ok(())
}

async fn minority_partition(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    // The seed picks the leader or a follower as the minority.
    let leader = ctx.fleet.leader()?;
    let alone = if ctx.rng.random_bool(0.5) {
        leader
    } else {
        ctx.fleet
            .coords
            .iter()
            .map(|c| c.id)
            .find(|i| *i != leader)
            .expect("a follower")
    };
    let alone_host = ctx.fleet.coord(alone).host.clone();
    for c in &ctx.fleet.coords {
        if c.id != alone {
            ctx.fleet.lab.partition(&alone_host, &c.host, true)?;
        }
    }
    ctx.fault(format!(
        "coordinator {alone} ({}) cut off from the other two both ways",
        if alone == leader {
            "the leader"
        } else {
            "a follower"
        }
    ));
    let cut = Instant::now();
    let others = ctx.fleet.cli_without(alone);
    let all = std::mem::replace(&mut ctx.fleet.cli, others);
    let cli = ctx.fleet.cli.clone();
    let new_leader = fleetsnap_testkit::poll_until(
        "a leader in the majority",
        Duration::from_secs(60),
        || async {
            let s = cli.json(&["cluster", "status", "--json"]).ok()?;
            s["leader_id"].as_u64().filter(|l| *l != alone)
        },
    )
    .await?;
    ctx.figure_since("leader in the majority after (s)", cut);
    let (window, before) = open_window(ctx, &writer, "sim")?;
    let doc = window_done(ctx, &window, Duration::from_secs(120)).await?;
    ctx.figure(
        "window during the partition",
        doc["sets"][0]["state"].to_string(),
    );
    // The minority alone must not act as leader in a term the majority's leader holds. Asked
    // alone, it answers only if it can confirm a quorum (a linearizable read), or sends the CLI
    // on to the node it takes for leader; `node_id` says who answered.
    let alone_addr = ctx.fleet.coord(alone).addr();
    let lone = ctx.fleet.cli.to(&[alone_addr]);
    let lone_view = lone.json(&["cluster", "status", "--json"]).ok();
    let majority_view = ctx.fleet.cli.json(&["cluster", "status", "--json"])?;
    let split = lone_view.as_ref().is_some_and(|l| {
        l["node_id"].as_u64() == Some(alone)
            && l["leader_id"].as_u64() == Some(alone)
            && l["term"].as_u64() == majority_view["term"].as_u64()
    });
    let lone_answer = match &lone_view {
        None => "refused (no quorum to confirm a read)".to_string(),
        Some(l) => format!(
            "answered by node {} naming leader {} in term {}",
            l["node_id"], l["leader_id"], l["term"]
        ),
    };
    ctx.figure("majority leader", new_leader.to_string());
    ctx.fleet.lab.heal()?;
    ctx.fault("healed");
    ctx.fleet.cli = all;
    let (again, before2) = open_window(ctx, &writer, "sim")?;
    let doc2 = window_done(ctx, &again, Duration::from_secs(120)).await?;
    // The node cut off catches up: the leader has replicated to it everything it had once the
    // window after the heal was done.
    let leader_log = ctx.fleet.cli.json(&["cluster", "status", "--json"])?["last_log_index"]
        .as_u64()
        .unwrap_or(0);
    let cli = ctx.fleet.cli.clone();
    let caught_up = fleetsnap_testkit::poll_until(
        "the minority caught up",
        Duration::from_secs(60),
        || async {
            let s = cli.json(&["cluster", "status", "--json"]).ok()?;
            let matched = s["members"]
                .as_array()?
                .iter()
                .find(|m| m["id"].as_u64() == Some(alone))?["matched_index"]
                .as_u64()?;
            (matched >= leader_log).then_some(())
        },
    )
    .await
    .is_ok();
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window, before), (again, before2)], 2).await?;
    let v = &mut ctx.out.verdict;
    v.add(
        "no two leaders in one term",
        !split,
        format!(
            "the cut-off node {lone_answer}; the majority's leader {new_leader} in term {}",
            majority_view["term"]
        ),
    );
    v.add(
        "the majority makes progress while the minority is cut off",
        doc["sets"][0]["state"] == "complete",
        window_summary(&doc),
    );
    v.add(
        "the window after the heal is complete, and the minority learns of it",
        doc2["sets"][0]["state"] == "complete" && caught_up,
        format!(
            "{}, node {alone} matched the leader's log up to {leader_log}: {caught_up}",
            doc2["sets"][0]["state"]
        ),
    );
    Ok(())
}

/// Whether set `id` is (or becomes, within `limit`) complete: the fleet repairs a degraded set
/// on its own.
async fn set_complete(ctx: &Ctx, id: &str, limit: Duration) -> bool {
    let cli = ctx.fleet.cli.clone();
    fleetsnap_testkit::poll_until("the set complete", limit, || async {
        let sets = cli.json(&["backup", "list", "--json"]).ok()?;
        sets.as_array()?
            .iter()
            .any(|s| s["backup_id"] == id && s["state"] == "complete")
            .then_some(())
    })
    .await
    .is_ok()
}

/// Makes shard `k`'s nodes snapshot slowly (3 ms a key: about 10 s).
async fn slow_shard(ctx: &Ctx, k: usize) -> anyhow::Result<()> {
    let tag = &crate::workload::tags()[k];
    let probe = format!("{{{tag}}}:probe");
    let slot = fleetsnap_core::keys::key_slot(probe.as_bytes()).to_string();
    for n in &ctx.fleet.nodes {
        let nodes = crate::fleet::command(&n.addr(), &["CLUSTER", "NODES"]).await?;
        let text = nodes.text().unwrap_or_default();
        let mine = text
            .lines()
            .find(|l| l.contains("myself"))
            .unwrap_or_default();
        let fields: Vec<&str> = mine.split(' ').collect();
        // A replica's line names its primary; a primary's lists its slots.
        let primary_id = if fields.get(2).is_some_and(|f| f.contains("slave")) {
            fields.get(3).copied().unwrap_or_default()
        } else {
            fields.first().copied().unwrap_or_default()
        };
        let primary_line = text
            .lines()
            .find(|l| l.starts_with(primary_id))
            .unwrap_or_default();
        let owns = primary_line.split(' ').skip(8).any(|r| {
            let s: u16 = slot.parse().unwrap_or(0);
            match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= s) && b.parse::<u16>().is_ok_and(|b| s <= b)
                }
                None => r.parse::<u16>().is_ok_and(|x| x == s),
            }
        });
        if owns {
            crate::fleet::command(&n.addr(), &["CONFIG", "SET", "rdb-key-save-delay", "3000"])
                .await?;
        }
    }
    Ok(())
}

async fn primary_killed_mid_window(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(300, Duration::from_secs(30)).await?;
    let (window, before) = open_window(ctx, &writer, "sim")?;
    tokio::time::sleep(ctx.between(0.5, 2.5)).await;
    let ps = primaries(&ctx.fleet).await;
    let victim = ps[ctx.rng.random_range(0..ps.len())];
    ctx.fleet.nodes[victim].redis.kill();
    let name = ctx.fleet.nodes[victim].host.name.clone();
    ctx.fault(format!(
        "kill -9 redis on {name} (a primary) during window {window}"
    ));
    let killed = Instant::now();
    let doc = window_done(ctx, &window, Duration::from_secs(180)).await?;
    ctx.figure_since("window done after the kill (s)", killed);
    ctx.figure("window's set", window_summary(&doc));
    // The cluster has promoted its replica; the old primary comes back as a replica.
    writer.wait_more(100, Duration::from_secs(60)).await?;
    ctx.figure_since("writer going again after the kill (s)", killed);
    ctx.fleet.nodes[victim].redis.start()?;
    ctx.fault(format!("redis on {name} restarted"));
    ctx.fleet.wait_ready().await?;
    let (again, before2) = open_window(ctx, &writer, "sim")?;
    let doc2 = window_done(ctx, &again, Duration::from_secs(120)).await?;
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window, before), (again, before2)], 2).await?;
    ctx.out.verdict.add(
        "the window after the failover is complete",
        doc2["sets"][0]["state"] == "complete",
        window_summary(&doc2),
    );
    Ok(())
}

async fn region_down_window(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let k = ctx.rng.random_range(0..ctx.fleet.regions.len());
    let name = ctx.fleet.regions[k].name.clone();
    ctx.fleet.regions[k].garage.kill();
    ctx.fault(format!("region {name} down (its server killed)"));
    let (window, before) = open_window(ctx, &writer, "sim")?;
    let doc = window_done(ctx, &window, Duration::from_secs(180)).await?;
    let during = doc["sets"][0]["state"].clone();
    ctx.figure(
        "window's set while the region was down",
        window_summary(&doc),
    );
    ctx.fleet.regions[k].garage.start()?;
    ctx.fleet.regions[k].wait_up().await?;
    ctx.fault(format!("region {name} back"));
    let back = Instant::now();
    let id = doc["backup_id"].as_str().unwrap_or_default().to_string();
    let repaired = set_complete(ctx, &id, Duration::from_secs(240)).await;
    ctx.figure_since("set complete after the region came back (s)", back);
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window, before)], 2).await?;
    let v = &mut ctx.out.verdict;
    v.add(
        "a set written while a region of min_regions 2 is down is not called complete",
        during != "complete",
        during.to_string(),
    );
    v.add(
        "the set is repaired into the region once it is back",
        repaired,
        id,
    );
    Ok(())
}

async fn agent_clock_skew(ctx: &mut Ctx) -> anyhow::Result<()> {
    let lib = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .context("libfaketime is not installed: scripts/setup.sh chaos")?;
    let i = ctx.rng.random_range(0..ctx.fleet.nodes.len());
    let agent = &mut ctx.fleet.nodes[i].agent;
    agent.spec.env.extend([
        ("LD_PRELOAD".to_string(), lib.to_string()),
        ("FAKETIME".to_string(), "+7s".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]);
    agent.start()?;
    let name = ctx.fleet.nodes[i].host.name.clone();
    ctx.fault(format!(
        "the agent on {name} restarted with its clock 7 s ahead"
    ));
    ctx.fleet.wait_ready().await?;
    ctx.fleet.set_sim_policy()?;
    ctx.fleet
        .set_policy("cut", &ctx.fleet.policy("cut", "consistent", 2))?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let mut windows = Vec::new();
    let mut states = Vec::new();
    for policy in ["sim", "cut", "sim"] {
        let (w, b) = open_window(ctx, &writer, policy)?;
        let doc = window_done(ctx, &w, Duration::from_secs(120)).await?;
        let set = ctx
            .fleet
            .cli
            .json(&["backup", "list", "--json"])?
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|s| s["window"].as_u64().map(|x| x.to_string()) == Some(w.clone()))
                    .cloned()
            })
            .unwrap_or_default();
        ctx.figure(
            &format!("window {w} ({policy}): skew / write pause (µs)"),
            format!("{} / {}", set["skew_us"], set["write_pause_us"]),
        );
        states.push(window_summary(&doc));
        windows.push((w, b));
    }
    let history = writer.stop().await;
    check_all(ctx, &history, &windows, 2).await?;
    ctx.out.verdict.add(
        "every window with a skewed agent ends complete",
        states.iter().all(|s| s.starts_with("\"complete\"")),
        states.join(" | "),
    );
    Ok(())
}

async fn rolling_restart(ctx: &mut Ctx) -> anyhow::Result<()> {
    let mut policy = ctx.fleet.policy("every", "simultaneous", 2);
    policy = policy.replacen("min_regions", "schedule = \"every 10s\"\nmin_regions", 1);
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let before = writer.history().last_acked();
    ctx.fleet.set_policy("every", &policy)?;
    let ids: Vec<u64> = ctx.fleet.coords.iter().map(|c| c.id).collect();
    for id in ids {
        tokio::time::sleep(ctx.between(3.0, 8.0)).await;
        ctx.fleet.coord(id).proc.start()?;
        ctx.fault(format!("coordinator {id} restarted"));
        let cli = ctx.fleet.cli.clone();
        fleetsnap_testkit::poll_until("a leader again", Duration::from_secs(60), || async {
            cli.json(&["cluster", "status", "--json"]).ok()?["leader_id"].as_u64()
        })
        .await?;
    }
    for i in 0..ctx.fleet.nodes.len() {
        tokio::time::sleep(ctx.between(1.0, 4.0)).await;
        ctx.fleet.nodes[i].agent.start()?;
        let name = ctx.fleet.nodes[i].host.name.clone();
        ctx.fault(format!("agent on {name} restarted"));
    }
    ctx.fleet.wait_ready().await?;
    // The schedule goes on after the restarts: two windows opened since complete.
    let restarted_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let cli = ctx.fleet.cli.clone();
    let every_sets = || async {
        cli.json(&["backup", "list", "--json"])
            .ok()?
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|s| s["policy"] == "every")
                    .cloned()
                    .collect::<Vec<_>>()
            })
    };
    fleetsnap_testkit::poll_until(
        "two windows after the restarts",
        Duration::from_secs(90),
        || async {
            let after = every_sets()
                .await?
                .iter()
                .filter(|s| {
                    i128::from(s["opened_at_ms"].as_i64().unwrap_or(0)) >= restarted_ms
                        && s["state"] == "complete"
                })
                .count();
            (after >= 2).then_some(())
        },
    )
    .await?;
    // No more windows: the schedule is taken away, and the last window let finish.
    ctx.fleet
        .set_policy("every", &ctx.fleet.policy("every", "simultaneous", 2))?;
    fleetsnap_testkit::poll_until(
        "the last scheduled window ended",
        Duration::from_secs(90),
        || async {
            every_sets()
                .await?
                .iter()
                .all(|s| s["state"] != "running")
                .then_some(())
        },
    )
    .await?;
    let sets = checker::sets(&ctx.fleet)?;
    let mut windows: Vec<(String, u64)> = sets
        .iter()
        .filter(|s| s["policy"] == "every")
        .filter_map(|s| s["window"].as_u64())
        .map(|w| (w.to_string(), before))
        .collect();
    windows.sort();
    let complete = sets
        .iter()
        .filter(|s| s["policy"] == "every" && s["state"] == "complete")
        .count();
    ctx.figure(
        "scheduled windows / complete sets",
        format!("{} / {complete}", windows.len()),
    );
    let history = writer.stop().await;
    // Each window must hold at least what was acknowledged before the restarts began.
    check_all(ctx, &history, &windows, 2).await?;
    ctx.out.verdict.add(
        "windows kept coming through the restarts, and the last ones completed",
        windows.len() >= 3 && complete >= 2,
        format!("{} windows, {complete} complete", windows.len()),
    );
    Ok(())
}

async fn failover_runbooks(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(300, Duration::from_secs(30)).await?;
    let shards = ["0-5460", "5461-10922", "10923-16383"];
    let k = ctx.rng.random_range(0..shards.len());
    let shard = shards[k];
    // A live shard is named by its slots; one whose primary is dead, by that primary.
    let run = |ctx: &Ctx, shard: &str| {
        ctx.fleet.cli.run_json(&[
            "runbook",
            "failover",
            "--cluster",
            crate::fleet::CLUSTER,
            "--shard",
            shard,
            "--yes",
            "--json",
        ])
    };
    ctx.fault(format!(
        "graceful runbook failover of shard {shard} under writes"
    ));
    let (ok, graceful) = run(ctx, shard)?;
    writer.wait_more(100, Duration::from_secs(60)).await?;
    let mid = writer.history();
    // Graceful: every write acknowledged so far is on the cluster.
    let live = checker::live_writes(&ctx.fleet).await?;
    let lost: Vec<u64> = mid
        .acked
        .keys()
        .filter(|g| !live.contains(g))
        .copied()
        .collect();
    ctx.out.verdict.add(
        "a graceful failover loses no acknowledged write",
        ok && lost.is_empty(),
        format!(
            "runbook ok: {ok}; {} acknowledged writes missing: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        ),
    );
    ctx.figure(
        "graceful failover",
        graceful.to_string().chars().take(300).collect::<String>(),
    );
    ctx.fleet.wait_ready().await?;
    let (w1, b1) = open_window(ctx, &writer, "sim")?;
    window_done(ctx, &w1, Duration::from_secs(120)).await?;

    // Forced: the shard's primary killed, then the runbook.
    let ps = primaries(&ctx.fleet).await;
    let mut victim = None;
    for &p in &ps {
        let nodes =
            crate::fleet::command(&ctx.fleet.nodes[p].addr(), &["CLUSTER", "NODES"]).await?;
        let text = nodes.text().unwrap_or_default();
        let mine = text
            .lines()
            .find(|l| l.contains("myself"))
            .unwrap_or_default();
        if mine.split(' ').skip(8).any(|r| r == shard) {
            victim = Some(p);
        }
    }
    let victim = victim.context("the shard's primary")?;
    // The cluster must not promote on its own first: its nodes wait far longer than the runbook.
    for n in &ctx.fleet.nodes {
        crate::fleet::command(
            &n.addr(),
            &["CONFIG", "SET", "cluster-node-timeout", "60000"],
        )
        .await
        .ok();
    }
    ctx.fleet.nodes[victim].redis.kill();
    ctx.fault(format!(
        "kill -9 the primary of shard {shard} ({}), then a forced runbook failover",
        ctx.fleet.nodes[victim].host.name
    ));
    // As an operator would: once `fleetsnap status` shows the primary unreachable.
    let dead = ctx.fleet.nodes[victim].addr();
    let cli = ctx.fleet.cli.clone();
    fleetsnap_testkit::poll_until(
        "the dead primary reported",
        Duration::from_secs(30),
        || async {
            let s = cli.json(&["status", "--json"]).ok()?;
            let gone = s["clusters"][0]["shards"].as_array()?.iter().any(|sh| {
                sh["nodes"].as_array().is_some_and(|n| {
                    n.iter()
                        .any(|n| n["address"] == dead.as_str() && n["reachable"] == false)
                })
            });
            gone.then_some(())
        },
    )
    .await?;
    let (ok2, forced) = run(ctx, &dead)?;
    ctx.figure(
        "forced failover",
        forced.to_string().chars().take(400).collect::<String>(),
    );
    writer.wait_more(100, Duration::from_secs(90)).await?;
    for n in &ctx.fleet.nodes {
        crate::fleet::command(
            &n.addr(),
            &["CONFIG", "SET", "cluster-node-timeout", "3000"],
        )
        .await
        .ok();
    }
    ctx.fleet.nodes[victim].redis.start()?;
    ctx.fleet.wait_ready().await?;
    let (w2, b2) = open_window(ctx, &writer, "sim")?;
    window_done(ctx, &w2, Duration::from_secs(120)).await?;
    let history = writer.stop().await;
    check_all(ctx, &history, &[(w1, b1), (w2, b2)], 2).await?;
    ctx.out.verdict.add(
        "the forced failover runbook succeeds",
        ok2,
        forced.to_string().chars().take(200).collect::<String>(),
    );
    Ok(())
}

/// Adds `mib` MiB of random 256 KiB values to every shard and takes away the snapshot delay, so a
/// shard's snapshot outgrows the agents' 8 MiB in-memory queues.
async fn heavy_data(ctx: &Ctx, mib: usize) -> anyhow::Result<()> {
    let tags = crate::workload::tags();
    for n in &ctx.fleet.nodes {
        crate::fleet::command(&n.addr(), &["CONFIG", "SET", "rdb-key-save-delay", "0"]).await?;
    }
    let ps = primaries(&ctx.fleet).await;
    let mut value = vec![0u8; 256 * 1024];
    for tag in &tags {
        for &p in &ps {
            let mut c = ctx.fleet.nodes[p].conn().await?;
            for i in 0..mib * 4 {
                let key = format!("{{{tag}}}:heavy:{i}");
                rand::rng().fill(&mut value[..]);
                // Only the shard's own primary takes the key; the others answer MOVED.
                if !matches!(
                    c.command(&[b"SET", key.as_bytes(), &value]).await,
                    Ok(fleetsnap_agent::redis::Value::Simple(_))
                ) {
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn slow_region_stall(ctx: &mut Ctx) -> anyhow::Result<()> {
    heavy_data(ctx, 24).await?;
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let k = ctx.rng.random_range(0..ctx.fleet.regions.len());
    let name = ctx.fleet.regions[k].name.clone();
    let links_before = replication_links(ctx).await;
    let (window, before) = open_window(ctx, &writer, "sim")?;
    tokio::time::sleep(ctx.between(0.5, 1.5)).await;
    ctx.fleet.regions[k].proxy.stall(Duration::from_secs(120));
    ctx.fault(format!(
        "region {name} stalls for 120 s (every byte held in the proxy)"
    ));
    let stalled = Instant::now();
    let doc = window_done(ctx, &window, Duration::from_secs(400)).await?;
    ctx.figure_since("window done after the stall began (s)", stalled);
    let failures: Vec<String> = doc["shards"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["failures"].as_array().cloned().unwrap_or_default())
        .map(|f| f.to_string())
        .collect();
    let links_after = replication_links(ctx).await;
    let (w2, b2) = open_window(ctx, &writer, "sim")?;
    window_done(ctx, &w2, Duration::from_secs(120)).await?;
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window.clone(), before), (w2, b2)], 2).await?;
    let v = &mut ctx.out.verdict;
    v.add(
        "a window through a 2-minute stall of one region ends complete, no shard failing",
        doc["sets"][0]["state"] == "complete" && failures.is_empty(),
        format!("{} {failures:?}", window_summary(&doc)),
    );
    v.add(
        "Redis dropped no replication link during the stall",
        links_after >= links_before,
        format!("connected replicas before {links_before}, after {links_after}"),
    );
    Ok(())
}

/// Replicas connected, summed over the primaries.
async fn replication_links(ctx: &Ctx) -> u64 {
    let mut n = 0;
    for i in primaries(&ctx.fleet).await {
        n += ctx.fleet.nodes[i]
            .info("replication", "connected_slaves")
            .await
            .ok()
            .flatten()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    n
}

/// tmpfs mounts, unmounted when dropped.
struct Mounts(Vec<std::path::PathBuf>);

impl Drop for Mounts {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(p)
                .status();
        }
    }
}

async fn spool_disk_full(ctx: &mut Ctx) -> anyhow::Result<()> {
    heavy_data(ctx, 24).await?;
    let mut mounts = Mounts(Vec::new());
    for n in &ctx.fleet.nodes {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(&n.spool)
            .status()?
            .success();
        anyhow::ensure!(ok, "cannot mount a tmpfs on {}", n.spool.display());
        mounts.0.push(n.spool.clone());
    }
    for n in &mut ctx.fleet.nodes {
        n.agent.start()?;
    }
    ctx.fault("every agent restarted with a 64 KiB tmpfs as its spool");
    ctx.fleet.wait_ready().await?;
    ctx.fleet.set_sim_policy()?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let k = ctx.rng.random_range(0..ctx.fleet.regions.len());
    let name = ctx.fleet.regions[k].name.clone();
    ctx.fleet.regions[k].proxy.stall(Duration::from_secs(30));
    ctx.fault(format!("region {name} stalls for 30 s"));
    let (window, before) = open_window(ctx, &writer, "sim")?;
    let doc = window_done(ctx, &window, Duration::from_secs(240)).await?;
    let summary = window_summary(&doc);
    let sets = checker::sets(&ctx.fleet)?;
    let set = sets
        .iter()
        .find(|s| s["window"].as_u64().map(|w| w.to_string()) == Some(window.clone()))
        .cloned()
        .unwrap_or_default();
    let region_error = set["regions"][&name]["error"].to_string();
    ctx.figure("the stalled region's error", region_error.clone());
    drop(mounts);
    for n in &mut ctx.fleet.nodes {
        n.agent.start()?;
    }
    ctx.fault("spools unmounted, agents restarted");
    ctx.fleet.wait_ready().await?;
    let id = doc["backup_id"].as_str().unwrap_or_default().to_string();
    let repaired = set_complete(ctx, &id, Duration::from_secs(240)).await;
    let history = writer.stop().await;
    check_all(ctx, &history, &[(window, before)], 2).await?;
    let v = &mut ctx.out.verdict;
    v.add(
        "a full spool fails the stalled region with an error that says so, and the set is not complete",
        set["state"] != "complete" && region_error.contains("spool"),
        format!("{summary}; set {}, {name}: {region_error}", set["state"]),
    );
    v.add("the set is repaired once the spool has room", repaired, id);
    Ok(())
}

async fn coordinator_majority_loss(ctx: &mut Ctx) -> anyhow::Result<()> {
    ctx.fleet.set_sim_policy()?;
    ctx.fleet
        .set_policy("cut", &ctx.fleet.policy("cut", "consistent", 2))?;
    let writer = ctx.writer();
    writer.wait_more(200, Duration::from_secs(30)).await?;
    let mut windows = Vec::new();
    for policy in ["sim", "cut"] {
        let (w, b) = open_window(ctx, &writer, policy)?;
        window_done(ctx, &w, Duration::from_secs(120)).await?;
        windows.push((w, b));
    }
    let before: Vec<String> = checker::sets(&ctx.fleet)?
        .iter()
        .filter(|s| s["state"] == "complete")
        .filter_map(|s| s["backup_id"].as_str().map(str::to_string))
        .collect();
    // One election first, so the agents have seen a term the new cluster starts below.
    let leader = ctx.fleet.leader()?;
    ctx.fleet.coord(leader).proc.kill();
    ctx.fault(format!("kill -9 coordinator {leader} (the leader)"));
    let cli = ctx.fleet.cli.clone();
    let old_term =
        fleetsnap_testkit::poll_until("a new leader", Duration::from_secs(60), || async {
            let s = cli.json(&["cluster", "status", "--json"]).ok()?;
            s["leader_id"].as_u64().filter(|l| *l != leader)?;
            s["term"].as_u64()
        })
        .await?;
    ctx.fleet.coord(leader).proc.start()?;
    ctx.fleet.wait_ready().await?;
    ctx.figure("the lost cluster's term", old_term.to_string());
    // Every coordinator dies with its data.
    let ids: Vec<u64> = ctx.fleet.coords.iter().map(|c| c.id).collect();
    for id in &ids {
        let data = ctx.fleet.path().join(format!("coordinator-{id}"));
        ctx.fleet.coord(*id).proc.kill();
        std::fs::remove_dir_all(&data).ok();
    }
    ctx.fault("every coordinator killed and its data directory removed");
    let lost = Instant::now();
    for id in &ids {
        ctx.fleet.coord(*id).proc.start()?;
    }
    ctx.fault("three new coordinators started empty");
    // The agents are not restarted: they saw higher terms in the lost cluster, and must take the
    // new one (its own identity, its terms from 1) by themselves.
    let cli = ctx.fleet.cli.clone();
    fleetsnap_testkit::poll_until("a new leader", Duration::from_secs(60), || async {
        cli.json(&["cluster", "status", "--json"]).ok()?["leader_id"].as_u64()
    })
    .await?;
    ctx.fleet.wait_ready().await?;
    let mut args = vec!["catalog".to_string(), "rebuild".into()];
    for r in &ctx.fleet.regions {
        args.push("--from".into());
        args.push(format!("{}={}", r.name, r.dest()));
    }
    args.extend(["--wait".into(), "120".into(), "--json".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, rebuilt) = ctx.fleet.cli.run_json(&args)?;
    ctx.figure_since("catalog back after the loss (s)", lost);
    let after = checker::sets(&ctx.fleet)?;
    let found: Vec<&String> = before
        .iter()
        .filter(|id| {
            after
                .iter()
                .any(|s| s["backup_id"] == id.as_str() && s["state"] == "complete")
        })
        .collect();
    let history = writer.stop().await;
    // The rebuilt catalog has no windows: the sets are checked by id.
    let mut v = Verdict::default();
    for id in &before {
        let mut verified = Vec::new();
        for r in &ctx.fleet.regions {
            if checker::verifies(&ctx.fleet, &r.dest(), id)? {
                verified.push(r.name.clone());
            }
        }
        v.add(
            "a rebuilt set verifies in both regions",
            verified.len() == 2,
            format!("{id}: {verified:?}"),
        );
        let writes = checker::restored_writes(&ctx.fleet, &ctx.fleet.regions[0].dest(), id).await?;
        // Every set holds at least what was acknowledged before the first window opened.
        checker::check_writes(&mut v, id, false, &writes, &history, windows[0].1);
    }
    v.add(
        "agents that saw term 2 or later join the new cluster, whose terms start at 1",
        old_term >= 2,
        format!("the lost cluster was at term {old_term}"),
    );
    v.add(
        "the rebuilt catalog holds every set that was complete",
        ok && found.len() == before.len(),
        format!(
            "{} of {} found; rebuild said {}",
            found.len(),
            before.len(),
            rebuilt.to_string().chars().take(200).collect::<String>()
        ),
    );
    ctx.out.verdict = v;
    Ok(())
}
