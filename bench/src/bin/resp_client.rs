//! The online restore's hot path, pipelined `RESTORE`, through fleetsnap's own RESP connection
//! and through the `redis` crate, against the same server, run for run: the figures behind the
//! choice of client in ARCHITECTURE.md.
//!
//! Both write 512 KiB batches and keep two in flight, as the online restore does: ours writes a
//! batch, then reads the replies of the one before; the `redis` crate sends each batch as a
//! pipeline on a multiplexed connection, two at a time.
//!
//! Then a hostile node: a listener that answers a command with a status line that never ends
//! (256 MiB without CRLF, then it closes). The table shows how much each client's process grew
//! while reading it. Run with `scripts/bench.sh client`.

use fleetsnap_bench::median;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use fleetsnap_agent::redis::{RedisTarget, Value};
use fleetsnap_testkit::RedisServer;

#[derive(Parser)]
struct Args {
    /// Keys restored per run.
    #[arg(long, default_value_t = 500_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    value_bytes: usize,
    /// Runs per client; the table shows the median.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

/// Bytes of commands per batch (the online restore's `BATCH_BYTES`).
const BATCH_BYTES: usize = 512 * 1024;

fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// The keys, each batch's first and one-past-last index.
fn batches(keys: &[Vec<u8>], payload: &[u8]) -> Vec<(usize, usize)> {
    let per = (BATCH_BYTES / (payload.len() + 40)).max(1);
    (0..keys.len())
        .step_by(per)
        .map(|i| (i, (i + per).min(keys.len())))
        .collect()
}

async fn ours(target: &RedisTarget, keys: &[Vec<u8>], payload: &[u8]) -> anyhow::Result<()> {
    let mut conn = fleetsnap_agent::redis::Connection::connect(target).await?;
    let mut in_flight: std::collections::VecDeque<usize> = Default::default();
    let mut buf = Vec::with_capacity(BATCH_BYTES + 64 * 1024);
    for (from, to) in batches(keys, payload) {
        for k in &keys[from..to] {
            encode(&mut buf, &[b"RESTORE", k, b"0", payload, b"REPLACE"]);
        }
        conn.write_all(&buf).await?;
        buf.clear();
        in_flight.push_back(to - from);
        if in_flight.len() > 1 {
            let n = in_flight.pop_front().expect("one in flight");
            read_replies(n, &mut conn).await?;
        }
    }
    while let Some(n) = in_flight.pop_front() {
        read_replies(n, &mut conn).await?;
    }
    Ok(())
}

async fn read_replies(
    n: usize,
    conn: &mut fleetsnap_agent::redis::Connection,
) -> anyhow::Result<()> {
    for _ in 0..n {
        if let Some(Value::Error(e)) = conn.read_ok_or_value().await? {
            bail!("RESTORE refused: {e}");
        }
    }
    Ok(())
}

async fn redis_crate(url: &str, keys: &[Vec<u8>], payload: &[u8]) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let conn = client.get_multiplexed_async_connection().await?;
    let mut pending: std::collections::VecDeque<tokio::task::JoinHandle<redis::RedisResult<()>>> =
        Default::default();
    for (from, to) in batches(keys, payload) {
        let mut pipe = redis::pipe();
        for k in &keys[from..to] {
            pipe.cmd("RESTORE")
                .arg(k.as_slice())
                .arg(0)
                .arg(payload)
                .arg("REPLACE")
                .ignore();
        }
        let mut c = conn.clone();
        pending.push_back(tokio::spawn(
            async move { pipe.query_async::<()>(&mut c).await },
        ));
        if pending.len() > 1 {
            pending.pop_front().expect("one pending").await??;
        }
    }
    while let Some(p) = pending.pop_front() {
        p.await??;
    }
    Ok(())
}

/// Bytes the hostile node sends in its one line.
const HOSTILE_LINE: usize = 256 << 20;

/// A listener on loopback that answers anything with `+` and [`HOSTILE_LINE`] bytes of `a`, no
/// CRLF, then closes. Its address.
async fn hostile_node() -> anyhow::Result<std::net::SocketAddr> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let chunk = vec![b'a'; 1 << 20];
                let _ = s.write_all(b"+").await;
                for _ in 0..HOSTILE_LINE / chunk.len() {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// This process's peak resident memory (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// Each client asks the hostile node for `PING`: what it answered and how much the process's
/// peak memory grew meanwhile. Ours runs first, so its growth is not hidden by the other's.
async fn hostile_rows() -> anyhow::Result<Vec<(&'static str, String, u64)>> {
    let addr = hostile_node().await?;
    let url = format!("redis://{addr}");
    let mut rows = Vec::new();
    let before = peak_rss();
    let target = RedisTarget::parse(&url)?;
    let ours = async {
        let mut c = fleetsnap_agent::redis::Connection::connect(&target).await?;
        c.command(&[b"PING"]).await
    };
    let answer = match tokio::time::timeout(Duration::from_secs(60), ours).await {
        Ok(Ok(v)) => format!("answered {} bytes", v.text().map_or(0, |t| t.len())),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(_) => "still reading after 60 s".into(),
    };
    let after = peak_rss();
    rows.push(("fleetsnap Connection", answer, after.saturating_sub(before)));
    let theirs = async {
        let client = redis::Client::open(url.as_str())?;
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<redis::Value>(&mut c).await
    };
    let answer = match tokio::time::timeout(Duration::from_secs(60), theirs).await {
        Ok(Ok(redis::Value::SimpleString(s))) => format!("answered {} bytes", s.len()),
        Ok(Ok(v)) => format!("answered {v:?}"),
        Ok(Err(e)) => format!("refused: {e}"),
        Err(_) => "still reading after 60 s".into(),
    };
    rows.push((
        "redis crate (multiplexed)",
        answer,
        peak_rss().saturating_sub(after),
    ));
    Ok(rows)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fleetsnap_agent::install_crypto_provider();
    let args = Args::parse();
    let server = RedisServer::start().await?;
    // Random bytes, so the server cannot compress the value and the payload stays its size.
    let value: Vec<u8> = (0..args.value_bytes)
        .map(|_| rand::random::<u8>())
        .collect();
    let mut conn = server.conn().await?;
    conn.checked(&[b"SET", b"probe", &value]).await?;
    let payload = match conn.command(&[b"DUMP", b"probe"]).await? {
        Value::Bulk(Some(p)) => p,
        v => bail!("DUMP gave {v:?}"),
    };
    let keys: Vec<Vec<u8>> = (0..args.keys)
        .map(|i| format!("key:{i:08}").into_bytes())
        .collect();
    let target = RedisTarget::parse(&server.url()).context("the server's URL")?;
    let bytes = (keys.len() * (payload.len() + 40)) as f64;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for round in 0..args.repeat {
        for which in 0..2 {
            server.cmd(&["FLUSHALL"]).await?;
            let t = Instant::now();
            if which == 0 {
                ours(&target, &keys, &payload).await?;
            } else {
                redis_crate(&server.url(), &keys, &payload).await?;
            }
            let wall = t.elapsed();
            let n = server.cmd(&["DBSIZE"]).await?;
            anyhow::ensure!(
                matches!(n, Value::Int(n) if n as usize == keys.len()),
                "run {round} lost keys: DBSIZE {n:?}"
            );
            eprintln!(
                "round {}: {} {:.2} s",
                round + 1,
                ["ours", "redis crate"][which],
                wall.as_secs_f64()
            );
            [&mut a, &mut b][which].push(wall);
        }
    }
    let (ma, mb) = (median(a.clone()), median(b.clone()));
    println!(
        "\n{} keys of {} bytes, RESTORE … REPLACE in 512 KiB batches, two in flight; median of {} runs\n",
        keys.len(),
        args.value_bytes,
        args.repeat
    );
    println!("| client | wall (s) | MB/s of commands | each run (s) | × ours |");
    println!("|---|---|---|---|---|");
    for (name, m, runs) in [
        ("fleetsnap Connection", ma, &a),
        ("redis crate (multiplexed)", mb, &b),
    ] {
        println!(
            "| {name} | {:.2} | {:.0} | {} | {:.3} |",
            m.as_secs_f64(),
            bytes / 1e6 / m.as_secs_f64(),
            runs.iter()
                .map(|r| format!("{:.2}", r.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            m.as_secs_f64() / ma.as_secs_f64()
        );
    }
    println!(
        "\nA hostile node answers PING with a status line of {} MiB that never ends:\n",
        HOSTILE_LINE >> 20
    );
    println!("| client | outcome | peak memory grew by |");
    println!("|---|---|---|");
    for (name, outcome, grew) in hostile_rows().await? {
        let outcome: String = outcome
            .replace('\n', " ")
            .trim()
            .chars()
            .take(120)
            .collect();
        println!(
            "| {name} | {outcome} | {:.1} MiB |",
            grew as f64 / (1 << 20) as f64
        );
    }
    Ok(())
}
