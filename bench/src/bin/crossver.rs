//! The online restore across versions against its floor: one Valkey 8.1 backup (RDB 11) restored
//! online into Valkey 8.1, which reads it (`RESTORE`, the floor), and into Redis 7.0, which does
//! not (values re-encoded in the plainest RDB types and sent as `RESTORE`; streams written as
//! commands). The dataset is hashes, lists, sets and sorted sets of `--members` members each, or
//! streams (`--kind streams`); strings would go as batched MSETNX either way. Run with
//! `scripts/bench.sh crossver`; prints a Markdown table (medians of `--repeat` runs).

use fleetsnap_bench::{median, timed as run};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};
use clap::Parser;
use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::RedisServer;
use fleetsnap_testkit::redis::RedisOptions;

#[derive(Parser)]
struct Args {
    /// Keys (a quarter each of hashes, lists, sets and sorted sets).
    #[arg(long, default_value_t = 200_000)]
    keys: u64,
    /// Members of each key (a stream's entries).
    #[arg(long, default_value_t = 10)]
    members: u64,
    /// `mixed`: a quarter each of hashes, lists, sets and sorted sets (re-encoded for Redis 7.0,
    /// then `RESTORE`); `streams`: streams with a consumer group (written as commands).
    #[arg(long, default_value = "mixed", value_parser = ["mixed", "streams"])]
    kind: String,
    /// Runs per row; the table shows the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Where the fleetsnap-agent binary is (built with --release).
    #[arg(long, default_value = "target/release/fleetsnap-agent")]
    agent: PathBuf,
}

async fn dbsize(s: &RedisServer) -> anyhow::Result<i64> {
    match s.cmd(&["DBSIZE"]).await? {
        Value::Int(n) => Ok(n),
        v => bail!("DBSIZE answered {v:?}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let source = RedisServer::start_with(RedisOptions::default().valkey()).await?;
    let mut c = source.conn().await?;
    let mut k = 0u64;
    while k < a.keys {
        let end = (k + 1000).min(a.keys);
        let batch: Vec<Vec<Vec<u8>>> = (k..end)
            .map(|k| {
                let mut cmd: Vec<Vec<u8>> = Vec::new();
                if a.kind == "streams" {
                    // The first entry; the others and the group come after the batch.
                    cmd.push(b"XADD".to_vec());
                    cmd.push(format!("key:{k}").into_bytes());
                    cmd.push(b"*".to_vec());
                    cmd.push(b"n".to_vec());
                    cmd.push(format!("entry-of-{k}-{}", "x".repeat(24)).into_bytes());
                    return cmd;
                }
                let (name, pairs) = match k % 4 {
                    0 => ("HSET", true),
                    1 => ("RPUSH", false),
                    2 => ("SADD", false),
                    _ => ("ZADD", true),
                };
                cmd.push(name.into());
                cmd.push(format!("key:{k}").into_bytes());
                for m in 0..a.members {
                    if pairs {
                        cmd.push(if name == "ZADD" {
                            format!("{}.25", m * 3).into_bytes()
                        } else {
                            format!("field-{m}").into_bytes()
                        });
                    }
                    cmd.push(format!("member-{m}-of-{k}-{}", "x".repeat(24)).into_bytes());
                }
                cmd
            })
            .collect();
        c.send_pipeline(&batch).await?;
        for _ in k..end {
            if let Value::Error(e) = c.read_value().await? {
                bail!("filling the source: {e}");
            }
        }
        if a.kind == "streams" {
            // The other entries, and a group with the first entries pending.
            let mut more: Vec<Vec<Vec<u8>>> = Vec::new();
            for k in k..end {
                let key = format!("key:{k}").into_bytes();
                for m in 1..a.members {
                    more.push(vec![
                        b"XADD".to_vec(),
                        key.clone(),
                        b"*".to_vec(),
                        b"n".to_vec(),
                        format!("entry-{m}-{}", "x".repeat(24)).into_bytes(),
                    ]);
                }
                more.push(vec![
                    b"XGROUP".to_vec(),
                    b"CREATE".to_vec(),
                    key.clone(),
                    b"g".to_vec(),
                    b"0".to_vec(),
                ]);
                more.push(vec![
                    b"XREADGROUP".to_vec(),
                    b"GROUP".to_vec(),
                    b"g".to_vec(),
                    b"c".to_vec(),
                    b"COUNT".to_vec(),
                    b"2".to_vec(),
                    b"STREAMS".to_vec(),
                    key,
                    b">".to_vec(),
                ]);
            }
            c.send_pipeline(&more).await?;
            for _ in 0..more.len() {
                if let Value::Error(e) = c.read_value().await? {
                    bail!("filling the source: {e}");
                }
            }
        }
        k = end;
    }
    let keys = dbsize(&source).await?;
    let work = tempfile::tempdir()?;
    let dest = format!("file://{}", work.path().join("region").display());
    let (_, out) = run(Command::new(&a.agent).args([
        "snapshot",
        "--redis",
        &source.url(),
        "--to",
        &dest,
        "--json",
    ]))?;
    let snap: serde_json::Value = serde_json::from_str(&out)?;
    let id = snap["backup_id"]
        .as_str()
        .context("the snapshot printed no backup_id")?
        .to_string();
    let rdb_mib = snap["raw_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64;

    let valkey = RedisServer::start_with(RedisOptions::default().valkey()).await?;
    let redis = RedisServer::start().await?;
    let mut rows: Vec<(&str, &RedisServer, Vec<f64>)> = vec![
        ("into Valkey 8.1: RESTORE (floor)", &valkey, Vec::new()),
        (
            if a.kind == "streams" {
                "into Redis 7.0: as commands"
            } else {
                "into Redis 7.0: re-encoded, RESTORE"
            },
            &redis,
            Vec::new(),
        ),
    ];
    for _ in 0..a.repeat {
        for (name, target, times) in rows.iter_mut() {
            target.cmd(&["FLUSHALL"]).await?;
            let (t, out) = run(Command::new(&a.agent).args([
                "restore",
                "--from",
                &dest,
                "--backup",
                &id,
                "--online",
                &target.url(),
                "--json",
            ]))?;
            let report: serde_json::Value = serde_json::from_str(&out)?;
            let across = report["shards"][0]["applied"]["across_versions"] == true;
            if across != name.contains("Redis 7.0") {
                bail!("{name}: the restore's across_versions is {across}: {report:#}");
            }
            let n = dbsize(target).await?;
            if n != keys {
                bail!("{name}: {n} keys restored of {keys}");
            }
            times.push(t);
        }
    }
    let floor = median(rows[0].2.clone());
    println!(
        "{keys} keys ({}) of {} members, RDB {rdb_mib:.0} MiB, median of {} runs\n",
        a.kind, a.members, a.repeat
    );
    println!("| restore | seconds | keys/s | speed against the floor |");
    println!("|---|---|---|---|");
    for (name, _, times) in &rows {
        let t = median(times.clone());
        println!(
            "| {name} | {t:.2} | {:.0} | {:.2}x |",
            keys as f64 / t,
            floor / t
        );
    }
    Ok(())
}
