//! The command line's shape: every subcommand and its arguments, each value parsed and checked
//! by clap (a bad one exits 2 with the fix).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use fleetsnap_core::{BackupId, ClusterId, ShardId};

use crate::config::parse_size;
use crate::error::{Error, Result};
use crate::restore::RestoreRequest;
use crate::storage::DestSpec;

#[derive(Parser)]
#[command(
    name = "fleetsnap-agent",
    version,
    about = "fleetsnap agent: snapshot Redis nodes to several regions at once, verify and restore"
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand)]
pub(super) enum Command {
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
    /// The continuous archive: follow a node's replication stream into segments in every
    /// region; find commands in it; show what it can restore.
    #[command(subcommand)]
    Archive(ArchiveCommand),
    /// A restore drill: load one shard of a backup into a scratch redis-server, check what it
    /// serves against the key counts and digests the manifest recorded, replay the tail, report
    /// RTO and the backup's age, and remove the server. Exit 1 if the data differs.
    Drill {
        #[command(flatten)]
        set: ShardArgs,
        /// The redis-server binary for the scratch server.
        #[arg(long, default_value = "redis-server")]
        redis_server: String,
        /// The valkey-server binary for backups taken from Valkey (their manifests say so).
        #[arg(long, value_name = "PATH")]
        valkey_server: Option<String>,
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
pub(super) struct DaemonArgs {
    /// The agent's config file (TOML).
    #[arg(long, value_name = "FILE")]
    pub(super) config: PathBuf,
    /// Talk to coordinators in plain text, without certificates (test machines only).
    #[arg(long)]
    pub(super) insecure: bool,
    /// Take the agent id from this host's name (`$HOSTNAME` first) instead of the config: a
    /// sidecar in a StatefulSet's pods is then `redis-0`, `redis-1`, ….
    #[arg(long)]
    pub(super) agent_id_from_hostname: bool,
    #[command(flatten)]
    pub(super) log: fleetsnap_telemetry::LogArgs,
}

impl DaemonArgs {
    pub(super) fn load(&self) -> Result<crate::config::AgentConfig> {
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
pub(super) struct ShardArgs {
    /// Destinations in order of preference.
    #[arg(long = "from", value_name = "DEST", required = true)]
    pub(super) from: Vec<String>,
    /// The backup id.
    #[arg(long, required_unless_present_any = ["at", "before"], conflicts_with_all = ["at", "before"])]
    pub(super) backup: Option<BackupId>,
    /// Restore to this time from the continuous archive: the shard's latest base before it and
    /// every command received up to it. RFC 3339 (2026-12-05T04:00:00.250Z) or Unix
    /// milliseconds. Needs --cluster; without --shard, every shard of the cluster (--online).
    #[arg(long, value_name = "TIME", value_parser = parse_time, requires = "cluster", conflicts_with = "before")]
    pub(super) at: Option<i64>,
    /// Restore from the continuous archive to just before a command `archive find` found: the
    /// SHARD@REPLID:OFFSET it prints (comma-separated, one per shard, to restore a whole cluster
    /// with --online). Needs --cluster.
    #[arg(
        long,
        value_name = "SHARD@REPLID:OFFSET",
        value_delimiter = ',',
        requires = "cluster"
    )]
    pub(super) before: Vec<String>,
    /// With --at: restore to the latest exact point at or before the time (`archive mark`): every
    /// shard at one instant of the whole cluster, no write in flight between them.
    #[arg(long, requires = "at")]
    pub(super) exact: bool,
    /// The cluster, when the backup id covers several (a window's).
    #[arg(long)]
    pub(super) cluster: Option<ClusterId>,
    /// The shard (needed when the backup has several).
    #[arg(long)]
    pub(super) shard: Option<ShardId>,
    /// age identity file for encrypted backups.
    #[arg(long, value_name = "AGE_KEY_FILE")]
    pub(super) identity: Option<PathBuf>,
}

/// A duration as `--keep` takes it: a number and one of s, m, h, d.
pub(super) fn parse_keep(text: &str) -> std::result::Result<std::time::Duration, String> {
    fleetsnap_core::policy::parse_span(text)
}

/// A time as `--at`, `--since` and `--until` take it: RFC 3339 or Unix milliseconds.
pub(super) use fleetsnap_core::window::parse_time;

use crate::archive::ArchiveTail;

impl ShardArgs {
    /// Whether this restores every shard of a cluster from the archive (`--at` or `--before`
    /// without `--shard`).
    pub(super) fn cluster_wide(&self) -> bool {
        self.shard.is_none() && (self.at.is_some() || self.before.len() > 1)
    }

    /// The request to read the shard, with `--at` or `--before` resolved against the archive
    /// (the base becomes the backup, the archive's tail its tail); where the copy goes is the
    /// caller's to set.
    pub(super) async fn resolve(
        self,
        work_dir: Option<&std::path::Path>,
    ) -> Result<(RestoreRequest, Option<ArchiveTail>)> {
        let needs_shard = || {
            Error::Input(
                "a restore to a time from the archive needs --shard, or --online to restore every shard of the cluster".into(),
            )
        };
        let (shard, target) = match (self.at, self.before.as_slice()) {
            (None, []) => return Ok((self.request()?, None)),
            (Some(t), _) => {
                let shard = self.shard.clone().ok_or_else(needs_shard)?;
                let target = if self.exact {
                    let point =
                        crate::archive::latest_point(&self.regions()?, &self.cluster_arg(), t)
                            .await?;
                    crate::archive::point_target(&point, &shard)?
                } else {
                    crate::archive::TimeTarget::At(t)
                };
                (shard, target)
            }
            (None, [b]) => {
                let (named, target) = crate::archive::TimeTarget::parse_before(b)?;
                if let (Some(s), Some(want)) = (&named, &self.shard)
                    && s != want
                {
                    return Err(Error::Input(format!(
                        "--before {b} is a command of shard {s}, not of --shard {want}"
                    )));
                }
                let shard = self.shard.clone().or(named).ok_or_else(needs_shard)?;
                (shard, target)
            }
            (None, _) => {
                return Err(Error::Input(
                    "several --before handles restore a whole cluster: leave out --shard and restore with --online".into(),
                ));
            }
        };
        let (req, point) = self.point_for(&shard, &target, work_dir).await?;
        Ok((req, Some(point)))
    }

    /// `shard` resolved to `target` against the archive (see [`crate::archive::PointSource`]).
    pub(super) async fn point_for(
        &self,
        shard: &ShardId,
        target: &crate::archive::TimeTarget,
        work_dir: Option<&std::path::Path>,
    ) -> Result<(RestoreRequest, ArchiveTail)> {
        self.source()?.shard(shard, target, work_dir).await
    }

    /// Where a restore from the archive reads.
    pub(super) fn source(&self) -> Result<crate::archive::PointSource> {
        Ok(crate::archive::PointSource {
            from: self.regions()?,
            cluster: self.cluster_arg(),
            identity: self.identity.clone(),
        })
    }

    /// The regions, in the order given.
    pub(super) fn regions(&self) -> Result<Vec<DestSpec>> {
        self.from.iter().map(|f| DestSpec::parse(f)).collect()
    }

    /// `--cluster`, which every archive restore requires.
    pub(super) fn cluster_arg(&self) -> ClusterId {
        self.cluster.clone().expect("clap requires --cluster")
    }

    /// The request to read the shard of `--backup`.
    pub(super) fn request(&self) -> Result<RestoreRequest> {
        self.request_for(self.backup.clone())
    }

    fn request_for(&self, backup: Option<BackupId>) -> Result<RestoreRequest> {
        Ok(RestoreRequest {
            from: self.regions()?,
            backup: backup.ok_or_else(|| Error::Input("give --backup, --at or --before".into()))?,
            cluster: self.cluster.clone(),
            shard: self.shard.clone(),
            to_file: PathBuf::new(),
            aof_dir: false,
            identity: self.identity.clone(),
            sync: true,
            // Scratch and staged copies are the agent's own; --to-file and --aof-dir say.
            force: true,
            archive_tail: None,
        })
    }
}

#[derive(clap::Args)]
pub(super) struct SnapshotArgs {
    /// The node: redis://[USER[:PASSWORD]@]HOST[:PORT] or rediss://…?ca=PATH.
    #[arg(long, value_name = "URL")]
    pub(super) redis: Option<String>,
    /// A destination (repeat for several): file:///PATH or s3://BUCKET[/PREFIX]?region=R[&endpoint=URL][&profile=NAME][&object_lock=MODE:DAYS].
    #[arg(long = "to", value_name = "DEST", required = true)]
    pub(super) to: Vec<String>,
    /// replication (PSYNC, default), bgsave-file, scan (SCAN, DUMP and PTTL, for servers that
    /// refuse SYNC, PSYNC and BGSAVE: each key consistent, the set not one point in time), auto
    /// (replication, or a scan where the node refuses it, said so), or file:PATH (an RDB or an
    /// AOF directory).
    #[arg(long, default_value = "replication")]
    pub(super) source: String,
    /// scan: the most DUMP and PTTL commands a second (the load the node takes).
    #[arg(long, value_name = "N")]
    pub(super) max_ops_per_sec: Option<u32>,
    #[command(flatten)]
    pub(super) encode: EncodeArgs,
    /// Cluster name in the storage layout.
    #[arg(long, default_value = "standalone")]
    pub(super) cluster: ClusterId,
    /// Shard name in the storage layout; by default HOST-PORT of the node.
    #[arg(long)]
    pub(super) shard: Option<ShardId>,
    /// Directory for spool files when a destination is slower than the source.
    #[arg(long, value_name = "DIR")]
    pub(super) spool_dir: Option<PathBuf>,
    /// Largest spool file per destination (e.g. 512MiB, 8GiB).
    #[arg(long, default_value = "8GiB", value_parser = parse_size)]
    pub(super) spool_max: u64,
    /// Seconds the node may send nothing before the snapshot fails.
    #[arg(long, default_value_t = 60)]
    pub(super) idle_timeout_seconds: u64,
    /// Print JSON.
    #[arg(long)]
    pub(super) json: bool,
}

#[derive(Subcommand)]
pub(super) enum ArchiveCommand {
    /// Follow the node's replication stream until SIGINT or SIGTERM: a base first (stored as a
    /// backup), then segments cut at command boundaries every --segment-seconds, each durable in
    /// the spool before the node hears it acknowledged, sent to every region.
    Run(ArchiveRunArgs),
    /// Find commands in the archive (FLUSHALL, FLUSHDB, DEL, …), with when each was received and
    /// the REPLID:OFFSET that `restore --before` takes to stop just before it.
    Find {
        #[command(flatten)]
        at: ArchiveAt,
        /// A command name (repeat for several).
        #[arg(long = "command", value_name = "NAME", required = true, value_parser = fleetsnap_core::archive::command_name)]
        commands: Vec<String>,
        /// Only commands with an argument that matches this glob.
        #[arg(long, value_name = "PATTERN")]
        key: Option<String>,
        /// From this time: RFC 3339 or Unix milliseconds.
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        since: i64,
        /// Up to this time (default: now).
        #[arg(long, value_name = "TIME", value_parser = parse_time)]
        until: Option<i64>,
        /// age identity file for an encrypted archive.
        #[arg(long, value_name = "AGE_KEY_FILE")]
        identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take an exact point of a cluster: pause writes on every primary (one after the other,
    /// within --pause-budget-ms), read each one's offset once all are paused, release them, and
    /// store the offsets in every region. `restore --at T --exact` restores to the latest one.
    Mark {
        /// The cluster.
        #[arg(long, default_value = "standalone")]
        cluster: ClusterId,
        /// Each shard's primary, as SHARD=redis://HOST:PORT (repeat for every shard).
        #[arg(long = "node", value_name = "SHARD=URL", required = true)]
        nodes: Vec<String>,
        /// A region (repeat for several).
        #[arg(long = "to", value_name = "DEST", required = true)]
        to: Vec<String>,
        /// The longest writes may be paused, in milliseconds.
        #[arg(long, default_value_t = 100)]
        pause_budget_ms: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete the segments no time within --keep needs (chains that end before it, and what
    /// comes before the latest base at or before it). Bases are backups: the catalog's
    /// retention keeps or deletes them.
    Prune {
        #[command(flatten)]
        at: ArchiveAt,
        /// How far back every second stays restorable: 7d, 24h, 90m, 3600s.
        #[arg(long, value_parser = parse_keep)]
        keep: std::time::Duration,
        /// Only say what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the archive of a shard can restore: its chains (base, reach), gaps, and how far
    /// the newest restorable time is behind now.
    Status {
        #[command(flatten)]
        at: ArchiveAt,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Which shard's archive, read from where.
#[derive(clap::Args)]
pub(super) struct ArchiveAt {
    /// Regions to read (every one is read; a segment missing or damaged in one is read from
    /// another).
    #[arg(long = "from", value_name = "DEST", required = true)]
    pub(super) from: Vec<String>,
    /// The cluster.
    #[arg(long, default_value = "standalone")]
    pub(super) cluster: ClusterId,
    /// The shard (find and status: every shard of the cluster when left out).
    #[arg(long)]
    pub(super) shard: Option<ShardId>,
}

#[derive(clap::Args)]
pub(super) struct ArchiveRunArgs {
    /// The node: redis://[USER[:PASSWORD]@]HOST[:PORT] (a replica keeps the primary free).
    #[arg(long, value_name = "URL")]
    pub(super) redis: String,
    /// A region (repeat for several).
    #[arg(long = "to", value_name = "DEST", required = true)]
    pub(super) to: Vec<String>,
    /// Cluster name in the storage layout.
    #[arg(long, default_value = "standalone")]
    pub(super) cluster: ClusterId,
    /// Shard name in the storage layout.
    #[arg(long)]
    pub(super) shard: ShardId,
    /// Where the chain's position and the segments not yet in every region are kept; an
    /// archiver started again on it continues the chain.
    #[arg(long, value_name = "DIR")]
    pub(super) spool_dir: PathBuf,
    /// A segment is cut this many seconds after its first byte (the recovery point's bound,
    /// and one PUT per region each).
    #[arg(long, default_value_t = 1.0)]
    pub(super) segment_seconds: f64,
    /// … or at this many stream bytes.
    #[arg(long, default_value = "64MiB", value_parser = parse_size)]
    pub(super) segment_max_bytes: u64,
    /// The most bytes of segments waiting locally for a region; past it the archiver stops
    /// reading until the regions catch up.
    #[arg(long, default_value = "4GiB", value_parser = parse_size)]
    pub(super) spool_max: u64,
    #[command(flatten)]
    pub(super) encode: EncodeArgs,
    /// Seconds the node may send nothing before the stream is reopened.
    #[arg(long, default_value_t = 60)]
    pub(super) idle_timeout_seconds: u64,
    /// Serve /metrics (fleetsnap_archive_lag_seconds: the live recovery point, …), /healthz and
    /// /readyz at this address, e.g. 127.0.0.1:9188.
    #[arg(long, value_name = "ADDRESS")]
    pub(super) metrics_listen: Option<std::net::SocketAddr>,
    /// Print the summary as JSON when stopped.
    #[arg(long)]
    pub(super) json: bool,
}

/// How stored objects are encoded: what `snapshot` and `archive run` share.
#[derive(clap::Args)]
pub(super) struct EncodeArgs {
    /// zstd:LEVEL, zstd or none.
    #[arg(long, default_value = "zstd:3")]
    pub(super) compress: String,
    /// Encrypt to this age recipient (repeat for several).
    #[arg(long = "encrypt-to", value_name = "AGE_RECIPIENT")]
    pub(super) encrypt_to: Vec<String>,
}

impl EncodeArgs {
    /// The options these flags give, each checked.
    pub(super) fn options(&self) -> Result<crate::snapshot::EncodeOptions> {
        Ok(crate::snapshot::EncodeOptions {
            compression: self
                .compress
                .parse()
                .map_err(|e: fleetsnap_core::codec::BadCompression| Error::Input(e.to_string()))?,
            recipients: self
                .encrypt_to
                .iter()
                .map(|r| crate::snapshot::parse_recipient(r))
                .collect::<Result<Vec<_>>>()?,
        })
    }
}
