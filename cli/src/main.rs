//! `fleetsnap`: the operator's command line.

mod args;
mod certs;
mod client;
mod restore;
mod table;

use client::Conn;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand};
use fleetsnap_core::policy::Policy;
use fleetsnap_core::records::{
    BackupSet, Job, JobState, PruneRow, ShardState, StatusDoc, WindowDoc,
};
use fleetsnap_core::retention::SetState;
use fleetsnap_core::window::{JobResult, RegionResult};
use fleetsnap_proto::tls::{PeerIdentity, Role};
use fleetsnap_proto::v1;

use crate::client::Admin;

#[derive(Parser)]
#[command(
    name = "fleetsnap",
    version,
    about = "fleetsnap: fleet status, coordinator membership, jobs and certificates"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// The fleet as the leader sees it: clusters, shards, nodes, offsets, lag, persistence.
    Status {
        /// Only this cluster.
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Continuous archives: who archives each shard, how far behind, what holds one up; the
    /// commands a cluster received (a FLUSHALL to undo), for `fleetsnap restore --before`.
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// The coordinators themselves.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Jobs run by agents.
    #[command(subcommand)]
    Job(JobCmd),
    /// Certificates for a test or demo fleet.
    #[command(subcommand)]
    Certs(CertsCmd),
    /// Backup policies.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Backup windows and the catalog of sets.
    #[command(subcommand)]
    Backup(BackupCmd),
    /// The catalog as a whole.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Restore a set: online into a running server or cluster of any shape, or by replacing the
    /// data of the cluster's own nodes. Regions are read nearest healthy first, falling back on
    /// any error or checksum mismatch. Exit 1 unless every part succeeded.
    Restore(restore::RestoreArgs),
    /// Restore drills: prove sets restorable and measure RTO and the backups' age.
    #[command(subcommand)]
    Drill(restore::DrillCmd),
    /// Tested procedures: each prints its plan, asks before it runs, records its steps in the
    /// replicated state (a new leader carries on) and ends with a check that it worked.
    #[command(subcommand)]
    Runbook(restore::RunbookCmd),
}

#[derive(Subcommand)]
enum ArchiveCmd {
    /// Find commands in a cluster's archive (FLUSHALL, FLUSHDB, DEL, …): when each was
    /// received, on which shard, and the SHARD@REPLID:OFFSET that `fleetsnap restore --before`
    /// takes to stop just before it. An agent reads the regions (one that archives the cluster
    /// when one is connected).
    Find {
        /// The cluster.
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: String,
        /// One shard only (as the archive names it).
        #[arg(long, value_parser = crate::args::shard)]
        shard: Option<String>,
        /// A command name (repeat for several).
        #[arg(long = "command", value_name = "NAME", required = true, value_parser = fleetsnap_core::archive::command_name)]
        commands: Vec<String>,
        /// Only commands with a key (an argument) that matches this glob (`--key` is the
        /// admin certificate's private key).
        #[arg(long = "match", value_name = "PATTERN")]
        pattern: Option<String>,
        /// From this time: RFC 3339 or Unix milliseconds.
        #[arg(long, value_name = "TIME", value_parser = fleetsnap_core::window::parse_time)]
        since: i64,
        /// Up to this time (default: now).
        #[arg(long, value_name = "TIME", value_parser = fleetsnap_core::window::parse_time)]
        until: Option<i64>,
        /// The agent that reads the regions (default: one that archives the cluster).
        #[arg(long, value_parser = crate::args::instance)]
        agent: Option<String>,
        /// How long to wait for the search, in seconds.
        #[arg(long, default_value_t = 600)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every shard a policy archives: its archiver (agent, job, source node), whether it holds
    /// the stream, the lag (the live recovery point), where the chain stands, segments, gaps,
    /// the newest time every region holds, and what holds a shard up.
    Status {
        /// Only this cluster.
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Open a window of a policy now.
    Run {
        /// The policy.
        #[arg(long, value_parser = crate::args::policy)]
        policy: String,
        /// Wait up to this many seconds for every set to reach its final state; exit 1 unless
        /// every set is complete.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The catalog: every set, newest last.
    List {
        /// Only this cluster.
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// Only this policy.
        #[arg(long, value_parser = crate::args::policy)]
        policy: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One window: its shards, the node chosen for each and why, its sets per region.
    Show {
        /// A backup id or a window number.
        #[arg(value_parser = crate::args::set_id)]
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Read a set back in every region where it is complete and check every object against its
    /// manifest (size, sha256, RDB checksum); a region that fails is marked failed. Exit 1 if any
    /// region failed.
    Verify {
        /// CLUSTER/BACKUP_ID, or BACKUP_ID when one cluster has it.
        #[arg(value_parser = crate::args::set_id)]
        id: String,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Copy a set from a region where it is complete to the regions where it is not (degraded
    /// sets are also repaired on their own). Exit 1 unless the set ends complete.
    Repair {
        /// CLUSTER/BACKUP_ID, or BACKUP_ID when one cluster has it.
        #[arg(value_parser = crate::args::set_id)]
        id: String,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the policies' retention now: delete the sets no rule keeps, in every region.
    Prune {
        /// Only this policy.
        #[arg(long, value_parser = crate::args::policy)]
        policy: Option<String>,
        /// Show what would happen; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CatalogCmd {
    /// Rebuild the catalog from the manifests in regions (after losing every coordinator's data
    /// directory, or to adopt sets written elsewhere). Sets already in the catalog gain the
    /// regions where they are found whole.
    Rebuild {
        /// A region to read: REGION=URL (repeat), e.g. a=file:///backups or
        /// b=s3://bucket/prefix?region=eu-west-1. A bare URL names the region after itself.
        #[arg(long = "from", required = true, value_name = "REGION=URL")]
        from: Vec<String>,
        /// The agent that reads them (its credentials are used); default: any connected agent.
        #[arg(long)]
        agent: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Add or replace a policy from a TOML file (one policy: name, clusters, destinations, …).
    Set {
        /// The file (TOML; .json files are read as JSON).
        #[arg(long)]
        file: PathBuf,
    },
    /// One policy.
    Get {
        /// Its name.
        #[arg(value_parser = crate::args::policy)]
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every policy, a line each.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a policy (its backup sets stay).
    Delete {
        /// Its name.
        #[arg(value_parser = crate::args::policy)]
        name: String,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Leader, term, log indexes and members.
    Status {
        /// This coordinator's own view (even a follower's), without going to the leader.
        #[arg(long)]
        local: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a coordinator: first as a learner that catches up, then as a voter.
    AddNode {
        /// Its node id (as in its config).
        id: u64,
        /// Its address (host:port).
        address: String,
    },
    /// Remove a coordinator from the voters.
    RemoveNode {
        /// Its node id.
        id: u64,
    },
}

#[derive(Subcommand)]
enum JobCmd {
    /// Ask one agent to snapshot one of its Redis instances to destinations.
    Snapshot {
        /// The agent.
        #[arg(long)]
        agent: String,
        /// The instance, by its name in the agent's config.
        #[arg(long, value_parser = crate::args::instance)]
        instance: String,
        /// A destination (repeat): file:///PATH or s3://BUCKET/PREFIX?region=R&endpoint=URL.
        #[arg(long = "to", required = true, value_name = "DEST")]
        to: Vec<String>,
        /// Cluster name in the storage layout (default: the instance's cluster).
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// Shard name in the storage layout (default: HOST-PORT).
        #[arg(long, value_parser = crate::args::shard)]
        shard: Option<String>,
        /// zstd:LEVEL or none.
        #[arg(long)]
        compress: Option<String>,
        /// age recipient (repeat).
        #[arg(long = "encrypt-to")]
        encrypt_to: Vec<String>,
        /// replication or bgsave-file.
        #[arg(long)]
        source: Option<String>,
        /// Wait up to this many seconds for the job to end.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A job's state.
    Show {
        /// The job id.
        id: u64,
        /// Wait up to this many seconds for the job to end.
        #[arg(long, value_name = "SECONDS")]
        wait: Option<u64>,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create a CA (or reuse the one in DIR) and certificates for coordinators, agents, admins.
    Init {
        /// Where to write ca.pem, ca.key and ROLE-NAME.pem/.key.
        #[arg(long)]
        dir: PathBuf,
        /// Coordinator node ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        peers: Vec<String>,
        /// Agent ids (comma-separated).
        #[arg(long, value_delimiter = ',')]
        agents: Vec<String>,
        /// Operator names for the CLI (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        admins: Vec<String>,
        /// Replace existing certificates.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Completions { shell } => {
            fleetsnap_proto::manual::completions(Cli::command(), "fleetsnap", shell)
                .context("cannot write the completion script")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            let pages = fleetsnap_proto::manual::man_pages(Cli::command(), &dir)
                .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
            println!("{} man pages written to {}", pages.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Certs(CertsCmd::Init {
            dir,
            peers,
            agents,
            admins,
            force,
        }) => {
            let mut ids = Vec::new();
            for (role, names) in [
                (Role::Peer, &peers),
                (Role::Agent, &agents),
                (Role::Admin, &admins),
            ] {
                for n in names.iter().filter(|n| !n.is_empty()) {
                    if role == Role::Peer && n.parse::<u64>().map_or(true, |v| v == 0) {
                        bail!("--peers takes coordinator node ids (1, 2, …), not {n:?}");
                    }
                    ids.push(PeerIdentity {
                        role,
                        name: n.clone(),
                    });
                }
            }
            for f in certs::init(&dir, &ids, force)? {
                println!("{f}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { cluster, json } => {
            let admin = Admin::new(&cli.conn)?;
            let cluster = cluster.unwrap_or_default();
            let reply = admin
                .call(move |mut c| {
                    let cluster = cluster.clone();
                    async move { c.status(v1::StatusRequest { cluster }).await }
                })
                .await?;
            if json {
                println!("{}", reply.json);
            } else {
                let doc: StatusDoc = read_doc(&reply.json, "status")?;
                print!("{}", table::status(&doc));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Archive(ArchiveCmd::Status { cluster, json }) => {
            let admin = Admin::new(&cli.conn)?;
            let cluster = cluster.unwrap_or_default();
            let reply = admin
                .call(move |mut c| {
                    let cluster = cluster.clone();
                    async move { c.status(v1::StatusRequest { cluster }).await }
                })
                .await?;
            let doc: StatusDoc = read_doc(&reply.json, "status")?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&doc.archives).expect("rows serialise")
                );
            } else {
                print!("{}", table::archives(&doc.archives));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Archive(ArchiveCmd::Find {
            cluster,
            shard,
            commands,
            pattern,
            since,
            until,
            agent,
            wait,
            json,
        }) => {
            let admin = Admin::new(&cli.conn)?;
            let req = v1::FindRequest {
                cluster: cluster.clone(),
                shard: shard.unwrap_or_default(),
                commands,
                key: pattern.unwrap_or_default(),
                since_ms: since,
                until_ms: until.unwrap_or(0),
                agent: agent.unwrap_or_default(),
            };
            let reply = admin
                .call(move |mut c| {
                    let req = req.clone();
                    async move { c.find_in_archive(req).await }
                })
                .await?;
            let Some(&id) = reply.jobs.first() else {
                return Err(anyhow::anyhow!("the leader started no search"));
            };
            let job = wait_job(&admin, id, wait).await?;
            if let Some(reason) = job.state.failure() {
                return Err(anyhow::anyhow!(
                    "archive find failed on agent {}: {reason}",
                    job.agent
                ));
            }
            let Some(JobResult::Found { report_json }) = job.state.result() else {
                return Err(anyhow::anyhow!(
                    "job {id} ended without a search result; see `fleetsnap job show {id}`"
                ));
            };
            let found: Vec<serde_json::Value> = serde_json::from_str(report_json).map_err(|e| {
                anyhow::anyhow!(
                    "agent {} sent a search result that is not JSON ({e})",
                    job.agent
                )
            })?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&found).expect("values serialise")
                );
            } else {
                print!("{}", table::found(&cluster, &found));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster(c) => {
            let admin = Admin::new(&cli.conn)?;
            let (reply, json) = match c {
                ClusterCmd::Status { local, json } => {
                    let r = if local {
                        admin
                            .call_first(move |mut c| async move {
                                c.cluster_status(v1::ClusterStatusRequest { local: true })
                                    .await
                            })
                            .await?
                    } else {
                        admin
                            .call(move |mut c| async move {
                                c.cluster_status(v1::ClusterStatusRequest { local: false })
                                    .await
                            })
                            .await?
                    };
                    (r, json)
                }
                ClusterCmd::AddNode { id, address } => (
                    admin
                        .call(move |mut c| {
                            let address = address.clone();
                            async move { c.add_node(v1::AddNodeRequest { id, address }).await }
                        })
                        .await?,
                    false,
                ),
                ClusterCmd::RemoveNode { id } => (
                    admin
                        .call(move |mut c| async move {
                            c.remove_node(v1::RemoveNodeRequest { id }).await
                        })
                        .await?,
                    false,
                ),
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&table::cluster_json(&reply))?
                );
            } else {
                print!("{}", table::cluster(&reply));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Job(JobCmd::Snapshot {
            agent,
            instance,
            to,
            cluster,
            shard,
            compress,
            encrypt_to,
            source,
            wait,
            json,
        }) => {
            let admin = Admin::new(&cli.conn)?;
            let req = v1::SubmitJobRequest {
                agent_id: agent,
                instance,
                destinations: to,
                cluster: cluster.unwrap_or_default(),
                shard: shard.unwrap_or_default(),
                compress: compress.unwrap_or_default(),
                encrypt_to,
                source: source.unwrap_or_default(),
            };
            let r = admin
                .call(move |mut c| {
                    let req = req.clone();
                    async move { c.submit_job(req).await }
                })
                .await?;
            if !json {
                println!(
                    "job {} created (term {}, index {})",
                    r.job_id, r.term, r.index
                );
            }
            match wait {
                Some(secs) => show_job(&admin, r.job_id, Some(secs)).await,
                None => {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"job": r.job_id, "term": r.term, "index": r.index})
                        );
                    }
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        Command::Job(JobCmd::Show { id, wait }) => {
            let admin = Admin::new(&cli.conn)?;
            show_job(&admin, id, wait).await
        }
        Command::Policy(p) => policy(&cli.conn, p).await,
        Command::Backup(b) => backup(&cli.conn, b).await,
        Command::Catalog(c) => catalog(&cli.conn, c).await,
        Command::Restore(r) => restore::restore(&cli.conn, r).await,
        Command::Drill(d) => restore::drill(&cli.conn, d).await,
        Command::Runbook(r) => restore::runbook(&cli.conn, r).await,
    }
}

/// A spinner on stderr while the CLI waits on the fleet: only on a terminal, never with `--json`.
pub(crate) fn spinner(json: bool) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .expect("valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    })
}

/// A document the coordinator sent, read into its type; the error names the document and what
/// to do when the CLI and the coordinator disagree on its shape.
pub(crate) fn read_doc<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| {
        anyhow!(
            "the coordinator's {what} does not parse ({e}); run a fleetsnap CLI of the coordinators' version"
        )
    })
}

/// A job as the coordinator has it.
async fn get_job(admin: &Admin, id: u64) -> Result<(Job, String)> {
    let r = admin
        .call(move |mut c| async move { c.get_job(v1::GetJobRequest { job_id: id }).await })
        .await?;
    Ok((read_doc(&r.json, &format!("job {id}"))?, r.json))
}

/// Follows a job until it ends or `secs` pass.
async fn wait_job(admin: &Admin, id: u64, secs: u64) -> Result<Job> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (job, _) = get_job(admin, id).await?;
        if matches!(job.state, JobState::Done(_)) {
            return Ok(job);
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "job {id} has not ended after {secs} s; follow it with `fleetsnap job show {id}`"
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A catalog job's per-region results (none: it failed or sent none).
fn job_regions(job: &Job) -> &[RegionResult] {
    match job.state.result() {
        Some(JobResult::Regions { regions } | JobResult::Manifest { regions, .. }) => regions,
        _ => &[],
    }
}

/// Whether a catalog job succeeded and reported every region ok (no per-region results: no).
fn regions_ok(job: &Job) -> bool {
    matches!(
        job.state.result(),
        Some(JobResult::Regions { .. } | JobResult::Manifest { .. })
    ) && job_regions(job).iter().all(|r| r.ok)
}

/// The per-region results of a catalog job, printed; whether every region succeeded.
fn print_regions(what: &str, job: &Job) -> bool {
    if let Some(reason) = job.state.failure() {
        println!("{what} failed: {reason}");
        return false;
    }
    let mut all = true;
    for r in job_regions(job) {
        all &= r.ok;
        println!(
            "{:<12} {:<7} {}",
            r.region,
            if r.ok { "ok" } else { "failed" },
            if r.ok {
                format!("{} bytes", r.stored_bytes)
            } else {
                r.error.clone().unwrap_or_else(|| "-".into())
            }
        );
    }
    all
}

async fn catalog_reply(admin: &Admin, id: String, verify: bool) -> Result<v1::CatalogReply> {
    admin
        .call(move |mut c| {
            let set = id.clone();
            async move {
                let req = v1::CatalogRequest { set };
                if verify {
                    c.verify_backup(req).await
                } else {
                    c.repair_backup(req).await
                }
            }
        })
        .await
}

async fn list_sets(admin: &Admin) -> Result<Vec<BackupSet>> {
    let r = admin
        .call(move |mut c| async move { c.list_backups(v1::ListBackupsRequest::default()).await })
        .await?;
    read_doc(&r.json, "list of backup sets")
}

async fn catalog(conn: &Conn, cmd: CatalogCmd) -> Result<ExitCode> {
    let admin = Admin::new(conn)?;
    let CatalogCmd::Rebuild {
        from,
        agent,
        wait,
        json,
    } = cmd;
    let req = v1::RebuildCatalogRequest {
        regions: from,
        agent: agent.unwrap_or_default(),
    };
    let r = admin
        .call(move |mut c| {
            let req = req.clone();
            async move { c.rebuild_catalog(req).await }
        })
        .await?;
    let job = wait_job(&admin, r.jobs[0], wait).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&job)?);
    }
    if let Some(reason) = job.state.failure() {
        eprintln!("the scan by agent {:?} failed: {reason}", r.agent);
        return Ok(ExitCode::from(1));
    }
    let (found, errors) = match job.state.result() {
        Some(JobResult::Scanned { found, errors }) => (found.as_slice(), errors.as_slice()),
        _ => (&[][..], &[][..]),
    };
    if !json {
        println!(
            "agent {} read {} manifest(s); the catalog now holds:",
            r.agent,
            found.len()
        );
        print!("{}", table::sets(&list_sets(&admin).await?));
        for e in errors {
            eprintln!(
                "region {} could not be read: {}",
                e.region,
                e.error.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn show_window(admin: &Admin, id: String) -> Result<WindowDoc> {
    let what = format!("window {id}");
    let r = admin
        .call(move |mut c| {
            let id = id.clone();
            async move { c.show_backup(v1::ShowBackupRequest { id }).await }
        })
        .await?;
    read_doc(&r.json, &what)
}

async fn backup(conn: &Conn, cmd: BackupCmd) -> Result<ExitCode> {
    let admin = Admin::new(conn)?;
    match cmd {
        BackupCmd::Run { policy, wait, json } => {
            let p = policy.clone();
            let r = admin
                .call(move |mut c| {
                    let policy = p.clone();
                    async move { c.run_backup(v1::RunBackupRequest { policy }).await }
                })
                .await?;
            if !json {
                println!(
                    "window {} of policy {policy:?} opened: backup {}",
                    r.window, r.backup_id
                );
            }
            let Some(secs) = wait else {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"window": r.window, "backup_id": r.backup_id})
                    );
                }
                return Ok(ExitCode::SUCCESS);
            };
            let deadline = Instant::now() + Duration::from_secs(secs);
            let bar = spinner(json);
            let doc = loop {
                let doc = show_window(&admin, r.window.to_string()).await?;
                if doc.done || Instant::now() >= deadline {
                    break doc;
                }
                if let Some(bar) = &bar {
                    let shards = &doc.shards;
                    let stored = shards
                        .iter()
                        .filter(|s| matches!(s.state, ShardState::Stored(_)))
                        .count();
                    bar.set_message(format!(
                        "window {}: {stored} of {} shards stored",
                        r.window,
                        shards.len()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            };
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", table::window(&doc));
            }
            if !doc.done {
                eprintln!("window {} has not ended after {secs} s", r.window);
                return Ok(ExitCode::from(1));
            }
            let all_complete =
                !doc.sets.is_empty() && doc.sets.iter().all(|s| s.state == SetState::Complete);
            Ok(if all_complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        BackupCmd::List {
            cluster,
            policy,
            json,
        } => {
            let req = v1::ListBackupsRequest {
                cluster: cluster.unwrap_or_default(),
                policy: policy.unwrap_or_default(),
            };
            let r = admin
                .call(move |mut c| {
                    let req = req.clone();
                    async move { c.list_backups(req).await }
                })
                .await?;
            if json {
                println!("{}", r.json);
            } else {
                let sets: Vec<BackupSet> = read_doc(&r.json, "list of backup sets")?;
                print!("{}", table::sets(&sets));
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCmd::Verify { id, wait, json } => {
            let r = catalog_reply(&admin, id.clone(), true).await?;
            let job = wait_job(&admin, r.jobs[0], wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&job)?);
                return Ok(exit(regions_ok(&job)));
            }
            Ok(exit(print_regions(&format!("verifying {id}"), &job)))
        }
        BackupCmd::Repair { id, wait, json } => {
            let r = catalog_reply(&admin, id.clone(), false).await?;
            let job = wait_job(&admin, r.jobs[0], wait).await?;
            let sets = list_sets(&admin).await?;
            let set = sets
                .into_iter()
                .find(|s| s.backup_id.as_str() == id || s.key() == id);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"job": job, "set": set}))?
                );
            } else {
                print_regions(&format!("repairing {id}"), &job);
                println!(
                    "set {id} is now {}",
                    set.as_ref().map_or("-", |s| s.state.as_str())
                );
            }
            Ok(exit(set.is_some_and(|s| s.state == SetState::Complete)))
        }
        BackupCmd::Prune {
            policy,
            dry_run,
            json,
        } => {
            let req = v1::PruneRequest {
                policy: policy.unwrap_or_default(),
                dry_run,
            };
            let r = admin
                .call(move |mut c| {
                    let req = req.clone();
                    async move { c.prune(req).await }
                })
                .await?;
            if json {
                println!("{}", r.json);
            } else {
                let rows: Vec<PruneRow> = read_doc(&r.json, "retention decisions")?;
                print!("{}", table::prune(&rows, dry_run));
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupCmd::Show { id, json } => {
            let doc = show_window(&admin, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", table::window(&doc));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn policy(conn: &Conn, cmd: PolicyCmd) -> Result<ExitCode> {
    let admin = Admin::new(conn)?;
    match cmd {
        PolicyCmd::Set { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the policy file {}", file.display()))?;
            let policy: Policy = if file.extension().is_some_and(|e| e == "json") {
                serde_json::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?
            } else {
                toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?
            };
            policy.validate()?;
            let policy_json = serde_json::to_string(&policy)?;
            admin
                .call(move |mut c| {
                    let policy_json = policy_json.clone();
                    async move { c.set_policy(v1::SetPolicyRequest { policy_json }).await }
                })
                .await?;
            println!("policy {:?} set", policy.name);
        }
        PolicyCmd::Get { name, json } => {
            let r = admin
                .call(move |mut c| {
                    let name = name.clone();
                    async move { c.get_policy(v1::GetPolicyRequest { name }).await }
                })
                .await?;
            let p: Policy = serde_json::from_str(&r.policy_json)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
            } else {
                print!("{}", toml::to_string(&p)?);
            }
        }
        PolicyCmd::List { json } => {
            let r = admin
                .call(move |mut c| async move { c.list_policies(v1::ListPoliciesRequest {}).await })
                .await?;
            let policies = r
                .policy_json
                .iter()
                .map(|j| serde_json::from_str::<Policy>(j))
                .collect::<Result<Vec<_>, _>>()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&policies)?);
            } else {
                print!("{}", table::policies(&policies));
            }
        }
        PolicyCmd::Delete { name } => {
            let n = name.clone();
            admin
                .call(move |mut c| {
                    let name = n.clone();
                    async move { c.delete_policy(v1::GetPolicyRequest { name }).await }
                })
                .await?;
            println!("policy {name:?} deleted");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints a job as JSON, after waiting for it to end when asked; exit 1 when it failed.
fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

async fn show_job(admin: &Admin, id: u64, wait: Option<u64>) -> Result<ExitCode> {
    let deadline = Instant::now() + Duration::from_secs(wait.unwrap_or(0));
    loop {
        let (job, text) = get_job(admin, id).await?;
        let state = job.state.as_str();
        if state == "done" || wait.is_none() || Instant::now() >= deadline {
            println!("{text}");
            if wait.is_some() && state != "done" {
                eprintln!("job {id} is still {state} after {} s", wait.unwrap_or(0));
                return Ok(ExitCode::from(1));
            }
            let failed = job.state.failure().is_some();
            return Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
