//! Exact points: every primary of a cluster paused for writes, one after the other, each one's
//! replication offset read once all are paused, then released, and the offsets stored in every
//! region. A write to one shard that followed a write to another can then not be restored
//! without it: restoring every shard to its offset gives one instant of the whole cluster.

use std::time::Instant;

use bytes::Bytes;
use fleetsnap_core::archive::{ExactPoint, PointShard, SEGMENT_FORMAT, point_key};
use fleetsnap_core::window::unix_ms;
use fleetsnap_core::{ClusterId, ShardId};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::redis::{Connection, RedisTarget, Value, info_field};
use crate::storage::{DestSpec, Store};

/// Takes an exact point of `nodes` (each shard's primary) and stores it in every region; writes
/// are paused at most `budget_ms` (Redis lifts the pause by itself after that, whatever happens
/// here). Fails, storing nothing, when a node refuses or answers too late.
pub async fn mark(
    cluster: &ClusterId,
    nodes: &[(ShardId, RedisTarget)],
    to: &[DestSpec],
    budget_ms: u64,
) -> Result<ExactPoint> {
    if nodes.is_empty() || to.is_empty() {
        return Err(Error::Input(
            "an exact point needs every primary (--node SHARD=URL) and at least one --to DEST"
                .into(),
        ));
    }
    let mut conns = Vec::new();
    for (_, t) in nodes {
        conns.push(Connection::connect(t).await?);
    }
    let budget = budget_ms.to_string();
    let at_ms = unix_ms(OffsetDateTime::now_utc());
    let started = Instant::now();
    let mut paused = Vec::new();
    let mut outcome = Ok(());
    for (c, (shard, _)) in conns.iter_mut().zip(nodes) {
        match c
            .command(&[b"CLIENT", b"PAUSE", budget.as_bytes(), b"WRITE"])
            .await
        {
            Ok(Value::Error(e)) => {
                outcome = Err(Error::redis(
                    c.target(),
                    format!(
                        "shard {shard} refused CLIENT PAUSE ({e}): an exact point needs Redis 6.2 or later and +client"
                    ),
                ));
                break;
            }
            Ok(_) => paused.push(()),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let mut shards = Vec::new();
    if outcome.is_ok() {
        for (c, (shard, _)) in conns.iter_mut().zip(nodes) {
            match c.info("replication").await {
                Ok(info) => {
                    let replid = info_field(&info, "master_replid").unwrap_or_default();
                    let offset =
                        info_field(&info, "master_repl_offset").and_then(|o| o.parse().ok());
                    match (info_field(&info, "role"), offset) {
                        (Some("master"), Some(offset)) => shards.push(PointShard {
                            shard: shard.clone(),
                            replid: replid.to_string(),
                            offset,
                        }),
                        _ => {
                            outcome = Err(Error::redis(
                                c.target(),
                                format!(
                                    "the node given for shard {shard} is not a primary with an offset: an exact point reads each shard's primary"
                                ),
                            ));
                            break;
                        }
                    }
                }
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
    }
    let pause = started.elapsed();
    for c in conns.iter_mut().take(paused.len()) {
        let _ = c.command(&[b"CLIENT", b"UNPAUSE"]).await;
    }
    outcome?;
    if pause.as_millis() as u64 >= budget_ms {
        return Err(Error::Failed(format!(
            "the pause took {} ms, over its budget of {budget_ms} ms: Redis may have lifted it before every offset was read; no point stored",
            pause.as_millis()
        )));
    }
    let point = ExactPoint {
        format: SEGMENT_FORMAT,
        cluster: cluster.clone(),
        at_ms,
        pause_us: pause.as_micros() as u64,
        shards,
    };
    let failed = store_point(&point, to).await?;
    for f in failed {
        tracing::warn!(error = %f, "an exact point could not be stored");
    }
    Ok(point)
}

/// Stores an exact point in every region of `to`; the regions that did not take it, with why.
/// Fails when none did.
pub async fn store_point(point: &ExactPoint, to: &[DestSpec]) -> Result<Vec<String>> {
    let body = Bytes::from(serde_json::to_vec_pretty(point).expect("serialises"));
    let mut failed = Vec::new();
    for d in to {
        let put = async {
            Store::open(d)
                .await?
                .put(
                    &point_key(d.prefix(), &point.cluster, point.at_ms),
                    body.clone(),
                )
                .await
        };
        if let Err(e) = put.await {
            failed.push(format!("{d}: {e}"));
        }
    }
    if failed.len() == to.len() {
        return Err(Error::Failed(format!(
            "the exact point could not be stored in any region: {}",
            failed.join("; ")
        )));
    }
    Ok(failed)
}

/// The latest exact point of `cluster` at or before `at_ms` in any of the regions.
pub async fn latest_point(
    from: &[DestSpec],
    cluster: &ClusterId,
    at_ms: i64,
) -> Result<ExactPoint> {
    let mut best: Option<ExactPoint> = None;
    for d in from {
        let store = Store::open(d).await?;
        let dir =
            fleetsnap_core::manifest::join_key(d.prefix(), &format!("{cluster}/archive-points"));
        let Ok(keys) = store.list(&format!("{dir}/")).await else {
            continue;
        };
        for key in keys {
            let Some(ms) = key
                .strip_prefix(&format!("{dir}/"))
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<i64>().ok())
            else {
                continue;
            };
            if ms > at_ms || best.as_ref().is_some_and(|b| b.at_ms >= ms) {
                continue;
            }
            match store.get_all(&key).await.and_then(|b| {
                ExactPoint::from_json(&b).map_err(|e| Error::storage(&store, format!("{key}: {e}")))
            }) {
                Ok(p) if p.at_ms == ms && p.cluster == *cluster => best = Some(p),
                Ok(_) => tracing::warn!(%key, "an exact point does not match its name; skipped"),
                Err(e) => {
                    tracing::warn!(%key, error = %e, "an exact point could not be read; skipped")
                }
            }
        }
    }
    best.ok_or_else(|| {
        Error::Input(format!(
            "no exact point of cluster {cluster} at or before that time in the regions given: take them with `archive mark`, or restore --at without --exact"
        ))
    })
}
