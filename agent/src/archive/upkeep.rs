//! Upkeep of the archive in the regions: where the newest chain ends (for an archiver that takes
//! over), and pruning the segments no kept stretch needs.

use std::path::Path;
use std::time::Duration;

use fleetsnap_core::archive::db_at;
use fleetsnap_core::window::unix_ms;
use fleetsnap_core::{ClusterId, ShardId};
use serde::Serialize;

use super::read::holdings;
use crate::error::{Error, Result};
use crate::storage::DestSpec;

/// Where the newest chain of a shard's archive ends, as the regions hold it: a new archiver (on
/// another agent, or one whose spool was lost) continues it from there with `PSYNC`, so a
/// takeover leaves no gap while the node's backlog still holds the offset. `None` when the
/// archive holds no chain with a segment.
pub async fn chain_end(
    from: &[DestSpec],
    cluster: &ClusterId,
    shard: &ShardId,
    identity: Option<&Path>,
) -> Result<Option<super::Position>> {
    let h = holdings(from, cluster, shard).await?;
    let Some(chain) = h
        .chains()
        .into_iter()
        .filter(|c| !c.segments.is_empty())
        .max_by_key(|c| c.end_ms)
    else {
        return Ok(None);
    };
    let last = chain.segments.last().expect("a segment").clone();
    let seg = h.read(&last, identity, &mut Vec::new()).await?;
    let hd = &seg.header;
    let db =
        db_at(seg.stream(), hd.start, hd.db, hd.end).map_err(|e| Error::Failed(e.to_string()))?;
    Ok(Some(super::Position {
        replid: hd.replid.clone(),
        offset: hd.end,
        db,
        at_ms: hd.last_ms,
    }))
}

/// What `prune` did (or, dry, would do).
#[derive(Clone, Debug, Serialize)]
pub struct PruneReport {
    /// The oldest time kept restorable (Unix ms).
    pub keep_from_ms: i64,
    /// The base the kept stretch starts from, if any.
    pub kept_base: Option<String>,
    /// Segment keys deleted (or to delete), per region.
    pub deleted: Vec<String>,
    /// Segments kept.
    pub kept: usize,
    /// Deletions that failed (an Object Lock, a region down), with why.
    pub failed: Vec<String>,
}

/// Deletes the segments of a shard's archive that no time from `keep` ago until now needs: those
/// of chains that end before then, and those before the latest base at or before then in the
/// chain that reaches it. A chain a kept base needs is never cut; bases are backups, left to the
/// catalog's retention.
pub async fn prune(
    from: &[DestSpec],
    cluster: &ClusterId,
    shard: &ShardId,
    keep: Duration,
    dry_run: bool,
) -> Result<PruneReport> {
    let h = holdings(from, cluster, shard).await?;
    let now = unix_ms(time::OffsetDateTime::now_utc());
    let cutoff = now - keep.as_millis() as i64;
    let chains = h.chains();
    // The stretch that must stay: from the latest base at or before the cutoff in a chain that
    // reaches it (or, without one, every chain that ends after the cutoff, whole).
    let anchor = chains
        .iter()
        .filter(|c| c.base.at_ms <= cutoff && c.end_ms >= cutoff)
        .max_by_key(|c| c.base.at_ms);
    let mut needed = std::collections::BTreeSet::new();
    for c in &chains {
        let whole = c.end_ms >= cutoff && anchor.is_none_or(|a| c.base.at_ms >= a.base.at_ms);
        if whole {
            needed.extend(c.segments.iter().map(|s| s.key.clone()));
        }
    }
    let mut report = PruneReport {
        keep_from_ms: cutoff,
        kept_base: anchor.map(|a| a.base.backup_id.clone()),
        deleted: Vec::new(),
        kept: 0,
        failed: Vec::new(),
    };
    for (name, regions) in h.segments.values() {
        // Segments newer than the cutoff stay whatever chain they are in (an archiver may still
        // be writing the chain they belong to).
        if needed.contains(&name.key) || name.last_ms >= cutoff {
            report.kept += 1;
            continue;
        }
        let file = name
            .key
            .rsplit_once('/')
            .map_or(name.key.as_str(), |(_, n)| n);
        for &i in regions {
            let store = &h.stores[i];
            let key = format!(
                "{}/{}/{file}",
                fleetsnap_core::archive::archive_dir(store.spec().prefix(), cluster, shard),
                name.replid
            );
            if dry_run {
                report.deleted.push(format!("{store} {key}"));
                continue;
            }
            match store.delete(&key).await {
                Ok(()) => report.deleted.push(format!("{store} {key}")),
                Err(e) => report.failed.push(format!("{store} {key}: {e}")),
            }
        }
    }
    Ok(report)
}
