//! The control plane at scale: N virtual agents (each its own TCP connection, mutual TLS and
//! Session stream, 2 Redis instances, 1 report per second) against a real 3-node coordinator on
//! this machine. Prints, per N: leader CPU and RSS, report-to-visible latency p50/p99, and the
//! time until every agent reports to a new leader after the leader is SIGKILLed.
//!
//!   scripts/bench.sh fleet [--agents 1000,5000,10000]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use fleetsnap_proto::tls::{Role, TlsFiles, Transport};
use fleetsnap_proto::v1::admin_service_client::AdminServiceClient;
use fleetsnap_proto::v1::agent_service_client::AgentServiceClient;
use fleetsnap_proto::v1::{self, agent_message, coordinator_message};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    /// Fleet sizes to run.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    agents: Vec<usize>,
    /// The fleetsnap-coordinator binary.
    #[arg(long)]
    coordinator: PathBuf,
    /// The fleetsnap CLI binary (for `certs init`).
    #[arg(long)]
    cli: PathBuf,
    /// Seconds of steady reporting measured per size.
    #[arg(long, default_value_t = 20)]
    window: u64,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
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

struct Coordinators {
    children: Vec<Option<Child>>,
    addresses: Vec<String>,
}

impl Drop for Coordinators {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_coordinators(bin: &Path, dir: &Path, certs: &Path) -> Result<Coordinators> {
    let addresses: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut children = Vec::new();
    for (i, address) in addresses.iter().enumerate() {
        let id = i + 1;
        let mut text = format!(
            "node_id = {id}\nlisten = \"{address}\"\ndata_dir = \"{}\"\n",
            dir.join(format!("c{id}")).display()
        );
        for (j, a) in addresses.iter().enumerate() {
            text += &format!("[[initial_members]]\nid = {}\naddress = \"{a}\"\n", j + 1);
        }
        text += &format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            certs.join("ca.pem").display(),
            certs.join(format!("peer-{id}.pem")).display(),
            certs.join(format!("peer-{id}.key")).display()
        );
        let config = dir.join(format!("c{id}.toml"));
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.join(format!("c{id}.log")))?;
        children.push(Some(
            Command::new(bin)
                .arg("--config")
                .arg(&config)
                .env("FLEETSNAP_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .context("start fleetsnap-coordinator")?,
        ));
    }
    Ok(Coordinators {
        children,
        addresses,
    })
}

fn instance(agent: usize, n: usize, offset: u64) -> v1::InstanceReport {
    let primary = n == 0;
    v1::InstanceReport {
        name: format!("redis-{agent}-{n}"),
        address: format!(
            "10.{}.{}.{}:6379",
            agent / 65536 % 256,
            agent / 256 % 256,
            (agent % 128) * 2 + n
        ),
        reachable: true,
        role: if primary { "primary" } else { "replica" }.into(),
        run_id: format!("{agent:040}"),
        replid: format!("{:040}", agent / 2),
        master_repl_offset: offset,
        replica_offset: (!primary).then_some(offset.saturating_sub(120)),
        link_up: (!primary).then_some(true),
        primary_address: (!primary).then(|| format!("10.0.0.{}:6379", agent % 250)),
        replicas: if primary {
            vec![v1::ConnectedReplica {
                address: "10.9.9.9:6379".into(),
                offset: offset.saturating_sub(120),
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
        cluster: format!("sim-{}", agent / 100),
        ..Default::default()
    }
}

/// One virtual agent: the real agent's session protocol (Hello with the last leader, follow
/// redirects, capped jittered backoff), with synthetic reports.
async fn virtual_agent(
    i: usize,
    transport: Arc<Transport>,
    addresses: Arc<Vec<String>>,
    stop: Arc<AtomicU64>,
) {
    let agent_id = format!("sim-{i}");
    let mut next = i;
    let mut target: Option<String> = None;
    let mut last_leader = 0u64;
    let mut newest_term = 0u64;
    let mut backoff = Duration::from_millis(150);
    let mut offset = 1_000_000u64 + i as u64;
    while stop.load(Ordering::Relaxed) == 0 {
        let address = target.take().unwrap_or_else(|| {
            next += 1;
            addresses[next % addresses.len()].clone()
        });
        let outcome: Option<()> = async {
            let channel = transport.connect(&address).await.ok()?;
            let (up, rx) = mpsc::channel(4);
            up.send(v1::AgentMessage {
                body: Some(agent_message::Body::Hello(v1::Hello {
                    agent_id: agent_id.clone(),
                    version: "sim".into(),
                    newest_term_seen: newest_term,
                    incarnation: i as u64,
                    last_leader_id: last_leader,
                    ..Default::default()
                })),
            })
            .await
            .ok()?;
            let mut down = AgentServiceClient::new(channel)
                .session(ReceiverStream::new(rx))
                .await
                .ok()?
                .into_inner();
            match down.message().await.ok()??.body? {
                coordinator_message::Body::Welcome(w) => {
                    newest_term = newest_term.max(w.term);
                    last_leader = w.coordinator_id;
                }
                coordinator_message::Body::Redirect(r) if !r.leader_address.is_empty() => {
                    target = Some(r.leader_address);
                    return Some(());
                }
                _ => return None,
            }
            backoff = Duration::from_millis(150);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        seq += 1;
                        offset += 1500;
                        let report = v1::AgentMessage {
                            body: Some(agent_message::Body::Report(v1::Report {
                                sequence: seq,
                                sent_at_unix_us: now_us(),
                                instances: vec![instance(i, 0, offset), instance(i, 1, offset)],
                            })),
                        };
                        if up.send(report).await.is_err() || stop.load(Ordering::Relaxed) != 0 {
                            return Some(());
                        }
                    }
                    m = down.message() => match m {
                        Ok(Some(v1::CoordinatorMessage { body: Some(coordinator_message::Body::Redirect(r)) })) => {
                            if !r.leader_address.is_empty() {
                                target = Some(r.leader_address);
                            }
                            return Some(());
                        }
                        Ok(Some(_)) => {}
                        _ => return Some(()),
                    }
                }
            }
        }
        .await;
        if outcome.is_none() || target.is_none() {
            let jitter = rand::random::<f64>() * 0.5 + 0.75;
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = backoff.mul_f64(1.5).min(Duration::from_secs(1));
        }
    }
}

async fn stats(admin: &Transport, address: &str, reset: bool) -> Option<v1::LeaderStatsReply> {
    let ch = admin.connect(address).await.ok()?;
    let mut c = AdminServiceClient::new(ch);
    c.leader_stats(v1::LeaderStatsRequest { reset })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// The leader's index and its stats, asking each coordinator.
async fn leader(
    admin: &Transport,
    addresses: &[String],
    reset: bool,
) -> Option<(usize, v1::LeaderStatsReply)> {
    for (i, a) in addresses.iter().enumerate() {
        if let Some(s) = stats(admin, a, reset).await {
            return Some((i, s));
        }
    }
    None
}

struct Row {
    agents: usize,
    connect_s: f64,
    cpu: f64,
    rss: u64,
    p50_ms: f64,
    p99_ms: f64,
    samples: u64,
    rehome_s: f64,
}

async fn run_size(
    args: &Args,
    n: usize,
    dir: &Path,
    certs: &Path,
    admin: &Transport,
) -> Result<Row> {
    let mut coords = start_coordinators(&args.coordinator, dir, certs)?;
    let addresses = Arc::new(coords.addresses.clone());
    let t0 = Instant::now();
    while leader(admin, &addresses, false).await.is_none() {
        if t0.elapsed() > Duration::from_secs(20) {
            bail!("no leader within 20 s; see {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stop = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    for i in 0..n {
        let files = TlsFiles::in_dir(certs, Role::Agent, &format!("sim-{i}"));
        let transport = Arc::new(Transport::Tls(files.load().map_err(anyhow::Error::msg)?));
        tokio::spawn(virtual_agent(i, transport, addresses.clone(), stop.clone()));
    }
    let li = loop {
        if let Some((li, s)) = leader(admin, &addresses, false).await
            && s.connected_agents as usize >= n
        {
            break li;
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("not every agent connected within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = coords.children[li].as_ref().expect("leader runs").id();
    stats(admin, &addresses[li], true).await;
    let (cpu0, _) = usage(pid).context("leader usage")?;
    let w0 = Instant::now();
    let mut rss = 0;
    while w0.elapsed() < Duration::from_secs(args.window) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss = rss.max(usage(pid).map(|u| u.1).unwrap_or_default());
    }
    let (cpu1, _) = usage(pid).context("leader usage")?;
    let cpu = (cpu1 - cpu0) / w0.elapsed().as_secs_f64();
    let s = stats(admin, &addresses[li], true)
        .await
        .context("leader stats")?;
    // SIGKILL the leader; time until a new leader has every agent reporting.
    if let Some(mut c) = coords.children[li].take() {
        c.kill()?;
        c.wait()?;
    }
    let killed = Instant::now();
    let survivors: Vec<String> = addresses
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, a)| a.clone())
        .collect();
    let rehome_s = loop {
        if let Some((_, s)) = leader(admin, &survivors, false).await
            && s.connected_agents as usize >= n
        {
            break killed.elapsed().as_secs_f64();
        }
        if killed.elapsed() > Duration::from_secs(120) {
            break f64::NAN;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    stop.store(1, Ordering::Relaxed);
    drop(coords);
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Row {
        agents: n,
        connect_s,
        cpu,
        rss,
        p50_ms: s.latency_p50_us as f64 / 1000.0,
        p99_ms: s.latency_p99_us as f64 / 1000.0,
        samples: s.samples,
        rehome_s,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: getrlimit/setrlimit read and write the struct passed. Every virtual agent holds a
    // connection.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let rt = tokio::runtime::Runtime::new()?;
    let max = args.agents.iter().copied().max().unwrap_or(0);
    let dir = tempfile::Builder::new()
        .prefix("fleetsnap-sim-")
        .tempdir()?;
    let certs = dir.path().join("certs");
    eprintln!("making certificates for {max} agents …");
    let names: Vec<String> = (0..max).map(|i| format!("sim-{i}")).collect();
    let o = Command::new(&args.cli)
        .args(["certs", "init", "--dir"])
        .arg(&certs)
        .args(["--peers", "1,2,3", "--agents", &names.join(",")])
        .output()?;
    if !o.status.success() {
        bail!("certs init: {}", String::from_utf8_lossy(&o.stderr));
    }
    let admin = Transport::Tls(
        TlsFiles::in_dir(&certs, Role::Admin, "admin")
            .load()
            .map_err(anyhow::Error::msg)?,
    );
    let mut rows = Vec::new();
    for &n in &args.agents {
        let run_dir = dir.path().join(format!("n{n}"));
        std::fs::create_dir_all(&run_dir)?;
        eprintln!("N = {n}: 3 coordinators, {n} virtual agents …");
        let row = rt.block_on(run_size(&args, n, &run_dir, &certs, &admin))?;
        eprintln!(
            "N = {n}: leader CPU {:.2} cores, RSS {} MiB, p50 {:.2} ms, p99 {:.2} ms, re-homed in {:.2} s",
            row.cpu,
            row.rss >> 20,
            row.p50_ms,
            row.p99_ms,
            row.rehome_s
        );
        rows.push(row);
    }
    println!(
        "\n| agents | connect all (s) | leader CPU (cores) | leader RSS (MiB) | report→visible p50 (ms) | p99 (ms) | samples | all re-homed after leader kill (s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {:.1} | {:.2} | {} | {:.2} | {:.2} | {} | {:.2} |",
            r.agents,
            r.connect_s,
            r.cpu,
            r.rss >> 20,
            r.p50_ms,
            r.p99_ms,
            r.samples,
            r.rehome_s
        );
    }
    Ok(())
}
