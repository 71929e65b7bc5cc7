//! A coordinator node: Raft, the three gRPC services, the leader's soft state (the latest
//! report of every agent) and the leader's job loop (dispatch and lease expiry).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use fleetsnap_core::BackupId;
use fleetsnap_core::InstanceReport;
use fleetsnap_core::planner;
use fleetsnap_core::policy::{Consistency, Policy};
use fleetsnap_core::topology::{self, Observed};
use fleetsnap_core::window::{from_unix_ms, unix_ms};
use fleetsnap_proto::tls::{self, PeerIdentity, Role};
use fleetsnap_proto::v1::{self, agent_message, coordinator_message, job_update};
use fleetsnap_telemetry::trace;
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, Raft, ServerState};
use serde::Serialize;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::field::Empty;

mod cut;
mod observe;
mod restore;
mod runbook;
mod upkeep;

use crate::state::{Command, Job, JobKind, JobOutcome, JobState, SnapshotSpec};
use crate::store::Applied;
use crate::state::WindowPlan;
use crate::{NodeId, TypeConfig};

type Outbound = mpsc::Sender<Result<v1::CoordinatorMessage, Status>>;

/// The metadata key naming the leader's address in a follower's refusal.
pub const LEADER_KEY: &str = "fleetsnap-leader";

/// One coordinator node.
pub struct Node {
    /// This node's id.
    pub id: NodeId,
    /// Raft.
    pub raft: Raft<TypeConfig>,
    state: Arc<RwLock<Applied>>,
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
    spares: Mutex<HashMap<String, Instant>>,
    /// Consistent cuts: steps waiting for their agents' replies.
    cut_waiters: cut::Waiters,
    /// A shard's stream was recorded: a cut may be due.
    cut_wake: Notify,
    /// Whether this node, if Raft calls it leader, has lately confirmed that a quorum follows
    /// it. A leader cut off from every follower calls itself leader until it hears of a newer
    /// term; without this it would keep its agents while the others elect a leader that has none
    /// (see `lease_loop`).
    confirmed: AtomicBool,
    /// The spans of windows, restores, drills and runbooks this leader started, by their
    /// `traceparent`, each ended once nothing open carries it.
    traces: observe::Traces,
}

/// A leader that cannot confirm a quorum for this long lets its agents go.
const LEASE_LOST: Duration = Duration::from_secs(3);

/// How long a new leader waits for its agents' first reports before it plans a window that
/// would otherwise miss a cluster.
const REPORTS_GRACE: Duration = Duration::from_secs(10);

/// The slot ranges of 0..=16383 that `ranges` leave out.
fn uncovered<'a>(ranges: impl Iterator<Item = &'a (u16, u16)>) -> Vec<(u16, u16)> {
    let mut served = vec![false; 16384];
    for &(a, b) in ranges {
        for s in a..=b.min(16383) {
            served[usize::from(s)] = true;
        }
    }
    let mut gaps = Vec::new();
    let mut start = None;
    for (slot, &on) in served.iter().enumerate() {
        match (on, start) {
            (false, None) => start = Some(slot as u16),
            (true, Some(a)) => {
                gaps.push((a, slot as u16 - 1));
                start = None;
            }
            _ => {}
        }
    }
    if let Some(a) = start {
        gaps.push((a, 16383));
    }
    gaps
}

/// How long a window waits for a shard none of whose nodes qualifies yet.
const PLAN_PATIENCE: Duration = Duration::from_secs(20);

/// An agent whose last `Standby` call is older has no spare connection here any more (agents
/// call every 30 s, jittered up to 37.5 s).
const SPARE_FRESH: Duration = Duration::from_secs(75);

/// An agent to register, and where to say that it is.
type Registration = (String, tokio::sync::oneshot::Sender<Result<(), Status>>);

/// How far ahead of the opening a `simultaneous` window fires: time to commit the window and
/// hand every agent its job.
const SIMULTANEOUS_LEAD_MS: i64 = 1500;

/// Agents per registration entry at most.
const MAX_REGISTRATION_BATCH: usize = 2000;

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
    fn forget(&mut self) {
        self.first_seen.clear();
        self.failed_at.clear();
    }

    /// Whether `policy`, last run at `last` (from the log), is due at `now`.
    fn due(
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
    fn failed(&mut self, policy: String, now: time::OffsetDateTime) {
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
}

impl AgentLive {
    fn last_heard(&self) -> Instant {
        self.last_report.unwrap_or(self.connected_at)
    }
}

/// How long a new member may take to catch up before `add-node` gives up.
const CATCH_UP: Duration = Duration::from_secs(20);

/// How long a follower holds an agent's Hello while no usable leader is known.
const FOLLOWER_HOLD: Duration = Duration::from_secs(5);

/// At most this many latency samples are kept between two `LeaderStats(reset)` calls.
const MAX_SAMPLES: usize = 4 << 20;

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
        node
    }

    fn leader(&self) -> LeaderInfo {
        let m = self.raft.metrics().borrow().clone();
        let address = m
            .current_leader
            .and_then(|l| {
                m.membership_config
                    .membership()
                    .get_node(&l)
                    .map(|n| n.addr.clone())
            })
            .unwrap_or_default();
        LeaderInfo {
            id: m.current_leader,
            address,
        }
    }

    fn is_leader(&self) -> bool {
        self.raft_says_leader() && self.confirmed.load(Ordering::SeqCst)
    }

    /// This cluster's identity, written by the leader the first time it is asked for (a
    /// follower answers with what it has applied, or "" when it has none yet).
    async fn cluster_id(&self) -> Result<String, Status> {
        let known = || {
            self.state
                .read()
                .expect("state lock")
                .state
                .cluster_id
                .clone()
        };
        if let Some(id) = known() {
            return Ok(id);
        }
        if !self.is_leader() {
            return Ok(String::new());
        }
        let id = format!("{:016x}", rand::random::<u64>());
        self.write(Command::SetClusterId { id }).await?;
        Ok(known().unwrap_or_default())
    }

    fn raft_says_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Sends every connected agent away: to `to`, or (no address) to try the other coordinators.
    fn release_agents(&self, to: &LeaderInfo) {
        let agents: Vec<AgentLive> = self
            .fleet
            .agents
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, a)| a)
            .collect();
        for a in agents {
            if let Some(tx) = a.tx {
                let _ = tx.try_send(Ok(redirect(to)));
            }
        }
    }

    /// While Raft calls this node leader, confirms every half second that a quorum still
    /// follows it. After `LEASE_LOST` without, the node stops acting as leader (sessions, jobs,
    /// windows) and sends its agents to the other coordinators, which know the leader a majority
    /// elected meanwhile. Once confirmed again it leads again.
    async fn lease_loop(self: Arc<Self>) {
        let mut failing_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !self.raft_says_leader() {
                failing_since = None;
                self.confirmed.store(true, Ordering::SeqCst);
                continue;
            }
            let confirmed = matches!(
                tokio::time::timeout(Duration::from_secs(1), self.raft.ensure_linearizable()).await,
                Ok(Ok(_))
            );
            if confirmed {
                failing_since = None;
                if !self.confirmed.swap(true, Ordering::SeqCst) {
                    tracing::info!(node = self.id, "a quorum follows again; leading");
                    *self.fleet.leader_since.lock().expect("lock") = Some(Instant::now());
                    self.wake.notify_one();
                }
                continue;
            }
            let since = *failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= LEASE_LOST && self.confirmed.swap(false, Ordering::SeqCst) {
                tracing::warn!(
                    node = self.id,
                    "no quorum confirms this leader for {}s; sending its agents to the other coordinators",
                    LEASE_LOST.as_secs()
                );
                *self.fleet.leader_since.lock().expect("lock") = None;
                self.release_agents(&LeaderInfo {
                    id: None,
                    address: String::new(),
                });
            }
        }
    }

    fn not_leader(&self, leader: Option<&ForwardToLeader<NodeId, BasicNode>>) -> Status {
        let (id, address) = match leader {
            Some(f) => (
                f.leader_id,
                f.leader_node
                    .as_ref()
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
            ),
            None => {
                let l = self.leader();
                (l.id.filter(|&l| l != self.id), l.address)
            }
        };
        let mut status = match id {
            Some(id) => Status::failed_precondition(format!(
                "coordinator {} is not the leader; the leader is coordinator {id} at {address}",
                self.id
            )),
            None => Status::unavailable(format!(
                "coordinator {} is not the leader and knows no leader yet (an election may be \
                 running); retry in a few seconds",
                self.id
            )),
        };
        if id.is_some()
            && let Ok(v) = address.parse()
        {
            status.metadata_mut().insert(LEADER_KEY, v);
        }
        status
    }

    /// Commits a command; a follower's refusal names the leader. A command whose entry created
    /// jobs (a window, a retry, a manifest, a catalog task) wakes the job loop, which hands them
    /// out at once instead of at its next round.
    async fn write(&self, cmd: Command) -> Result<(crate::state::Response, u64, u64), Status> {
        let jobs = || self.state.read().expect("state lock").state.next_job;
        let before = jobs();
        match self.raft.client_write(cmd).await {
            Ok(r) => {
                if jobs() != before {
                    self.wake.notify_one();
                }
                Ok((r.data, r.log_id.leader_id.term, r.log_id.index))
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(&self, e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>) -> Status {
        match &e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(Some(f)),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                Status::failed_precondition(c.to_string())
            }
            RaftError::Fatal(f) => Status::internal(format!("raft stopped: {f}")),
        }
    }

    async fn linearizable(&self) -> Result<(), Status> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(self.not_leader(Some(f))),
                None => Err(Status::unavailable(format!(
                    "coordinator {} cannot confirm it leads: {e}",
                    self.id
                ))),
            },
        }
    }

    /// Leadership changes: a new leader starts with an empty view; a deposed one sends its agents
    /// to the new leader.
    async fn watch_leadership(self: Arc<Self>) {
        let mut metrics = self.raft.metrics();
        let mut was_leader = false;
        loop {
            let current = metrics.borrow().current_leader;
            self.leader_id.send_if_modified(|l| {
                let changed = *l != current;
                *l = current;
                changed
            });
            let leader = self.is_leader();
            if leader && !was_leader {
                tracing::info!(node = self.id, "became the leader");
                // The view is empty already (emptied when this node last lost leadership); agents
                // that a follower held for this election may be joining it right now.
                *self.fleet.leader_since.lock().expect("lock") = Some(Instant::now());
                self.wake.notify_one();
                tokio::spawn(self.clone().write_config_policies());
            } else if !leader && was_leader {
                let l = self.leader();
                tracing::warn!(node = self.id, new_leader = ?l.id, "no longer the leader; redirecting agents");
                *self.fleet.leader_since.lock().expect("lock") = None;
                self.release_agents(&l);
            }
            was_leader = leader;
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    fn cluster_status(&self) -> v1::ClusterStatusReply {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, n)| v1::Member {
                id: *id,
                address: n.addr.clone(),
                voter: voters.contains(id),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index)
                    .or_else(|| (*id == self.id).then_some(m.last_log_index).flatten()),
            })
            .collect();
        let spare_agents = {
            let mut spares = self.spares.lock().expect("lock");
            spares.retain(|_, at| at.elapsed() < SPARE_FRESH);
            spares.len() as u64
        };
        v1::ClusterStatusReply {
            spare_agents,
            node_id: self.id,
            leader_id: m.current_leader.unwrap_or_default(),
            term: m.current_term,
            last_log_index: m.last_log_index.unwrap_or_default(),
            applied_index: m.last_applied.map(|l| l.index).unwrap_or_default(),
            snapshot_index: m.snapshot.map(|l| l.index).unwrap_or_default(),
            members,
        }
    }

    /// The fleet view from the latest reports: every cluster, or one.
    fn view(&self, cluster: &str) -> topology::FleetView {
        let now = Instant::now();
        let agents = self.fleet.agents.lock().expect("lock");
        let mut observed = Vec::new();
        for (name, a) in agents.iter() {
            let age = now.duration_since(a.last_heard()).as_millis() as u64;
            for r in &a.instances {
                if cluster.is_empty() || r.cluster == cluster {
                    observed.push(Observed {
                        agent: name,
                        report: r,
                        age_ms: age,
                    });
                }
            }
        }
        topology::derive(&observed)
    }

    /// Plans and opens a window of `policy` now (the leader only), in a trace of its own (the
    /// caller's, when `parent` names one) that its jobs carry to their agents.
    pub async fn open_window(
        &self,
        policy: &str,
        parent: Option<&str>,
    ) -> Result<(u64, String), Status> {
        let span = tracing::info_span!(
            parent: None,
            "window",
            %policy,
            window = Empty,
            backup_id = Empty,
            trace_id = Empty,
        );
        self.in_trace(span, parent, async {
            let current = tracing::Span::current();
            let trace = trace::traceparent(&current);
            let (window, backup_id) = self.plan_and_open(policy, trace).await?;
            current.record("window", window);
            current.record("backup_id", backup_id.as_str());
            Ok((window, backup_id))
        })
        .await
    }

    async fn plan_and_open(
        &self,
        policy: &str,
        trace: Option<String>,
    ) -> Result<(u64, String), Status> {
        if !self.is_leader() {
            return Err(self.not_leader(None));
        }
        let p = self
            .state
            .read()
            .expect("state lock")
            .state
            .policies
            .get(policy)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "there is no policy {policy:?}; `fleetsnap policy list` shows those there are"
                ))
            })?;
        let rules = p.rules();
        let patience = Instant::now() + PLAN_PATIENCE;
        let (shards, missing) = loop {
            let view = self.view("");
            let mut shards = Vec::new();
            let mut missing = Vec::new();
            for cluster in &p.clusters {
                match view.clusters.iter().find(|c| c.name == cluster.as_str()) {
                    Some(c) if !c.shards.is_empty() => {
                        // A set of a Redis Cluster without every slot would be called complete
                        // with shards missing: the cluster is left out instead, and fails.
                        let gaps = if c.mode == "redis-cluster" {
                            uncovered(c.shards.iter().flat_map(|s| s.slots.iter()))
                        } else {
                            Vec::new()
                        };
                        if !gaps.is_empty() {
                            missing.push((
                                cluster.clone(),
                                format!(
                                    "slots {} of cluster {cluster:?} are served by no node an agent \
                                     reports: every shard needs an agent (`fleetsnap status` shows \
                                     the shards reported)",
                                    fleetsnap_core::topology::format_slots(&gaps)
                                ),
                            ));
                            continue;
                        }
                        for s in &c.shards {
                            shards.push((cluster.clone(), planner::plan_shard(s, &rules)));
                        }
                    }
                    _ => missing.push((
                        cluster.clone(),
                        format!(
                            "no agent reports a node of cluster {cluster:?}: check the cluster = … \
                             of the agents' [[instance]] entries"
                        ),
                    )),
                }
            }
            // A new leader hears from its agents within seconds of its election: a window
            // opened sooner waits for them rather than miss a cluster.
            let since = *self.fleet.leader_since.lock().expect("lock");
            let hearing = !missing.is_empty() && since.is_some_and(|s| s.elapsed() < REPORTS_GRACE);
            // A shard whose nodes are all busy for now (a fork running, a replica resyncing
            // after a failover) is planned again for a while before the window opens without it.
            let busy =
                shards.iter().any(|(_, plan)| plan.failure.is_some()) && Instant::now() < patience;
            if !hearing && !busy {
                break (shards, missing);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let now = time::OffsetDateTime::now_utc();
        let opened_at_ms = unix_ms(now);
        let backup_id = BackupId::from_parts(now, rand::random());
        let plan = WindowPlan {
            fire_at_ms: (p.consistency == Consistency::Simultaneous)
                .then_some(opened_at_ms + SIMULTANEOUS_LEAD_MS),
            policy: p,
            backup_id: backup_id.clone(),
            opened_at_ms,
            shards,
            missing,
            trace,
        };
        let (resp, _, _) = self.write(Command::OpenWindow { plan }).await?;
        let window = resp
            .window
            .ok_or_else(|| Status::internal("the window was not opened"))?;
        tracing::info!(window, %backup_id, policy, "window opened");
        Ok((window, backup_id.to_string()))
    }

    /// Opens the windows that policies' schedules call for (the leader only).
    async fn schedule_loop(self: Arc<Self>) {
        let mut cadence = Cadence::default();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if !self.is_leader() {
                cadence.forget();
                continue;
            }
            let now = time::OffsetDateTime::now_utc();
            let due: Vec<String> = {
                let s = self.state.read().expect("state lock");
                s.state
                    .policies
                    .values()
                    .filter(|p| {
                        p.schedule.as_ref().is_some_and(|schedule| {
                            let last = s.state.last_window.get(&p.name).copied();
                            cadence.due(&p.name, last, schedule, now)
                        })
                    })
                    .map(|p| p.name.clone())
                    .collect()
            };
            for policy in due {
                if let Err(e) = self.open_window(&policy, None).await {
                    tracing::warn!(%policy, error = %e.message(), "scheduled window not opened");
                    cadence.failed(policy, now);
                }
            }
        }
    }

    fn status_json(&self, cluster: &str) -> String {
        let view = self.view(cluster);
        let now = Instant::now();
        let mut agent_rows: Vec<AgentRow> = self
            .fleet
            .agents
            .lock()
            .expect("lock")
            .iter()
            .map(|(name, a)| AgentRow {
                agent: name.clone(),
                connected: a.tx.is_some(),
                version: a.version.clone(),
                last_report_age_ms: a
                    .last_report
                    .map(|t| now.duration_since(t).as_millis() as u64),
                instances: a.instances.len(),
            })
            .collect();
        agent_rows.sort_by(|a, b| a.agent.cmp(&b.agent));
        let (known, jobs) = {
            let s = self.state.read().expect("state lock");
            let running = s
                .state
                .jobs
                .values()
                .filter(|j| !matches!(j.state, JobState::Done(_)))
                .count();
            (s.state.agents.len(), running)
        };
        let m = self.raft.metrics().borrow().clone();
        serde_json::to_string_pretty(&StatusDoc {
            leader: self.id,
            term: m.current_term,
            registered_agents: known,
            open_jobs: jobs,
            agents: agent_rows,
            clusters: view.clusters,
        })
        .expect("status serialises")
    }

    /// The job loop on the leader: hand pending jobs to their connected agents, fail jobs whose
    /// lease expired.
    async fn job_loop(self: Arc<Self>) {
        let mut first_seen: HashMap<u64, Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
            if !self.is_leader() {
                first_seen.clear();
                self.traces.end_all();
                continue;
            }
            let Some(since) = *self.fleet.leader_since.lock().expect("lock") else {
                continue;
            };
            let open: Vec<Job> = {
                let s = self.state.read().expect("state lock");
                s.state
                    .jobs
                    .values()
                    .filter(|j| !matches!(j.state, JobState::Done(_)))
                    .cloned()
                    .collect()
            };
            self.end_finished_traces(&open);
            let now = Instant::now();
            first_seen.retain(|id, _| open.iter().any(|j| j.id == *id));
            for job in open {
                let seen = *first_seen.entry(job.id).or_insert(now);
                let (live, heard) = {
                    let agents = self.fleet.agents.lock().expect("lock");
                    match agents.get(&job.agent) {
                        Some(a) => (
                            a.tx.clone()
                                .map(|tx| (tx, a.incarnation, a.holding.contains(&job.id))),
                            Some(a.last_heard()),
                        ),
                        None => (None, None),
                    }
                };
                let reference = [Some(since), Some(seen), heard]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(now);
                let silent = now.duration_since(reference);
                if silent > self.lease {
                    let reason = format!(
                        "lease expired: agent {:?} has not reported for {} s (lease {} s)",
                        job.agent,
                        silent.as_secs(),
                        self.lease.as_secs()
                    );
                    self.fail_job(job.id, reason).await;
                    continue;
                }
                let Some((tx, incarnation, holding)) = live else {
                    continue;
                };
                if job.state == JobState::Pending && !holding {
                    self.dispatch(&job, incarnation, &tx).await;
                }
            }
        }
    }

    /// Commits the hand-over, then sends the job with its new fencing token.
    async fn dispatch(&self, job: &Job, incarnation: u64, tx: &Outbound) {
        let r = self
            .write(Command::DispatchJob {
                job: job.id,
                incarnation,
            })
            .await;
        match r {
            Ok((resp, term, index)) if resp.refused.is_none() => {
                if let Some(a) = self.fleet.agents.lock().expect("lock").get_mut(&job.agent) {
                    a.holding.insert(job.id);
                }
                let trace = self.state.read().expect("state lock").state.trace_of(job);
                let msg = job_message(job, term, index, trace);
                if tx.send(Ok(msg)).await.is_err() {
                    tracing::info!(
                        job = job.id,
                        "agent left before the job reached it; it is handed again when it returns"
                    );
                }
            }
            Ok((resp, _, _)) => {
                tracing::warn!(job = job.id, refused = ?resp.refused, "dispatch refused")
            }
            Err(e) => tracing::warn!(job = job.id, error = %e.message(), "dispatch failed"),
        }
    }

    async fn run_session(
        self: Arc<Self>,
        identity: Option<PeerIdentity>,
        mut inbound: Streaming<v1::AgentMessage>,
        tx: Outbound,
    ) {
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage {
                body: Some(agent_message::Body::Hello(h)),
            }))) => h,
            _ => {
                let _ = tx
                    .send(Err(Status::invalid_argument(
                        "an agent session starts with Hello",
                    )))
                    .await;
                return;
            }
        };
        let agent = hello.agent_id.clone();
        if let Some(id) = &identity
            && id.name != agent
        {
            let _ = tx
                .send(Err(Status::permission_denied(format!(
                    "the certificate names agent {:?} but the agent calls itself {agent:?}: set \
                     agent_id in its config to the name in its certificate",
                    id.name
                ))))
                .await;
            return;
        }
        if !self.is_leader() {
            // Wait for the election to settle on a leader the agent did not just lose (perhaps
            // this node): a redirect to a dead leader would cost the agent a backoff.
            let lost = hello.last_leader_id;
            let mut leader = self.leader_id.subscribe();
            let _ = tokio::time::timeout(
                FOLLOWER_HOLD,
                leader.wait_for(|l| l.is_some_and(|l| l != lost)),
            )
            .await;
        }
        let term = self.raft.metrics().borrow().current_term;
        let cluster_id = match self.cluster_id().await {
            Ok(id) => id,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        // Terms the agent saw in another coordinator cluster (one since rebuilt) say nothing of
        // this one.
        let same_cluster = hello.cluster_id.is_empty() || hello.cluster_id == cluster_id;
        if same_cluster && hello.newest_term_seen > term {
            // This node is behind the agent: whatever it believes about leaders is stale.
            let unknown = LeaderInfo {
                id: None,
                address: String::new(),
            };
            let _ = tx.send(Ok(redirect(&unknown))).await;
            return;
        }
        if !self.is_leader() {
            let _ = tx.send(Ok(redirect(&self.leader()))).await;
            return;
        }
        if let Err(status) = self.admit(&hello).await {
            let _ = tx.send(Err(status)).await;
            return;
        }
        let session = self.fleet.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut agents = self.fleet.agents.lock().expect("lock");
            let dead_primaries = agents
                .get(&agent)
                .map(|a| a.dead_primaries.clone())
                .unwrap_or_default();
            agents.insert(
                agent.clone(),
                AgentLive {
                    session,
                    incarnation: hello.incarnation,
                    version: hello.version.clone(),
                    tx: Some(tx.clone()),
                    connected_at: Instant::now(),
                    last_report: None,
                    instances: Vec::new(),
                    holding: hello.running_jobs.iter().copied().collect(),
                    dead_primaries,
                    drills: hello.drills,
                },
            );
        }
        let welcome = v1::CoordinatorMessage {
            body: Some(coordinator_message::Body::Welcome(v1::Welcome {
                coordinator_id: self.id,
                term,
                cluster_id,
            })),
        };
        if tx.send(Ok(welcome)).await.is_err() {
            return;
        }
        // Jobs the agent holds no trace of, handed to this same agent process, never reached
        // it: hand them again.
        self.redeliver(&agent, &hello, &tx).await;
        self.wake.notify_one();
        // Results arriving in parts, by job, until their `Finished`.
        let mut parts: HashMap<u64, (u32, Vec<u8>)> = HashMap::new();
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%agent, error = %e, "agent stream ended");
                    break;
                }
            };
            match msg.body {
                Some(agent_message::Body::Report(r)) => {
                    let instances: Vec<InstanceReport> =
                        r.instances.into_iter().map(InstanceReport::from).collect();
                    let mut agents = self.fleet.agents.lock().expect("lock");
                    let Some(a) = agents.get_mut(&agent).filter(|a| a.session == session) else {
                        break;
                    };
                    for gone in instances.iter().filter(|i| !i.reachable) {
                        if let Some(was) = a.instances.iter().find(|o| {
                            o.name == gone.name
                                && o.reachable
                                && o.role == fleetsnap_core::Role::Primary
                        }) {
                            a.dead_primaries
                                .insert(was.address.clone(), was.master_repl_offset);
                        }
                    }
                    a.instances = instances;
                    a.last_report = Some(Instant::now());
                    drop(agents);
                    self.fleet.reports.fetch_add(1, Ordering::Relaxed);
                    let latency = fleetsnap_proto::convert::unix_micros()
                        .saturating_sub(r.sent_at_unix_us)
                        .max(0);
                    let mut samples = self.fleet.latency_us.lock().expect("lock");
                    if samples.len() < MAX_SAMPLES {
                        samples.push(latency.min(u32::MAX as i64) as u32);
                    }
                }
                Some(agent_message::Body::JobUpdate(u)) => {
                    if let Some(u) = assemble(&agent, &mut parts, u) {
                        self.job_update(&agent, u).await;
                    }
                }
                Some(agent_message::Body::CutReply(r)) => self.cut_reply(r),
                Some(agent_message::Body::Synced(s)) => self.synced(&agent, s).await,
                Some(agent_message::Body::Hello(_)) | None => {}
            }
        }
        let mut agents = self.fleet.agents.lock().expect("lock");
        if let Some(a) = agents.get_mut(&agent).filter(|a| a.session == session) {
            a.tx = None;
        }
    }

    /// Writes the config file's policies that differ from the replicated ones (new leader).
    async fn write_config_policies(self: Arc<Self>) {
        for p in &self.config_policies {
            let same = self
                .state
                .read()
                .expect("state lock")
                .state
                .policies
                .get(&p.name)
                == Some(p);
            if same {
                continue;
            }
            match self.write(Command::SetPolicy { policy: p.clone() }).await {
                Ok(_) => tracing::info!(policy = %p.name, "policy from the config file written"),
                Err(s) => {
                    tracing::warn!(policy = %p.name, error = %s.message(), "policy from the config file not written")
                }
            }
        }
    }

    /// Commits registrations in batches: every agent that asked while the previous batch was
    /// being committed goes into the next one.
    async fn register_loop(self: Arc<Self>, mut asks: mpsc::UnboundedReceiver<Registration>) {
        while let Some(first) = asks.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_REGISTRATION_BATCH {
                match asks.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut agents: Vec<String> = batch.iter().map(|(a, _)| a.clone()).collect();
            agents.sort();
            agents.dedup();
            let result = self
                .write(Command::RegisterAgents { agents })
                .await
                .map(|_| ());
            for (_, done) in batch {
                let _ = done.send(result.clone());
            }
        }
    }

    /// Registers a new agent and settles what it holds.
    async fn admit(&self, hello: &v1::Hello) -> Result<(), Status> {
        let known = self
            .state
            .read()
            .expect("state lock")
            .state
            .agents
            .contains_key(&hello.agent_id);
        if !known {
            let (done, registered) = tokio::sync::oneshot::channel();
            self.registrations
                .send((hello.agent_id.clone(), done))
                .map_err(|_| Status::unavailable("the coordinator is stopping"))?;
            registered
                .await
                .map_err(|_| Status::unavailable("the coordinator is stopping"))??;
        }
        for u in &hello.finished_jobs {
            self.job_update(&hello.agent_id, u.clone()).await;
        }
        Ok(())
    }

    async fn redeliver(&self, agent: &str, hello: &v1::Hello, tx: &Outbound) {
        let finished: HashSet<u64> = hello.finished_jobs.iter().map(|u| u.job_id).collect();
        let running: Vec<Job> = {
            let s = self.state.read().expect("state lock");
            s.state
                .jobs
                .values()
                .filter(|j| j.agent == agent && matches!(j.state, JobState::Running { .. }))
                .cloned()
                .collect()
        };
        for job in running {
            if hello.running_jobs.contains(&job.id) || finished.contains(&job.id) {
                continue;
            }
            let JobState::Running { incarnation } = job.state else {
                continue;
            };
            if incarnation == hello.incarnation {
                self.dispatch(&job, incarnation, tx).await;
            } else {
                let reason = format!(
                    "agent {agent:?} restarted while it held the job; it is not run again \
                     automatically (a job never runs twice): submit it again"
                );
                self.fail_job(job.id, reason).await;
            }
        }
    }

    /// Records that a job failed, and why (a refusal just means it had ended already).
    async fn fail_job(&self, job: u64, reason: String) {
        tracing::warn!(job, %reason, "failing job");
        let outcome = JobOutcome::Failed { reason };
        if let Err(e) = self.write(Command::FinishJob { job, outcome }).await {
            tracing::warn!(job, error = %e.message(), "could not record a job's failure");
        }
    }

    /// The voting members.
    fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    async fn job_update(&self, agent: &str, u: v1::JobUpdate) {
        let outcome = match u.state {
            // Parts are put together by the session before they get here.
            Some(job_update::State::Started(_)) | Some(job_update::State::Part(_)) | None => {
                return;
            }
            Some(job_update::State::Refused(why)) => JobOutcome::Failed {
                reason: format!("agent {agent:?} refused the job: {why}"),
            },
            Some(job_update::State::Finished(f)) if f.ok => {
                let result = (!f.result_json.is_empty())
                    .then(|| serde_json::from_str(&f.result_json))
                    .transpose();
                match result {
                    Ok(result) => JobOutcome::Succeeded {
                        backup_id: (!f.backup_id.is_empty()).then_some(f.backup_id),
                        result,
                    },
                    Err(e) => JobOutcome::Failed {
                        reason: format!(
                            "agent {agent:?} sent a result this coordinator cannot read ({e}); \
                             are the agent and the coordinators the same version?"
                        ),
                    },
                }
            }
            Some(job_update::State::Finished(f)) => JobOutcome::Failed { reason: f.error },
        };
        let (owner, done) = self
            .state
            .read()
            .expect("state lock")
            .state
            .jobs
            .get(&u.job_id)
            .map(|j| (Some(j.agent.clone()), matches!(j.state, JobState::Done(_))))
            .unwrap_or_default();
        if owner.as_deref() != Some(agent) {
            tracing::warn!(
                job = u.job_id,
                agent,
                "update for a job the agent does not own; ignored"
            );
            return;
        }
        if done {
            // Agents repeat recent results in every Hello; this one is recorded already.
            return;
        }
        match self
            .write(Command::FinishJob {
                job: u.job_id,
                outcome,
            })
            .await
        {
            Ok(_) => {
                if let Some(a) = self.fleet.agents.lock().expect("lock").get_mut(agent) {
                    a.holding.remove(&u.job_id);
                }
            }
            Err(e) => {
                tracing::warn!(job = u.job_id, error = %e.message(), "could not record a job's end")
            }
        }
    }
}

/// The most bytes of results in parts one session may hold at once (a catalog scan of 10,000
/// sets is about 15 MB): an agent cannot make the leader hold more, whatever job ids it names.
const MAX_RESULT_BYTES: usize = 256 << 20;

/// Gathers a result sent in parts: keeps each part, and gives the `Finished` back whole once it
/// comes after all of them. A part out of order, a result over [`MAX_RESULT_BYTES`] or a count
/// that does not match fails the job with the reason, never waits.
fn assemble(
    agent: &str,
    parts: &mut HashMap<u64, (u32, Vec<u8>)>,
    u: v1::JobUpdate,
) -> Option<v1::JobUpdate> {
    let fail = |u: &v1::JobUpdate, why: String| {
        tracing::warn!(job = u.job_id, agent, %why, "a job's result came back broken");
        Some(v1::JobUpdate {
            job_id: u.job_id,
            term: u.term,
            state: Some(job_update::State::Finished(v1::Finished {
                ok: false,
                error: format!(
                    "agent {agent:?} sent a result the coordinator could not put together: {why}"
                ),
                ..Default::default()
            })),
        })
    };
    match &u.state {
        Some(job_update::State::Part(p)) => {
            let held: usize = parts.values().map(|(_, b)| b.len()).sum();
            if held + p.data.len() > MAX_RESULT_BYTES {
                parts.remove(&u.job_id);
                return fail(
                    &u,
                    format!("results in parts over {MAX_RESULT_BYTES} bytes"),
                );
            }
            let (next, buf) = parts.entry(u.job_id).or_default();
            if p.seq == 0 {
                *next = 0;
                buf.clear();
            }
            if p.seq != *next {
                let why = format!("part {} came where part {next} belonged", p.seq);
                parts.remove(&u.job_id);
                return fail(&u, why);
            }
            buf.extend_from_slice(&p.data);
            *next += 1;
            None
        }
        Some(job_update::State::Finished(f)) if f.result_parts > 0 => {
            let (got, bytes) = parts.remove(&u.job_id).unwrap_or_default();
            let mut f = f.clone();
            if got != f.result_parts {
                return fail(&u, format!("{got} of its {} parts arrived", f.result_parts));
            }
            match String::from_utf8(bytes) {
                Ok(text) => {
                    f.result_json = text;
                    f.result_parts = 0;
                    Some(v1::JobUpdate {
                        job_id: u.job_id,
                        term: u.term,
                        state: Some(job_update::State::Finished(f)),
                    })
                }
                Err(_) => fail(&u, "its parts are not UTF-8 text".into()),
            }
        }
        _ => Some(u),
    }
}

fn redirect(l: &LeaderInfo) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        body: Some(coordinator_message::Body::Redirect(v1::Redirect {
            leader_id: l.id.unwrap_or_default(),
            leader_address: l.address.clone(),
        })),
    }
}

fn job_message(job: &Job, term: u64, index: u64, trace: Option<String>) -> v1::CoordinatorMessage {
    let kind = match &job.kind {
        JobKind::Snapshot(s) => v1::job::Kind::Snapshot(v1::SnapshotJob {
            instance: s.instance.clone(),
            destinations: s.destinations.clone(),
            cluster: s.cluster.clone(),
            shard: s.shard.clone(),
            compress: s.compress.clone(),
            encrypt_to: s.encrypt_to.clone(),
            source: s.source.clone(),
            backup_id: s.backup_id.clone(),
            window: s.window.unwrap_or_default(),
            regions: s.regions.clone(),
            fire_at_unix_ms: s.fire_at_ms.unwrap_or_default(),
            consistent_cut: s.consistent_cut,
        }),
        JobKind::Catalog(c) => v1::job::Kind::Catalog(v1::CatalogJob {
            task_json: serde_json::to_string(&c.task).expect("tasks serialise"),
        }),
        JobKind::WriteManifest(m) => v1::job::Kind::Manifest(v1::WriteManifestJob {
            destinations: m.destinations.clone(),
            regions: m.regions.clone(),
            cluster: m.cluster.to_string(),
            backup_id: m.backup_id.to_string(),
            manifest_json: m.manifest_json.clone(),
        }),
    };
    v1::CoordinatorMessage {
        body: Some(coordinator_message::Body::Job(v1::Job {
            id: job.id,
            term,
            index,
            kind: Some(kind),
            traceparent: trace.unwrap_or_default(),
        })),
    }
}

#[derive(Serialize)]
struct StatusDoc {
    leader: NodeId,
    term: u64,
    registered_agents: usize,
    open_jobs: usize,
    agents: Vec<AgentRow>,
    clusters: Vec<topology::ClusterView>,
}

#[derive(Serialize)]
struct AgentRow {
    agent: String,
    connected: bool,
    version: String,
    last_report_age_ms: Option<u64>,
    instances: usize,
}

/// The three services, sharing one node.
#[derive(Clone)]
pub struct Services(pub Arc<Node>);

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for Services {
    type SessionStream = ReceiverStream<Result<v1::CoordinatorMessage, Status>>;

    async fn session(
        &self,
        req: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let identity = tls::require(&req, Role::Agent, "the agent service")?;
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(self.0.clone().run_session(identity, req.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn standby(
        &self,
        req: Request<v1::StandbyRequest>,
    ) -> Result<Response<v1::StandbyReply>, Status> {
        let identity = tls::require(&req, Role::Agent, "the agent service")?;
        let agent = identity.map_or_else(|| req.into_inner().agent_id, |id| id.name);
        self.0
            .spares
            .lock()
            .expect("lock")
            .insert(agent, Instant::now());
        Ok(Response::new(v1::StandbyReply {}))
    }
}

fn raft_reply<T: Serialize>(v: &T) -> Response<v1::RaftPayload> {
    Response::new(v1::RaftPayload {
        json: serde_json::to_vec(v).expect("raft replies serialise"),
    })
}

fn raft_request<T: serde::de::DeserializeOwned>(
    req: Request<v1::RaftPayload>,
) -> Result<T, Status> {
    tls::require(&req, Role::Peer, "the Raft service")?;
    serde_json::from_slice(&req.into_inner().json)
        .map_err(|e| Status::invalid_argument(format!("a Raft message that does not parse: {e}")))
}

#[tonic::async_trait]
impl v1::raft_service_server::RaftService for Services {
    async fn append_entries(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        let r = self.0.raft.append_entries(raft_request(req)?).await;
        Ok(raft_reply(&r))
    }

    async fn vote(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        let r = self.0.raft.vote(raft_request(req)?).await;
        Ok(raft_reply(&r))
    }

    async fn install_snapshot(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        let r = self.0.raft.install_snapshot(raft_request(req)?).await;
        Ok(raft_reply(&r))
    }

    async fn ping(
        &self,
        req: Request<v1::RaftPayload>,
    ) -> Result<Response<v1::RaftPayload>, Status> {
        tls::require(&req, Role::Peer, "the Raft service")?;
        Ok(Response::new(v1::RaftPayload::default()))
    }
}

fn admin<T>(req: &Request<T>) -> Result<(), Status> {
    tls::require(req, Role::Admin, "the admin service").map(|_| ())
}

#[tonic::async_trait]
impl v1::admin_service_server::AdminService for Services {
    async fn status(
        &self,
        req: Request<v1::StatusRequest>,
    ) -> Result<Response<v1::StatusReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        Ok(Response::new(v1::StatusReply {
            json: self.0.status_json(&req.get_ref().cluster),
        }))
    }

    async fn cluster_status(
        &self,
        req: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusReply>, Status> {
        admin(&req)?;
        if !req.get_ref().local {
            self.0.linearizable().await?;
        }
        Ok(Response::new(self.0.cluster_status()))
    }

    async fn add_node(
        &self,
        req: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::ClusterStatusReply>, Status> {
        admin(&req)?;
        let r = req.into_inner();
        if r.id == 0 || r.address.is_empty() {
            return Err(Status::invalid_argument(
                "add-node needs a node id (1 or more) and its address",
            ));
        }
        let node = &self.0;
        let existing = node
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&r.id)
            .cloned();
        if let Some(existing) = existing
            && existing.addr != r.address
        {
            return Err(Status::already_exists(format!(
                "node {} is already a member at {}; remove it first to move it",
                r.id, existing.addr
            )));
        }
        // A learner first: it catches up on the log (or a snapshot) before it counts for quorum.
        node.raft
            .add_learner(r.id, BasicNode::new(&r.address), false)
            .await
            .map_err(|e| node.write_error(e))?;
        let mut metrics = node.raft.metrics();
        let id = r.id;
        let caught_up = tokio::time::timeout(
            CATCH_UP,
            metrics.wait_for(|m| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|rep| rep.get(&id).cloned().flatten())
                    .map(|l| l.index);
                matched.is_some() && matched >= m.last_log_index.map(|i| i.saturating_sub(1))
            }),
        )
        .await
        .is_ok();
        if !caught_up {
            let _ = node
                .raft
                .change_membership(
                    openraft::ChangeMembers::RemoveNodes(BTreeSet::from([r.id])),
                    false,
                )
                .await;
            return Err(Status::deadline_exceeded(format!(
                "node {} at {} did not catch up within {} s, so it was not added: is it                  running and reachable from the leader, and does it hold a peer certificate                  from this fleet's CA? Its log says which",
                r.id,
                r.address,
                CATCH_UP.as_secs()
            )));
        }
        let mut voters = node.voters();
        voters.insert(r.id);
        node.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| node.write_error(e))?;
        Ok(Response::new(node.cluster_status()))
    }

    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::ClusterStatusReply>, Status> {
        admin(&req)?;
        let id = req.into_inner().id;
        let node = &self.0;
        let voters = node.voters();
        if !voters.contains(&id) {
            return Err(Status::not_found(format!(
                "node {id} is not a voting member"
            )));
        }
        if voters.len() == 1 {
            return Err(Status::failed_precondition(
                "cannot remove the last voting member",
            ));
        }
        let rest: BTreeSet<NodeId> = voters.into_iter().filter(|v| *v != id).collect();
        node.raft
            .change_membership(rest, false)
            .await
            .map_err(|e| node.write_error(e))?;
        Ok(Response::new(node.cluster_status()))
    }

    async fn submit_job(
        &self,
        req: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobReply>, Status> {
        admin(&req)?;
        let r = req.into_inner();
        if r.instance.is_empty() || r.destinations.is_empty() {
            return Err(Status::invalid_argument(
                "a snapshot job needs an instance and at least one destination",
            ));
        }
        let job = JobKind::Snapshot(SnapshotSpec {
            instance: r.instance,
            destinations: r.destinations,
            cluster: r.cluster,
            shard: r.shard,
            compress: r.compress,
            encrypt_to: r.encrypt_to,
            source: r.source,
            ..SnapshotSpec::default()
        });
        let (resp, term, index) = self
            .0
            .write(Command::CreateJob {
                agent: r.agent_id,
                job,
            })
            .await?;
        if let Some(why) = resp.refused {
            return Err(Status::failed_precondition(why));
        }
        Ok(Response::new(v1::SubmitJobReply {
            job_id: resp.job.unwrap_or_default(),
            term,
            index,
        }))
    }

    async fn get_job(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::GetJobReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let id = req.get_ref().job_id;
        let s = self.0.state.read().expect("state lock");
        let job = s
            .state
            .jobs
            .get(&id)
            .ok_or_else(|| Status::not_found(format!("job {id} does not exist")))?;
        Ok(Response::new(v1::GetJobReply {
            json: serde_json::to_string_pretty(job).expect("jobs serialise"),
        }))
    }

    async fn set_policy(
        &self,
        req: Request<v1::SetPolicyRequest>,
    ) -> Result<Response<v1::PolicyReply>, Status> {
        admin(&req)?;
        let policy =
            Policy::from_json(&req.get_ref().policy_json).map_err(Status::invalid_argument)?;
        let json = serde_json::to_string_pretty(&policy).expect("policies serialise");
        let (resp, _, _) = self.0.write(Command::SetPolicy { policy }).await?;
        if let Some(why) = resp.refused {
            return Err(Status::invalid_argument(why));
        }
        Ok(Response::new(v1::PolicyReply { policy_json: json }))
    }

    async fn get_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let name = &req.get_ref().name;
        let s = self.0.state.read().expect("state lock");
        let p = s.state.policies.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "there is no policy {name:?}; `fleetsnap policy list` shows those there are"
            ))
        })?;
        Ok(Response::new(v1::PolicyReply {
            policy_json: serde_json::to_string_pretty(p).expect("policies serialise"),
        }))
    }

    async fn list_policies(
        &self,
        req: Request<v1::ListPoliciesRequest>,
    ) -> Result<Response<v1::ListPoliciesReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let s = self.0.state.read().expect("state lock");
        Ok(Response::new(v1::ListPoliciesReply {
            policy_json: s
                .state
                .policies
                .values()
                .map(|p| serde_json::to_string(p).expect("policies serialise"))
                .collect(),
        }))
    }

    async fn delete_policy(
        &self,
        req: Request<v1::GetPolicyRequest>,
    ) -> Result<Response<v1::PolicyReply>, Status> {
        admin(&req)?;
        let name = req.into_inner().name;
        let (resp, _, _) = self
            .0
            .write(Command::DeletePolicy { name: name.clone() })
            .await?;
        if let Some(why) = resp.refused {
            return Err(Status::not_found(why));
        }
        Ok(Response::new(v1::PolicyReply {
            policy_json: String::new(),
        }))
    }

    async fn run_backup(
        &self,
        req: Request<v1::RunBackupRequest>,
    ) -> Result<Response<v1::RunBackupReply>, Status> {
        admin(&req)?;
        let parent = trace::extract(req.metadata());
        let (window, backup_id) = self
            .0
            .open_window(&req.get_ref().policy, parent.as_deref())
            .await?;
        Ok(Response::new(v1::RunBackupReply { window, backup_id }))
    }

    async fn list_backups(
        &self,
        req: Request<v1::ListBackupsRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let r = req.get_ref();
        let s = self.0.state.read().expect("state lock");
        let sets: Vec<&crate::state::BackupSet> = s
            .state
            .sets
            .values()
            .filter(|b| r.cluster.is_empty() || b.cluster.as_str() == r.cluster)
            .filter(|b| r.policy.is_empty() || b.policy == r.policy)
            .collect();
        Ok(Response::new(v1::JsonReply {
            json: serde_json::to_string_pretty(&sets).expect("sets serialise"),
        }))
    }

    async fn repair_backup(
        &self,
        req: Request<v1::CatalogRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let set = self.0.resolve_set(req.get_ref().set.trim())?;
        let job = self.0.repair(&set, "asked by an operator").await?;
        Ok(Response::new(v1::CatalogReply {
            jobs: vec![job],
            agent: String::new(),
        }))
    }

    async fn verify_backup(
        &self,
        req: Request<v1::CatalogRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let set = self.0.resolve_set(req.get_ref().set.trim())?;
        let job = self.0.verify(&set).await?;
        Ok(Response::new(v1::CatalogReply {
            jobs: vec![job],
            agent: String::new(),
        }))
    }

    async fn rebuild_catalog(
        &self,
        req: Request<v1::RebuildCatalogRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let r = req.get_ref();
        if r.regions.is_empty() {
            return Err(Status::invalid_argument(
                "name at least one region to read: --from REGION=URL",
            ));
        }
        let regions = r
            .regions
            .iter()
            .map(|t| fleetsnap_core::window::RegionUrl::from_arg(t))
            .collect();
        let (job, agent) = self.0.rebuild(regions, &r.agent).await?;
        Ok(Response::new(v1::CatalogReply {
            jobs: vec![job],
            agent,
        }))
    }

    async fn prune(
        &self,
        req: Request<v1::PruneRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let r = req.get_ref();
        let doc = self
            .0
            .prune(r.policy.trim(), !r.dry_run, !r.dry_run)
            .await?;
        Ok(Response::new(v1::JsonReply {
            json: serde_json::to_string_pretty(&doc).expect("decisions serialise"),
        }))
    }

    async fn restore(
        &self,
        req: Request<v1::RestoreRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        admin(&req)?;
        let span = tracing::info_span!(parent: None, "restore", set = Empty, trace_id = Empty);
        let started = self
            .0
            .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
                self.0.linearizable().await?;
                let started = self.0.restore(req.get_ref()).await?;
                tracing::Span::current().record("set", started.set.as_str());
                tracing::info!(set = %started.set, jobs = ?started.jobs, "restore started");
                Ok(started)
            })
            .await?;
        Ok(Response::new(v1::CatalogReply {
            jobs: started.jobs,
            agent: started.agents.join(","),
        }))
    }

    async fn run_drill(
        &self,
        req: Request<v1::DrillRequest>,
    ) -> Result<Response<v1::CatalogReply>, Status> {
        admin(&req)?;
        let r = req.get_ref();
        let span = tracing::info_span!(parent: None, "drill", set = Empty, trace_id = Empty);
        let started = self
            .0
            .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
                self.0.linearizable().await?;
                let started = self
                    .0
                    .drill(
                        r.cluster.trim(),
                        r.set.trim(),
                        r.shard.trim(),
                        r.agent.trim(),
                        None,
                    )
                    .await?;
                tracing::Span::current().record("set", started.set.as_str());
                Ok(started)
            })
            .await?;
        Ok(Response::new(v1::CatalogReply {
            jobs: started.jobs,
            agent: started.agents.join(","),
        }))
    }

    async fn list_drills(
        &self,
        req: Request<v1::ListBackupsRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        Ok(Response::new(v1::JsonReply {
            json: self.0.drills_json(req.get_ref().cluster.trim()),
        }))
    }

    async fn start_runbook(
        &self,
        req: Request<v1::RunbookRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        admin(&req)?;
        let r = req.get_ref();
        let span = tracing::info_span!(
            parent: None,
            "runbook",
            name = %r.name,
            runbook = Empty,
            trace_id = Empty
        );
        let json = self
            .0
            .in_trace(span, trace::extract(req.metadata()).as_deref(), async {
                self.0.linearizable().await?;
                let plan = self.0.plan_runbook(r)?;
                if r.dry_run {
                    return Ok(serde_json::to_string_pretty(&plan).expect("runbooks serialise"));
                }
                let id = self.0.start_runbook(plan).await?;
                tracing::Span::current().record("runbook", id);
                tracing::info!(runbook = id, name = %r.name, "runbook started");
                self.0.runbook_json(id)
            })
            .await?;
        Ok(Response::new(v1::JsonReply { json }))
    }

    async fn get_runbook(
        &self,
        req: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        Ok(Response::new(v1::JsonReply {
            json: self.0.runbook_json(req.get_ref().job_id)?,
        }))
    }

    async fn show_backup(
        &self,
        req: Request<v1::ShowBackupRequest>,
    ) -> Result<Response<v1::JsonReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let id = req.get_ref().id.trim();
        let s = self.0.state.read().expect("state lock");
        let window = match id.parse::<u64>() {
            Ok(n) => s.state.windows.get(&n),
            Err(_) => s
                .state
                .windows
                .values()
                .find(|w| w.plan.backup_id.as_str() == id),
        }
        .ok_or_else(|| {
            Status::not_found(format!(
                "no window or backup set {id:?}; `fleetsnap backup list` shows them"
            ))
        })?;
        let sets: Vec<&crate::state::BackupSet> = s
            .state
            .sets
            .values()
            .filter(|b| b.window == window.id)
            .collect();
        let jobs: Vec<&Job> = window
            .shards
            .iter()
            .filter_map(|sh| sh.job)
            .chain(window.manifest_jobs.values().copied())
            .filter_map(|j| s.state.jobs.get(&j))
            .collect();
        let doc = serde_json::json!({
            "window": window.id,
            "backup_id": window.plan.backup_id,
            "trace_id": window.plan.trace.as_deref().and_then(trace::trace_id_of),
            "policy": window.plan.policy.name,
            "consistency": window.plan.policy.consistency.as_str(),
            "opened_at_ms": window.plan.opened_at_ms,
            "fire_at_ms": window.plan.fire_at_ms,
            "done": window.done,
            "cut": window.cut,
            "cut_failures": window.cut_failures,
            "shards": window.shards,
            "missing": window.plan.missing,
            "sets": sets,
            "jobs": jobs,
        });
        Ok(Response::new(v1::JsonReply {
            json: serde_json::to_string_pretty(&doc).expect("windows serialise"),
        }))
    }

    async fn leader_stats(
        &self,
        req: Request<v1::LeaderStatsRequest>,
    ) -> Result<Response<v1::LeaderStatsReply>, Status> {
        admin(&req)?;
        self.0.linearizable().await?;
        let fleet = &self.0.fleet;
        let mut samples = {
            let mut s = fleet.latency_us.lock().expect("lock");
            if req.get_ref().reset {
                std::mem::take(&mut *s)
            } else {
                s.clone()
            }
        };
        samples.sort_unstable();
        let pct = |p: f64| -> u64 {
            if samples.is_empty() {
                0
            } else {
                let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
                samples[i].into()
            }
        };
        let connected = fleet
            .agents
            .lock()
            .expect("lock")
            .values()
            .filter(|a| a.tx.is_some() && a.last_report.is_some())
            .count();
        Ok(Response::new(v1::LeaderStatsReply {
            node_id: self.0.id,
            connected_agents: connected as u64,
            reports: fleet.reports.load(Ordering::Relaxed),
            latency_p50_us: pct(0.5),
            latency_p99_us: pct(0.99),
            latency_max_us: samples.last().copied().unwrap_or_default().into(),
            samples: samples.len() as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::uncovered;

    #[test]
    fn slots_no_shard_serves_are_named() {
        assert!(uncovered([(0, 5460), (5461, 10922), (10923, 16383)].iter()).is_empty());
        assert_eq!(
            uncovered([(5461, 10922)].iter()),
            vec![(0, 5460), (10923, 16383)]
        );
        assert_eq!(uncovered([(0, 100), (200, 16383)].iter()), vec![(101, 199)]);
        assert_eq!(uncovered([].iter()), vec![(0, 16383)]);
    }
}
