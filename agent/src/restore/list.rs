//! Finding backups in a region: every set listed (refused manifests named, not fatal), and one
//! set's manifest found by id.

use fleetsnap_core::manifest::{self, MANIFEST_NAME};
use fleetsnap_core::{BackupId, ClusterId, Manifest, ShardId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::storage::{DestSpec, Store};

/// One backup found in a destination.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Cluster name.
    pub cluster: String,
    /// Backup id.
    pub backup_id: String,
    /// Shard names.
    pub shards: Vec<String>,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Source bytes.
    pub raw_bytes: u64,
    /// When it finished (RFC 3339).
    pub finished_at: String,
}

/// The complete backups in a destination, and the manifests it holds that were refused.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// Sets whose manifest was read and checked, oldest first.
    pub sets: Vec<Listed>,
    /// Manifests refused (altered, damaged, unreadable), each with why: not verified sets.
    pub refused: Vec<String>,
}

/// Lists the complete backups (those with a manifest) in a destination, oldest first. A
/// manifest that cannot be read or breaks the layout's rules is listed as refused, not skipped
/// in silence, and does not hide the others.
pub async fn list(spec: &DestSpec) -> Result<Listing> {
    let store = Store::open(spec).await?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for key in store.list(spec.prefix()).await? {
        if !key.ends_with(&format!("/{MANIFEST_NAME}")) {
            continue;
        }
        let m = match store.read_manifest(&key).await {
            Ok(m) => m,
            Err(e) => {
                refused.push(e.to_string());
                continue;
            }
        };
        out.push(Listed {
            cluster: m.cluster.to_string(),
            backup_id: m.backup_id.to_string(),
            shards: m.shards.iter().map(|s| s.shard.to_string()).collect(),
            stored_bytes: m.stored_bytes(),
            raw_bytes: m
                .shards
                .iter()
                .flat_map(|s| &s.objects)
                .map(|o| o.raw_bytes)
                .sum(),
            finished_at: m
                .finished_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(Listing { sets: out, refused })
}

/// Finds a backup's manifest in a destination; returns it and its directory key. A window's id is
/// shared by every cluster it covered: `cluster` names one, else `shard` picks the cluster that
/// has that shard, else the id must be in one cluster only.
pub async fn find_manifest(
    store: &Store,
    id: &BackupId,
    cluster: Option<&ClusterId>,
    shard: Option<&ShardId>,
) -> Result<(Manifest, String)> {
    if let Some(c) = cluster {
        let dir = manifest::backup_dir(store.spec().prefix(), c, id);
        let key = format!("{dir}/{MANIFEST_NAME}");
        let bytes = store.get_all(&key).await.map_err(|e| {
            Error::storage(
                store,
                format!("backup {id} of cluster {c} has no readable manifest here ({e}): it is not complete in this destination"),
            )
        })?;
        let m = store.manifest_at(&key, &bytes)?;
        return Ok((m, dir));
    }
    let suffix = format!("/{id}/{MANIFEST_NAME}");
    let keys: Vec<String> = store
        .list(store.spec().prefix())
        .await?
        .into_iter()
        .filter(|k| k.ends_with(&suffix))
        .collect();
    if keys.is_empty() {
        return Err(Error::storage(
            store,
            format!(
                "backup {id} has no manifest here: it is not complete in this destination (check the id with `fleetsnap-agent ls --from {}`)",
                store.spec()
            ),
        ));
    }
    let mut found = Vec::new();
    for key in &keys {
        let m = store.read_manifest(key).await?;
        if m.backup_id != *id {
            return Err(Error::storage(
                store,
                format!(
                    "manifest {key} names backup {} instead of {id}",
                    m.backup_id
                ),
            ));
        }
        found.push(m);
    }
    let m = match (found.len(), shard) {
        (1, _) => found.remove(0),
        (_, Some(s)) => {
            let i = found
                .iter()
                .position(|m| m.shard(s).is_some())
                .ok_or_else(|| {
                    Error::Input(format!(
                        "backup {id} has no shard {s} in any of its clusters ({})",
                        found
                            .iter()
                            .map(|m| format!("{}: {}", m.cluster, names(m)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                })?;
            found.remove(i)
        }
        (_, None) => {
            return Err(Error::Input(format!(
                "backup {id} covers {} clusters ({}): choose one with --cluster",
                found.len(),
                found
                    .iter()
                    .map(|m| format!("{}: {}", m.cluster, names(m)))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    };
    let dir = manifest::backup_dir(store.spec().prefix(), &m.cluster, id);
    Ok((m, dir))
}

pub(super) fn names(m: &Manifest) -> String {
    m.shards
        .iter()
        .map(|s| s.shard.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
