//! Archive benchmark: how far behind the writes the continuous archive runs (the live recovery
//! point), what the archiver costs per MB of stream, and how long a restore to a time takes
//! against its floor.
//!
//! Per row: `shards` redis-servers, each written by its own writer at `rate` small writes per
//! second (pipelined `SET`s of 32-byte values, sent every 10 ms), and each followed by its own
//! `fleetsnap-agent archive run` with `--segment-seconds 1` into two `file://` regions. Every
//! 100 ms each writer reads its node's replication offset right after an acknowledgement; a
//! watcher lists both regions every 10 ms. A sample's lag is from that acknowledgement to the
//! moment the segment holding its offset is in both regions.
//!
//! RTO (`--rto-mib N`, one shard): a base of N MiB, then N MiB of writes archived; the restore is
//! `restore --at` the archive's end into an AOF directory plus redis-server loading it, the floor
//! redis-server loading the same RDB and the same commands as an AOF directory already in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use fleetsnap_testkit::RedisServer;
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::RedisOptions;

#[derive(Parser)]
#[command(about = "Archive lag, archiver CPU per MB of stream, and restore-to-time RTO")]
struct Args {
    /// Shard counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    shards: Vec<usize>,
    /// Writes per second per shard to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000")]
    rate: Vec<u64>,
    /// Seconds of writes per row.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// The agent binary (default: fleetsnap-agent next to this one).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// Also measure the RTO of a restore to a time: a base of this many MiB and as many MiB of
    /// stream (0: skip).
    #[arg(long, default_value_t = 0)]
    rto_mib: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Starts an archiver of `server` as shard `s<i>` into `regions`.
fn archiver(
    agent: &Path,
    server: &RedisServer,
    i: usize,
    regions: &[PathBuf],
    spool: &Path,
) -> anyhow::Result<std::process::Child> {
    let mut cmd = Command::new(agent);
    cmd.args(["archive", "run", "--redis", &server.url(), "--json"])
        .args(["--shard", &format!("s{i}"), "--segment-seconds", "1"])
        .arg("--spool-dir")
        .arg(spool.join(format!("s{i}")))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for r in regions {
        cmd.arg("--to").arg(format!("file://{}", r.display()));
    }
    cmd.spawn().context("start the archiver")
}

/// SIGINT, then the summary and CPU seconds of an archiver.
fn stop(child: std::process::Child) -> anyhow::Result<(serde_json::Value, f64)> {
    let pid = child.id() as i32;
    // SAFETY: a signal to a child this benchmark started.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be filled by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut stdout = child.stdout;
    // SAFETY: waits for our own child; pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 || !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("the archiver failed (status {status})");
    }
    let mut out = String::new();
    if let Some(s) = stdout.as_mut() {
        std::io::Read::read_to_string(s, &mut out)?;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        serde_json::from_str(&out)?,
        tv(usage.ru_utime) + tv(usage.ru_stime),
    ))
}

/// Segments seen in one region: per shard, `(end offset, first seen ms)`.
type Seen = Arc<std::sync::Mutex<HashMap<usize, Vec<(u64, i64)>>>>;

/// Lists `region`'s segments of `shards` shards every 10 ms until `done`.
fn watch(
    region: PathBuf,
    shards: usize,
    done: Arc<AtomicBool>,
) -> (Seen, std::thread::JoinHandle<()>) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let h = std::thread::spawn(move || {
        let mut known: std::collections::HashSet<PathBuf> = Default::default();
        while !done.load(Ordering::Relaxed) {
            for shard in 0..shards {
                let dir = region.join(format!("standalone/archive/s{shard}"));
                let Ok(replids) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for r in replids.flatten() {
                    let Ok(files) = std::fs::read_dir(r.path()) else {
                        continue;
                    };
                    for f in files.flatten() {
                        let p = f.path();
                        let name = f.file_name().to_string_lossy().into_owned();
                        if !name.contains(".seg") || name.ends_with(".tmp") || !known.insert(p) {
                            continue;
                        }
                        let end = name
                            .split('-')
                            .nth(1)
                            .and_then(|e| e.parse().ok())
                            .unwrap_or(0);
                        s.lock()
                            .unwrap()
                            .entry(shard)
                            .or_default()
                            .push((end, now_ms()));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    (seen, h)
}

/// Writes to `server` at `rate` a second until `done`; every 100 ms, the node's offset right
/// after an acknowledgement, with its time. Gives the samples and the writes made.
async fn writer(
    server: &RedisServer,
    rate: u64,
    done: Arc<AtomicBool>,
) -> anyhow::Result<(Vec<(i64, u64)>, u64)> {
    let mut conn = server.conn().await?;
    let mut probe = server.conn().await?;
    let per_tick = (rate / 100).max(1) as usize;
    let value = [b'v'; 32];
    let mut n = 0u64;
    let mut samples = Vec::new();
    let mut last_sample = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let batch: Vec<Vec<Vec<u8>>> = (0..per_tick)
            .map(|i| {
                vec![
                    b"SET".to_vec(),
                    format!("w:{}", n + i as u64).into_bytes(),
                    value.to_vec(),
                ]
            })
            .collect();
        conn.send_pipeline(&batch).await?;
        for _ in 0..per_tick {
            conn.read_value().await?;
        }
        n += per_tick as u64;
        if last_sample.elapsed() >= Duration::from_millis(100) {
            let at = now_ms();
            let info = probe.info("replication").await?;
            let offset: u64 = fleetsnap_agent::redis::info_field(&info, "master_repl_offset")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0);
            samples.push((at, offset));
            last_sample = Instant::now();
        }
    }
    Ok((samples, n))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct Row {
    shards: usize,
    rate: u64,
    achieved: f64,
    p50: f64,
    p99: f64,
    max: f64,
    uncovered: usize,
    cpu_per_mb: f64,
    cpu_share: f64,
    stream_mb: f64,
}

async fn lag_row(agent: &Path, shards: usize, rate: u64, seconds: u64) -> anyhow::Result<Row> {
    let work = tempfile::tempdir()?;
    let regions = vec![work.path().join("ra"), work.path().join("rb")];
    let mut servers = Vec::new();
    for _ in 0..shards {
        servers.push(Arc::new(
            RedisServer::start_with(RedisOptions::default()).await?,
        ));
    }
    let mut children = Vec::new();
    for (i, s) in servers.iter().enumerate() {
        children.push(archiver(agent, s, i, &regions, work.path())?);
    }
    for i in 0..shards {
        let base = regions[1].join("standalone");
        poll_until(
            &format!("shard {i}'s base"),
            Duration::from_secs(60),
            || async {
                let found = std::fs::read_dir(&base).ok()?.flatten().any(|d| {
                    std::fs::read_to_string(d.path().join("manifest.json"))
                        .is_ok_and(|m| m.contains(&format!("\"s{i}\"")))
                });
                found.then_some(())
            },
        )
        .await?;
    }
    let done = Arc::new(AtomicBool::new(false));
    let watched: Vec<_> = regions
        .iter()
        .map(|r| watch(r.clone(), shards, done.clone()))
        .collect();
    let stop_writes = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut handles = Vec::new();
    for s in servers.iter() {
        let (stop, server) = (stop_writes.clone(), s.clone());
        handles.push(tokio::spawn(
            async move { writer(&server, rate, stop).await },
        ));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop_writes.store(true, Ordering::Relaxed);
    let mut samples: Vec<Vec<(i64, u64)>> = Vec::new();
    let mut writes = 0u64;
    for h in handles {
        let (s, n) = h.await??;
        samples.push(s);
        writes += n;
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Every sample's segment reaches both regions (or 30 s pass).
    let _ = poll_until(
        "the last samples in both regions",
        Duration::from_secs(30),
        || async {
            let covered = samples.iter().enumerate().all(|(i, s)| {
                let want = s.last().map_or(0, |x| x.1);
                watched.iter().all(|(seen, _)| {
                    seen.lock()
                        .unwrap()
                        .get(&i)
                        .is_some_and(|v| v.iter().any(|(end, _)| *end >= want))
                })
            });
            covered.then_some(())
        },
    )
    .await;
    done.store(true, Ordering::Relaxed);
    let mut lags = Vec::new();
    let mut uncovered = 0;
    for (i, s) in samples.iter().enumerate() {
        for &(at, offset) in s {
            let mut worst: Option<i64> = Some(0);
            for (seen, _) in &watched {
                let seen = seen.lock().unwrap();
                let first = seen.get(&i).and_then(|v| {
                    v.iter()
                        .filter(|(end, _)| *end >= offset)
                        .map(|(_, t)| *t)
                        .min()
                });
                worst = match (worst, first) {
                    (Some(w), Some(f)) => Some(w.max(f)),
                    _ => None,
                };
            }
            match worst {
                Some(t) => lags.push((t - at).max(0) as f64 / 1000.0),
                None => uncovered += 1,
            }
        }
    }
    lags.sort_by(|a, b| a.total_cmp(b));
    let mut cpu = 0.0;
    let mut stream = 0.0;
    for c in children {
        let (summary, secs) = stop(c)?;
        cpu += secs;
        stream += summary["stream_bytes"].as_f64().unwrap_or(0.0) / 1e6;
    }
    for (_, h) in watched {
        let _ = h.join();
    }
    Ok(Row {
        shards,
        rate,
        achieved: writes as f64 / elapsed / shards as f64,
        p50: percentile(&lags, 0.5),
        p99: percentile(&lags, 0.99),
        max: lags.last().copied().unwrap_or(f64::NAN),
        uncovered,
        cpu_per_mb: if stream > 0.0 { cpu / stream } else { f64::NAN },
        cpu_share: cpu / elapsed / shards as f64,
        stream_mb: stream,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleetsnap_agent::install_crypto_provider();
    let args = Args::parse();
    let agent = match &args.agent {
        Some(a) => a.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the benchmark's directory")?
            .join("fleetsnap-agent"),
    };
    let agent = std::fs::canonicalize(&agent).with_context(|| {
        format!(
            "{}: build it with cargo build --release -p fleetsnap-agent",
            agent.display()
        )
    })?;
    let mut rows = Vec::new();
    for &shards in &args.shards {
        for &rate in &args.rate {
            eprintln!("{shards} shards at {rate} writes/s each…");
            rows.push(lag_row(&agent, shards, rate, args.seconds).await?);
        }
    }
    println!(
        "| shards | writes/s per shard (asked) | achieved | lag p50 | lag p99 | lag max | samples not covered | stream MB | archiver CPU-s per MB | archiver CPU, share of a core |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} s | {:.2} s | {:.2} s | {} | {:.1} | {:.3} | {:.0}% |",
            r.shards,
            r.rate,
            r.achieved,
            r.p50,
            r.p99,
            r.max,
            r.uncovered,
            r.stream_mb,
            r.cpu_per_mb,
            r.cpu_share * 100.0
        );
    }
    if args.rto_mib > 0 {
        rto(&agent, args.rto_mib).await?;
    }
    Ok(())
}

/// Runs `restore --at` of shard s0 from `region` with `how` (the form), and gives how long it
/// took and its report.
fn restore_at(
    agent: &Path,
    region: &Path,
    at: &str,
    how: &[&str],
) -> anyhow::Result<(Duration, serde_json::Value)> {
    let t = Instant::now();
    let out = Command::new(agent)
        .args([
            "restore",
            "--cluster",
            "standalone",
            "--shard",
            "s0",
            "--at",
            at,
        ])
        .arg("--from")
        .arg(format!("file://{}", region.display()))
        .args(how)
        .arg("--json")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stderr(Stdio::inherit())
        .output()?;
    let took = t.elapsed();
    if !out.status.success() {
        bail!("restore --at {} failed", how.join(" "));
    }
    Ok((took, serde_json::from_slice(&out.stdout)?))
}

/// The restore-to-time RTO of one shard: a base of `mib` MiB, `mib` MiB of archived writes.
async fn rto(agent: &Path, mib: u64) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let regions = vec![work.path().join("ra"), work.path().join("rb")];
    let server = RedisServer::start_with(RedisOptions::default()).await?;
    let keys = (mib * 1024).to_string();
    server
        .cmd(&["DEBUG", "POPULATE", &keys, "base", "1000"])
        .await?;
    let child = archiver(agent, &server, 0, &regions, work.path())?;
    let base = regions[0].join("standalone");
    poll_until("the base", Duration::from_secs(600), || async {
        let found = std::fs::read_dir(&base)
            .ok()?
            .flatten()
            .any(|d| d.path().join("manifest.json").exists());
        found.then_some(())
    })
    .await?;
    eprintln!("base stored; writing {mib} MiB of commands…");
    let mut conn = server.conn().await?;
    let value = vec![b's'; 1000];
    let total = mib * 1024;
    let mut i = 0;
    while i < total {
        let n = 500.min(total - i);
        let batch: Vec<Vec<Vec<u8>>> = (0..n)
            .map(|j| {
                vec![
                    b"SET".to_vec(),
                    format!("stream:{}", i + j).into_bytes(),
                    value.clone(),
                ]
            })
            .collect();
        conn.send_pipeline(&batch).await?;
        for _ in 0..n {
            conn.read_value().await?;
        }
        i += n;
    }
    let info = conn.info("replication").await?;
    let want: u64 = fleetsnap_agent::redis::info_field(&info, "master_repl_offset")
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let dir = regions[0].join("standalone/archive/s0");
    poll_until(
        "the archive to hold every write",
        Duration::from_secs(600),
        || async {
            let reached = std::fs::read_dir(&dir).ok()?.flatten().any(|r| {
                std::fs::read_dir(r.path()).is_ok_and(|fs| {
                    fs.flatten().any(|f| {
                        f.file_name()
                            .to_string_lossy()
                            .split('-')
                            .nth(1)
                            .and_then(|e| e.parse::<u64>().ok())
                            .is_some_and(|e| e >= want)
                    })
                })
            });
            reached.then_some(())
        },
    )
    .await?;
    let (summary, _) = stop(child)?;
    // The archive's end: every write was received by then.
    let out = Command::new(agent)
        .args(["archive", "status", "--shard", "s0", "--json", "--from"])
        .arg(format!("file://{}", regions[0].display()))
        .output()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let at = status["chains"][0]["end_ms"]
        .as_i64()
        .context("the archive's end")?
        .to_string();
    let expected = match server.cmd(&["DBSIZE"]).await? {
        fleetsnap_agent::redis::Value::Int(n) => n,
        v => bail!("DBSIZE answered {v:?}"),
    };
    drop(server);
    let aof = work.path().join("aof");
    let aof_arg = aof.display().to_string();
    let (fetched, _) = restore_at(agent, &regions[0], &at, &["--aof-dir", &aof_arg])?;
    let floor_dir = work.path().join("floor");
    std::fs::create_dir_all(&floor_dir)?;
    for f in std::fs::read_dir(&aof)? {
        let f = f?;
        std::fs::copy(f.path(), floor_dir.join(f.file_name()))?;
    }
    let load = |dir: PathBuf| async move {
        let t = Instant::now();
        let s = RedisServer::start_with(RedisOptions {
            aof_dir: Some(dir),
            ..Default::default()
        })
        .await?;
        poll_until("loaded", Duration::from_secs(600), || async {
            matches!(
                s.cmd(&["DBSIZE"]).await,
                Ok(fleetsnap_agent::redis::Value::Int(_))
            )
            .then_some(())
        })
        .await?;
        let n = match s.cmd(&["DBSIZE"]).await? {
            fleetsnap_agent::redis::Value::Int(n) => n,
            _ => 0,
        };
        anyhow::Ok((t.elapsed(), n))
    };
    // The floor loads before and after ours (the page cache favours a later load): the faster
    // of the two counts.
    let (floor_a, floor_keys) = load(floor_dir.clone()).await?;
    let (ours_load, ours_keys) = load(aof).await?;
    let (floor_b, _) = load(floor_dir).await?;
    let floor = floor_a.min(floor_b);
    if floor_keys != expected || ours_keys != expected {
        bail!("restored {ours_keys} keys, the floor {floor_keys}, the source had {expected}");
    }
    let ours = fetched + ours_load;
    // The same point with `--replace`: the base streams into the node's own load through a
    // named pipe, then the archive's commands are replayed, pipelined.
    let node = RedisServer::start_with(RedisOptions::default()).await?;
    let (replaced, report) = restore_at(
        agent,
        &regions[0],
        &at,
        &["--replace", &node.url(), "--start", &node.start_command()],
    )?;
    let replaced_keys = match node.cmd(&["DBSIZE"]).await? {
        fleetsnap_agent::redis::Value::Int(n) => n,
        _ => 0,
    };
    if replaced_keys != expected {
        bail!("replace restored {replaced_keys} keys, the source had {expected}");
    }
    println!();
    println!(
        "| restore to a time ({mib} MiB base + {:.0} MB of stream, {expected} keys) | seconds | speed against the floor |",
        summary["stream_bytes"].as_f64().unwrap_or(0.0) / 1e6
    );
    println!("|---|---|---|");
    println!(
        "| floor: redis-server loading the same RDB and commands as an AOF directory in place (the faster of two loads) | {:.2} | 1.00× |",
        floor.as_secs_f64()
    );
    println!(
        "| restore --at to an AOF directory ({:.2} s), then redis-server loading it | {:.2} | {:.2}× |",
        fetched.as_secs_f64(),
        ours.as_secs_f64(),
        floor.as_secs_f64() / ours.as_secs_f64()
    );
    let r = &report["restore"];
    println!(
        "| restore --at --replace: the base streamed into the node's load while the tail is built, then the tail replayed ({}; {:.2} s of the tail after the base) | {:.2} | {:.2}× |",
        r["tail_replayed_as"].as_str().unwrap_or("?"),
        r["tail_seconds"].as_f64().unwrap_or(0.0),
        replaced.as_secs_f64(),
        floor.as_secs_f64() / replaced.as_secs_f64()
    );
    Ok(())
}
