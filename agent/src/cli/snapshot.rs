//! `fleetsnap-agent snapshot`: one node to every destination, with progress and a report.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fleetsnap_core::ShardId;

use super::args::SnapshotArgs;
use super::print::*;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::snapshot::Progress;
use crate::snapshot::{self, SnapshotRequest};
use crate::snapshot::{SourceKind, SourceOptions};
use crate::storage::DestSpec;
use crate::storage::SpoolLimits;

pub(super) async fn run_snapshot(a: SnapshotArgs) -> Result<ExitCode> {
    let target = a.redis.as_deref().map(RedisTarget::parse).transpose()?;
    let source: SourceKind = a.source.parse()?;
    let encode = a.encode.options()?;
    let destinations =
        a.to.iter()
            .map(|d| DestSpec::parse(d))
            .collect::<Result<Vec<_>>>()?;
    let cluster = a.cluster;
    let shard = match (a.shard, &target) {
        (Some(s), _) => s,
        (None, Some(t)) => ShardId::new(format!("{}-{}", t.host, t.port))
            .map_err(|e| Error::Input(format!("{e}; name the shard with --shard")))?,
        (None, None) => ShardId::new("file").expect("a valid name"),
    };
    let spool = SpoolLimits {
        memory_bytes: 8 << 20,
        dir: a.spool_dir.unwrap_or_else(std::env::temp_dir),
        max_bytes: a.spool_max,
    };
    let req = SnapshotRequest {
        target,
        source,
        destinations,
        encode,
        cluster,
        shard,
        spool,
        source_options: SourceOptions {
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
            max_ops_per_sec: a.max_ops_per_sec,
            ..Default::default()
        },
        backup_id: None,
        write_manifest: true,
        start_at_ms: None,
        archive: None,
        cut: None,
    };
    let progress = Arc::new(Progress::default());
    let bar = (!a.json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} snapshot {bytes} read, {bytes_per_sec}, {elapsed}",
            )
            .expect("valid template"),
        );
        bar
    });
    let ticker = bar.clone().map(|bar| {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut sized = false;
            loop {
                let total = progress.total.load(Ordering::Relaxed);
                if total > 0 && !sized {
                    // The size is known (a `$len` payload or a file): show a bar with an ETA.
                    bar.set_length(total);
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "snapshot [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                    sized = true;
                }
                bar.set_position(progress.read.load(Ordering::Relaxed));
                bar.tick();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let result = snapshot::snapshot(&req, progress).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let report = result?;
    if a.json {
        print_json(&report);
    } else {
        println!(
            "backup {}  cluster {}  shard {}",
            report.backup_id, report.cluster, report.shard
        );
        println!(
            "source {} {} ({}, RDB version {})",
            report.source_kind,
            report.source,
            human(report.raw_bytes),
            report.rdb_version
        );
        println!(
            "{:<44} {:<9} {:>10} {:>9} {:>9}",
            "DESTINATION", "RESULT", "STORED", "TIME", "MB/s"
        );
        for d in &report.destinations {
            println!(
                "{:<44} {:<9} {:>10} {:>8.1}s {:>9.1}",
                truncate(&d.destination, 44),
                d.result,
                human(d.stored_bytes),
                d.duration_seconds,
                d.throughput_mb_per_s
            );
            if let Some(e) = &d.error {
                println!("    {e}");
            }
        }
        for n in &report.notes {
            println!("note: {n}");
        }
    }
    let complete = report.complete();
    Ok(if complete == report.destinations.len() {
        ExitCode::SUCCESS
    } else if complete == 0 {
        eprintln!("error: the snapshot was stored in no destination");
        ExitCode::FAILURE
    } else {
        eprintln!(
            "warning: the snapshot is complete in {complete} of {} destinations",
            report.destinations.len()
        );
        ExitCode::from(EXIT_PARTIAL)
    })
}
