//! Restore benchmark: the RTO of one shard restored by fleetsnap (`replace` and `online`) against
//! the floor — a plain redis-server restart loading the same RDB file already in place — and the
//! seed recipe's manual restore (stop, copy the gzipped dump, gunzip, start).
//!
//! Every row starts from a running target and ends when the target answers PING with the data
//! loaded. Run with `scripts/bench.sh restore`; prints a Markdown table.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetsnap_agent::redis::RedisTarget;
use fleetsnap_agent::redis::{Connection, Value};
use fleetsnap_bench::{fill, median};
use fleetsnap_core::outcomes::ReplaceReport;
use fleetsnap_testkit::{RedisServer, free_port};

#[derive(Parser)]
struct Args {
    /// Dataset size in GiB.
    #[arg(long, default_value_t = 1)]
    size_gib: u64,
    /// Runs per row; the table shows the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where the fleetsnap-agent binary is (built with --release).
    #[arg(long, default_value = "target/release/fleetsnap-agent")]
    agent: PathBuf,
    /// Another fleetsnap-agent binary (an earlier release) whose replace and online rows run in
    /// every round right after this agent's, against the same backup and target.
    #[arg(long, value_name = "PATH")]
    baseline_agent: Option<PathBuf>,
}

/// A target server run the way an operator runs one: daemonized, from its own directory, stopped
/// and started by commands.
struct Target {
    port: u16,
    dir: PathBuf,
}

impl Target {
    fn start_command(&self) -> String {
        format!(
            "redis-server --bind 127.0.0.1 --port {} --dir {} --dbfilename dump.rdb --save '' --appendonly no --daemonize yes --pidfile {}/redis.pid --logfile {}/redis.log",
            self.port,
            self.dir.display(),
            self.dir.display(),
            self.dir.display()
        )
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Writes back what earlier rows left dirty, so no row pays for another's writes.
    fn settle() -> anyhow::Result<()> {
        Self::sh("sync")
    }

    fn sh(command: &str) -> anyhow::Result<()> {
        let st = Command::new("sh").args(["-c", command]).status()?;
        if !st.success() {
            bail!("`{command}` failed: {st}");
        }
        Ok(())
    }

    async fn start(&self) -> anyhow::Result<()> {
        Self::sh(&self.start_command())?;
        self.wait_serving().await
    }

    async fn stop(&self) -> anyhow::Result<()> {
        let t = RedisTarget::parse(&self.url())?;
        if let Ok(mut c) = Connection::connect(&t).await {
            let _ = c.command(&[b"SHUTDOWN", b"NOSAVE"]).await;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Connection::connect(&t).await.is_ok() {
            if Instant::now() > deadline {
                bail!("target on port {} still up 60 s after SHUTDOWN", self.port);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    async fn wait_serving(&self) -> anyhow::Result<()> {
        let t = RedisTarget::parse(&self.url())?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(mut c) = Connection::connect(&t).await
                && matches!(c.command(&[b"PING"]).await, Ok(Value::Simple(_)))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("target on port {} did not serve within 600 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn keys(&self) -> anyhow::Result<i64> {
        let mut c = Connection::connect(&RedisTarget::parse(&self.url())?).await?;
        match c.command(&[b"DBSIZE"]).await? {
            Value::Int(n) => Ok(n),
            v => bail!("DBSIZE gave {v:?}"),
        }
    }

    async fn flush(&self) -> anyhow::Result<()> {
        let mut c = Connection::connect(&RedisTarget::parse(&self.url())?).await?;
        c.checked(&[b"FLUSHALL"]).await?;
        Ok(())
    }
}

/// Name, RTO, and for replace the node's down time and the time to fetch and verify the copy.
type Row = (String, Duration, Option<(Duration, Duration)>);

/// CPU seconds (user and system) used by the children waited for so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

fn agent_json(agent: &Path, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(agent)
        .args(args)
        .output()
        .with_context(|| format!("run {}", agent.display()))?;
    if !out.status.success() {
        bail!(
            "fleetsnap-agent {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleetsnap_agent::install_crypto_provider();
    let args = Args::parse();
    let agent = std::fs::canonicalize(&args.agent)
        .context("build the agent first: cargo build --release -p fleetsnap-agent")?;
    let work = tempfile::tempdir()?;
    let source = RedisServer::start().await?;
    eprintln!("filling {} GiB…", args.size_gib);
    fill(&source, args.size_gib).await?;
    let keys = {
        let mut c = source.conn().await?;
        match c.command(&[b"DBSIZE"]).await? {
            Value::Int(n) => n,
            v => bail!("DBSIZE gave {v:?}"),
        }
    };
    // The backup fleetsnap restores from, in a local-directory region.
    let region = format!("file://{}/region", work.path().display());
    let snap = agent_json(
        &agent,
        &[
            "snapshot",
            "--redis",
            &source.url(),
            "--to",
            &region,
            "--json",
        ],
    )?;
    let id = snap["backup_id"].as_str().context("backup_id")?.to_string();
    // The same data as a plain dump.rdb, and gzipped as the seed recipe keeps it.
    // The snapshot's replication sync may leave the source's fork finishing: SAVE waits for it.
    fleetsnap_testkit::poll_until(
        "the source's background save ended",
        Duration::from_secs(120),
        || async {
            let busy = source
                .info("persistence", "rdb_bgsave_in_progress")
                .await
                .ok()?;
            (busy.as_deref() == Some("0")).then_some(())
        },
    )
    .await?;
    source.cmd(&["SAVE"]).await?;
    let dump = work.path().join("dump.rdb");
    std::fs::rename(source.dir().join("dump.rdb"), &dump).context("keep the dump")?;
    let rdb_bytes = std::fs::metadata(&dump)
        .with_context(|| format!("{}", dump.display()))?
        .len();
    let seed = work.path().join("seed");
    std::fs::create_dir_all(&seed)?;
    std::fs::copy(&dump, seed.join("dump.rdb")).context("copy the dump for the seed")?;
    Target::sh(&format!("gzip -f {}/dump.rdb", seed.display()))?;
    drop(source);

    let dir = work.path().join("target");
    std::fs::create_dir_all(&dir)?;
    let target = Target {
        port: free_port(),
        dir: dir.clone(),
    };
    target.start().await?;
    // Each round runs every row once, back to back, so a row and the floor it is compared with
    // meet the machine in the same state; the table shows medians and each round's ratios.
    let mut agents = vec![agent];
    if let Some(b) = &args.baseline_agent {
        agents.push(std::fs::canonicalize(b).with_context(|| format!("{}", b.display()))?);
    }
    let (mut floor, mut seed_runs) = (Vec::new(), Vec::new());
    let mut replace_runs = vec![Vec::new(); agents.len()];
    let mut online_runs = vec![Vec::new(); agents.len()];
    let (mut down, mut staged) = (
        vec![Vec::new(); agents.len()],
        vec![Vec::new(); agents.len()],
    );
    for round in 0..args.repeat {
        eprintln!("round {} of {}…", round + 1, args.repeat);
        // Floor: the RDB already in place, the server restarted on it.
        target.stop().await?;
        std::fs::copy(&dump, dir.join("dump.rdb")).context("place the dump")?;
        Target::settle()?;
        let t = Instant::now();
        target.start().await?;
        floor.push(t.elapsed());
        anyhow::ensure!(target.keys().await? == keys, "the floor run lost keys");

        // The seed recipe's manual restore: stop, copy the gzipped dump, gunzip, start.
        Target::settle()?;
        let t = Instant::now();
        target.stop().await?;
        Target::sh(&format!(
            "cp {s}/dump.rdb.gz {d}/dump.rdb.gz && gunzip -f {d}/dump.rdb.gz",
            s = seed.display(),
            d = dir.display()
        ))?;
        target.start().await?;
        seed_runs.push(t.elapsed());
        anyhow::ensure!(target.keys().await? == keys, "the seed run lost keys");

        // fleetsnap replace, then online, by this agent and then by the baseline.
        for (k, agent) in agents.iter().enumerate() {
            let (wall, d, st) = replace_row(agent, &region, &id, &target).await?;
            anyhow::ensure!(target.keys().await? == keys, "the replace run lost keys");
            replace_runs[k].push(wall);
            down[k].push(d);
            staged[k].push(st);
            let wall = online_row(agent, &region, &id, &target, work.path()).await?;
            anyhow::ensure!(target.keys().await? == keys, "the online run lost keys");
            online_runs[k].push(wall);
        }
    }
    target.stop().await?;

    let mb = rdb_bytes as f64 / 1e6;
    let ratios = |runs: &[Duration]| -> String {
        runs.iter()
            .zip(&floor)
            .map(|(r, f)| format!("{:.2}", r.as_secs_f64() / f.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut rows: Vec<Row> = vec![
        (
            "floor: redis-server restart on the RDB in place".to_string(),
            median(floor.clone()),
            None,
        ),
        (
            "seed manual restore: stop, cp, gunzip, start".to_string(),
            median(seed_runs.clone()),
            None,
        ),
    ];
    let mut per_round = vec![Vec::new(), seed_runs.clone()];
    for (k, agent) in agents.iter().enumerate() {
        let by = if k == 0 {
            String::new()
        } else {
            format!(" (baseline {})", agent.display())
        };
        rows.push((
            format!("fleetsnap replace{by}"),
            median(replace_runs[k].clone()),
            Some((median(down[k].clone()), median(staged[k].clone()))),
        ));
        per_round.push(replace_runs[k].clone());
        rows.push((
            format!("fleetsnap online (RESTORE, pipelined){by}"),
            median(online_runs[k].clone()),
            None,
        ));
        per_round.push(online_runs[k].clone());
    }
    let floor_median = rows[0].1.as_secs_f64();
    println!(
        "\n{} GiB dataset: {keys} keys, RDB {:.0} MB; median of {} rounds\n",
        args.size_gib, mb, args.repeat
    );
    println!(
        "| restore | RTO (s) | × floor | × floor, each round | MB/s of RDB | MB/s, each round | node down (s) | before the stop (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for ((name, wall, down), runs) in rows.iter().zip(&per_round) {
        let s = wall.as_secs_f64();
        let each_mb = if runs.is_empty() {
            floor
                .iter()
                .map(|r| format!("{:.0}", mb / r.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            runs.iter()
                .map(|r| format!("{:.0}", mb / r.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {name} | {s:.2} | {:.2} | {} | {:.0} | {each_mb} | {} | {} |",
            s / floor_median,
            if runs.is_empty() {
                "–".to_string()
            } else {
                ratios(runs)
            },
            mb / s,
            down.map_or("–".to_string(), |d| format!("{:.2}", d.0.as_secs_f64())),
            down.map_or("–".to_string(), |d| format!("{:.2}", d.1.as_secs_f64()))
        );
    }
    Ok(())
}

/// `fleetsnap-agent restore --replace` into the target: wall time, node down, and staged before
/// the stop (from its report).
async fn replace_row(
    agent: &Path,
    region: &str,
    id: &str,
    target: &Target,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    Target::settle()?;
    let t = Instant::now();
    let cpu = children_cpu();
    let r: ReplaceReport = serde_json::from_value(agent_json(
        agent,
        &[
            "restore",
            "--from",
            region,
            "--backup",
            id,
            "--replace",
            &target.url(),
            "--start",
            &target.start_command(),
            "--json",
        ],
    )?)
    .context("the replace report")?;
    let wall = t.elapsed();
    eprintln!(
        "  replace by {}: {:.2} s, {:.2} CPU-s",
        agent.display(),
        wall.as_secs_f64(),
        children_cpu() - cpu
    );
    Ok((
        wall,
        Duration::from_secs_f64(r.down_seconds),
        Duration::from_secs_f64(r.staged_seconds),
    ))
}

/// `fleetsnap-agent restore --online` into the running target, emptied first: wall time.
async fn online_row(
    agent: &Path,
    region: &str,
    id: &str,
    target: &Target,
    work: &Path,
) -> anyhow::Result<Duration> {
    target.flush().await?;
    Target::settle()?;
    let t = Instant::now();
    agent_json(
        agent,
        &[
            "restore",
            "--from",
            region,
            "--backup",
            id,
            "--online",
            &target.url(),
            "--work-dir",
            &work.display().to_string(),
            "--json",
        ],
    )?;
    let wall = t.elapsed();
    eprintln!(
        "  online by {}: {:.2} s",
        agent.display(),
        wall.as_secs_f64()
    );
    Ok(wall)
}
