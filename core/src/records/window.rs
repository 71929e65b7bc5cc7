//! Backup windows: the plan the leader decided when it opened one, each shard's attempts and
//! state, and a consistent cut's offsets.

use std::collections::BTreeMap;

use crate::planner::{NodeChoice, ShardPlan};
use crate::policy::Policy;
use crate::window::ShardResult;
use crate::{BackupId, ClusterId};
use serde::{Deserialize, Serialize};

/// What the leader decided when it opened a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPlan {
    /// The policy, as it was then.
    pub policy: Policy,
    /// The id every cluster's set of this window gets.
    pub backup_id: BackupId,
    /// The leader's clock at the opening (Unix milliseconds).
    pub opened_at_ms: i64,
    /// `simultaneous`: the instant every snapshot starts.
    pub fire_at_ms: Option<i64>,
    /// Per cluster, the plan of each of its shards.
    pub shards: Vec<(ClusterId, ShardPlan)>,
    /// Clusters of the policy with no shard in the fleet view, and why.
    pub missing: Vec<(ClusterId, String)>,
    /// The window's trace (W3C `traceparent`): its jobs carry it to their agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// A window in progress or done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// Its id.
    pub id: u64,
    /// What the leader decided.
    pub plan: WindowPlan,
    /// The entry that opened it.
    pub term: u64,
    /// See `term`.
    pub index: u64,
    /// Its shards.
    pub shards: Vec<WindowShard>,
    /// Manifest jobs by cluster, once every shard has ended.
    pub manifest_jobs: BTreeMap<ClusterId, u64>,
    /// Whether every set it makes has its final state.
    pub done: bool,
    /// `consistent`: the cut, once taken.
    #[serde(default)]
    pub cut: Option<Cut>,
    /// `consistent`: why earlier attempts at the cut failed.
    #[serde(default)]
    pub cut_failures: Vec<String>,
}

/// A consistent cut across every primary of a window (docs/design.md §6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// Per shard of the window, in order: the primary's replication id and offset read while
    /// every primary's writes were paused (`None`: the shard had failed before the cut).
    pub offsets: Vec<Option<(String, u64)>>,
    /// The longest any primary held writes back, as its agent measured it (from sending
    /// `CLIENT PAUSE` to the answer to `CLIENT UNPAUSE`), microseconds.
    pub pause_us: u64,
    /// The leader's view: from the first `PAUSE` sent to the last `RELEASE` answered.
    pub round_us: u64,
    /// The leader's clock when it sent the first `PAUSE` (Unix microseconds): every write
    /// acknowledged before it is in the cut, none sent after it plus `round_us` is.
    #[serde(default)]
    pub paused_at_us: i64,
}

/// What came of an attempt at a cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CutOutcome {
    /// Taken: every shard's job stores its stream up to its offset.
    Taken(Cut),
    /// Not taken; the `MAX_CUT_ATTEMPTS`th failure fails every shard still running.
    Failed {
        /// Why.
        reason: String,
    },
}

/// One shard of a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowShard {
    /// Its cluster.
    pub cluster: ClusterId,
    /// The planner's ranking.
    pub plan: ShardPlan,
    /// Which candidate is (or was last) tried, from 0.
    pub attempt: u32,
    /// The job of the current attempt.
    pub job: Option<u64>,
    /// Where it stands.
    pub state: ShardState,
    /// Why earlier candidates failed.
    pub failures: Vec<String>,
    /// `consistent`: the replication id and offset the current attempt's RDB stands for.
    #[serde(default)]
    pub synced: Option<(String, u64)>,
    /// `consistent`: the current candidate is being read a second time, its first stream having
    /// broken after its snapshot was stored.
    #[serde(default)]
    pub read_again: bool,
}

impl WindowShard {
    /// The candidate of the current attempt.
    pub fn candidate(&self) -> Option<&NodeChoice> {
        self.plan.candidates().nth(self.attempt as usize)
    }
}

/// Where a window's shard stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ShardState {
    /// A snapshot job is out.
    Running,
    /// Stored in at least one region.
    Stored(Box<ShardResult>),
    /// No candidate could store it.
    Failed {
        /// Why.
        reason: String,
    },
}

impl ShardState {
    /// The word in documents and tables (as serialised): `running`, `stored` or `failed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ShardState::Running => "running",
            ShardState::Stored(_) => "stored",
            ShardState::Failed { .. } => "failed",
        }
    }
}
