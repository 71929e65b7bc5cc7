//! What an agent reports back for its part of a backup window: the shard it stored and how
//! each region took it, or how a set's manifest went in each region.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ids::{BackupId, ClusterId};
use crate::manifest::{Manifest, ShardEntry};

/// One region's outcome for one object group (a shard's objects, or a manifest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionResult {
    /// The region's name in the policy.
    pub region: String,
    /// Whether everything was written and verified there.
    pub ok: bool,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Bytes stored there.
    #[serde(default)]
    pub stored_bytes: u64,
}

/// A shard stored by a window's snapshot job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResult {
    /// The manifest entry, as the agent saw the shard (slot ranges are the coordinator's to add).
    pub entry: ShardEntry,
    /// Per region, in the job's order.
    pub regions: Vec<RegionResult>,
    /// When the agent started reading the source (Unix milliseconds, the agent's clock).
    pub started_at_ms: i64,
    /// When the last object was stored (Unix milliseconds).
    pub finished_at_ms: i64,
    /// `started_at_ms` in microseconds: the instant the source was asked for the snapshot
    /// (`PSYNC` sent, `BGSAVE` asked, the file opened).
    #[serde(default)]
    pub started_at_us: Option<i64>,
}

/// A job's result as the agent sends it back (JSON in `Finished.result_json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobResult {
    /// A window's snapshot job.
    Shard(Box<ShardResult>),
    /// A manifest job: per region.
    Manifest {
        /// Per region, in the job's order.
        regions: Vec<RegionResult>,
        /// When the last manifest was written (Unix milliseconds, the agent's clock).
        #[serde(default)]
        finished_at_ms: Option<i64>,
    },
    /// A catalog task other than a scan: per region.
    Regions {
        /// Per region, in the task's order.
        regions: Vec<RegionResult>,
    },
    /// A restore or a drill: the agent's report (JSON), and whether it found a problem.
    Restored {
        /// Whether everything restored and checked out (conflicts refused, a count or digest
        /// that differs, a node that came up wrong: false).
        ok: bool,
        /// Why not, in one line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        problem: Option<String>,
        /// The report, as the agent's `restore --json` or `drill --json` prints it.
        report_json: String,
    },
    /// A cluster's archive as the regions hold it: each shard's chains.
    Chains {
        /// When the regions were read (Unix ms, the agent's clock).
        scanned_at_ms: i64,
        /// Per shard, its chains, oldest base first.
        shards: std::collections::BTreeMap<String, Vec<crate::archive::ArchiveChain>>,
    },
    /// A search of the archive: what was found (JSON, as `fleetsnap-agent archive find --json`
    /// prints it), oldest first.
    Found {
        /// The commands found.
        report_json: String,
    },
    /// A runbook's step on a node: what it did (JSON).
    Step {
        /// The agent's report.
        report_json: String,
    },
    /// A scan: every manifest found.
    Scanned {
        /// Per region, the manifests there.
        found: Vec<ScannedSet>,
        /// Regions that could not be listed, and why.
        errors: Vec<RegionResult>,
    },
}

/// A manifest found by a scan, with what is wrong with its objects in that region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannedSet {
    /// The region.
    pub region: String,
    /// The manifest.
    pub manifest: Manifest,
    /// Objects missing or of the wrong size there (empty: the set is whole there).
    pub problems: Vec<String>,
}

/// A region as catalog tasks name it: the policy's name and the URL agents resolve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionUrl {
    /// Its name.
    pub region: String,
    /// Its URL.
    pub url: String,
}

impl RegionUrl {
    /// `REGION=URL` as operators write it, or a bare URL (the region is then named after it).
    pub fn from_arg(text: &str) -> Self {
        match text.split_once('=') {
            Some((name, url)) if !name.contains(':') => Self {
                region: name.into(),
                url: url.into(),
            },
            _ => Self {
                region: text.into(),
                url: text.into(),
            },
        }
    }
}

/// How a restore job applies a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum RestoreMode {
    /// Key by key into a running server or cluster, which keeps serving.
    Online {
        /// `redis://HOST:PORT` of the target (a password only by `?password_file=` on the
        /// agent's host: this URL is stored in the coordinators' log).
        target: String,
        /// Overwrite keys that exist (otherwise they are left and reported).
        replace_existing: bool,
    },
    /// Stop the agent's own instance, place the RDB, start it and check it.
    Replace {
        /// The instance, as the agent's config names it.
        instance: String,
    },
    /// A restore drill: a scratch redis-server from the agent's `drill` section is loaded with
    /// the shard, checked against the manifest's key counts and digests, and removed.
    Drill,
}

/// A runbook's operation on a node an agent watches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeTask {
    /// The instance, as the agent's config names it.
    pub instance: String,
    /// What to do.
    pub op: NodeOp,
}

/// Operations on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum NodeOp {
    /// Makes the instance, a replica, its shard's primary.
    ///
    /// With `primary` (graceful, the primary alive): writes on the primary are paused, the
    /// instance waits until it has the primary's offset, is promoted, and the old primary and
    /// `others` replicate from it; then the writes resume (refused as read-only by the old
    /// primary). Without (forced): the instance is promoted at whatever offset it has.
    /// In a Redis Cluster, `CLUSTER FAILOVER` does the same (`FORCE`, then `TAKEOVER`, when
    /// forced).
    Promote {
        /// `host:port` of the live primary (graceful), none when it is dead (forced).
        primary: Option<String>,
        /// `host:port` of the shard's other replicas, to re-point.
        others: Vec<String>,
        /// Whether the shard is part of a Redis Cluster.
        cluster: bool,
        /// How long writes may stay paused while the instance catches up (milliseconds).
        pause_ms: u64,
    },
}

/// A check of a running target: it answers, a Redis Cluster serves every slot with
/// `cluster_state:ok`, and its primaries hold the keys wanted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeTask {
    /// `redis://HOST:PORT` (any node of a Redis Cluster); a password only as `?password_file=`.
    pub target: String,
    /// What it must hold.
    pub want: ProbeWant,
}

/// The keys a probed target must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "want", rename_all = "snake_case")]
pub enum ProbeWant {
    /// None: ready to be restored into.
    Empty,
    /// Between `min` and `max` (all databases, all primaries).
    Keys {
        /// At least.
        min: u64,
        /// At most.
        max: u64,
    },
    /// Bounds taken, when the step starts, from what the runbook's previous step restored.
    Restored,
}

/// A restore of a set (or of one shard of it) by an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreTask {
    /// The set's cluster.
    pub cluster: ClusterId,
    /// The set.
    pub backup_id: BackupId,
    /// Regions to read, nearest healthy first; the agent falls back down the list on any error
    /// or checksum mismatch.
    pub regions: Vec<RegionUrl>,
    /// One shard only (every shard of the set when none).
    #[serde(default)]
    pub shard: Option<String>,
    /// One logical database only.
    #[serde(default)]
    pub db: Option<u64>,
    /// Only keys matching this glob.
    #[serde(default)]
    pub pattern: Option<String>,
    /// How.
    pub mode: RestoreMode,
    /// When the set was taken (Unix milliseconds): a drill reports the backup's age from it.
    #[serde(default)]
    pub taken_at_ms: Option<i64>,
}

/// A restore from the continuous archive by an agent: a shard (or every shard of the cluster,
/// online) to one time, to an exact point, or to just before found commands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreAtTask {
    /// The cluster.
    pub cluster: ClusterId,
    /// The archive's regions, in the policy's order.
    pub regions: Vec<RegionUrl>,
    /// One shard only (every shard of the archive when none; online only).
    #[serde(default)]
    pub shard: Option<String>,
    /// The time (Unix ms): the last command received at or before it.
    #[serde(default)]
    pub at_ms: Option<i64>,
    /// With `at_ms`: the latest exact point at or before it instead.
    #[serde(default)]
    pub exact: bool,
    /// Instead of a time: `SHARD@REPLID:OFFSET` as `archive find` prints them, one per shard.
    #[serde(default)]
    pub before: Vec<String>,
    /// One logical database only (online).
    #[serde(default)]
    pub db: Option<u64>,
    /// Only keys matching this glob (online).
    #[serde(default)]
    pub pattern: Option<String>,
    /// How: online into a target, or replacing the agent's own instance (one shard).
    pub mode: RestoreMode,
}

/// A search of the continuous archive by an agent: the commands named, received in a span of
/// time, in every shard of the cluster (or one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FindTask {
    /// The cluster.
    pub cluster: ClusterId,
    /// The archive's regions, in the policy's order.
    pub regions: Vec<RegionUrl>,
    /// One shard only (every shard of the archive when none).
    #[serde(default)]
    pub shard: Option<String>,
    /// Command names, upper case (FLUSHALL, FLUSHDB, DEL, …).
    pub commands: Vec<String>,
    /// Only commands with an argument that matches this glob.
    #[serde(default)]
    pub key: Option<String>,
    /// From this time (Unix ms).
    pub since_ms: i64,
    /// Up to this time (Unix ms).
    pub until_ms: i64,
}

/// Work on stored sets, run by an agent (which holds the regions' credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum CatalogTask {
    /// Restores a set, or runs a restore drill of one shard.
    Restore(Box<RestoreTask>),
    /// Restores from the continuous archive to a time or to just before found commands.
    RestoreAt(Box<RestoreAtTask>),
    /// Finds commands in the continuous archive.
    Find(Box<FindTask>),
    /// Reads a cluster's archive from the regions: every shard's chains, for the replicated
    /// catalog.
    Chains {
        /// The cluster.
        cluster: ClusterId,
        /// The archive's regions.
        regions: Vec<RegionUrl>,
    },
    /// A runbook's step on one node.
    Node(NodeTask),
    /// A runbook's check of a running target (any Redis the agent can reach).
    Probe(ProbeTask),
    /// Copies a set's objects from a region that holds it whole to regions that do not, checking
    /// each copy's sha256 against the manifest, then writes the manifest there.
    Repair {
        /// The set's cluster.
        cluster: ClusterId,
        /// The set.
        backup_id: BackupId,
        /// A region that holds it whole.
        from: RegionUrl,
        /// Regions to copy it to.
        to: Vec<RegionUrl>,
    },
    /// Reads every object of a set back in each region and checks its size, sha256 and RDB
    /// checksum against the manifest.
    Verify {
        /// The set's cluster.
        cluster: ClusterId,
        /// The set.
        backup_id: BackupId,
        /// Where.
        regions: Vec<RegionUrl>,
    },
    /// Deletes a set in each region: the manifest first (the set stops being restorable there
    /// at once), then its objects.
    Delete {
        /// The set's cluster.
        cluster: ClusterId,
        /// The set.
        backup_id: BackupId,
        /// Where.
        regions: Vec<RegionUrl>,
    },
    /// Lists every manifest in each region.
    Scan {
        /// Where.
        regions: Vec<RegionUrl>,
    },
    /// Deletes backup directories that hold objects but no manifest (left by crashed uploads)
    /// and whose id is older than `before`, except the sets in `keep` (windows still running).
    CollectOrphans {
        /// Where.
        regions: Vec<RegionUrl>,
        /// Ids sort by time: a directory whose id sorts before this is past the grace period.
        before: BackupId,
        /// Never collected.
        keep: Vec<BackupId>,
    },
}

/// A time as Unix milliseconds, the unit of window times on the wire and in the catalog.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// A time an operator writes: RFC 3339 (`2026-12-05T04:00:00.250Z`) or Unix milliseconds.
pub fn parse_time(text: &str) -> Result<i64, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|e| format!("{text:?}: {e}"));
    }
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map(unix_ms)
        .map_err(|e| {
            format!(
                "{text:?} is not a time ({e}): write it as RFC 3339, e.g. 2026-12-05T04:00:00.250Z, or Unix milliseconds"
            )
        })
}

/// Unix milliseconds as a time (the epoch for values out of range).
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc_3339_or_unix_ms() {
        assert_eq!(parse_time("1796506854163"), Ok(1_796_506_854_163));
        assert_eq!(parse_time("1970-01-01T00:00:01.250Z"), Ok(1250));
        for bad in ["", "yesterday", "-5", "2026-13-01T00:00:00Z"] {
            let e = parse_time(bad).unwrap_err();
            assert!(e.contains("RFC 3339") || e.contains(bad), "{bad}: {e}");
        }
    }
    use crate::digest::DbDigest;
    use crate::manifest::ShardEntry;

    #[test]
    fn a_shard_result_with_key_counts_crosses_the_wire() {
        // JobResult is internally tagged: what a shard entry holds must survive serde's buffering.
        let result = JobResult::Shard(Box::new(ShardResult {
            entry: ShardEntry {
                shard: crate::ShardId::new("s0").unwrap(),
                source_node: "127.0.0.1:6379".into(),
                source_kind: "replication".into(),
                run_id: None,
                replid: None,
                start_offset: Some(1),
                cut_offset: None,
                rdb_version: 10,
                redis_version: None,
                server: None,
                slot_ranges: vec![(0, 16383)],
                dbs: Some(vec![DbDigest {
                    db: 3,
                    keys: 2,
                    expires: 1,
                    digest: "ab".into(),
                }]),
                objects: Vec::new(),
            },
            regions: Vec::new(),
            started_at_ms: 1,
            finished_at_ms: 2,
            started_at_us: None,
        }));
        let json = serde_json::to_string(&result).unwrap();
        assert_eq!(serde_json::from_str::<JobResult>(&json).unwrap(), result);
    }
}
