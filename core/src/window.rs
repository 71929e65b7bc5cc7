//! What an agent reports back for its part of a backup window: the shard it stored and how
//! each region took it, or how a set's manifest went in each region.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::manifest::ShardEntry;

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
}

/// A time as Unix milliseconds, the unit of window times on the wire and in the catalog.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Unix milliseconds as a time (the epoch for values out of range).
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}
