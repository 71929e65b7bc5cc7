//! Window benchmark: the start skew of `simultaneous` windows and the write pause of `consistent`
//! ones at 3, 8 and 16 shards under write load, with the time from a window's opening to every
//! shard stored in two regions; against the seed recipe fired by cron on every host at once
//! (BGSAVE, poll, copy, gzip, copy to two directories), whose skew is the spread of its BGSAVE
//! start times.
//!
//! Every shard is a primary with one replica, each pair watched by its own agent; one coordinator
//! (single-node mode); two `file://` regions. Writers increment a counter on every primary,
//! 10 writes every 10 ms (1,000 per second per shard), for the whole run.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Parser;
use fleetsnap_testkit::data::{Dataset, write_dataset};
use fleetsnap_testkit::fleet::{Agent, Cli, FleetDir, Watched, single_node};
use fleetsnap_testkit::poll_until;
use fleetsnap_testkit::redis::{RedisOptions, ReplicaSet};

#[derive(Parser)]
#[command(about = "Start skew and write pause of backup windows, against cron")]
struct Args {
    /// Shard counts to measure.
    #[arg(long, value_delimiter = ',', default_value = "3,8,16")]
    shards: Vec<usize>,
    /// Windows per consistency mode and shard count.
    #[arg(long, default_value_t = 20)]
    windows: usize,
    /// Small keys per shard.
    #[arg(long, default_value_t = 20_000)]
    keys: usize,
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as i64
}

/// Nearest-rank percentile.
fn pct(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

struct Row {
    shards: usize,
    sim_skew_ms: Vec<f64>,
    sim_done_s: Vec<f64>,
    pause_ms: Vec<f64>,
    round_ms: Vec<f64>,
    cons_done_s: Vec<f64>,
    cron_skew_ms: Vec<f64>,
    cron_done_s: Vec<f64>,
}

fn policy(name: &str, consistency: &str, regions: &[std::path::PathBuf]) -> String {
    format!(
        "name = \"{name}\"\nclusters = [\"bench\"]\nconsistency = \"{consistency}\"\n\
         write_pause_budget_ms = 50\nmin_regions = 2\n\n\
         [[destinations]]\nregion = \"a\"\nurl = \"file://{}\"\n\n\
         [[destinations]]\nregion = \"b\"\nurl = \"file://{}\"\n",
        regions[0].display(),
        regions[1].display()
    )
}

/// Runs one window of `policy` and returns its document.
fn window(cli: &Cli, policy: &str) -> anyhow::Result<serde_json::Value> {
    let (ok, doc) = cli.backup_run(policy)?;
    if !ok {
        bail!("window of {policy} not complete: {doc}");
    }
    Ok(doc)
}

/// Seconds from the window's opening to the set's last manifest.
fn to_complete(doc: &serde_json::Value) -> f64 {
    let opened = doc["opened_at_ms"].as_i64().unwrap_or(0);
    let done = doc["sets"][0]["completed_at_ms"].as_i64().unwrap_or(opened);
    (done - opened) as f64 / 1000.0
}

/// The seed recipe on every "host" at the instant cron fires it; returns the spread of the
/// BGSAVE start times (ms) and the time to the last host's second copy (s).
fn cron_round(sets: &[ReplicaSet], work: &Path) -> anyhow::Result<(f64, f64)> {
    let fire_us = unix_us() + 500_000;
    let mut hosts = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let dir = work.join(format!("host{i}"));
        std::fs::create_dir_all(dir.join("a"))?;
        std::fs::create_dir_all(dir.join("b"))?;
        let port = set.primary.port();
        let dump = set.primary.dir().join("dump.rdb");
        let script = format!(
            "set -e\nredis-cli -p {port} BGSAVE >/dev/null\ndate +%s%6N > {d}/started\n\
             while redis-cli -p {port} INFO persistence | grep -q 'rdb_bgsave_in_progress:1'; do sleep 0.1; done\n\
             redis-cli -p {port} INFO persistence | grep -q 'rdb_last_bgsave_status:ok'\n\
             cp {dump} {d}/dump.rdb\ngzip -f {d}/dump.rdb\n\
             cp {d}/dump.rdb.gz {d}/a/\ncp {d}/dump.rdb.gz {d}/b/\ndate +%s%6N > {d}/finished\n",
            dump = dump.display(),
            d = dir.display()
        );
        // Each host's cron wakes on its own at the same instant.
        hosts.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let wait = fire_us - unix_us();
            if wait > 0 {
                std::thread::sleep(Duration::from_micros(wait as u64));
            }
            let st = Command::new("sh").arg("-c").arg(&script).status()?;
            if !st.success() {
                bail!("the recipe failed on host {i}");
            }
            Ok(())
        }));
    }
    for h in hosts {
        h.join().expect("host thread")?;
    }
    let read = |i: usize, f: &str| -> anyhow::Result<i64> {
        let p = work.join(format!("host{i}")).join(f);
        Ok(std::fs::read_to_string(&p)?.trim().parse()?)
    };
    let mut starts = Vec::new();
    let mut ends = Vec::new();
    for i in 0..sets.len() {
        starts.push(read(i, "started")?);
        ends.push(read(i, "finished")?);
    }
    let skew = (starts.iter().max().unwrap() - starts.iter().min().unwrap()) as f64 / 1000.0;
    let done = (ends.iter().max().unwrap() - fire_us) as f64 / 1e6;
    Ok((skew, done))
}

async fn measure(n: usize, args: &Args) -> anyhow::Result<Row> {
    let ids: Vec<String> = (0..n).map(|i| format!("a{i}")).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let fleet = FleetDir::new(&[1], &id_refs)?;
    let (coordinator, cli) = single_node(&fleet, &Default::default()).await?;
    let mut sets = Vec::new();
    for _ in 0..n {
        let set = ReplicaSet::start(1, RedisOptions::default()).await?;
        write_dataset(
            &set.primary,
            &Dataset {
                small_keys: args.keys,
                big_value_bytes: 0,
            },
        )
        .await?;
        sets.push(set);
    }
    for s in &sets {
        s.wait_synced().await?;
    }
    let coords = vec![coordinator.address.clone()];
    let mut agents = Vec::new();
    for (i, s) in sets.iter().enumerate() {
        let mut a = Agent::configure(
            &fleet,
            &ids[i],
            &coords,
            &[
                Watched::new(format!("p{i}"), s.primary.url(), "bench"),
                Watched::new(format!("r{i}"), s.replicas[0].url(), "bench"),
            ],
            false,
        )?;
        a.start()?;
        agents.push(a);
    }
    poll_until("every shard reported", Duration::from_secs(60), || async {
        let s = cli.json(&["status", "--json"]).ok()?;
        let shards = s["clusters"][0]["shards"].as_array()?.clone();
        (shards.len() == n
            && shards
                .iter()
                .all(|sh| sh["nodes"].as_array().is_some_and(|x| x.len() == 2)))
        .then_some(())
    })
    .await?;
    let regions = [fleet.path().join("region-a"), fleet.path().join("region-b")];
    for (name, consistency) in [("sim", "simultaneous"), ("cut", "consistent")] {
        cli.set_policy(fleet.path(), name, &policy(name, consistency, &regions))?;
    }

    // The write load.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for s in &sets {
        let mut conn = s.primary.conn().await?;
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let batch: Vec<Vec<Vec<u8>>> = (0..10)
                .map(|_| vec![b"INCR".to_vec(), b"load:counter".to_vec()])
                .collect();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                conn.send_pipeline(&batch).await?;
                for _ in 0..batch.len() {
                    conn.read_value().await?;
                }
            }
            anyhow::Ok(())
        }));
    }

    let mut row = Row {
        shards: n,
        sim_skew_ms: Vec::new(),
        sim_done_s: Vec::new(),
        pause_ms: Vec::new(),
        round_ms: Vec::new(),
        cons_done_s: Vec::new(),
        cron_skew_ms: Vec::new(),
        cron_done_s: Vec::new(),
    };
    let work = fleet.path().join("cron");
    for k in 0..args.windows {
        let doc = window(&cli, "sim")?;
        let skew = doc["sets"][0]["skew_us"].as_f64().context("no skew")? / 1000.0;
        row.sim_skew_ms.push(skew);
        row.sim_done_s.push(to_complete(&doc));
        let doc = window(&cli, "cut")?;
        if let Some(f) = doc["cut_failures"].as_array().filter(|f| !f.is_empty()) {
            eprintln!("{n} shards: cut attempts that failed before the one taken: {f:?}");
        }
        row.pause_ms
            .push(doc["cut"]["pause_us"].as_f64().context("no cut")? / 1000.0);
        row.round_ms
            .push(doc["cut"]["round_us"].as_f64().context("no cut")? / 1000.0);
        row.cons_done_s.push(to_complete(&doc));
        let (skew, done) = cron_round(&sets, &work)?;
        row.cron_skew_ms.push(skew);
        row.cron_done_s.push(done);
        eprintln!(
            "{n} shards, round {}: skew {skew_sim:.2} ms, pause {:.2} ms, cron skew {skew:.2} ms",
            k + 1,
            row.pause_ms.last().unwrap(),
            skew_sim = row.sim_skew_ms.last().unwrap()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    drop(agents);
    drop(coordinator);
    Ok(row)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut rows = Vec::new();
    for &n in &args.shards {
        rows.push(measure(n, &args).await?);
    }
    println!(
        "\n{} windows per mode, {} keys per shard, 1,000 writes/s per shard, two file:// regions\n",
        args.windows, args.keys
    );
    println!(
        "| shards | simultaneous skew p50 / p99 | consistent write pause p50 / p99 | (leader round p50 / p99) | complete in 2 regions, simultaneous p50 / p99 | consistent p50 / p99 | cron recipe skew p50 / p99 | cron recipe complete p50 / p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} s | {:.2} / {:.2} s | {:.2} / {:.2} ms | {:.2} / {:.2} s |",
            r.shards,
            pct(&r.sim_skew_ms, 50.0),
            pct(&r.sim_skew_ms, 99.0),
            pct(&r.pause_ms, 50.0),
            pct(&r.pause_ms, 99.0),
            pct(&r.round_ms, 50.0),
            pct(&r.round_ms, 99.0),
            pct(&r.sim_done_s, 50.0),
            pct(&r.sim_done_s, 99.0),
            pct(&r.cons_done_s, 50.0),
            pct(&r.cons_done_s, 99.0),
            pct(&r.cron_skew_ms, 50.0),
            pct(&r.cron_skew_ms, 99.0),
            pct(&r.cron_done_s, 50.0),
            pct(&r.cron_done_s, 99.0),
        );
    }
    println!("\nratios (cron recipe / fleetsnap, p99):");
    for r in &rows {
        println!(
            "  {} shards: start skew {:.1}× larger than simultaneous",
            r.shards,
            pct(&r.cron_skew_ms, 99.0) / pct(&r.sim_skew_ms, 99.0)
        );
    }
    eprintln!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
