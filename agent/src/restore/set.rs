//! Restoring a whole set online: every shard fetched and verified, the target's databases checked
//! before anything is written, then each shard applied key by key.

use fleetsnap_core::outcomes::{OnlineRestoreReport, OnlineShard, RestoreReport};
use std::path::{Path, PathBuf};

use fleetsnap_core::{ObjectKind, ShardEntry, ShardId};

use super::list::*;
use super::online::OnlineOptions;
use super::to_file::*;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::storage::Store;

/// The shards of a backup, from the first destination whose manifest can be read.
async fn shards_of(req: &RestoreRequest) -> Result<Vec<ShardEntry>> {
    let mut why = Vec::new();
    for spec in &req.from {
        let found = async {
            let store = Store::open(spec).await?;
            find_manifest(
                &store,
                &req.backup,
                req.cluster.as_ref(),
                req.shard.as_ref(),
            )
            .await
        }
        .await;
        match found {
            Ok((m, _)) => {
                return match &req.shard {
                    Some(s) => Ok(vec![pick_shard(&m, Some(s))?.clone()]),
                    None => Ok(m.shards),
                };
            }
            Err(e @ Error::Input(_)) => return Err(e),
            Err(e) => why.push(format!("{spec}: {e}")),
        }
    }
    Err(Error::Failed(format!(
        "backup {} has no readable manifest in any destination:\n  {}",
        req.backup,
        why.join("\n  ")
    )))
}

/// A shard's verified copy in a scratch directory of its own, removed when dropped.
struct Fetched {
    read: RestoreReport,
    scratch: PathBuf,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.scratch).ok();
    }
}

/// Fetches one shard's verified copy (with fallback across destinations) into a new scratch
/// directory under `work_dir`.
async fn fetch_shard(
    req: &RestoreRequest,
    shard: &ShardId,
    work_dir: Option<&Path>,
) -> Result<Fetched> {
    let base = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let scratch = base.join(format!(
        "fleetsnap-restore-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::file("cannot create the scratch directory", &scratch, e))?;
    let one = RestoreRequest {
        from: req.from.clone(),
        backup: req.backup.clone(),
        cluster: req.cluster.clone(),
        shard: Some(shard.clone()),
        to_file: scratch.join("shard.rdb"),
        aof_dir: false,
        identity: req.identity.clone(),
        sync: false,
        force: true,
        archive_tail: req.archive_tail.clone(),
    };
    match restore(&one).await {
        Ok(read) => Ok(Fetched { read, scratch }),
        Err(e) => {
            std::fs::remove_dir_all(&scratch).ok();
            Err(e)
        }
    }
}

/// Restores into a running server: one shard, or every shard of the set when none is named (a
/// cluster's set into a cluster of any shape).
///
/// Nothing is written until every database the set's keys live in is known to exist on the
/// target: from the manifest's counts, or, for shards without them or with a tail, from the
/// fetched copies themselves (those are fetched first and kept). Then each shard's verified copy
/// is fetched (falling back across destinations like `restore`) into a scratch directory under
/// `work_dir`, applied key by key, its tail replayed, and the scratch directory removed. Keys
/// that already exist are left alone and counted; every shard is still restored.
pub async fn restore_online(
    req: RestoreRequest,
    work_dir: Option<&Path>,
    target: &RedisTarget,
    opts: &OnlineOptions,
) -> Result<OnlineRestoreReport> {
    let started = std::time::Instant::now();
    let shards = shards_of(&req).await?;
    let mut needed: std::collections::BTreeMap<u64, String> = Default::default();
    let mut early: std::collections::HashMap<ShardId, Fetched> = Default::default();
    for entry in &shards {
        let has_tail =
            req.archive_tail.is_some() || entry.objects.iter().any(|o| o.kind == ObjectKind::Tail);
        match (&entry.dbs, has_tail) {
            (Some(dbs), false) => {
                for d in dbs.iter().filter(|d| d.keys > 0) {
                    needed
                        .entry(d.db)
                        .or_insert_with(|| format!("{} keys of shard {}", d.keys, entry.shard));
                }
            }
            _ => {
                let f = fetch_shard(&req, &entry.shard, work_dir).await?;
                let tail = f.read.tail_file.as_ref().map(PathBuf::from);
                let rdb = PathBuf::from(&f.read.rdb_file);
                let found = tokio::task::spawn_blocking(move || {
                    super::online::databases_in(&rdb, tail.as_deref())
                })
                .await
                .map_err(|e| {
                    Error::Failed(format!("reading the copy's databases failed: {e}"))
                })??;
                for (db, first) in found {
                    needed
                        .entry(db)
                        .or_insert_with(|| format!("{first} of shard {}", entry.shard));
                }
                early.insert(entry.shard.clone(), f);
            }
        }
    }
    super::online::check_databases(target, &needed, opts).await?;
    let mut out = OnlineRestoreReport {
        shards: Vec::new(),
        keys: 0,
        rdb_bytes: 0,
        conflicts: 0,
        seconds: 0.0,
    };
    for entry in &shards {
        let fetched = match early.remove(&entry.shard) {
            Some(f) => f,
            None => fetch_shard(&req, &entry.shard, work_dir).await?,
        };
        let tail = fetched.read.tail_file.as_ref().map(PathBuf::from);
        let rdb = PathBuf::from(&fetched.read.rdb_file);
        let applied = super::online::restore_online(&rdb, tail.as_deref(), target, opts).await?;
        out.keys += applied.keys;
        out.rdb_bytes += applied.rdb_bytes;
        out.conflicts += applied.conflicts;
        out.shards.push(OnlineShard {
            read: fetched.read.clone(),
            applied,
        });
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}
