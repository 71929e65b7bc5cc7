//! Restores from the archive, shared by `fleetsnap-agent restore --at|--before` and the
//! coordinator's restore jobs: a shard's read request with the tail that brings its base to the
//! point, and a whole cluster restored online to one time, to an exact point, or each shard to
//! just before its own found command.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fleetsnap_core::archive::{ExactPoint, Wanted};
use fleetsnap_core::{ClusterId, ShardId};
use serde::Serialize;

use super::owners::Owners;
use super::points::latest_point;
use super::read::{Found, PointInTime, Target, base_id, find, shards};
use super::tail::{ArchiveTail, plan};
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::restore::{KeepKey, OnlineOptions, OnlineRestoreReport, RestoreRequest, restore_online};
use crate::storage::DestSpec;

/// Where a restore from the archive reads.
#[derive(Clone, Debug)]
pub struct PointSource {
    /// Every region to read (a segment damaged in one is read from another).
    pub from: Vec<DestSpec>,
    /// The cluster.
    pub cluster: ClusterId,
    /// age identity file for an encrypted archive.
    pub identity: Option<PathBuf>,
}

/// How many shards' tails a cluster restore builds at once.
const TAILS_AT_ONCE: usize = 4;

/// What to restore a cluster's shards to: one time, the latest exact point at or before a time,
/// or each shard to just before its own found command (`SHARD@REPLID:OFFSET`).
#[derive(Clone, Debug)]
pub enum ClusterTarget {
    /// `--at T`.
    At(i64),
    /// `--at T --exact`.
    Exact(i64),
    /// `--before SHARD@REPLID:OFFSET`, one per shard.
    Before(Vec<String>),
}

/// A cluster restored online to a point.
#[derive(Debug, Serialize)]
pub struct ClusterRestored {
    /// The exact point restored to, when one was.
    pub exact_point: Option<ExactPoint>,
    /// Each shard: its name, where it was restored to, and the restore.
    pub shards: Vec<ShardRestored>,
    /// The spread of the shards' last commands' stamps (ms).
    pub stamp_spread_ms: i64,
    /// Slots that were moving between shards around the time (`0-5,9`; empty when none, and
    /// for an exact point, where writes were paused): their keys may be on two shards or none.
    pub moving_slots: String,
}

/// One shard of [`ClusterRestored`].
#[derive(Debug, Serialize)]
pub struct ShardRestored {
    /// The shard.
    pub shard: String,
    /// What its time resolved to.
    pub point_in_time: PointInTime,
    /// The restore.
    pub restore: OnlineRestoreReport,
}

/// The target of one shard of an exact point.
pub fn point_target(point: &ExactPoint, shard: &ShardId) -> Result<Target> {
    let s = point
        .shards
        .iter()
        .find(|s| s.shard == *shard)
        .ok_or_else(|| {
            Error::Input(format!(
                "the exact point of {} has no shard {shard}",
                fleetsnap_core::window::from_unix_ms(point.at_ms)
            ))
        })?;
    Ok(Target::Before {
        replid: s.replid.clone(),
        offset: s.offset,
    })
}

impl PointSource {
    /// The commands `wanted` names in every shard of the archive (or in `shard`), received
    /// between `since` and `until` (Unix ms), oldest first.
    pub async fn find(
        &self,
        shard: Option<&ShardId>,
        wanted: &Wanted,
        since: i64,
        until: i64,
    ) -> Result<Vec<Found>> {
        let shards = match shard {
            Some(s) => vec![s.clone()],
            None => shards(&self.from, &self.cluster).await?,
        };
        let mut found = Vec::new();
        for s in &shards {
            found.extend(
                find(
                    &self.from,
                    &self.cluster,
                    s,
                    wanted,
                    since,
                    until,
                    self.identity.as_deref(),
                )
                .await?,
            );
        }
        found.sort_by(|a, b| (a.time_ms, &a.shard, a.offset).cmp(&(b.time_ms, &b.shard, b.offset)));
        Ok(found)
    }

    /// `shard` resolved to `target`: the request that reads its base with the archive's tail
    /// (built in a directory of its own under `work_dir`, by a task that starts now: the base
    /// is fetched meanwhile); where the copy goes is the caller's.
    pub async fn shard(
        &self,
        shard: &ShardId,
        target: &Target,
        work_dir: Option<&Path>,
    ) -> Result<(RestoreRequest, ArchiveTail)> {
        let plan = plan(
            &self.from,
            &self.cluster,
            shard,
            target,
            self.identity.as_deref(),
        )
        .await?;
        let dir = match work_dir {
            Some(d) => tempfile::tempdir_in(d),
            None => tempfile::tempdir(),
        }
        .map_err(|e| {
            Error::Input(format!(
                "cannot create a directory for the archive's tail: {e}"
            ))
        })?;
        let backup = base_id(plan.base())?;
        let tail = ArchiveTail::start(plan, dir);
        let req = RestoreRequest {
            from: self.from.clone(),
            backup,
            cluster: Some(self.cluster.clone()),
            shard: Some(shard.clone()),
            to_file: PathBuf::new(),
            aof_dir: false,
            identity: self.identity.clone(),
            sync: true,
            // Scratch and staged copies are the agent's own; --to-file and --aof-dir say.
            force: true,
            archive_tail: Some(tail.clone()),
        };
        Ok((req, tail))
    }

    /// What each shard (`only`, or every shard the regions hold an archive of) is restored to.
    pub async fn targets(
        &self,
        only: Option<&ShardId>,
        to: &ClusterTarget,
    ) -> Result<(Vec<(ShardId, Target)>, Option<ExactPoint>)> {
        let all = match only {
            Some(s) => vec![s.clone()],
            None => shards(&self.from, &self.cluster).await?,
        };
        match to {
            ClusterTarget::At(t) => {
                Ok((all.into_iter().map(|s| (s, Target::At(*t))).collect(), None))
            }
            ClusterTarget::Exact(t) => {
                let p = latest_point(&self.from, &self.cluster, *t).await?;
                let mut out = Vec::new();
                for s in all {
                    let t = point_target(&p, &s)?;
                    out.push((s, t));
                }
                Ok((out, Some(p)))
            }
            ClusterTarget::Before(handles) => {
                let mut by_shard = BTreeMap::new();
                for b in handles {
                    match Target::parse_before(b)? {
                        (Some(shard), t) => {
                            by_shard.insert(shard, t);
                        }
                        (None, t) if only.is_some() && handles.len() == 1 => {
                            by_shard.insert(only.cloned().expect("checked"), t);
                        }
                        (None, _) => {
                            return Err(Error::Input(format!(
                                "--before {b} names no shard: give each shard's SHARD@REPLID:OFFSET as `archive find` prints it"
                            )));
                        }
                    }
                }
                let missing: Vec<String> = all
                    .iter()
                    .filter(|s| !by_shard.contains_key(*s))
                    .map(|s| s.to_string())
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::Input(format!(
                        "--before names no command for shard(s) {}: give one per shard, or restore --at a time",
                        missing.join(", ")
                    )));
                }
                Ok((
                    all.into_iter()
                        .map(|s| {
                            let t = by_shard.remove(&s).expect("checked");
                            (s, t)
                        })
                        .collect(),
                    None,
                ))
            }
        }
    }

    /// The shards `targets` names, each restored online into `target` in turn.
    pub async fn restore_online(
        &self,
        targets: Vec<(ShardId, Target)>,
        exact_point: Option<ExactPoint>,
        target: &RedisTarget,
        work_dir: Option<&Path>,
        opts: &OnlineOptions,
    ) -> Result<ClusterRestored> {
        // Each shard's tail, a few at a time (each holds up to three segments in memory while
        // it is built): which shard holds a key a migration moved (see `owners`) is known only
        // once every point is.
        let mut started = Vec::new();
        let mut points = Vec::new();
        let mut targets = targets.into_iter().peekable();
        while targets.peek().is_some() {
            let mut batch = Vec::new();
            for (shard, t) in targets.by_ref().take(TAILS_AT_ONCE) {
                batch.push((shard.clone(), self.shard(&shard, &t, work_dir).await?));
            }
            for (shard, (req, point)) in batch {
                points.push(point.ready().await?);
                started.push((shard, req, point));
            }
        }
        let owners = Arc::new(Owners::new(&points));
        let mut shards = Vec::new();
        for (i, ((shard, req, _tail), point_in_time)) in started.into_iter().zip(points).enumerate()
        {
            let mut opts = opts.clone();
            if owners.any() {
                let owners = owners.clone();
                opts.keep = Some(KeepKey(Arc::new(move |k: &[u8]| owners.keeps(i, k))));
            }
            let restore = restore_online(req, work_dir, target, &opts).await?;
            shards.push(ShardRestored {
                shard: shard.to_string(),
                point_in_time,
                restore,
            });
        }
        let stamps: Vec<i64> = shards.iter().map(|s| s.point_in_time.stamp_ms).collect();
        let stamp_spread_ms = stamps.iter().max().unwrap_or(&0) - stamps.iter().min().unwrap_or(&0);
        let mut moving: Vec<u16> = shards
            .iter()
            .flat_map(|s| s.point_in_time.moving_slots.iter().copied())
            .collect();
        moving.sort_unstable();
        let moving_slots = if exact_point.is_some() {
            String::new()
        } else {
            fleetsnap_core::topology::format_slots(&fleetsnap_core::topology::slot_ranges(&moving))
        };
        Ok(ClusterRestored {
            exact_point,
            shards,
            stamp_spread_ms,
            moving_slots,
        })
    }
}
