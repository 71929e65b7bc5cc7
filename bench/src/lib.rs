//! What the benchmarks share: the dataset they fill servers with, the median of runs, a
//! command timed.

use anyhow::{Context, bail};
use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::RedisServer;

/// Fills the server with about `gib` GiB of 1 KiB values, half random, half text.
pub async fn fill(server: &RedisServer, gib: u64) -> anyhow::Result<()> {
    let pool: Vec<u8> = (0..(1 << 20) + 1024)
        .map(|_| rand::random::<u8>())
        .collect();
    let keys = gib * (1 << 30) / 1100;
    let mut c = server.conn().await?;
    let mut i = 0u64;
    while i < keys {
        let batch: Vec<Vec<Vec<u8>>> = (i..(i + 2000).min(keys))
            .map(|k| {
                let off = (k as usize * 7919) % (1 << 20);
                let mut v = pool[off..off + 512].to_vec();
                v.extend(format!("user:{k}:profile:").repeat(24).bytes().take(512));
                vec![b"SET".to_vec(), format!("key:{k:012}").into_bytes(), v]
            })
            .collect();
        c.send_pipeline(&batch).await?;
        for _ in &batch {
            if let Value::Error(e) = c.read_value().await? {
                bail!("SET failed: {e}");
            }
        }
        i += batch.len() as u64;
    }
    Ok(())
}

/// The median of runs (the upper one of an even count).
pub fn median<T: PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v.swap_remove(v.len() / 2)
}

/// Runs `cmd` to its end: the seconds it took and its standard output; an error with its
/// output when it fails.
pub fn timed(cmd: &mut std::process::Command) -> anyhow::Result<(f64, String)> {
    let started = std::time::Instant::now();
    let out = cmd.output().context("start the command")?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok((
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}
