//! The manifest: written last in every destination, its presence means the backup is complete there.
//!
//! Layout, identical in every destination:
//! `<prefix>/<cluster>/<backup_id>/<shard>.rdb[.zst][.age]`, `<shard>.tail[.zst][.age]` and
//! `manifest.json`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::CodecChain;
use crate::ids::{BackupId, ClusterId, ShardId};
use crate::rdbread::DbDigest;

/// The manifest format version written by this code.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a backup's directory.
pub const MANIFEST_NAME: &str = "manifest.json";

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest at {location} is not valid JSON for format {FORMAT_VERSION}: {source}")]
    Parse {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "manifest at {location} has format {found}, newer than this fleetsnap understands ({FORMAT_VERSION}): upgrade fleetsnap"
    )]
    TooNew { location: String, found: u32 },
}

/// One backup set as stored in a destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// The backup id (sorts by time).
    pub backup_id: BackupId,
    /// The cluster the backup belongs to.
    pub cluster: ClusterId,
    /// The policy that made it; `None` for one-shot agent snapshots.
    pub policy: Option<String>,
    /// `independent`, `simultaneous` or `consistent`.
    pub consistency: String,
    /// When the first shard's snapshot started.
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// When the last object was stored.
    #[serde(with = "time::serde::rfc3339")]
    pub finished_at: OffsetDateTime,
    /// Start skew across shards in milliseconds (`simultaneous`).
    pub skew_ms: Option<u64>,
    /// Write pause in milliseconds (`consistent`).
    pub write_pause_ms: Option<u64>,
    /// The program that wrote it, e.g. `fleetsnap-agent 0.1.0`.
    pub written_by: String,
    /// Per-shard entries.
    pub shards: Vec<ShardEntry>,
}

/// One shard of a backup set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The shard name.
    pub shard: ShardId,
    /// `host:port` of the node the snapshot came from (or the file path for `file` sources).
    pub source_node: String,
    /// `replication`, `bgsave-file` or `file`.
    pub source_kind: String,
    /// The node's `run_id`, when known.
    pub run_id: Option<String>,
    /// The replication id announced with the snapshot (`replication` source).
    pub replid: Option<String>,
    /// The replication offset the RDB corresponds to.
    pub start_offset: Option<u64>,
    /// The offset the tail ends at (consistent cuts).
    pub cut_offset: Option<u64>,
    /// The RDB format version.
    pub rdb_version: u16,
    /// The Redis version of the node, when known.
    pub redis_version: Option<String>,
    /// Hash-slot ranges owned by the shard (Redis Cluster), inclusive.
    pub slot_ranges: Vec<(u16, u16)>,
    /// The stored objects of this shard.
    pub objects: Vec<ObjectEntry>,
    /// Per logical database of the RDB (before any tail): its keys and the digest of its data,
    /// computed while the snapshot streamed; empty for an RDB without keys. `None` when the RDB
    /// could not be read key by key (a module type), or for sets written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbs: Option<Vec<DbDigest>>,
}

/// What a stored object holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// An RDB snapshot.
    Rdb,
    /// Commands to replay after loading the RDB (RESP, as in the replication stream or an AOF).
    Tail,
}

/// One stored object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectEntry {
    /// What the object holds.
    pub kind: ObjectKind,
    /// File name inside the backup's directory.
    pub name: String,
    /// Encodings applied, in write order.
    pub codecs: CodecChain,
    /// Size before encoding.
    pub raw_bytes: u64,
    /// Size as stored.
    pub stored_bytes: u64,
    /// sha256 of the stored bytes, lowercase hex.
    pub sha256: String,
    /// CRC-64 trailer of the RDB, lowercase hex (`0000000000000000`: the writer had checksums off).
    pub crc64: Option<String>,
}

impl Manifest {
    /// Serialises the manifest as pretty JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("manifest serialises");
        out.push(b'\n');
        out
    }

    /// Parses a manifest; `location` names where it came from for the error message.
    pub fn from_json(bytes: &[u8], location: &str) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Probe {
            format: u32,
        }
        if let Ok(p) = serde_json::from_slice::<Probe>(bytes)
            && p.format > FORMAT_VERSION
        {
            return Err(ManifestError::TooNew {
                location: location.to_string(),
                found: p.format,
            });
        }
        serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            location: location.to_string(),
            source,
        })
    }

    /// The entry of one shard.
    pub fn shard(&self, shard: &ShardId) -> Option<&ShardEntry> {
        self.shards.iter().find(|s| &s.shard == shard)
    }

    /// Total stored bytes across shards and objects.
    pub fn stored_bytes(&self) -> u64 {
        self.shards
            .iter()
            .flat_map(|s| &s.objects)
            .map(|o| o.stored_bytes)
            .sum()
    }
}

/// The directory of a backup inside a destination, relative to the destination root.
pub fn backup_dir(prefix: &str, cluster: &ClusterId, id: &BackupId) -> String {
    join_key(prefix, &format!("{cluster}/{id}"))
}

/// Joins a destination prefix and a relative key with exactly one `/`.
pub fn join_key(prefix: &str, rest: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        rest.to_string()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// The object name of a shard's RDB or tail for a codec chain.
pub fn object_name(shard: &ShardId, kind: ObjectKind, codecs: &CodecChain) -> String {
    let base = match kind {
        ObjectKind::Rdb => "rdb",
        ObjectKind::Tail => "tail",
    };
    format!("{shard}.{base}{}", codecs.suffix())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Codec;
    use time::macros::datetime;

    fn sample() -> Manifest {
        let shard = ShardId::new("shard-0").unwrap();
        let codecs = CodecChain(vec![Codec::Zstd { level: 3 }]);
        Manifest {
            format: FORMAT_VERSION,
            backup_id: BackupId::from_parts(datetime!(2026-11-21 05:00:00 UTC), 7),
            cluster: ClusterId::new("orders").unwrap(),
            policy: None,
            consistency: "independent".into(),
            started_at: datetime!(2026-11-21 05:00:00 UTC),
            finished_at: datetime!(2026-11-21 05:00:09 UTC),
            skew_ms: None,
            write_pause_ms: None,
            written_by: "test".into(),
            shards: vec![ShardEntry {
                source_node: "127.0.0.1:6380".into(),
                source_kind: "replication".into(),
                run_id: None,
                replid: Some("ab".repeat(20)),
                start_offset: Some(42),
                cut_offset: None,
                rdb_version: 10,
                redis_version: Some("7.0.15".into()),
                slot_ranges: vec![(0, 16383)],
                dbs: Default::default(),
                objects: vec![ObjectEntry {
                    kind: ObjectKind::Rdb,
                    name: object_name(&shard, ObjectKind::Rdb, &codecs),
                    codecs,
                    raw_bytes: 100,
                    stored_bytes: 50,
                    sha256: "00".repeat(32),
                    crc64: Some("0123456789abcdef".into()),
                }],
                shard,
            }],
        }
    }

    #[test]
    fn manifest_round_trips_and_names_objects() {
        let m = sample();
        let back = Manifest::from_json(&m.to_json(), "here").unwrap();
        assert_eq!(back, m);
        assert_eq!(m.shards[0].objects[0].name, "shard-0.rdb.zst");
        assert_eq!(
            backup_dir("a/b/", &m.cluster, &m.backup_id),
            "a/b/orders/20261121T050000Z-000007"
        );
        assert_eq!(join_key("", "x"), "x");
    }

    #[test]
    fn unknown_fields_and_newer_formats_are_refused() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().to_json()).unwrap();
        v["surprise"] = 1.into();
        let e = Manifest::from_json(v.to_string().as_bytes(), "s3://b/m").unwrap_err();
        assert!(
            e.to_string().contains("s3://b/m") && e.to_string().contains("surprise"),
            "{e}"
        );
        v.as_object_mut().unwrap().remove("surprise");
        v["format"] = 99.into();
        let e = Manifest::from_json(v.to_string().as_bytes(), "x").unwrap_err();
        assert!(e.to_string().contains("upgrade"), "{e}");
    }
}
