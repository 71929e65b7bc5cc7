//! Catalog tasks on stored sets, which the coordinator hands to an agent because agents hold the
//! regions' credentials: repair a region from another, verify, delete, scan for manifests, and
//! collect what crashed uploads left behind.

use bytes::Bytes;
use fleetsnap_core::manifest::{self, MANIFEST_NAME};
use fleetsnap_core::window::{CatalogTask, JobResult, RegionResult, RegionUrl, ScannedSet};
use fleetsnap_core::{BackupId, ClusterId, Manifest};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{DestSpec, Store};

/// Runs a task; per-region failures are in the result, not errors.
pub async fn run(task: CatalogTask) -> Result<JobResult> {
    Ok(match task {
        CatalogTask::Repair {
            cluster,
            backup_id,
            from,
            to,
        } => {
            let src = open(&from).await?;
            let dir = manifest::backup_dir(src.spec().prefix(), &cluster, &backup_id);
            let key = format!("{dir}/{MANIFEST_NAME}");
            let bytes = src.get_all(&key).await?;
            // Checked to name this very set: its key is built from the cluster and id.
            let m = src.manifest_at(&key, &bytes)?;
            let mut regions = Vec::new();
            for r in &to {
                regions.push(outcome(r, repair_one(&src, &dir, &m, &bytes, r).await));
            }
            JobResult::Regions { regions }
        }
        CatalogTask::Verify {
            cluster,
            backup_id,
            regions,
        } => {
            let mut out = Vec::new();
            for r in &regions {
                let checked = async {
                    let spec = DestSpec::parse(&r.url)?;
                    let v = crate::restore::verify(&spec, &backup_id, Some(&cluster), None).await?;
                    Ok(v.objects.iter().map(|o| o.stored_bytes).sum())
                }
                .await;
                out.push(outcome(r, checked));
            }
            JobResult::Regions { regions: out }
        }
        CatalogTask::Delete {
            cluster,
            backup_id,
            regions,
        } => {
            let mut out = Vec::new();
            for r in &regions {
                out.push(outcome(r, delete_one(r, &cluster, &backup_id).await));
            }
            JobResult::Regions { regions: out }
        }
        CatalogTask::Restore(_)
        | CatalogTask::RestoreAt(_)
        | CatalogTask::Find(_)
        | CatalogTask::Node(_)
        | CatalogTask::Probe(_) => {
            return Err(Error::Input(
                "a restore or node job needs the agent's config; the daemon runs it".into(),
            ));
        }
        CatalogTask::Chains { cluster, regions } => chains(&cluster, &regions).await?,
        CatalogTask::Scan { regions } => {
            let mut found = Vec::new();
            let mut errors = Vec::new();
            for r in &regions {
                match scan_one(r).await {
                    Ok((sets, refused)) => {
                        found.extend(sets);
                        // A manifest that breaks the rules is no set, and is said so.
                        errors.extend(refused.into_iter().map(|e| outcome(r, Err(e))));
                    }
                    Err(e) => errors.push(outcome(r, Err(e))),
                }
            }
            JobResult::Scanned { found, errors }
        }
        CatalogTask::CollectOrphans {
            regions,
            before,
            keep,
        } => {
            let mut out = Vec::new();
            for r in &regions {
                out.push(outcome(r, collect_one(r, &before, &keep).await));
            }
            JobResult::Regions { regions: out }
        }
    })
}

async fn open(r: &RegionUrl) -> Result<Store> {
    Store::open(&DestSpec::parse(&r.url)?).await
}

fn outcome(r: &RegionUrl, result: Result<u64>) -> RegionResult {
    match result {
        Ok(bytes) => RegionResult {
            region: r.region.clone(),
            ok: true,
            error: None,
            stored_bytes: bytes,
        },
        Err(e) => RegionResult {
            region: r.region.clone(),
            ok: false,
            error: Some(e.to_string()),
            stored_bytes: 0,
        },
    }
}

/// Copies every object the destination lacks (or holds at another size), checking the sha256
/// of what was copied, then the manifest. Returns the bytes copied.
async fn repair_one(
    src: &Store,
    src_dir: &str,
    m: &Manifest,
    manifest_bytes: &[u8],
    to: &RegionUrl,
) -> Result<u64> {
    let dst = open(to).await?;
    let dir = manifest::backup_dir(dst.spec().prefix(), &m.cluster, &m.backup_id);
    let mut copied = 0;
    for o in m.shards.iter().flat_map(|s| &s.objects) {
        let key = format!("{dir}/{}", o.name);
        if dst.size(&key).await.ok() == Some(o.stored_bytes) {
            continue;
        }
        let mut down = src
            .get(&format!("{src_dir}/{}", o.name), o.stored_bytes)
            .await?;
        let mut up = dst.begin(&key).await?;
        let mut hash = Sha256::new();
        let mut n = 0u64;
        loop {
            match down.next().await {
                Ok(Some(chunk)) => {
                    hash.update(&chunk);
                    n += chunk.len() as u64;
                    if let Err(e) = up.write(chunk).await {
                        up.abort().await;
                        return Err(e);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    up.abort().await;
                    return Err(e);
                }
            }
        }
        let sha = hex(&hash.finalize());
        if sha != o.sha256 || n != o.stored_bytes {
            up.abort().await;
            return Err(Error::storage(
                src,
                format!(
                    "{} does not match the manifest ({n} bytes, sha256 {sha}; the manifest says {} bytes, {}): the source region's copy is damaged",
                    o.name, o.stored_bytes, o.sha256
                ),
            ));
        }
        up.finish().await?;
        copied += n;
    }
    dst.put(
        &format!("{dir}/{MANIFEST_NAME}"),
        Bytes::copy_from_slice(manifest_bytes),
    )
    .await?;
    Ok(copied + manifest_bytes.len() as u64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deletes the manifest, then every other object of the set. Returns the objects deleted.
async fn delete_one(r: &RegionUrl, cluster: &ClusterId, id: &BackupId) -> Result<u64> {
    let store = open(r).await?;
    let dir = manifest::backup_dir(store.spec().prefix(), cluster, id);
    let keys = store.list(&format!("{dir}/")).await?;
    let manifest_key = format!("{dir}/{MANIFEST_NAME}");
    if keys.contains(&manifest_key) {
        store.delete(&manifest_key).await?;
    }
    let mut n = 0;
    for k in keys.iter().filter(|k| **k != manifest_key) {
        store.delete(k).await?;
        n += 1;
    }
    Ok(n)
}

/// Every manifest in the region, each with the objects missing there, and the manifests
/// refused (each error names its key).
async fn scan_one(r: &RegionUrl) -> Result<(Vec<ScannedSet>, Vec<Error>)> {
    let store = open(r).await?;
    let keys = store.list(store.spec().prefix()).await?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for key in keys
        .iter()
        .filter(|k| k.ends_with(&format!("/{MANIFEST_NAME}")))
    {
        let m = match store.read_manifest(key).await {
            Ok(m) => m,
            Err(e) => {
                refused.push(e);
                continue;
            }
        };
        let dir = manifest::backup_dir(store.spec().prefix(), &m.cluster, &m.backup_id);
        let problems = missing_objects(&store, &dir, &m).await;
        out.push(ScannedSet {
            region: r.region.clone(),
            manifest: m,
            problems,
        });
    }
    Ok((out, refused))
}

/// The manifest's objects that `dir` lacks or holds at another size.
async fn missing_objects(store: &Store, dir: &str, m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    for o in m.shards.iter().flat_map(|s| &s.objects) {
        match store.size(&format!("{dir}/{}", o.name)).await {
            Ok(n) if n == o.stored_bytes => {}
            Ok(n) => problems.push(format!(
                "{} is {n} bytes, the manifest says {}",
                o.name, o.stored_bytes
            )),
            Err(e) => problems.push(format!("{}: {e}", o.name)),
        }
    }
    problems
}

/// A window's last step for one cluster: in each region, checks that every object the manifest
/// lists is there at its size, then writes the manifest. A region where anything is missing gets
/// no manifest and is reported failed. Returns the manifest's size per region.
pub async fn write_manifest(m: &Manifest, regions: &[RegionUrl]) -> Vec<RegionResult> {
    let body = Bytes::from(m.to_json());
    let mut out = Vec::new();
    for r in regions {
        let written = async {
            let store = open(r).await?;
            let dir = manifest::backup_dir(store.spec().prefix(), &m.cluster, &m.backup_id);
            let missing = missing_objects(&store, &dir, m).await;
            if !missing.is_empty() {
                return Err(Error::storage(&store, missing.join("; ")));
            }
            store
                .put(&format!("{dir}/{MANIFEST_NAME}"), body.clone())
                .await?;
            Ok(body.len() as u64)
        }
        .await;
        out.push(outcome(r, written));
    }
    out
}

/// Deletes backup directories with no manifest whose id sorts before `before`. Returns the
/// objects deleted.
async fn collect_one(r: &RegionUrl, before: &BackupId, keep: &[BackupId]) -> Result<u64> {
    let store = open(r).await?;
    let keys = store.list(store.spec().prefix()).await?;
    let mut dirs: std::collections::BTreeMap<&str, Vec<&String>> = Default::default();
    for k in &keys {
        if let Some((dir, _)) = k.rsplit_once('/') {
            dirs.entry(dir).or_default().push(k);
        }
    }
    let mut n = 0;
    for (dir, objects) in dirs {
        let Some(id) = dir
            .rsplit('/')
            .next()
            .and_then(|i| i.parse::<BackupId>().ok())
        else {
            continue;
        };
        let has_manifest = objects
            .iter()
            .any(|k| k.ends_with(&format!("/{MANIFEST_NAME}")));
        if has_manifest || id >= *before || keep.contains(&id) {
            continue;
        }
        for k in objects {
            store.delete(k).await?;
            n += 1;
        }
    }
    Ok(n)
}

/// Every shard's chains in a cluster's archive, read from the regions (each segment's listing,
/// not its bytes), for the coordinators' replicated catalog.
async fn chains(cluster: &ClusterId, regions: &[RegionUrl]) -> Result<JobResult> {
    let from: Vec<DestSpec> = regions
        .iter()
        .map(|r| DestSpec::parse(&r.url))
        .collect::<Result<_>>()?;
    let scanned_at_ms = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
    let mut shards = std::collections::BTreeMap::new();
    for shard in crate::archive::shards(&from, cluster).await? {
        let status = crate::archive::status(&from, cluster, &shard).await?;
        let chains = status
            .chains
            .into_iter()
            .map(|c| fleetsnap_core::archive::ArchiveChain {
                base: c.base.backup_id,
                base_at_ms: c.base.at_ms,
                base_offset: c.base.offset,
                replids: c.replids,
                end_offset: c.end_offset,
                end_ms: c.end_ms,
            })
            .collect();
        shards.insert(shard.to_string(), chains);
    }
    Ok(JobResult::Chains {
        scanned_at_ms,
        shards,
    })
}
