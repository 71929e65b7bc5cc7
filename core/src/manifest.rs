//! The manifest: written last in every destination, its presence means the backup is complete there.
//!
//! Layout, identical in every destination:
//! `<prefix>/<cluster>/<backup_id>/<shard>.rdb[.zst][.age]`, `<shard>.tail[.zst][.age]` and
//! `manifest.json`.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::codec::CodecChain;
use crate::digest::DbDigest;
use crate::ids::{BackupId, ClusterId, ShardId};
use crate::policy::Consistency;

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
    #[error(
        "manifest at {location} is not a set fleetsnap wrote: {why}; the region's copy was altered or damaged: restore from another region, or `fleetsnap backup repair` it from one"
    )]
    Invalid { location: String, why: String },
}

/// The most bytes a manifest may have: reads stop there, whatever the object's listed size.
pub const MANIFEST_MAX_BYTES: u64 = 64 << 20;

/// A storage key that fleetsnap never writes, refused before it becomes a path or a request.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "storage key {shown:?} is not one fleetsnap writes ({why}): it is refused rather than resolved; remove or rename it in the region"
)]
pub struct KeyError {
    /// The key, cut to a printable length.
    pub shown: String,
    /// The rule it breaks.
    pub why: &'static str,
}

/// The longest part between slashes of a storage key (a shard name of 64 characters with its
/// suffixes fits well within it).
pub const MAX_KEY_SEGMENT: usize = 128;
/// The longest storage key below a region's prefix.
pub const MAX_KEY: usize = 1024;

/// Checks a key below a region's prefix against the rules fleetsnap writes by: parts separated by
/// single slashes, each 1 to 128 characters from `A-Z a-z 0-9 . _ -`, none starting with `.` or
/// `-` (so no `..`, no hidden files). Every key read from a region, a manifest or the network
/// passes here before it names a file or an object.
pub fn check_key(rel: &str) -> Result<(), KeyError> {
    let refuse = |why| {
        let mut shown: String = rel.chars().take(200).collect();
        if shown.len() < rel.len() {
            shown.push('…');
        }
        Err(KeyError { shown, why })
    };
    if rel.is_empty() {
        return refuse("it is empty");
    }
    if rel.len() > MAX_KEY {
        return refuse("it is longer than 1024 bytes");
    }
    for part in rel.split('/') {
        if part.is_empty() {
            return refuse("it has an empty part: a leading, trailing or doubled slash");
        }
        if part.len() > MAX_KEY_SEGMENT {
            return refuse("a part is longer than 128 bytes");
        }
        if part.starts_with(['.', '-']) {
            return refuse("a part starts with . or - (such as ..)");
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return refuse("a part holds a character other than A-Z a-z 0-9 . _ -");
        }
    }
    Ok(())
}

/// What a manifest says of its set as a whole. [`Manifest::of_set`] is the one place a manifest
/// is built, by the agent for a one-shot snapshot and by the coordinator for a window's set.
#[derive(Clone, Debug)]
pub struct SetFacts {
    /// The set's id.
    pub backup_id: BackupId,
    /// Its cluster.
    pub cluster: ClusterId,
    /// The policy whose window took it (a one-shot snapshot: none).
    pub policy: Option<String>,
    /// How its shards relate in time.
    pub consistency: Consistency,
    /// When its first shard started.
    pub started_at: OffsetDateTime,
    /// When its last shard finished.
    pub finished_at: OffsetDateTime,
    /// The spread of its shards' start instants (microseconds), when measured.
    pub skew_us: Option<u64>,
    /// The longest write pause of its consistent cut (microseconds).
    pub write_pause_us: Option<u64>,
    /// The program that wrote it: `fleetsnap-agent` or `fleetsnap-coordinator`.
    pub writer: &'static str,
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
    /// The node's `redis_version`, when known (Valkey's is the Redis version it is compatible
    /// with).
    pub redis_version: Option<String>,
    /// The server and its own version (`valkey 8.1.8`, `redis 7.0.15`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
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
        let m: Manifest = serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            location: location.to_string(),
            source,
        })?;
        m.validate().map_err(|why| ManifestError::Invalid {
            location: location.to_string(),
            why,
        })?;
        Ok(m)
    }

    /// The rules every manifest fleetsnap writes keeps, checked on every read: at least one
    /// shard, no shard twice, each shard with exactly one RDB and at most one tail, every
    /// object named as the layout names it (so no name can point outside its set's directory),
    /// and checksums in their formats.
    pub fn validate(&self) -> Result<(), String> {
        if self.shards.is_empty() {
            return Err("it lists no shards".into());
        }
        let mut shards = std::collections::BTreeSet::new();
        for s in &self.shards {
            if !shards.insert(&s.shard) {
                return Err(format!("shard {} is listed twice", s.shard));
            }
            let rdbs = s
                .objects
                .iter()
                .filter(|o| o.kind == ObjectKind::Rdb)
                .count();
            let tails = s
                .objects
                .iter()
                .filter(|o| o.kind == ObjectKind::Tail)
                .count();
            if rdbs != 1 || tails > 1 || s.objects.len() != rdbs + tails {
                return Err(format!(
                    "shard {} lists {rdbs} RDB and {tails} tail objects (one RDB and at most one tail expected)",
                    s.shard
                ));
            }
            for o in &s.objects {
                let want = object_name(&s.shard, o.kind, &o.codecs);
                if o.name != want {
                    let shown: String = o.name.chars().take(100).collect();
                    return Err(format!(
                        "shard {}'s object is named {shown:?} where the layout says {want:?}",
                        s.shard
                    ));
                }
                let hex = |t: &str, n: usize| {
                    t.len() == n
                        && t.bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                };
                if !hex(&o.sha256, 64) {
                    return Err(format!(
                        "{}'s sha256 is not 64 lowercase hex digits",
                        o.name
                    ));
                }
                if o.crc64.as_deref().is_some_and(|c| !hex(c, 16)) {
                    return Err(format!("{}'s crc64 is not 16 lowercase hex digits", o.name));
                }
            }
        }
        Ok(())
    }

    /// The manifest of a set and its shards, in this format's version; durations in whole
    /// milliseconds, rounded up so a pause is never shown shorter than it was.
    pub fn of_set(set: SetFacts, shards: Vec<ShardEntry>) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            backup_id: set.backup_id,
            cluster: set.cluster,
            policy: set.policy,
            consistency: set.consistency.as_str().into(),
            started_at: set.started_at,
            finished_at: set.finished_at,
            skew_ms: set.skew_us.map(|us| us.div_ceil(1000)),
            write_pause_ms: set.write_pause_us.map(|us| us.div_ceil(1000)),
            written_by: format!("{} {}", set.writer, env!("CARGO_PKG_VERSION")),
            shards,
        }
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
                server: Some("redis 7.0.15".into()),
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
    fn the_builder_states_the_set_and_rounds_pauses_up() {
        let m = sample();
        let built = Manifest::of_set(
            SetFacts {
                backup_id: m.backup_id.clone(),
                cluster: m.cluster.clone(),
                policy: Some("hourly".into()),
                consistency: Consistency::Consistent,
                started_at: m.started_at,
                finished_at: m.finished_at,
                skew_us: Some(1),
                write_pause_us: Some(2_001),
                writer: "fleetsnap-coordinator",
            },
            m.shards.clone(),
        );
        assert_eq!(built.format, FORMAT_VERSION);
        assert_eq!(built.consistency, "consistent");
        assert_eq!((built.skew_ms, built.write_pause_ms), (Some(1), Some(3)));
        assert_eq!(
            built.written_by,
            concat!("fleetsnap-coordinator ", env!("CARGO_PKG_VERSION"))
        );
        built.validate().unwrap();
        assert_eq!(
            Manifest::from_json(&built.to_json(), "here").unwrap(),
            built
        );
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
    fn names_that_leave_the_set_and_sets_with_nothing_to_restore_are_refused() {
        let refused = |m: Manifest, want: &str| {
            let e = Manifest::from_json(&m.to_json(), "region-a").unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert!(e.to_string().contains("region-a"), "{e}");
        };
        let mut m = sample();
        m.shards[0].objects[0].name = "../../../../pwned.rdb.zst".into();
        refused(m, "pwned");
        let mut m = sample();
        m.shards[0].objects[0].name = "shard-1.rdb.zst".into();
        refused(m, "the layout says");
        let mut m = sample();
        m.shards.clear();
        refused(m, "no shards");
        let mut m = sample();
        let dup = m.shards[0].objects[0].clone();
        m.shards[0].objects.push(dup);
        refused(m, "2 RDB");
        let mut m = sample();
        let s = m.shards[0].clone();
        m.shards.push(s);
        refused(m, "twice");
        let mut m = sample();
        m.shards[0].objects[0].kind = ObjectKind::Tail;
        m.shards[0].objects[0].name = "shard-0.tail.zst".into();
        refused(m, "0 RDB");
        let mut m = sample();
        m.shards[0].objects[0].sha256 = "../x".into();
        refused(m, "sha256");
    }

    #[test]
    fn storage_keys_follow_the_names_fleetsnap_writes() {
        for good in [
            "orders/20261121T050000Z-000007/manifest.json",
            "a/b/shard-0.rdb.zst.age",
            "x",
        ] {
            assert_eq!(check_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "../x",
            "a/../../b",
            "a//b",
            "/etc/passwd",
            "a/",
            "a/.hidden",
            "a/-x",
            "a/b c",
            "a/b\\c",
            "a/\u{202e}x",
            &"x/".repeat(600),
            &"y".repeat(129),
        ] {
            let e = check_key(bad).unwrap_err();
            assert!(
                e.to_string().contains("not one fleetsnap writes"),
                "{bad}: {e}"
            );
        }
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
