//! Snapshot benchmark: fleetsnap-agent against the seed cron recipe (BGSAVE, poll, copy, gzip,
//! `aws s3 cp` to each region in turn) and against `redis-cli --rdb - > /dev/null`, the floor set by
//! Redis's own RDB generation. Every server runs with `repl-diskless-sync-delay 0`.
//!
//! Run with `scripts/bench.sh` (installs awscli, moto and Garage first); prints a Markdown table.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetsnap_bench::fill;
use fleetsnap_testkit::{Garage, Moto, RedisServer, credentials_file};

#[derive(Parser)]
struct Args {
    /// Dataset sizes in GiB, comma separated; S3 and seed rows run for the first only.
    #[arg(long, default_value = "1,4")]
    sizes_gib: String,
    /// Runs per row; the table shows the median wall time and the largest peak RSS.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Path of the agent binary (built with --release).
    #[arg(long, default_value = "target/release/fleetsnap-agent")]
    agent: String,
    /// Another fleetsnap-agent binary (an earlier release): its row to 2 file:// regions runs
    /// alternately with this agent's, run for run, against the same server.
    #[arg(long, value_name = "PATH")]
    baseline_agent: Option<String>,
    /// Only the floor and the agents to 2 file:// regions (no seed recipe, no S3 rows).
    #[arg(long)]
    file_only: bool,
    /// Also run the agent to 2 file:// regions pinned (taskset) to this many cores, comma
    /// separated (e.g. 1,2,4): how it scales. The unpinned row runs on every core.
    #[arg(long, value_name = "N,…")]
    cores: Option<String>,
}

struct Row {
    size_gib: u64,
    name: String,
    wall: Duration,
    bytes: u64,
    peak_rss_kib: Option<i64>,
    cpu: Option<Duration>,
}

/// Runs a command `repeat` times; returns the median wall time with that run's CPU time, and the
/// largest peak RSS (KiB) seen.
fn measure(cmd: Command, repeat: usize) -> anyhow::Result<(Duration, i64, Duration)> {
    let mut cmd = cmd;
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        runs.push(measure_once(&mut cmd)?);
    }
    Ok(median_run(runs))
}

/// The median run's wall and CPU time, with the largest peak RSS of all runs.
fn median_run(mut runs: Vec<(Duration, i64, Duration)>) -> (Duration, i64, Duration) {
    let rss = runs.iter().map(|r| r.1).max().unwrap_or(0);
    runs.sort_by_key(|r| r.0);
    let (wall, _, cpu) = runs[runs.len() / 2];
    (wall, rss, cpu)
}

/// Runs two commands alternately, `repeat` times each, so both meet the machine in the same
/// states; each one's median as [`measure`] gives it.
fn measure_pair(
    a: Command,
    b: Command,
    repeat: usize,
) -> anyhow::Result<[(Duration, i64, Duration); 2]> {
    let mut cmds = [a, b];
    let mut runs = [Vec::new(), Vec::new()];
    for _ in 0..repeat.max(1) {
        for (cmd, runs) in cmds.iter_mut().zip(runs.iter_mut()) {
            runs.push(measure_once(cmd)?);
        }
    }
    Ok(runs.map(median_run))
}

/// Runs a command to completion and returns its wall time, peak RSS (KiB) and CPU time.
fn measure_once(cmd: &mut Command) -> anyhow::Result<(Duration, i64, Duration)> {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("spawn")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are to live locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    if r < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("{cmd:?} failed (status {status})");
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    Ok((
        wall,
        usage.ru_maxrss,
        tv(usage.ru_utime) + tv(usage.ru_stime),
    ))
}

fn rdb_size(server: &RedisServer) -> anyhow::Result<u64> {
    let tmp = server.dir().join("probe.rdb");
    let st = Command::new("redis-cli")
        .args(["-p", &server.port().to_string(), "--rdb"])
        .arg(&tmp)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !st.success() {
        bail!("redis-cli --rdb failed");
    }
    let n = std::fs::metadata(&tmp)?.len();
    std::fs::remove_file(&tmp)?;
    Ok(n)
}

fn seed_recipe(server: &RedisServer, work: &Path, uploads: &[String]) -> String {
    // The cron script users run today, step by step.
    let port = server.port();
    let dump = server.dir().join("dump.rdb");
    let mut s = format!(
        "set -e\nredis-cli -p {port} BGSAVE >/dev/null\n\
         while redis-cli -p {port} INFO persistence | grep -q 'rdb_bgsave_in_progress:1'; do sleep 0.1; done\n\
         redis-cli -p {port} INFO persistence | grep -q 'rdb_last_bgsave_status:ok'\n\
         cp {dump} {w}/dump.rdb\ngzip -f {w}/dump.rdb\n",
        dump = dump.display(),
        w = work.display()
    );
    for u in uploads {
        s.push_str(&format!("{u}\n"));
    }
    s
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleetsnap_agent::install_crypto_provider();
    let args = Args::parse();
    let sizes: Vec<u64> = args
        .sizes_gib
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let agent = std::fs::canonicalize(&args.agent)
        .context("build the agent first: cargo build --release -p fleetsnap-agent")?;
    let baseline = args
        .baseline_agent
        .as_ref()
        .map(|b| std::fs::canonicalize(b).with_context(|| b.clone()))
        .transpose()?;
    let work = tempfile::tempdir()?;
    let (garage, moto) = (Garage::start().await?, Moto::start().await?);
    garage.create_bucket("bench").await?;
    moto.region.create_bucket("bench").await?;
    let creds = credentials_file(work.path(), &[&garage.region, &moto.region])?;
    let mut rows = Vec::new();
    for (n, gib) in sizes.iter().copied().enumerate() {
        let server = RedisServer::start().await?;
        eprintln!("filling {gib} GiB…");
        fill(&server, gib).await?;
        let bytes = rdb_size(&server)?;
        let mut push = |name: &str, m: (Duration, i64, Duration), rss: bool| {
            eprintln!("{gib} GiB {name}: {:.1}s", m.0.as_secs_f64());
            rows.push(Row {
                size_gib: gib,
                name: name.into(),
                wall: m.0,
                bytes,
                peak_rss_kib: rss.then_some(m.1),
                cpu: rss.then_some(m.2),
            });
        };
        // `--rdb /dev/null` exits 1 on redis-cli 7.0 (it fsyncs the target); `-` writes to stdout,
        // which `measure` points at /dev/null.
        let mut floor = Command::new("redis-cli");
        floor
            .args(["-p", &server.port().to_string(), "--rdb", "-"])
            .stderr(std::process::Stdio::null());
        push(
            "floor: redis-cli --rdb - > /dev/null",
            measure(floor, args.repeat)?,
            true,
        );

        let region = |name: &str| work.path().join(format!("{name}-{n}"));
        let to_files = |agent: &Path| {
            let mut a = Command::new(agent);
            a.args([
                "snapshot",
                "--redis",
                &format!("redis://127.0.0.1:{}", server.port()),
            ])
            .arg("--to")
            .arg(format!("file://{}", region("a").display()))
            .arg("--to")
            .arg(format!("file://{}", region("b").display()))
            .args(["--spool-dir", &work.path().display().to_string()]);
            a
        };
        let pinned: Vec<usize> = match &args.cores {
            Some(list) => list
                .split(',')
                .map(|c| c.trim().parse::<usize>())
                .collect::<Result<_, _>>()
                .context("--cores takes core counts, e.g. 1,2,4")?,
            None => Vec::new(),
        };
        for c in pinned {
            let mut t = Command::new("taskset");
            t.args(["-c", &format!("0-{}", c.max(1) - 1)])
                .arg(&agent)
                .args(to_files(&agent).get_args());
            push(
                &format!("fleetsnap-agent on {c} core(s) → 2 file:// regions"),
                measure(t, args.repeat)?,
                true,
            );
        }
        match &baseline {
            None => push(
                "fleetsnap-agent → 2 file:// regions",
                measure(to_files(&agent), args.repeat)?,
                true,
            ),
            Some(b) => {
                let [new, old] = measure_pair(to_files(&agent), to_files(b), args.repeat)?;
                push("fleetsnap-agent → 2 file:// regions", new, true);
                push(
                    &format!("baseline {} → 2 file:// regions", b.display()),
                    old,
                    true,
                );
            }
        }

        if n == 0 && !args.file_only {
            let seed_dir = work.path().join("seed");
            std::fs::create_dir_all(&seed_dir)?;
            let files = [region("seed-a"), region("seed-b")];
            let cp: Vec<String> = files
                .iter()
                .map(|f| {
                    format!(
                        "mkdir -p {f} && cp {w}/dump.rdb.gz {f}/",
                        f = f.display(),
                        w = seed_dir.display()
                    )
                })
                .collect();
            let mut seed = Command::new("bash");
            seed.arg("-c").arg(seed_recipe(&server, &seed_dir, &cp));
            push(
                "seed recipe → 2 local dirs (cp)",
                measure(seed, args.repeat)?,
                true,
            );

            let aws = |r: &fleetsnap_testkit::S3Region| {
                format!(
                    "aws s3 cp --only-show-errors --profile {} --region {} --endpoint-url {} {}/dump.rdb.gz s3://bench/seed/dump.rdb.gz",
                    r.profile,
                    r.region,
                    r.endpoint,
                    seed_dir.display()
                )
            };
            let mut seed = Command::new("bash");
            seed.arg("-c")
                .arg(seed_recipe(
                    &server,
                    &seed_dir,
                    &[aws(&garage.region), aws(&moto.region)],
                ))
                .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
                .env("AWS_CONFIG_FILE", "/dev/null");
            push(
                "seed recipe → garage, moto (aws s3 cp)",
                measure(seed, args.repeat)?,
                true,
            );

            let mut a = Command::new(&agent);
            a.args([
                "snapshot",
                "--redis",
                &format!("redis://127.0.0.1:{}", server.port()),
            ])
            .args([
                "--to",
                &garage.region.dest("bench", "agent"),
                "--to",
                &moto.region.dest("bench", "agent"),
            ])
            .env("AWS_SHARED_CREDENTIALS_FILE", &creds)
            .env("AWS_CONFIG_FILE", "/dev/null");
            push(
                "fleetsnap-agent → garage, moto",
                measure(a, args.repeat)?,
                true,
            );
        }
    }
    println!(
        "| dataset | RDB size | run | wall | × floor | MB/s | CPU | CPU-s per GB of RDB | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let floor = rows
            .iter()
            .find(|f| f.size_gib == r.size_gib && f.name.starts_with("floor"))
            .map_or(r.wall, |f| f.wall);
        println!(
            "| {} GiB | {:.0} MB | {} | {:.2} s | {:.2} | {:.0} | {} | {} | {} |",
            r.size_gib,
            r.bytes as f64 / 1e6,
            r.name,
            r.wall.as_secs_f64(),
            r.wall.as_secs_f64() / floor.as_secs_f64(),
            r.bytes as f64 / 1e6 / r.wall.as_secs_f64(),
            r.cpu
                .map(|c| format!("{:.2} s", c.as_secs_f64()))
                .unwrap_or_default(),
            r.cpu
                .map(|c| format!("{:.1}", c.as_secs_f64() / (r.bytes as f64 / 1e9)))
                .unwrap_or_default(),
            r.peak_rss_kib
                .map(|k| format!("{:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_default(),
        );
    }
    println!();
    for gib in &sizes {
        let get = |prefix: &str| {
            rows.iter()
                .find(|r| r.size_gib == *gib && r.name.starts_with(prefix))
                .map(|r| r.wall.as_secs_f64())
        };
        if let (Some(agent), Some(floor)) = (get("fleetsnap-agent → 2 file"), get("floor")) {
            println!(
                "{gib} GiB: agent to 2 file:// regions / floor = {:.2}×",
                agent / floor
            );
        }
        if let (Some(agent), Some(old)) = (get("fleetsnap-agent → 2 file"), get("baseline")) {
            println!(
                "{gib} GiB: agent / baseline agent, to 2 file:// regions = {:.3}×",
                agent / old
            );
        }
        if let (Some(agent), Some(seed)) =
            (get("fleetsnap-agent → 2 file"), get("seed recipe → garage"))
        {
            println!(
                "{gib} GiB: seed recipe (S3) / agent to 2 file:// regions = {:.2}× faster",
                seed / agent
            );
        }
        if let (Some(agent), Some(seed)) = (
            get("fleetsnap-agent → 2 file"),
            get("seed recipe → 2 local"),
        ) {
            println!(
                "{gib} GiB: seed recipe (local cp) / agent to 2 file:// regions = {:.2}× faster",
                seed / agent
            );
        }
        if let (Some(agent), Some(seed)) =
            (get("fleetsnap-agent → garage"), get("seed recipe → garage"))
        {
            println!(
                "{gib} GiB: seed recipe (S3) / agent to the same S3 regions = {:.2}× faster",
                seed / agent
            );
        }
    }
    Ok(())
}
