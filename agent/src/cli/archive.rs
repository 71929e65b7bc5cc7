//! `fleetsnap-agent archive run|find|status`.

use std::process::ExitCode;
use std::time::Duration;

use fleetsnap_core::archive::Wanted;

use fleetsnap_core::ShardId;

use super::args::{ArchiveAt, ArchiveCommand, ArchiveRunArgs, ShardArgs};
use super::print::{print_json, print_point};
use crate::archive::ClusterTarget;
use crate::archive::{ArchiveRequest, archive, status};
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::restore::OnlineOptions;
use crate::snapshot::SourceOptions;
use crate::storage::{DestSpec, SpoolLimits};

pub(super) async fn run_archive(c: ArchiveCommand) -> Result<ExitCode> {
    match c {
        ArchiveCommand::Run(a) => run(a).await,
        ArchiveCommand::Find {
            at,
            commands,
            key,
            since,
            until,
            identity,
            json,
        } => {
            let from = dests(&at)?;
            let until = until.unwrap_or_else(|| {
                fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc())
            });
            let wanted = Wanted {
                names: commands,
                key: key.map(String::into_bytes),
            };
            let source = crate::archive::PointSource {
                from,
                cluster: at.cluster.clone(),
                identity,
            };
            let found = source
                .find(at.shard.as_ref(), &wanted, since, until)
                .await?;
            if json {
                print_json(&found);
            } else if found.is_empty() {
                println!(
                    "no such command in the archive of {} in that time",
                    at.cluster
                );
            } else {
                println!(
                    "{:<29} {:<12} {:<64} command",
                    "received", "shard", "before"
                );
                for f in &found {
                    println!(
                        "{:<29} {:<12} {:<64} {}",
                        f.time, f.shard, f.before, f.command
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Mark {
            cluster,
            nodes,
            to,
            pause_budget_ms,
            json,
        } => {
            let mut parsed = Vec::new();
            for n in &nodes {
                let (shard, url) = n.split_once('=').ok_or_else(|| {
                    Error::Input(format!("--node {n:?} is not SHARD=redis://HOST:PORT"))
                })?;
                let shard =
                    ShardId::new(shard).map_err(|e| Error::Input(format!("--node {n:?}: {e}")))?;
                parsed.push((shard, RedisTarget::parse(url)?));
            }
            let to = to
                .iter()
                .map(|d| DestSpec::parse(d))
                .collect::<Result<Vec<_>>>()?;
            let p = crate::archive::mark(&cluster, &parsed, &to, pause_budget_ms).await?;
            if json {
                print_json(&p);
            } else {
                println!(
                    "exact point of {} at {} ms: writes paused {} µs; {}",
                    p.cluster,
                    p.at_ms,
                    p.pause_us,
                    p.shards
                        .iter()
                        .map(|s| format!("{} at {}:{}", s.shard, s.replid, s.offset))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Prune {
            at,
            keep,
            dry_run,
            json,
        } => {
            let from = dests(&at)?;
            let mut reports = Vec::new();
            for shard in shards_of(&at, &from).await? {
                let r = crate::archive::prune(&from, &at.cluster, &shard, keep, dry_run).await?;
                if !json {
                    println!(
                        "shard {shard}: {} segment copies {}, {} segments kept (restorable from {} on, base {}){}",
                        r.deleted.len(),
                        if dry_run { "to delete" } else { "deleted" },
                        r.kept,
                        r.keep_from_ms,
                        r.kept_base.as_deref().unwrap_or("-"),
                        if r.failed.is_empty() {
                            String::new()
                        } else {
                            format!(
                                "; {} deletions failed:\n  {}",
                                r.failed.len(),
                                r.failed.join("\n  ")
                            )
                        }
                    );
                }
                reports.push((shard.to_string(), r));
            }
            if json {
                print_json(&reports);
            }
            Ok(if reports.iter().any(|(_, r)| !r.failed.is_empty()) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        ArchiveCommand::Status { at, json } => {
            let from = dests(&at)?;
            let mut all = Vec::new();
            for shard in shards_of(&at, &from).await? {
                all.push(status(&from, &at.cluster, &shard).await?);
            }
            // A cluster restores only where every shard does.
            let cluster_wide = fleetsnap_core::archive::intersect_ranges(
                &all.iter().map(|s| s.restorable.clone()).collect::<Vec<_>>(),
            );
            if json {
                match (&at.shard, all.as_slice()) {
                    (Some(_), [one]) => print_json(one),
                    _ => print_json(&serde_json::json!({
                        "shards": all,
                        "cluster_restorable": cluster_wide,
                    })),
                }
                return Ok(ExitCode::SUCCESS);
            }
            let when = |ms: i64| {
                fleetsnap_core::window::from_unix_ms(ms)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default()
            };
            for s in &all {
                println!(
                    "shard {} of {}: restorable until {} (lag {}), {} chain(s), {} segment(s) outside any chain",
                    s.shard,
                    s.cluster,
                    s.restorable_until.as_deref().unwrap_or("-"),
                    s.lag_seconds
                        .map_or("-".to_string(), |l| format!("{l:.1}s")),
                    s.chains.len(),
                    s.orphan_segments
                );
                for c in &s.chains {
                    println!(
                        "  base {} from {} to offset {} ({} segments, ids {})",
                        c.base.backup_id,
                        c.base.offset,
                        c.end_offset,
                        c.segments.len(),
                        c.replids.join(" → ")
                    );
                }
                for (a, b) in &s.gaps {
                    println!(
                        "  gap: nothing restorable from {} to {}",
                        when(*a),
                        when(*b)
                    );
                }
                for r in &s.refused {
                    println!("  refused: {r}");
                }
            }
            if at.shard.is_none() {
                let shown: Vec<String> = cluster_wide
                    .iter()
                    .map(|(a, b)| format!("{} … {}", when(*a), when(*b)))
                    .collect();
                println!(
                    "cluster {}: restorable (every shard) {}",
                    at.cluster,
                    if shown.is_empty() {
                        "nowhere".to_string()
                    } else {
                        shown.join(", ")
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The shard named, or every shard of the cluster the regions hold an archive of.
async fn shards_of(at: &ArchiveAt, from: &[DestSpec]) -> Result<Vec<ShardId>> {
    match &at.shard {
        Some(s) => Ok(vec![s.clone()]),
        None => crate::archive::shards(from, &at.cluster).await,
    }
}

/// Every shard of a cluster restored online to one time (`--at`), or each just before its own
/// found command (`--before SHARD@…`, one per shard), with each shard's offset and stamp and the
/// spread of the stamps.
pub(super) async fn restore_cluster_at(
    set: ShardArgs,
    online: Option<String>,
    work_dir: Option<&std::path::Path>,
    opts: &OnlineOptions,
    json: bool,
) -> Result<ExitCode> {
    let Some(url) = online else {
        return Err(Error::Input(
            "a whole cluster is restored to a time with --online URL (a file or an AOF directory holds one shard: give --shard)".into(),
        ));
    };
    let target = RedisTarget::parse(&url)?;
    let to = match (set.at, set.exact) {
        (Some(t), true) => ClusterTarget::Exact(t),
        (Some(t), false) => ClusterTarget::At(t),
        (None, _) => ClusterTarget::Before(set.before.clone()),
    };
    let source = set.source()?;
    let (targets, exact) = source.targets(None, &to).await?;
    if let (Some(p), false) = (&exact, json) {
        println!(
            "exact point taken at {} ms (writes paused {} µs)",
            p.at_ms, p.pause_us
        );
    }
    let done = source
        .restore_online(targets, exact, &target, work_dir, opts)
        .await?;
    if json {
        print_json(&done);
    } else {
        for s in &done.shards {
            println!("shard {}:", s.shard);
            print_point(&s.point_in_time);
            println!(
                "  {} keys, {} tail commands into {}",
                s.restore.keys,
                s.restore
                    .shards
                    .iter()
                    .map(|x| x.applied.tail_commands)
                    .sum::<u64>(),
                target
            );
        }
        println!(
            "{} shards restored; the spread of their last commands' stamps is {} ms",
            done.shards.len(),
            done.stamp_spread_ms
        );
        if !done.moving_slots.is_empty() {
            println!(
                "warning: slots {} were moving between shards around this time (keys arrived by migration within {} s of it): a key of theirs may have been restored on two shards or on none; check them, or restore --at … --exact",
                done.moving_slots,
                crate::archive::MOVING_WINDOW_MS / 1000
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn dests(at: &ArchiveAt) -> Result<Vec<DestSpec>> {
    at.from.iter().map(|d| DestSpec::parse(d)).collect()
}

async fn run(a: ArchiveRunArgs) -> Result<ExitCode> {
    if !(a.segment_seconds > 0.0 && a.segment_seconds <= 3600.0) {
        return Err(Error::Input(format!(
            "--segment-seconds {} is out of range: give a number of seconds above 0 and at most 3600",
            a.segment_seconds
        )));
    }
    let req = ArchiveRequest {
        target: RedisTarget::parse(&a.redis)?,
        destinations: a
            .to
            .iter()
            .map(|d| DestSpec::parse(d))
            .collect::<Result<Vec<_>>>()?,
        encode: a.encode.options()?,
        cluster: a.cluster,
        shard: a.shard,
        spool: SpoolLimits {
            memory_bytes: 8 << 20,
            dir: a.spool_dir.clone(),
            max_bytes: a.spool_max,
        },
        spool_dir: a.spool_dir,
        segment: Duration::from_secs_f64(a.segment_seconds),
        segment_max_bytes: a.segment_max_bytes.max(1),
        spool_max_bytes: a.spool_max,
        source_options: SourceOptions {
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds.max(1)),
            ..Default::default()
        },
        metrics_listen: a.metrics_listen,
        live: None,
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::Input(format!("cannot handle SIGTERM: {e}")))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        let _ = stop_tx.send(true);
    });
    let s = archive(req, stop).await?;
    if a.json {
        print_json(&s);
    } else {
        println!(
            "archived {} segments ({} stream bytes), {} base(s), {} gap(s); the chain stands at {}",
            s.segments,
            s.stream_bytes,
            s.bases.len(),
            s.gaps.len(),
            s.position.as_ref().map_or("-".to_string(), |p| format!(
                "offset {} of {}",
                p.offset, p.replid
            ))
        );
    }
    Ok(ExitCode::SUCCESS)
}
