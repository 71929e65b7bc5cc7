//! Command-line interface of `fleetsnap-agent`.
//!
//! Exit codes: 0 success; 1 failure, nothing stored or restored; 2 bad usage; 3 partial success
//! (some destinations failed, the others hold a complete backup).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use fleetsnap_core::codec::Compression;
use fleetsnap_core::{BackupId, ClusterId, ShardId};

use crate::config::parse_size;
use crate::storage::DestSpec;
use crate::error::{Error, Result};
use crate::restore::OnlineOptions;
use crate::snapshot::{EncodeOptions, Progress, parse_recipient};
use crate::restore::ReplaceRequest;
use crate::restore::{self, RestoreRequest};
use crate::snapshot::{self, SnapshotRequest};
use crate::snapshot::{SourceKind, SourceOptions};
use crate::storage::SpoolLimits;
use crate::redis::RedisTarget;

/// Exit code for a partial success.
pub const EXIT_PARTIAL: u8 = 3;

#[derive(Parser)]
#[command(
    name = "fleetsnap-agent",
    version,
    about = "fleetsnap agent: snapshot Redis nodes to several regions at once, verify and restore"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run as the host's agent: watch the Redis instances in the config, report them to the
    /// coordinator leader every second, run the jobs it sends.
    Run(DaemonArgs),
    /// Check a config file as `run` would read it (with the same arguments), then exit: 0 when
    /// the agent would start with it, 1 with what is wrong.
    CheckConfig(DaemonArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: fleetsnap_proto::manual::Shell,
    },
    /// Write man pages (section 1) for this command and each subcommand into DIR.
    Man {
        /// Where to write them (e.g. /usr/local/share/man/man1).
        dir: std::path::PathBuf,
    },
    /// Take a snapshot of one Redis node and store it, verified and compressed, in every destination.
    Snapshot(SnapshotArgs),
    /// Print what the agent reports about one Redis node (role, offsets, links, persistence, slots).
    Report {
        /// The node: redis://[USER[:PASSWORD]@]HOST[:PORT] or rediss://…?ca=PATH.
        #[arg(long, value_name = "URL")]
        redis: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the complete backups in a destination.
    Ls {
        /// The destination to list.
        #[arg(long = "from", value_name = "DEST")]
        from: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-read a backup: sizes, sha256, decoding and the RDB checksum.
    Verify {
        /// The destination holding the backup.
        #[arg(long = "from", value_name = "DEST")]
        from: String,
        /// The backup id.
        #[arg(long)]
        backup: BackupId,
        /// The cluster, when the backup id covers several (a window's).
        #[arg(long)]
        cluster: Option<ClusterId>,
        /// age identity file, to check the RDB inside encrypted backups.
        #[arg(long, value_name = "AGE_KEY_FILE")]
        identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore one shard of a backup to an RDB file, from the first destination that yields a verified copy.
    Restore {
        #[command(flatten)]
        set: ShardArgs,
        /// The RDB file to write; a tail, if any, goes to PATH.tail.
        #[arg(
            long,
            value_name = "PATH",
            required_unless_present_any = ["aof_dir", "online", "replace"],
            conflicts_with_all = ["aof_dir", "online", "replace"]
        )]
        to_file: Option<PathBuf>,
        /// Write a Redis 7 AOF directory instead: the RDB as its base, the tail as its incremental
        /// file. Start redis-server with `--dir <parent> --appenddirname <name> --appendonly yes`
        /// and it loads both.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["online", "replace"])]
        aof_dir: Option<PathBuf>,
        /// With --to-file or --aof-dir: replace files already there (regular files only; a
        /// link, device or FIFO at the path is always refused).
        #[arg(long)]
        force: bool,
        /// Replace the data of this node: fetch and verify the copy beside its data file, stop
        /// it (--stop), move the copy in, start it (--start), check its keys, offset and slots,
        /// then replay the tail. redis://[USER[:PASSWORD]@]HOST[:PORT].
        #[arg(
            long,
            value_name = "URL",
            conflicts_with = "online",
            requires = "start"
        )]
        replace: Option<String>,
        /// With --replace: the shell command that starts the node and returns.
        #[arg(long, value_name = "COMMAND", requires = "replace")]
        start: Option<String>,
        /// With --replace: the shell command that stops the node (default: SHUTDOWN NOSAVE).
        #[arg(long, value_name = "COMMAND", requires = "replace")]
        stop: Option<String>,
        /// With --replace: the node's data file, needed only when the node is down.
        #[arg(long, value_name = "PATH", requires = "replace")]
        rdb_path: Option<PathBuf>,
        /// With --replace: seconds the stop, and the start with the load, may each take.
        #[arg(long, default_value_t = 600, requires = "replace")]
        timeout_secs: u64,
        /// Restore into this running server (standalone or any node of a Redis Cluster, whose
        /// primaries then each get their slots' keys) with RESTORE, key by key, then replay the
        /// tail: redis://[USER[:PASSWORD]@]HOST[:PORT].
        #[arg(long, value_name = "URL")]
        online: Option<String>,
        /// With --online: overwrite keys and function libraries that already exist (else they
        /// are left as they are and reported).
        #[arg(long, requires = "online")]
        replace_existing: bool,
        /// With --online: only this logical database.
        #[arg(long, requires = "online")]
        db: Option<u64>,
        /// With --online: only keys matching this glob (as KEYS reads it).
        #[arg(long = "match", value_name = "PATTERN", requires = "online")]
        pattern: Option<String>,
        /// With --online: where the verified copy is kept while it is applied (default: the
        /// system's temporary directory).
        #[arg(long, value_name = "DIR", requires = "online")]
        work_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A restore drill: load one shard of a backup into a scratch redis-server, check what it
    /// serves against the key counts and digests the manifest recorded, replay the tail, report
    /// RTO and the backup's age, and remove the server. Exit 1 if the data differs.
    Drill {
        #[command(flatten)]
        set: ShardArgs,
        /// The redis-server binary for the scratch server.
        #[arg(long, default_value = "redis-server")]
        redis_server: String,
        /// Where the scratch server keeps its files (default: the system's temporary directory).
        #[arg(long, value_name = "DIR")]
        work_dir: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// How the agent daemon starts: what `run` and `check-config` share.
#[derive(clap::Args)]
struct DaemonArgs {
    /// The agent's config file (TOML).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Talk to coordinators in plain text, without certificates (test machines only).
    #[arg(long)]
    insecure: bool,
    /// Take the agent id from this host's name (`$HOSTNAME` first) instead of the config: a
    /// sidecar in a StatefulSet's pods is then `redis-0`, `redis-1`, ….
    #[arg(long)]
    agent_id_from_hostname: bool,
    #[command(flatten)]
    log: fleetsnap_telemetry::LogArgs,
}

impl DaemonArgs {
    fn load(&self) -> Result<crate::config::AgentConfig> {
        let id = if self.agent_id_from_hostname {
            let name = fleetsnap_proto::tls::host_name().ok_or_else(|| {
                Error::Input(
                    "--agent-id-from-hostname: this host has no name; give agent_id in the \
                         config instead"
                        .into(),
                )
            })?;
            Some(name)
        } else {
            None
        };
        crate::config::AgentConfig::load_as(&self.config, id)
    }
}

/// Which shard of which backup, read from where: what `restore` and `drill` share.
#[derive(clap::Args)]
struct ShardArgs {
    /// Destinations in order of preference.
    #[arg(long = "from", value_name = "DEST", required = true)]
    from: Vec<String>,
    /// The backup id.
    #[arg(long)]
    backup: BackupId,
    /// The cluster, when the backup id covers several (a window's).
    #[arg(long)]
    cluster: Option<ClusterId>,
    /// The shard (needed when the backup has several).
    #[arg(long)]
    shard: Option<ShardId>,
    /// age identity file for encrypted backups.
    #[arg(long, value_name = "AGE_KEY_FILE")]
    identity: Option<PathBuf>,
}

impl ShardArgs {
    /// The request to read the shard; where the copy goes is the caller's to set.
    fn request(self) -> Result<RestoreRequest> {
        Ok(RestoreRequest {
            from: self
                .from
                .iter()
                .map(|f| DestSpec::parse(f))
                .collect::<Result<Vec<_>>>()?,
            backup: self.backup,
            cluster: self.cluster,
            shard: self.shard,
            to_file: PathBuf::new(),
            aof_dir: false,
            identity: self.identity,
            sync: true,
            // Scratch and staged copies are the agent's own; --to-file and --aof-dir say.
            force: true,
        })
    }
}

#[derive(clap::Args)]
struct SnapshotArgs {
    /// The node: redis://[USER[:PASSWORD]@]HOST[:PORT] or rediss://…?ca=PATH.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// A destination (repeat for several): file:///PATH or s3://BUCKET[/PREFIX]?region=R[&endpoint=URL][&profile=NAME][&object_lock=MODE:DAYS].
    #[arg(long = "to", value_name = "DEST", required = true)]
    to: Vec<String>,
    /// replication (PSYNC, default), bgsave-file, or file:PATH (an RDB or an AOF directory).
    #[arg(long, default_value = "replication")]
    source: String,
    /// zstd:LEVEL, zstd or none.
    #[arg(long, default_value = "zstd:3")]
    compress: String,
    /// Encrypt to this age recipient (repeat for several).
    #[arg(long = "encrypt-to", value_name = "AGE_RECIPIENT")]
    encrypt_to: Vec<String>,
    /// Cluster name in the storage layout.
    #[arg(long, default_value = "standalone")]
    cluster: ClusterId,
    /// Shard name in the storage layout; by default HOST-PORT of the node.
    #[arg(long)]
    shard: Option<ShardId>,
    /// Directory for spool files when a destination is slower than the source.
    #[arg(long, value_name = "DIR")]
    spool_dir: Option<PathBuf>,
    /// Largest spool file per destination (e.g. 512MiB, 8GiB).
    #[arg(long, default_value = "8GiB", value_parser = parse_size)]
    spool_max: u64,
    /// Seconds the node may send nothing before the snapshot fails.
    #[arg(long, default_value_t = 60)]
    idle_timeout_seconds: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

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

fn init_plain_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("report serialises")
    );
}

async fn run(cli: Cli) -> Result<ExitCode> {
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
            work_dir,
            json,
        } => {
            let read = set.request()?;
            let settings = crate::restore::DrillSettings {
                redis_server,
                work_dir,
                ..Default::default()
            };
            let r = crate::restore::drill(read, &settings, None).await?;
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
            // Where the copy goes is the mode's to choose (`replace`, `online`) or the flags'.
            let to_a_file = aof_dir.is_some() || to_file.is_some();
            let read = RestoreRequest {
                aof_dir: aof_dir.is_some(),
                to_file: aof_dir.or(to_file).unwrap_or_default(),
                force: force || !to_a_file,
                ..set.request()?
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
                if json {
                    print_json(&r);
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
                    },
                )
                .await?;
                if json {
                    print_json(&r);
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
            if json {
                print_json(&r);
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

async fn run_snapshot(a: SnapshotArgs) -> Result<ExitCode> {
    let target = a.redis.as_deref().map(RedisTarget::parse).transpose()?;
    let source: SourceKind = a.source.parse()?;
    let compression: Compression = a
        .compress
        .parse()
        .map_err(|e: fleetsnap_core::codec::BadCompression| Error::Input(e.to_string()))?;
    let recipients = a
        .encrypt_to
        .iter()
        .map(|r| parse_recipient(r))
        .collect::<Result<Vec<_>>>()?;
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
        encode: EncodeOptions {
            compression,
            recipients,
        },
        cluster,
        shard,
        spool,
        source_options: SourceOptions {
            idle_timeout: Duration::from_secs(a.idle_timeout_seconds),
            ..Default::default()
        },
        backup_id: None,
        write_manifest: true,
        start_at_ms: None,
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

/// A drill's outcome, for people.
pub fn print_drill(r: &crate::restore::DrillReport) {
    for (d, e) in &r.skipped {
        println!("skipped {d}: {e}");
    }
    println!(
        "drill of shard {} of backup {} from {}: {}",
        r.shard,
        r.backup_id,
        r.destination,
        if r.ok { "PASSED" } else { "FAILED" }
    );
    println!(
        "{:<4} {:>10} {:>10} {:>8} {:<14} {:<14}",
        "DB", "RECORDED", "SERVED", "EXPIRED", "DIGEST", "RECORDED"
    );
    for d in &r.dbs {
        println!(
            "{:<4} {:>10} {:>10} {:>8} {:<14} {:<14}",
            d.db,
            d.keys_recorded.map_or("-".into(), |k| k.to_string()),
            d.keys_served,
            d.keys_expired,
            &d.digest_found[..12.min(d.digest_found.len())],
            d.digest_recorded
                .as_deref()
                .map_or("-", |x| &x[..12.min(x.len())])
        );
    }
    println!(
        "RTO {:.2}s (fetch {:.2}s, load {:.2}s, {} tail commands); check {:.2}s; {} of RDB{}",
        r.rto_seconds,
        r.fetch_seconds,
        r.load_seconds,
        r.tail_commands,
        r.check_seconds,
        human(r.rdb_bytes),
        r.rpo_seconds
            .map(|s| format!("; backup age (RPO) {s:.0}s"))
            .unwrap_or_default()
    );
    if !r.digest_checked {
        println!(
            "note: the manifest records no digests (written before fleetsnap recorded them): only the copy's checksums were checked"
        );
    }
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
}

fn print_report(r: &fleetsnap_core::InstanceReport) {
    if let Some(e) = &r.error {
        println!("{}  unreachable: {e}", r.address);
        return;
    }
    let role = match r.role {
        fleetsnap_core::Role::Primary => "primary",
        fleetsnap_core::Role::Replica => "replica",
        fleetsnap_core::Role::Unknown => "unknown",
    };
    println!(
        "{}  {role}  redis {}  offset {}",
        r.address, r.redis_version, r.master_repl_offset
    );
    if let (Some(p), Some(up)) = (&r.primary_address, r.link_up) {
        println!(
            "  primary {p}  link {}  behind {} B",
            if up { "up" } else { "DOWN" },
            r.lag_bytes().unwrap_or(0)
        );
    }
    for s in &r.replicas {
        println!(
            "  replica {}  {}  offset {}  lag {}s",
            s.address, s.state, s.offset, s.lag_seconds
        );
    }
    println!(
        "  memory {} of {}  bgsave {}  last save {}  aof {}",
        human(r.used_memory_bytes),
        if r.maxmemory_bytes == 0 {
            "no limit".to_string()
        } else {
            human(r.maxmemory_bytes)
        },
        if r.rdb_bgsave_in_progress {
            "running"
        } else if r.rdb_last_bgsave_ok {
            "ok"
        } else {
            "FAILED"
        },
        r.rdb_last_save_time,
        if r.aof_enabled { "on" } else { "off" }
    );
    if let Some(id) = &r.cluster_myid {
        let slots: Vec<String> = r
            .slots
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        println!(
            "  cluster node {id}  slots {}",
            if slots.is_empty() {
                "none".to_string()
            } else {
                slots.join(",")
            }
        );
    }
    match r.sync_allowed {
        Some(true) => println!("  sync allowed"),
        Some(false) => println!(
            "  sync NOT allowed: PSYNC is renamed or the agent's user may not run it (use --source bgsave-file)"
        ),
        None => println!("  sync permission unknown: the agent's user may not run ACL DRYRUN"),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Human-readable bytes (decimal units, as `MB/s`).
pub fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
