//! Running a parsed command line.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use super::args::*;
use super::print::*;
use super::snapshot::run_snapshot;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::restore::OnlineOptions;
use crate::restore::ReplaceRequest;
use crate::restore::{self, RestoreRequest};
use crate::storage::DestSpec;

/// Runs the CLI.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon sets up its logs and traces from its config.
    if !matches!(cli.command, Command::Run(_)) {
        init_plain_logs();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

pub(super) fn init_plain_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

pub(super) async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(a) => {
            let config = a.load()?;
            let telemetry = fleetsnap_telemetry::init(
                fleetsnap_telemetry::Service {
                    name: "fleetsnap-agent",
                    instance: config.agent_id.clone(),
                },
                a.log.log_format,
                "info",
                config.telemetry.otlp_endpoint.as_deref(),
            )
            .map_err(|e| Error::Input(e.to_string()))?;
            let transport = crate::config::transport(&config, a.insecure)?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(|e| Error::Input(format!("cannot handle SIGTERM: {e}")))?;
            let result = tokio::select! {
                r = crate::daemon::run(config, transport) => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
                _ = term.recv() => Ok(()),
            };
            telemetry.shutdown().await;
            result.map(|()| ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            fleetsnap_proto::manual::completions(Cli::command(), "fleetsnap-agent", shell)
                .map_err(|e| Error::Input(format!("cannot write the completion script: {e}")))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let pages = fleetsnap_proto::manual::man_pages(Cli::command(), &dir)
                .map_err(|e| Error::file("cannot write man pages into", &dir, e))?;
            println!("{} man pages written to {}", pages.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(a) => {
            let config = a.load()?;
            crate::config::check(&config, a.insecure)?;
            println!(
                "{}: agent {:?}, coordinators: {}, instances: {}; the agent would start with it",
                a.config.display(),
                config.agent_id,
                config.coordinators.len(),
                config.instances.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(a) => run_snapshot(a).await,
        Command::Archive(c) => super::archive::run_archive(c).await,
        Command::Report { redis, json } => {
            let target = RedisTarget::parse(&redis)?;
            let r = crate::redis::collect(&target.address(), &target).await;
            if json {
                print_json(&r);
            } else {
                print_report(&r);
            }
            Ok(if r.reachable {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Ls { from, json } => {
            let spec = DestSpec::parse(&from)?;
            let listing = restore::list(&spec).await?;
            let rows = &listing.sets;
            if json {
                print_json(&listing.sets);
            } else if rows.is_empty() {
                println!("no complete backup in {spec}");
            } else {
                println!(
                    "{:<24} {:<16} {:>6} {:>10} {:>10}  FINISHED",
                    "BACKUP", "CLUSTER", "SHARDS", "RAW", "STORED"
                );
                for r in rows {
                    println!(
                        "{:<24} {:<16} {:>6} {:>10} {:>10}  {}",
                        r.backup_id,
                        r.cluster,
                        r.shards.len(),
                        human(r.raw_bytes),
                        human(r.stored_bytes),
                        r.finished_at
                    );
                }
            }
            for why in &listing.refused {
                eprintln!("refused: {why}");
            }
            Ok(if listing.refused.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Verify {
            from,
            backup,
            cluster,
            identity,
            json,
        } => {
            let spec = DestSpec::parse(&from)?;
            let r = restore::verify(&spec, &backup, cluster.as_ref(), identity.as_deref()).await?;
            if json {
                print_json(&r);
            } else {
                for o in &r.objects {
                    match (o.raw_bytes, &o.crc64) {
                        (Some(raw), Some(crc)) => println!(
                            "ok  {}  {} stored, {} raw, sha256 ok, RDB checksum {crc} ok",
                            o.name,
                            human(o.stored_bytes),
                            human(raw)
                        ),
                        (Some(raw), None) => println!(
                            "ok  {}  {} stored, {} raw, sha256 ok",
                            o.name,
                            human(o.stored_bytes),
                            human(raw)
                        ),
                        (None, _) => println!(
                            "ok  {}  {} stored, sha256 ok (encrypted: pass --identity to check the RDB inside)",
                            o.name,
                            human(o.stored_bytes)
                        ),
                    }
                }
                println!("backup {} verified in {}", r.backup_id, r.destination);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drill {
            set,
            redis_server,
            valkey_server,
            work_dir,
            json,
        } => {
            let (read, handle) = set.resolve(work_dir.as_deref()).await?;
            let settings = crate::restore::DrillSettings {
                redis_server,
                valkey_server,
                work_dir,
                ..Default::default()
            };
            let r = crate::restore::drill(read, &settings, None).await?;
            resolved(&handle, json).await?;
            if json {
                print_json(&r);
            } else {
                print_drill(&r);
            }
            Ok(if r.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Restore {
            set,
            to_file,
            aof_dir,
            force,
            online,
            replace,
            start,
            stop,
            rdb_path,
            timeout_secs,
            replace_existing,
            db,
            pattern,
            work_dir,
            json,
        } => {
            if set.cluster_wide() {
                let opts = OnlineOptions {
                    replace_existing,
                    db,
                    pattern,
                    progress: false,
                    keep: None,
                };
                return super::archive::restore_cluster_at(
                    set,
                    online,
                    work_dir.as_deref(),
                    &opts,
                    json,
                )
                .await;
            }
            // Where the copy goes is the mode's to choose (`replace`, `online`) or the flags'.
            let to_a_file = aof_dir.is_some() || to_file.is_some();
            let (base, handle) = set.resolve(work_dir.as_deref()).await?;
            let read = RestoreRequest {
                aof_dir: aof_dir.is_some(),
                to_file: aof_dir.or(to_file).unwrap_or_default(),
                force: force || !to_a_file,
                ..base
            };
            if let Some(url) = replace {
                let r = crate::restore::replace(ReplaceRequest {
                    read,
                    node: RedisTarget::parse(&url)?,
                    stop,
                    start: start.expect("clap requires --start"),
                    rdb_path,
                    timeout: Duration::from_secs(timeout_secs),
                })
                .await?;
                let point = resolved(&handle, json).await?;
                if json {
                    print_restore_json(&r, point.as_ref());
                } else {
                    for (d, e) in &r.read.skipped {
                        println!("skipped {d}: {e}");
                    }
                    println!(
                        "replaced the data of {} with shard {} from {}: {} keys loaded ({} in the backup, {} of them with an expiry), {} tail commands; down {:.1}s, {:.1}s in all",
                        r.node,
                        r.read.shard,
                        r.read.destination,
                        r.keys_loaded,
                        r.keys_in_backup,
                        r.expires_in_backup,
                        r.tail_commands,
                        r.down_seconds,
                        r.seconds
                    );
                    if let Some(p) = &r.previous_kept_at {
                        println!("the node's previous data is kept at {p}");
                    }
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Some(url) = online {
                let target = RedisTarget::parse(&url)?;
                let r = restore::restore_online(
                    read,
                    work_dir.as_deref(),
                    &target,
                    &OnlineOptions {
                        replace_existing,
                        db,
                        pattern,
                        progress: !json,
                        keep: None,
                    },
                )
                .await?;
                let point = resolved(&handle, json).await?;
                if json {
                    print_restore_json(&r, point.as_ref());
                } else {
                    for s in &r.shards {
                        for (d, e) in &s.read.skipped {
                            println!("skipped {d}: {e}");
                        }
                        let o = &s.applied;
                        println!(
                            "restored shard {} from {} into {}: {} keys ({} filtered out, {} already expired), {} function libraries, {} tail commands, {} of RDB in {:.1}s",
                            s.read.shard,
                            s.read.destination,
                            o.target,
                            o.keys,
                            o.filtered,
                            o.expired,
                            o.functions,
                            o.tail_commands,
                            human(o.rdb_bytes),
                            o.seconds
                        );
                        if o.across_versions {
                            println!(
                                "  {} cannot read the RDB version of the backup (taken from {}): values went re-encoded in the plainest RDB types, {} keys as commands",
                                o.target,
                                s.read.server.as_deref().unwrap_or("an unnamed server"),
                                o.as_commands
                            );
                        }
                    }
                    println!(
                        "{} keys from {} shards, {} of RDB in {:.1}s ({:.1} MB/s)",
                        r.keys,
                        r.shards.len(),
                        human(r.rdb_bytes),
                        r.seconds,
                        r.rdb_bytes as f64 / 1e6 / r.seconds.max(1e-3)
                    );
                }
                if let Some(problem) = r.conflict_problem() {
                    eprintln!("error: {problem}");
                    return Ok(ExitCode::FAILURE);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let r = restore::restore(&read).await?;
            let point = resolved(&handle, json).await?;
            if json {
                print_restore_json(&r, point.as_ref());
            } else {
                for (d, e) in &r.skipped {
                    println!("skipped {d}: {e}");
                }
                println!(
                    "restored shard {} ({}) from {} to {}",
                    r.shard,
                    human(r.raw_bytes),
                    r.destination,
                    r.rdb_file
                );
                if r.aof_dir {
                    println!(
                        "the AOF directory is ready: start redis-server with --appendonly yes on it; it loads the RDB and replays the tail"
                    );
                } else if let Some(t) = &r.tail_file {
                    println!(
                        "the backup has a tail: after loading the RDB, replay it with `redis-cli --pipe < {t}`"
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What a restore from the archive resolved to (its tail was written while the base was
/// fetched), printed unless the output is JSON.
async fn resolved(
    handle: &Option<crate::archive::ArchiveTail>,
    json: bool,
) -> Result<Option<crate::archive::PointInTime>> {
    let Some(h) = handle else {
        return Ok(None);
    };
    let p = h.ready().await?;
    if !json {
        print_point(&p);
    }
    Ok(Some(p))
}
