//! The leader's side of a coordinator: the soft state it keeps (every agent's latest report, its
//! sessions, cadence and spare connections), leadership and its lease, sessions with agents, the
//! job loop, windows and consistent cuts, restores, runbooks, the catalog's upkeep and what the
//! leader shows (status, metrics, traces). Followers hold agents only long enough to redirect them.

mod archive;
mod archive_catalog;
mod cut;
mod error;
mod jobs;
mod lease;
mod observe;
mod restore;
mod runbook;
mod session;
mod status;
mod upkeep;
mod windows;

pub use error::LeaderError;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fleetsnap_core::InstanceReport;
use fleetsnap_core::policy::Policy;
use fleetsnap_core::window::{from_unix_ms, unix_ms};
use fleetsnap_proto::v1::{self};
use openraft::Raft;
use tokio::sync::{Notify, mpsc};

use crate::raft::Applied;
use crate::{NodeId, TypeConfig};

type Outbound = mpsc::Sender<Result<v1::CoordinatorMessage, LeaderError>>;

/// The metadata key naming the leader's address in a follower's refusal.
pub const LEADER_KEY: &str = "fleetsnap-leader";

/// One coordinator node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// Raft.
    pub raft: Raft<TypeConfig>,
    pub(crate) state: Arc<RwLock<Applied>>,
    fleet: Fleet,
    lease: Duration,
    wake: Notify,
    /// The leader Raft knows of, changed only when it changes: thousands of agents held through
    /// an election wait on this, not on Raft's metrics, which change many times a second.
    leader_id: tokio::sync::watch::Sender<Option<NodeId>>,
    registrations: mpsc::UnboundedSender<Registration>,
    /// The policies of this node's config file.
    config_policies: Vec<Policy>,
    /// The last `Standby` call of each agent that keeps a spare connection here.
    pub(crate) spares: Mutex<HashMap<String, Instant>>,
    /// Consistent cuts: steps waiting for their agents' replies.
    cut_waiters: cut::Waiters,
    /// A shard's stream was recorded: a cut may be due.
    cut_wake: Notify,
    /// Every archived shard as the archive loop last saw it, for `archive status`.
    archive_rows: Mutex<Vec<fleetsnap_core::records::ArchiveRow>>,
    /// Whether this node, if Raft calls it leader, has lately confirmed that a quorum follows
    /// it. A leader cut off from every follower calls itself leader until it hears of a newer
    /// term; without this it would keep its agents while the others elect a leader that has none
    /// (see `lease_loop`).
    confirmed: AtomicBool,
    /// The spans of windows, restores, drills and runbooks this leader started, by their
    /// `traceparent`, each ended once nothing open carries it.
    traces: observe::Traces,
}

/// An agent to register, and where to say that it is.
type Registration = (
    String,
    tokio::sync::oneshot::Sender<Result<(), LeaderError>>,
);

/// The leader's soft state: never in the log, rebuilt from reports after a leader change.
#[derive(Default)]
struct Fleet {
    agents: Mutex<HashMap<String, AgentLive>>,
    leader_since: Mutex<Option<Instant>>,
    latency_us: Mutex<Vec<u32>>,
    reports: AtomicU64,
    sessions: AtomicU64,
}

/// The leader's memory for a schedule whose runs the log records (`last_window`, `last_drill`):
/// a policy counts from its last run in the log (one missed while there was no leader runs now),
/// else from when this leader first saw it (a new policy does not run at once); a failed attempt
/// waits for the schedule's next instant.
#[derive(Default)]
struct Cadence {
    first_seen: HashMap<String, i64>,
    failed_at: HashMap<String, i64>,
}

impl Cadence {
    /// Leadership lost: what this leader saw no longer counts.
    pub(super) fn forget(&mut self) {
        self.first_seen.clear();
        self.failed_at.clear();
    }

    /// Whether `policy`, last run at `last` (from the log), is due at `now`.
    pub(super) fn due(
        &mut self,
        policy: &str,
        last: Option<i64>,
        schedule: &fleetsnap_core::schedule::Schedule,
        now: time::OffsetDateTime,
    ) -> bool {
        let now_ms = unix_ms(now);
        let base =
            last.unwrap_or_else(|| *self.first_seen.entry(policy.to_string()).or_insert(now_ms));
        let base = self.failed_at.get(policy).map_or(base, |&f| f.max(base));
        schedule
            .next_after(from_unix_ms(base))
            .is_some_and(|next| next <= now)
    }

    /// An attempt at `now` failed.
    pub(super) fn failed(&mut self, policy: String, now: time::OffsetDateTime) {
        self.failed_at.insert(policy, unix_ms(now));
    }
}

struct AgentLive {
    session: u64,
    incarnation: u64,
    version: String,
    /// `None` once the stream ended.
    tx: Option<Outbound>,
    connected_at: Instant,
    last_report: Option<Instant>,
    instances: Vec<InstanceReport>,
    /// Jobs the agent said it holds (Hello), or was handed since.
    holding: HashSet<u64>,
    /// Primaries of this agent's (`host:port`) that stopped answering, with the last offset each
    /// reported while it did: what a forced failover measures the replication lost against.
    dead_primaries: HashMap<String, u64>,
    /// Whether its config has a `[drill]` section.
    drills: bool,
    /// Its archive jobs, as its last report showed them.
    archives: Vec<v1::ArchiveProgress>,
}

impl AgentLive {
    pub(super) fn last_heard(&self) -> Instant {
        self.last_report.unwrap_or(self.connected_at)
    }
}

/// Who leads, as far as this node knows.
struct LeaderInfo {
    id: Option<NodeId>,
    address: String,
}

impl Node {
    /// A node around a started Raft.
    pub fn new(
        id: NodeId,
        raft: Raft<TypeConfig>,
        state: Arc<RwLock<Applied>>,
        lease: Duration,
        config_policies: Vec<Policy>,
    ) -> Arc<Self> {
        let (registrations, asks) = mpsc::unbounded_channel();
        let node = Arc::new(Self {
            id,
            raft,
            state,
            fleet: Fleet::default(),
            lease,
            wake: Notify::new(),
            leader_id: tokio::sync::watch::Sender::new(None),
            registrations,
            config_policies,
            spares: Mutex::default(),
            cut_waiters: Mutex::default(),
            cut_wake: Notify::new(),
            confirmed: AtomicBool::new(true),
            traces: observe::Traces::default(),
            archive_rows: Mutex::default(),
        });
        tokio::spawn(node.clone().register_loop(asks));
        tokio::spawn(node.clone().schedule_loop());
        tokio::spawn(node.clone().drill_loop());
        tokio::spawn(node.clone().runbook_loop());
        tokio::spawn(node.clone().watch_leadership());
        tokio::spawn(node.clone().lease_loop());
        tokio::spawn(node.clone().job_loop());
        tokio::spawn(node.clone().cut_loop());
        tokio::spawn(node.clone().upkeep_loop());
        tokio::spawn(node.clone().archive_loop());
        node
    }
}
