//! The control plane at scale: N agents (the agent's own session code, each with its own TCP
//! connection, mutual TLS and Session stream, 2 Redis instances, 1 report per second; only the
//! reports are made up instead of polled) against a real 3-node coordinator on this machine.
//! Prints, per N: leader CPU and RSS, report-to-visible latency p50/p99, and the time until every
//! agent reports to a new leader after the leader is SIGKILLed.
//!
//! Every agent keeps a connection to each of the three coordinators, and a process may hold
//! 20,000 files here, so the agents run in child processes of this binary, 5,000 to a child.
//!
//!   scripts/bench.sh fleet [--agents 1000,5000,10000] [--window 15]

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fleetsnap_agent::config::{AgentConfig, SnapshotSettings};
use fleetsnap_agent::daemon::run_with_reports;
use fleetsnap_core::{InstanceReport, Role};
use fleetsnap_proto::tls::{Role as CertRole, TlsFiles, Transport};
use fleetsnap_proto::v1::{self, admin_service_client::AdminServiceClient};
use fleetsnap_testkit::fleet::{Coordinator, CoordinatorOptions, FleetDir};
use tokio::sync::watch;
use tonic::transport::Channel;

#[derive(Parser)]
struct Args {
    /// Fleet sizes to run.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    agents: Vec<usize>,
    /// Seconds of steady reporting measured per size.
    #[arg(long, default_value_t = 15)]
    window: u64,
    /// (Internal) run agents FIRST..LAST of the fleet in CERTS against these coordinators.
    #[arg(long, hide = true, num_args = 2, value_names = ["FIRST", "LAST"])]
    child_agents: Vec<usize>,
    #[arg(long, hide = true)]
    certs: Option<std::path::PathBuf>,
    #[arg(long, hide = true, value_delimiter = ',')]
    coordinators: Vec<String>,
}

/// Agents per child process: three connections each stay well under 20,000 files.
const AGENTS_PER_CHILD: usize = 5000;

/// A child: runs its slice of agents until the parent goes away.
fn child(args: &Args) -> Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG only sets a signal for this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let (first, last) = (args.child_agents[0], args.child_agents[1]);
    // FLEETSNAP_SIM_AGENT_LOG=FILE: the agents' log lines (info and up), for a run that needs
    // explaining; each child appends to FILE.FIRST.
    if let Ok(path) = std::env::var("FLEETSNAP_SIM_AGENT_LOG") {
        let file = std::fs::File::create(format!("{path}.{first}"))?;
        tracing_subscriber::fmt()
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .init();
    }
    let certs = args.certs.clone().context("--certs")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut agents = Vec::new();
        for i in first..last {
            let agent_id = format!("sim-{i}");
            let files = TlsFiles::in_dir(&certs, CertRole::Agent, &agent_id);
            let transport = Transport::Tls(files.load().map_err(anyhow::Error::msg)?);
            let config = AgentConfig {
                agent_id,
                coordinators: args.coordinators.clone(),
                tls: None,
                // Each agent from an address of its own, as hosts are: coordinators limit
                // unfinished handshakes per address.
                source_address: Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                    127,
                    1 + (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8,
                ))),
                report_interval_ms: 1000,
                instances: Vec::new(),
                snapshot: SnapshotSettings::default(),
                restore: Default::default(),
                drill: None,
                telemetry: Default::default(),
            };
            let (keep, reports) = watch::channel(vec![instance(i, 0), instance(i, 1)]);
            let span = tracing::info_span!("agent", id = %config.agent_id);
            agents.push(tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let _keep = keep;
                    run_with_reports(config, transport, reports).await
                },
                span,
            )));
        }
        for a in agents {
            let _ = a.await;
        }
        Ok(())
    })
}

/// Child processes running agents 0..n, killed when dropped.
struct Children(Vec<std::process::Child>);

impl Children {
    fn start(n: usize, certs: &std::path::Path, coordinators: &[String]) -> Result<Self> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for first in (0..n).step_by(AGENTS_PER_CHILD) {
            let last = (first + AGENTS_PER_CHILD).min(n);
            let child = std::process::Command::new(&exe)
                .arg("--child-agents")
                .arg(first.to_string())
                .arg(last.to_string())
                .arg("--certs")
                .arg(certs)
                .arg("--coordinators")
                .arg(coordinators.join(","))
                .stdout(std::process::Stdio::null())
                .spawn()
                .context("starting a child of agents")?;
            children.push(child);
        }
        Ok(Self(children))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU seconds (user + system) and RSS bytes of a process.
fn usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let cpu = (f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((cpu, rss_kb * 1024))
}

/// A primary (`n == 0`) or replica as a real agent would report it.
fn instance(agent: usize, n: usize) -> InstanceReport {
    let primary = n == 0;
    let offset = 1_000_000 + agent as u64;
    InstanceReport {
        name: format!("redis-{agent}-{n}"),
        address: format!(
            "10.{}.{}.{}:6379",
            agent / 65536 % 256,
            agent / 256 % 256,
            (agent % 128) * 2 + n
        ),
        cluster: format!("sim-{}", agent / 100),
        reachable: true,
        role: if primary {
            Role::Primary
        } else {
            Role::Replica
        },
        run_id: format!("{agent:040}"),
        replid: format!("{:040}", agent / 2),
        master_repl_offset: offset,
        replica_offset: (!primary).then_some(offset - 120),
        link_up: (!primary).then_some(true),
        primary_address: (!primary).then(|| format!("10.0.0.{}:6379", agent % 250)),
        replicas: if primary {
            vec![fleetsnap_core::ConnectedReplica {
                address: "10.9.9.9:6379".into(),
                offset: offset - 120,
                state: "online".into(),
                lag_seconds: 0,
            }]
        } else {
            Vec::new()
        },
        rdb_last_bgsave_ok: true,
        rdb_changes_since_last_save: offset % 1000,
        rdb_last_save_time: 1_795_000_000,
        aof_last_write_ok: true,
        used_memory_bytes: 2 << 30,
        maxmemory_bytes: 8 << 30,
        total_system_memory_bytes: 64 << 30,
        redis_version: "7.0.15".into(),
        sync_allowed: Some(true),
        ..Default::default()
    }
}

/// Admin channels to every coordinator, opened once and kept: probing the cluster during a
/// reconnect storm must not wait for a TLS handshake of its own behind thousands of agents'.
struct Observer {
    clients: Vec<AdminServiceClient<Channel>>,
}

impl Observer {
    fn new(admin: &Transport, addresses: &[String]) -> Result<Self> {
        let mut clients = Vec::new();
        for a in addresses {
            let endpoint = admin.endpoint(a).map_err(anyhow::Error::msg)?;
            clients.push(AdminServiceClient::new(endpoint.connect_lazy()));
        }
        Ok(Self { clients })
    }

    async fn stats(&self, i: usize, reset: bool) -> Option<v1::LeaderStatsReply> {
        let mut c = self.clients[i].clone();
        let call = c.leader_stats(v1::LeaderStatsRequest { reset });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    }

    /// How many agents keep a spare connection to coordinator `i` (its own view).
    async fn spare_agents(&self, i: usize) -> Option<u64> {
        let mut c = self.clients[i].clone();
        let call = c.cluster_status(v1::ClusterStatusRequest { local: true });
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(r)) => Some(r.into_inner().spare_agents),
            _ => None,
        }
    }

    /// The agents of 0..n coordinator `i` does not count as connected (its status), the first 20.
    async fn missing(&self, i: usize, n: usize) -> Vec<String> {
        let mut c = self.clients[i].clone();
        let call = c.status(v1::StatusRequest::default());
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), call).await else {
            return vec!["(status did not answer)".into()];
        };
        let doc: serde_json::Value = serde_json::from_str(&r.into_inner().json).unwrap_or_default();
        let connected: std::collections::HashSet<&str> = doc["agents"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["connected"] == true)
            .filter_map(|a| a["agent"].as_str())
            .collect();
        (0..n)
            .map(|i| format!("sim-{i}"))
            .filter(|a| !connected.contains(a.as_str()))
            .take(20)
            .collect()
    }

    /// The leader's index and its stats, asking each coordinator of `among`.
    async fn leader(&self, among: &[usize]) -> Option<(usize, v1::LeaderStatsReply)> {
        for &i in among {
            if let Some(s) = self.stats(i, false).await {
                return Some((i, s));
            }
        }
        None
    }
}

struct Row {
    agents: usize,
    connect_s: f64,
    cpu: f64,
    rss: u64,
    follower_rss: u64,
    p50_ms: f64,
    p99_ms: f64,
    samples: u64,
    elected_s: f64,
    rehome_s: f64,
}

async fn run_size(args: &Args, n: usize, fleet: &FleetDir, admin: &Transport) -> Result<Row> {
    let initial = Coordinator::addresses(3);
    let mut coords = Vec::new();
    for (id, _) in &initial {
        let c = Coordinator::configure(fleet, *id, &initial, &CoordinatorOptions::default())?;
        // A fresh cluster for every size.
        let _ = std::fs::remove_dir_all(&c.data_dir);
        coords.push(c);
    }
    for c in &mut coords {
        c.start().await?;
    }
    let addresses: Vec<String> = initial.iter().map(|(_, a)| a.clone()).collect();
    let observer = Observer::new(admin, &addresses)?;
    let all: Vec<usize> = (0..addresses.len()).collect();
    let t0 = Instant::now();
    while observer.leader(&all).await.is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("no leader within 20 s; see {}", fleet.path().display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = Instant::now();
    let children = Children::start(n, &fleet.path().join("certs"), &addresses)?;
    let mut shown = Instant::now();
    let li = loop {
        let found = observer.leader(&all).await;
        if let Some((li, s)) = &found
            && s.connected_agents as usize >= n
        {
            break *li;
        }
        if shown.elapsed() > Duration::from_secs(10) {
            shown = Instant::now();
            let connected = found.map(|(_, s)| s.connected_agents).unwrap_or_default();
            eprintln!(
                "  {connected} of {n} agents connected after {:.0} s",
                start.elapsed().as_secs_f64()
            );
        }
        if start.elapsed() > Duration::from_secs(300) {
            let missing = match &found {
                Some((li, _)) => observer.missing(*li, n).await,
                None => Vec::new(),
            };
            bail!(
                "not every agent connected within 300 s; not connected: {}",
                missing.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let connect_s = start.elapsed().as_secs_f64();
    // Steady state before measuring: every agent keeps its spare connections to the followers
    // (the first round is spread over the 10 s after each agent's welcome).
    let followers: Vec<usize> = all.iter().copied().filter(|&i| i != li).collect();
    let t1 = Instant::now();
    loop {
        let mut ready = true;
        for &i in &followers {
            ready &= observer
                .spare_agents(i)
                .await
                .is_some_and(|s| s as usize >= n);
        }
        if ready {
            break;
        }
        if t1.elapsed() > Duration::from_secs(120) {
            bail!("the followers did not see every agent's spare connection within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pid = coords[li].pid().context("the leader runs")?;
    let t1 = Instant::now();
    while observer.stats(li, true).await.is_none() {
        if t1.elapsed() > Duration::from_secs(30) {
            bail!("the leader did not reset its statistics within 30 s");
        }
    }
    let (cpu0, _) = usage(pid).context("leader usage")?;
    let w0 = Instant::now();
    let mut rss = 0;
    // A follower holds every agent's spare connection.
    let follower = coords[(li + 1) % coords.len()]
        .pid()
        .context("a follower runs")?;
    let mut follower_rss = 0;
    while w0.elapsed() < Duration::from_secs(args.window) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss.max(usage(pid).map(|u| u.1).unwrap_or_default());
        follower_rss = follower_rss.max(usage(follower).map(|u| u.1).unwrap_or_default());
    }
    let (cpu1, _) = usage(pid).context("leader usage")?;
    let cpu = (cpu1 - cpu0) / w0.elapsed().as_secs_f64();
    let s = observer.stats(li, true).await.context("leader stats")?;
    // SIGKILL the leader; time until a new leader has every agent reporting.
    coords[li].kill();
    let killed = Instant::now();
    let survivors: Vec<usize> = all.iter().copied().filter(|&i| i != li).collect();
    let mut elected_s = f64::NAN;
    let rehome_s = loop {
        if let Some((_, s)) = observer.leader(&survivors).await {
            if elected_s.is_nan() {
                elected_s = killed.elapsed().as_secs_f64();
            }
            if s.connected_agents as usize >= n {
                break killed.elapsed().as_secs_f64();
            }
        }
        if killed.elapsed() > Duration::from_secs(120) {
            break f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    drop(children);
    if std::env::var_os("FLEETSNAP_SIM_LOGS").is_some() {
        for (i, c) in coords.iter().enumerate() {
            let text = c.log_text();
            let tail: Vec<&str> = text.lines().rev().take(400).collect();
            eprintln!("--- coordinator {} ---", i + 1);
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
    drop(coords);
    Ok(Row {
        agents: n,
        connect_s,
        cpu,
        rss,
        follower_rss,
        p50_ms: s.latency_p50_us as f64 / 1000.0,
        p99_ms: s.latency_p99_us as f64 / 1000.0,
        samples: s.samples,
        elected_s,
        rehome_s,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    fleetsnap_agent::install_crypto_provider();
    // SAFETY: getrlimit/setrlimit read and write the struct passed. Every agent holds three
    // connections; children inherit the limit.
    let files = unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
        l.rlim_cur
    };
    if !args.child_agents.is_empty() {
        return child(&args);
    }
    let needed = (3 * AGENTS_PER_CHILD + 1000) as u64;
    if files < needed {
        bail!("this process may open {files} files and needs {needed}: raise `ulimit -Hn`");
    }
    let rt = tokio::runtime::Runtime::new()?;
    let max = args.agents.iter().copied().max().unwrap_or(0);
    eprintln!("making certificates for {max} agents …");
    let names: Vec<String> = (0..max).map(|i| format!("sim-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fleet = FleetDir::new(&[1, 2, 3], &names)?;
    let admin = Transport::Tls(
        TlsFiles::in_dir(&fleet.path().join("certs"), CertRole::Admin, "admin")
            .load()
            .map_err(anyhow::Error::msg)?,
    );
    let mut rows = Vec::new();
    for &n in &args.agents {
        eprintln!("N = {n}: 3 coordinators, {n} agents …");
        let row = rt.block_on(run_size(&args, n, &fleet, &admin))?;
        eprintln!(
            "N = {n}: leader CPU {:.2} cores, RSS {} MiB, follower RSS {} MiB, p50 {:.2} ms, p99 {:.2} ms, new leader after {:.2} s, all re-homed after {:.2} s",
            row.cpu,
            row.rss >> 20,
            row.follower_rss >> 20,
            row.p50_ms,
            row.p99_ms,
            row.elected_s,
            row.rehome_s
        );
        rows.push(row);
    }
    println!(
        "\n| agents | connect all (s) | leader CPU (cores) | leader RSS (MiB) | follower RSS (MiB) | report→visible p50 (ms) | p99 (ms) | samples | new leader after kill (s) | all re-homed after kill (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.2} | {} | {} | {:.2} | {:.2} | {} | {:.2} | {:.2} |",
            r.agents,
            r.connect_s,
            r.cpu,
            r.rss >> 20,
            r.follower_rss >> 20,
            r.p50_ms,
            r.p99_ms,
            r.samples,
            r.elected_s,
            r.rehome_s
        );
    }
    Ok(())
}
