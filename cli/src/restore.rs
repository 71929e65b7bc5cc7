//! `fleetsnap restore` and `fleetsnap drill`: the leader picks the set and its regions, agents do
//! the work, and this follows their jobs to the end.

use fleetsnap_core::outcomes::{DrillReport, OnlineRestoreReport, ReplaceReport, RestoreReport};
use fleetsnap_core::records::{DrillRow, Runbook, RunbookState};
use fleetsnap_core::window::JobResult;
use serde::Serialize;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use fleetsnap_proto::v1;

use crate::client::Admin;
use crate::{Conn, wait_job};

#[derive(Args)]
pub struct RestoreArgs {
    /// The set: CLUSTER/BACKUP_ID, or BACKUP_ID when one cluster has it. Omit it and give
    /// --cluster for the cluster's latest set (at or before --at).
    #[arg(value_parser = crate::args::set_id)]
    pub id: Option<String>,
    /// The cluster whose latest set complete in some region is restored.
    #[arg(long, required_unless_present = "id", value_parser = crate::args::cluster)]
    pub cluster: Option<String>,
    /// With --cluster: this time (RFC 3339, e.g. 2026-11-21T03:14:07Z). A cluster a policy
    /// archives is restored to that second from its continuous archive (each shard to the last
    /// command received at or before it); any other, to its latest set taken at or before it.
    #[arg(long, value_name = "TIME", requires = "cluster", conflicts_with = "id")]
    pub at: Option<String>,
    /// With --at: every shard to the archive's latest exact point at or before the time (one
    /// instant of the whole cluster).
    #[arg(long, requires = "at")]
    pub exact: bool,
    /// Instead of --at: just before a command `fleetsnap-agent archive find` found, as it prints
    /// it (SHARD@REPLID:OFFSET); one per shard for the whole cluster.
    #[arg(long, value_name = "SHARD@REPLID:OFFSET", requires = "cluster", conflicts_with_all = ["id", "at"])]
    pub before: Vec<String>,
    /// online: key by key into a running server or cluster of any shape (--target); replace:
    /// each shard's current primary is stopped, given the backup and started again, by the
    /// agent beside it (its instance needs a start_command).
    #[arg(long, value_parser = ["online", "replace"])]
    pub mode: String,
    /// online: the target, redis://HOST:PORT (a password only as ?password_file=PATH on the
    /// agent's host: the URL is kept in the coordinators' log).
    #[arg(long, value_name = "URL", required_if_eq("mode", "online"))]
    pub target: Option<String>,
    /// online: overwrite keys that exist in the target (else they are left and reported, and
    /// the exit code is 1).
    #[arg(long)]
    pub replace_existing: bool,
    /// Only this shard of the set.
    #[arg(long, value_parser = crate::args::shard)]
    pub shard: Option<String>,
    /// online: only this logical database.
    #[arg(long)]
    pub db: Option<u64>,
    /// online: only keys matching this glob.
    #[arg(long = "match", value_name = "PATTERN")]
    pub pattern: Option<String>,
    /// online: the agent that restores (default: one of the agents that took the set).
    #[arg(long)]
    pub agent: Option<String>,
    /// Give up waiting after this many seconds (the jobs go on; `fleetsnap job show` follows
    /// them).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub wait: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum DrillCmd {
    /// Drill a cluster's latest set now: each shard is loaded into a scratch redis-server by an
    /// agent with a [drill] section, checked against the manifest, and removed. Exit 1 if any
    /// shard fails.
    Run {
        /// The cluster.
        #[arg(long, required_unless_present = "id", value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// A set instead of the latest: CLUSTER/BACKUP_ID.
        #[arg(long, value_parser = crate::args::set_id)]
        id: Option<String>,
        /// Only this shard.
        #[arg(long, value_parser = crate::args::shard)]
        shard: Option<String>,
        /// The agent that runs the scratch servers (default: the one that took each shard).
        #[arg(long)]
        agent: Option<String>,
        /// Give up waiting after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every drill and how it went.
    List {
        /// Only this cluster.
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(text: &str) -> Result<i64> {
    fleetsnap_core::window::parse_time(text).map_err(|e| anyhow!("--at {e}"))
}

/// A restore's or a drill's job as it ended: what `--json` prints of it.
#[derive(Serialize)]
struct Followed {
    agent: String,
    job: u64,
    ok: bool,
    problem: Option<String>,
    /// The agent's report as it sent it (none: `null`).
    report: serde_json::Value,
}

impl Followed {
    /// The report as `T`, when the agent sent one of that shape.
    fn report<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        serde_json::from_value(self.report.clone()).ok()
    }
}

/// Follows jobs to their end: each, and whether every one succeeded with `ok`.
async fn follow(admin: &Admin, jobs: &[u64], secs: u64) -> Result<(Vec<Followed>, bool)> {
    let mut out = Vec::new();
    let mut all = true;
    for &id in jobs {
        let job = wait_job(admin, id, secs).await?;
        let (ok, problem, report) = match job.state.result() {
            Some(JobResult::Restored {
                ok,
                problem,
                report_json,
            }) => (
                *ok,
                problem.clone(),
                serde_json::from_str(report_json).unwrap_or(serde_json::Value::Null),
            ),
            _ => (false, None, serde_json::Value::Null),
        };
        let ok = ok && job.state.failure().is_none();
        all &= ok;
        out.push(Followed {
            job: id,
            agent: job.agent.clone(),
            ok,
            problem: job.state.failure().map(str::to_string).or(problem),
            report,
        });
    }
    Ok((out, all))
}

pub async fn restore(conn: &Conn, a: RestoreArgs) -> Result<ExitCode> {
    let admin = Admin::new(conn)?;
    let req = v1::RestoreRequest {
        set: a.id.unwrap_or_default(),
        cluster: a.cluster.unwrap_or_default(),
        at_ms: a.at.as_deref().map(parse_time).transpose()?.unwrap_or(0),
        mode: a.mode.clone(),
        target: a.target.unwrap_or_default(),
        replace_existing: a.replace_existing,
        shard: a.shard.unwrap_or_default(),
        db: a.db,
        pattern: a.pattern.unwrap_or_default(),
        agent: a.agent.unwrap_or_default(),
        exact: a.exact,
        before: a.before.clone(),
    };
    let r = admin
        .call(move |mut c| {
            let req = req.clone();
            async move { c.restore(req).await }
        })
        .await?;
    if !a.json {
        eprintln!(
            "restore ({}) started: job(s) {:?} on agent(s) {}",
            a.mode, r.jobs, r.agent
        );
    }
    let (jobs, all) = follow(&admin, &r.jobs, a.wait).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&jobs)?);
    } else {
        for j in &jobs {
            print_restore(j, &a.mode);
        }
    }
    Ok(crate::exit(all))
}

/// Where a shard was read from, and the regions skipped before it.
fn read_from(read: &RestoreReport) -> String {
    if read.skipped.is_empty() {
        read.destination.clone()
    } else {
        let skipped: Vec<String> = read
            .skipped
            .iter()
            .map(|(region, why)| format!("{region} ({why})"))
            .collect();
        format!("{} after {}", read.destination, skipped.join(", "))
    }
}

fn print_restore(j: &Followed, mode: &str) {
    if let Some(problem) = &j.problem {
        println!("job {} on {}: FAILED: {problem}", j.job, j.agent);
    }
    // From the archive: each shard with the point its time resolved to.
    if let Some(shards) = j.report.get("shards").and_then(|s| s.as_array())
        && j.report.get("stamp_spread_ms").is_some()
    {
        for s in shards {
            let p = &s["point_in_time"];
            println!(
                "shard {:<16} to offset {} of {} (last command received {}), {} keys, {} tail commands",
                s["shard"].as_str().unwrap_or("?"),
                p["offset"],
                p["replid"].as_str().unwrap_or("?"),
                p["stamp_ms"]
                    .as_i64()
                    .map_or("-".into(), |t| fleetsnap_core::window::from_unix_ms(t)
                        .to_string()),
                s["restore"]["keys"],
                p["tail_commands"]
            );
        }
        println!(
            "the spread of the shards' last commands' stamps is {} ms",
            j.report["stamp_spread_ms"]
        );
        return;
    }
    if let Some(p) = j.report.get("point_in_time") {
        println!(
            "to offset {} of {} (last command received at {} ms), {} tail commands",
            p["offset"],
            p["replid"].as_str().unwrap_or("?"),
            p["stamp_ms"],
            p["tail_commands"]
        );
    }
    if mode == "online" {
        let Some(r) = j.report::<OnlineRestoreReport>() else {
            return;
        };
        for s in &r.shards {
            let o = &s.applied;
            println!(
                "shard {:<16} from {}: {} keys into {} ({} filtered, {} expired, {} conflicts), {} tail commands",
                s.read.shard,
                read_from(&s.read),
                o.keys,
                o.target,
                o.filtered,
                o.expired,
                o.conflicts,
                o.tail_commands
            );
        }
        println!(
            "{} keys, {} RDB bytes in {:.1}s",
            r.keys, r.rdb_bytes, r.seconds
        );
    } else if let Some(r) = j.report::<ReplaceReport>().or_else(|| {
        j.report
            .get("replace")
            .and_then(|r| serde_json::from_value(r.clone()).ok())
    }) {
        println!(
            "shard {} from {}: node {} replaced, {} keys loaded ({} in the backup), offset {}, {} tail commands; down {:.1}s, {:.1}s in all",
            r.read.shard,
            read_from(&r.read),
            r.node,
            r.keys_loaded,
            r.keys_in_backup,
            r.offset.map_or("-".into(), |o| o.to_string()),
            r.tail_commands,
            r.down_seconds,
            r.seconds
        );
    }
}

pub async fn drill(conn: &Conn, cmd: DrillCmd) -> Result<ExitCode> {
    let admin = Admin::new(conn)?;
    match cmd {
        DrillCmd::Run {
            cluster,
            id,
            shard,
            agent,
            wait,
            json,
        } => {
            let req = v1::DrillRequest {
                cluster: cluster.unwrap_or_default(),
                set: id.unwrap_or_default(),
                shard: shard.unwrap_or_default(),
                agent: agent.unwrap_or_default(),
            };
            let r = admin
                .call(move |mut c| {
                    let req = req.clone();
                    async move { c.run_drill(req).await }
                })
                .await?;
            let (jobs, all) = follow(&admin, &r.jobs, wait).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                for j in &jobs {
                    print_drill(j);
                }
            }
            if !all {
                eprintln!("error: the drill FAILED: the backup did not restore as recorded");
            }
            Ok(crate::exit(all))
        }
        DrillCmd::List { cluster, json } => {
            let cluster = cluster.unwrap_or_default();
            let r = admin
                .call(move |mut c| {
                    let cluster = cluster.clone();
                    async move {
                        c.list_drills(v1::ListBackupsRequest {
                            cluster,
                            policy: String::new(),
                        })
                        .await
                    }
                })
                .await?;
            let drills: Vec<DrillRow> = crate::read_doc(&r.json, "list of drills")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&drills)?);
            } else {
                println!(
                    "{:<6} {:<10} {:<24} {:<18} {:<8} {:>8} {:>9}  PROBLEM",
                    "JOB", "CLUSTER", "BACKUP", "SHARD", "STATE", "RTO", "RPO"
                );
                let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.1}s"));
                for d in &drills {
                    println!(
                        "{:<6} {:<10} {:<24} {:<18} {:<8} {:>8} {:>9}  {}",
                        d.job,
                        d.cluster.as_str(),
                        d.backup_id.as_str(),
                        d.shard.as_deref().unwrap_or("-"),
                        d.state,
                        secs(d.report.as_ref().map(|r| r.rto_seconds)),
                        secs(d.report.as_ref().and_then(|r| r.rpo_seconds)),
                        d.problem.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print_drill(j: &Followed) {
    match j.report::<DrillReport>() {
        Some(r) => print!("{}", r.text()),
        None => println!(
            "job {} on {}: FAILED: {}",
            j.job,
            j.agent,
            j.problem.as_deref().unwrap_or("-")
        ),
    }
}

#[derive(Args)]
pub struct RunbookCommon {
    /// Print the plan and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Run without asking (needed when standard input is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Give up following it after this many seconds (it goes on; `fleetsnap runbook show ID`).
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub wait: u64,
    /// Print JSON (the runbook as it ended).
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum RunbookCmd {
    /// Promote a replica of a shard. Graceful when the primary is alive: its writes are paused
    /// until the replica has every one of them, so no acknowledged write is lost. Forced when it
    /// is dead: the replica with the highest offset is promoted and the bytes of replication
    /// lost are reported.
    Failover {
        /// The cluster.
        #[arg(long, value_parser = crate::args::cluster)]
        cluster: String,
        /// The shard, as `fleetsnap status` shows it (a dead primary: its instance name or
        /// host:port).
        #[arg(long, value_parser = crate::args::fleet_shard)]
        shard: String,
        /// The replica to promote (instance name or host:port); default: the freshest.
        #[arg(long)]
        to: Option<String>,
        /// How long writes may stay paused while the replica catches up (milliseconds).
        #[arg(long, default_value_t = 5000)]
        pause_ms: u64,
        #[command(flatten)]
        common: RunbookCommon,
    },
    /// Build a new cluster from a backup set: check that the target (standalone, or a Redis
    /// Cluster of any shape with every slot served) is empty, restore every shard of the set into
    /// it key by key with its consistent cut's tails, and check it serves the keys restored.
    RestoreCluster {
        /// The set: CLUSTER/BACKUP_ID (default: the latest of --cluster).
        #[arg(long, value_parser = crate::args::set_id)]
        set: Option<String>,
        /// The cluster whose latest set complete in some region is restored.
        #[arg(long, required_unless_present = "set", value_parser = crate::args::cluster)]
        cluster: Option<String>,
        /// With --cluster: the latest set taken at or before this time (RFC 3339, e.g.
        /// 2026-11-21T03:00:00Z).
        #[arg(
            long,
            value_name = "TIME",
            requires = "cluster",
            conflicts_with = "set"
        )]
        at: Option<String>,
        /// With --at, of a cluster a policy archives: the latest exact point at or before it.
        #[arg(long, requires = "at")]
        exact: bool,
        /// Of a cluster a policy archives: each shard to just before a command `fleetsnap
        /// archive find` found (SHARD@REPLID:OFFSET; repeat, one per shard).
        #[arg(long, value_name = "SHARD@REPLID:OFFSET", requires = "cluster", conflicts_with_all = ["at", "set"])]
        before: Vec<String>,
        /// The new cluster (any node of it): redis://HOST:PORT[?password_file=PATH].
        #[arg(long)]
        target: String,
        /// The agent that restores (default: one that took the set).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        common: RunbookCommon,
    },
    /// After losing a region: find every cluster's newest set complete elsewhere (and say which
    /// newer sets went with the region), copy each into a standby region, switch every policy
    /// from the lost region to the standby, and check the standby holds them.
    RegionLoss {
        /// The region lost, as the policies name it.
        #[arg(long)]
        region: String,
        /// The region taking its place: NAME=URL (file:///PATH or s3://BUCKET[/PREFIX]?…).
        #[arg(long, value_name = "NAME=URL")]
        standby: String,
        #[command(flatten)]
        common: RunbookCommon,
    },
    /// Rebuild the catalog of a fresh coordinator cluster from the regions' manifests alone.
    RebuildCoordinator {
        /// A region to read: REGION=URL (repeat).
        #[arg(long = "from", required = true, value_name = "REGION=URL")]
        from: Vec<String>,
        /// The agent that reads them (default: any connected agent).
        #[arg(long)]
        agent: Option<String>,
        #[command(flatten)]
        common: RunbookCommon,
    },
    /// A runbook and its steps.
    Show {
        /// The runbook id.
        id: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn print_runbook(r: &Runbook) {
    println!("runbook {} {}: {}", r.id, r.args, r.state.as_str());
    for (i, s) in r.steps.iter().enumerate() {
        let mark = match s.ok {
            Some(true) => "done",
            Some(false) => "FAILED",
            None => "-",
        };
        println!("  {}. [{mark}] {}", i + 1, s.title);
        if let Some(o) = &s.outcome {
            println!("       {}", o.chars().take(400).collect::<String>());
        }
    }
    for (k, v) in &r.findings {
        println!("  {k}: {v}");
    }
    if let RunbookState::Failed { reason } = &r.state {
        println!("  {reason}");
    }
}

pub async fn runbook(conn: &Conn, cmd: RunbookCmd) -> Result<ExitCode> {
    let admin = Admin::new(conn)?;
    let (req, common) = match cmd {
        RunbookCmd::Show { id, json } => {
            let r =
                admin
                    .call(move |mut c| async move {
                        c.get_runbook(v1::GetJobRequest { job_id: id }).await
                    })
                    .await?;
            if json {
                println!("{}", r.json);
            } else {
                print_runbook(&crate::read_doc(&r.json, &format!("runbook {id}"))?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        RunbookCmd::Failover {
            cluster,
            shard,
            to,
            pause_ms,
            common,
        } => (
            v1::RunbookRequest {
                name: "failover".into(),
                cluster,
                shard,
                to: to.unwrap_or_default(),
                pause_ms,
                ..Default::default()
            },
            common,
        ),
        RunbookCmd::RestoreCluster {
            set,
            cluster,
            at,
            exact,
            before,
            target,
            agent,
            common,
        } => (
            v1::RunbookRequest {
                name: "restore-cluster".into(),
                set: set.unwrap_or_default(),
                cluster: cluster.unwrap_or_default(),
                at_ms: at.as_deref().map(parse_time).transpose()?.unwrap_or(0),
                exact,
                before,
                target,
                agent: agent.unwrap_or_default(),
                ..Default::default()
            },
            common,
        ),
        RunbookCmd::RegionLoss {
            region,
            standby,
            common,
        } => (
            v1::RunbookRequest {
                name: "region-loss".into(),
                region,
                standby,
                ..Default::default()
            },
            common,
        ),
        RunbookCmd::RebuildCoordinator {
            from,
            agent,
            common,
        } => (
            v1::RunbookRequest {
                name: "rebuild-coordinator".into(),
                regions: from,
                agent: agent.unwrap_or_default(),
                ..Default::default()
            },
            common,
        ),
    };
    let ask = |dry_run: bool| {
        let mut req = req.clone();
        req.dry_run = dry_run;
        let admin = &admin;
        async move {
            let r = admin
                .call(move |mut c| {
                    let req = req.clone();
                    async move { c.start_runbook(req).await }
                })
                .await?;
            crate::read_doc::<Runbook>(&r.json, "runbook")
        }
    };
    let plan = ask(true).await?;
    if common.dry_run || !common.json {
        println!("plan:");
        for (i, s) in plan.steps.iter().enumerate() {
            println!("  {}. {}", i + 1, s.title);
        }
    }
    if common.dry_run {
        if common.json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if !common.yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            return Err(anyhow!(
                "standard input is not a terminal: review the plan (--dry-run) and pass --yes to run it"
            ));
        }
        print!("run this plan? type yes: ");
        std::io::stdout().flush().ok();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != "yes" {
            eprintln!("not run");
            return Ok(ExitCode::from(1));
        }
    }
    let started = ask(false).await?;
    let id = started.id;
    if !common.json {
        eprintln!("runbook {id} started");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(common.wait);
    let bar = crate::spinner(common.json);
    loop {
        let r = admin
            .call(move |mut c| async move { c.get_runbook(v1::GetJobRequest { job_id: id }).await })
            .await?;
        let doc: Runbook = crate::read_doc(&r.json, &format!("runbook {id}"))?;
        let state = doc.state.as_str();
        if let Some(bar) = &bar {
            let steps = doc.steps.len();
            let next = doc.next + 1;
            bar.set_message(format!("runbook {id}: step {next} of {steps}"));
        }
        if state != "running" || std::time::Instant::now() >= deadline {
            if let Some(bar) = &bar {
                bar.finish_and_clear();
            }
            if common.json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print_runbook(&doc);
            }
            if state == "running" {
                eprintln!(
                    "runbook {id} still running after {} s; `fleetsnap runbook show {id}` follows it",
                    common.wait
                );
            }
            return Ok(crate::exit(state == "succeeded"));
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}
