//! Backup sets: what a window (or a catalog scan) left in the regions, each region's state
//! counted from the manifests it holds.

use std::collections::BTreeMap;

use crate::policy::Consistency;
use crate::retention::SetState;
use crate::{BackupId, ClusterId};
use serde::{Deserialize, Serialize};

/// Where a region stands for a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionState {
    /// Waiting for the manifest job.
    Pending,
    /// The manifest is written: every object was verified there.
    Complete,
    /// Something is missing there.
    Failed,
}

/// One region's hold on a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// Where it stands.
    pub state: RegionState,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes stored there (objects and manifest).
    pub stored_bytes: u64,
    /// The URL agents open for it (the policy's, or the one a rebuild read it from).
    #[serde(default)]
    pub url: String,
}

/// One shard of a set, with why its source was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetShard {
    /// The shard.
    pub shard: String,
    /// `host:port` of the source.
    pub source_node: String,
    /// The agent that read it.
    pub agent: String,
    /// Why that node.
    pub why: String,
    /// Candidates that failed before it.
    pub failures: Vec<String>,
    /// Replication id and offset the RDB corresponds to.
    pub replid: Option<String>,
    /// See `replid`.
    pub start_offset: Option<u64>,
    /// The offset its tail ends at (`consistent`).
    #[serde(default)]
    pub cut_offset: Option<u64>,
    /// Source bytes.
    pub raw_bytes: u64,
    /// When its snapshot started and ended (Unix milliseconds, the agent's clock).
    pub started_at_ms: i64,
    /// See `started_at_ms`.
    pub finished_at_ms: i64,
}

/// A backup set: one cluster's part of a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSet {
    /// The set's id (shared by the window's clusters).
    pub backup_id: BackupId,
    /// The cluster.
    pub cluster: ClusterId,
    /// The policy.
    pub policy: String,
    /// The window.
    pub window: u64,
    /// How its shards relate in time.
    pub consistency: Consistency,
    /// When the window opened (Unix milliseconds, the leader's clock).
    pub opened_at_ms: i64,
    /// The spread of the shards' start times (`simultaneous`), microseconds.
    #[serde(default)]
    pub skew_us: Option<u64>,
    /// The longest write pause of the cut (`consistent`), microseconds.
    #[serde(default)]
    pub write_pause_us: Option<u64>,
    /// When the last region's manifest was written (Unix milliseconds, the writing agent's
    /// clock).
    #[serde(default)]
    pub completed_at_ms: Option<i64>,
    /// Its shards.
    pub shards: Vec<SetShard>,
    /// Per region.
    pub regions: BTreeMap<String, RegionStatus>,
    /// Regions needed for `complete`.
    pub min_regions: u32,
    /// `running` until every region answered, then `complete`, `degraded` or `failed`.
    pub state: SetState,
    /// Why it failed, when it did.
    pub reason: Option<String>,
    /// The catalog job working on it (repair, verify, delete), if any.
    #[serde(default)]
    pub task: Option<u64>,
    /// Being deleted, and why (retention's reason).
    #[serde(default)]
    pub deleting: Option<String>,
    /// Its last verification.
    #[serde(default)]
    pub verified: Option<crate::records::Verified>,
}

/// The catalog key of a set: sets are per cluster, ids per window.
impl RegionState {
    /// The word in documents and tables (as serialised).
    pub fn as_str(self) -> &'static str {
        match self {
            RegionState::Pending => "pending",
            RegionState::Complete => "complete",
            RegionState::Failed => "failed",
        }
    }
}

pub fn set_key(cluster: &ClusterId, backup_id: &BackupId) -> String {
    format!("{cluster}/{backup_id}")
}

impl BackupSet {
    /// Its catalog key.
    pub fn key(&self) -> String {
        set_key(&self.cluster, &self.backup_id)
    }

    /// Counts the regions that took the manifest; a region never heard of has failed.
    pub fn count_regions(&mut self) {
        for status in self.regions.values_mut() {
            if status.state == RegionState::Pending {
                status.state = RegionState::Failed;
                status.error = Some("the manifest job did not report it".into());
            }
        }
        let complete = self
            .regions
            .values()
            .filter(|r| r.state == RegionState::Complete)
            .count() as u32;
        self.state = if complete >= self.min_regions {
            SetState::Complete
        } else if complete > 0 {
            SetState::Degraded
        } else {
            SetState::Failed
        };
        if self.state == SetState::Failed && self.reason.is_none() {
            self.reason = Some("no region took the manifest".into());
        }
    }
}
