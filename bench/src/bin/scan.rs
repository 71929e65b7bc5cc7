//! The `scan` source's throughput against its floors: `redis-cli --rdb` (the node's own RDB over
//! the replication protocol, what a server that allows SYNC gives) and fleetsnap's replication
//! source, on the same dataset, each to a local file region. Run with `scripts/bench.sh scan`;
//! prints a Markdown table (medians of `--repeat` runs).

use std::path::PathBuf;
use std::process::Command;

use anyhow::bail;
use clap::Parser;
use fleetsnap_bench::{fill, median, timed};
use fleetsnap_testkit::RedisServer;

#[derive(Parser)]
struct Args {
    /// Dataset size in MiB (keys of about 1.1 KB).
    #[arg(long, default_value_t = 512)]
    size_mib: u64,
    /// Runs per row; the table shows the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// `--max-ops-per-sec` of one more scan row (0: no such row).
    #[arg(long, default_value_t = 0)]
    rate: u32,
    /// Where the fleetsnap-agent binary is (built with --release).
    #[arg(long, default_value = "target/release/fleetsnap-agent")]
    agent: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let server = RedisServer::start().await?;
    fill_mib(&server, a.size_mib).await?;
    let keys = match server.cmd(&["DBSIZE"]).await? {
        fleetsnap_agent::redis::Value::Int(n) => n as f64,
        v => bail!("DBSIZE answered {v:?}"),
    };
    let work = tempfile::tempdir()?;
    let rdb = work.path().join("floor.rdb");
    let port = server.port().to_string();
    let mut rows: Vec<(String, Vec<f64>)> = vec![
        ("redis-cli --rdb (floor)".into(), Vec::new()),
        ("fleetsnap replication, zstd:3".into(), Vec::new()),
        ("fleetsnap scan, zstd:3".into(), Vec::new()),
        ("fleetsnap scan, none".into(), Vec::new()),
    ];
    if a.rate > 0 {
        rows.push((
            format!("fleetsnap scan, --max-ops-per-sec {}", a.rate),
            Vec::new(),
        ));
    }
    for round in 0..a.repeat {
        for (i, (_, times)) in rows.iter_mut().enumerate() {
            let dest = format!("file://{}/r{round}-{i}", work.path().display());
            let t = match i {
                0 => {
                    timed(
                        Command::new("redis-cli")
                            .args(["-p", &port, "--rdb"])
                            .arg(&rdb),
                    )?
                    .0
                }
                _ => {
                    let (source, compress) = match i {
                        1 => ("replication", "zstd:3"),
                        3 => ("scan", "none"),
                        _ => ("scan", "zstd:3"),
                    };
                    let mut c = Command::new(&a.agent);
                    c.args(["snapshot", "--redis", &server.url(), "--source", source])
                        .args(["--compress", compress, "--to", &dest]);
                    if i == 4 {
                        c.args(["--max-ops-per-sec", &a.rate.to_string()]);
                    }
                    timed(&mut c)?.0
                }
            };
            times.push(t);
            let _ = std::fs::remove_dir_all(work.path().join(format!("r{round}-{i}")));
        }
    }
    let rdb_bytes = std::fs::metadata(&rdb)?.len() as f64;
    let floor = median(rows[0].1.clone());
    let info = server.cmd(&["INFO", "server"]).await?;
    let version = match info {
        fleetsnap_agent::redis::Value::Bulk(Some(b)) => String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:").map(str::to_string))
            .unwrap_or_default(),
        _ => String::new(),
    };
    println!(
        "{keys} keys, RDB {:.0} MiB, redis-server {version}, median of {} runs\n",
        rdb_bytes / (1 << 20) as f64,
        a.repeat
    );
    println!("| source | seconds | MiB/s of RDB | keys/s | speed against the floor |");
    println!("|---|---|---|---|---|");
    for (name, times) in &rows {
        let t = median(times.clone());
        println!(
            "| {name} | {t:.2} | {:.0} | {:.0} | {:.2}x |",
            rdb_bytes / (1 << 20) as f64 / t,
            keys / t,
            floor / t
        );
    }
    Ok(())
}

/// Fills `server` with about `mib` MiB of 1.1 KB keys.
async fn fill_mib(server: &RedisServer, mib: u64) -> anyhow::Result<()> {
    // `fill` writes whole GiB; a part of one is written by a smaller copy of it.
    if mib >= 1024 {
        return fill(server, mib / 1024).await;
    }
    let keys = mib * (1 << 20) / 1100;
    let mut c = server.conn().await?;
    // Values from a random pool, as `fill` writes them: the RDB is about as large as the data.
    let pool: Vec<u8> = (0..(1 << 20) + 1024)
        .map(|_| rand::random::<u8>())
        .collect();
    let mut i = 0u64;
    while i < keys {
        let end = (i + 2000).min(keys);
        let batch: Vec<Vec<Vec<u8>>> = (i..end)
            .map(|k| {
                let off = (k as usize * 7919) % (1 << 20);
                vec![
                    b"SET".to_vec(),
                    format!("user:{k}:profile").into_bytes(),
                    pool[off..off + 1024].to_vec(),
                ]
            })
            .collect();
        c.send_pipeline(&batch).await?;
        for _ in i..end {
            c.read_value().await?;
        }
        i = end;
    }
    Ok(())
}
