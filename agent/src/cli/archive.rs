//! `fleetsnap-agent archive run|find|status`.

use std::process::ExitCode;
use std::time::Duration;

use fleetsnap_core::archive::Wanted;
use fleetsnap_core::codec::Compression;

use super::args::{ArchiveAt, ArchiveCommand, ArchiveRunArgs};
use super::print::print_json;
use crate::archive::{ArchiveRequest, archive, find, status};
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::snapshot::{EncodeOptions, SourceOptions, parse_recipient};
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
                names: commands.iter().map(|c| c.to_ascii_uppercase()).collect(),
                key: key.map(String::into_bytes),
            };
            let found = find(
                &from,
                &at.cluster,
                &at.shard,
                &wanted,
                since,
                until,
                identity.as_deref(),
            )
            .await?;
            if json {
                print_json(&found);
            } else if found.is_empty() {
                println!(
                    "no such command in the archive of shard {} in that time",
                    at.shard
                );
            } else {
                println!(
                    "{:<29} {:<10} {:<52} command",
                    "received", "shard", "before"
                );
                for f in &found {
                    println!(
                        "{:<29} {:<10} {:<52} {}",
                        f.time, f.shard, f.before, f.command
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCommand::Status { at, json } => {
            let s = status(&dests(&at)?, &at.cluster, &at.shard).await?;
            if json {
                print_json(&s);
            } else {
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
                for r in &s.refused {
                    println!("  refused: {r}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn dests(at: &ArchiveAt) -> Result<Vec<DestSpec>> {
    at.from.iter().map(|d| DestSpec::parse(d)).collect()
}

async fn run(a: ArchiveRunArgs) -> Result<ExitCode> {
    let compression: Compression = a
        .compress
        .parse()
        .map_err(|e: fleetsnap_core::codec::BadCompression| Error::Input(e.to_string()))?;
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
        encode: EncodeOptions {
            compression,
            recipients: a
                .encrypt_to
                .iter()
                .map(|r| parse_recipient(r))
                .collect::<Result<Vec<_>>>()?,
        },
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
