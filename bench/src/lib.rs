//! What the benchmarks share: the dataset they fill servers with.

use anyhow::bail;
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
