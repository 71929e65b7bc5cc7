//! Backup windows and the catalog, in the replicated state.
//!
//! A window is opened by one log entry that carries everything the leader decided (the plan of
//! every shard, the set's id, the instant to fire); from there on, every change follows from job
//! results through [`FleetState::apply`]: a failed shard moves to its next candidate, a window
//! whose shards have all ended hands each cluster's manifest to an agent, and a set's state is
//! counted from the regions that hold its manifest. Nothing here reads a clock.

use std::collections::BTreeMap;

use fleetsnap_core::manifest::{FORMAT_VERSION, Manifest};
use fleetsnap_core::planner::{NodeChoice, ShardPlan};
use fleetsnap_core::policy::{Consistency, Policy};
use fleetsnap_core::retention::SetState;
use fleetsnap_core::window::{JobResult, RegionResult, ShardResult, from_unix_ms};
use fleetsnap_core::{BackupId, ClusterId};
use serde::{Deserialize, Serialize};

use crate::state::{
    FleetState, Job, JobKind, JobOutcome, JobState, ManifestSpec, Response, SnapshotSpec,
};

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

/// A consistent cut across every primary of a window (DESIGN §6).
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

/// Attempts at a window's cut before its running shards fail.
pub const MAX_CUT_ATTEMPTS: usize = 3;

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
    fn candidate(&self) -> Option<&NodeChoice> {
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
    pub verified: Option<crate::catalog::Verified>,
}

/// The catalog key of a set: sets are per cluster, ids per window.
pub fn set_key(cluster: &ClusterId, backup_id: &BackupId) -> String {
    format!("{cluster}/{backup_id}")
}

impl BackupSet {
    /// Its catalog key.
    pub fn key(&self) -> String {
        set_key(&self.cluster, &self.backup_id)
    }

    /// Counts the regions that took the manifest; a region never heard of has failed.
    pub(crate) fn count_regions(&mut self) {
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

/// Shard ids in the storage layout: slot ranges `0-5460,10923-16383` become `0-5460_10923-16383`.
pub fn storage_shard(id: &str) -> String {
    id.replace(',', "_")
}

impl FleetState {
    /// `OpenWindow`: records the window and creates the first job of every plannable shard.
    pub(crate) fn open_window(&mut self, term: u64, index: u64, plan: &WindowPlan) -> Response {
        self.next_window += 1;
        let id = self.next_window;
        let mut shards = Vec::new();
        for (cluster, shard_plan) in &plan.shards {
            let mut shard = WindowShard {
                cluster: cluster.clone(),
                plan: shard_plan.clone(),
                attempt: 0,
                job: None,
                state: ShardState::Running,
                failures: Vec::new(),
                synced: None,
                read_again: false,
            };
            self.start_attempt(term, index, id, plan, &mut shard);
            shards.push(shard);
        }
        self.last_window
            .insert(plan.policy.name.clone(), plan.opened_at_ms);
        self.windows.insert(
            id,
            Window {
                id,
                plan: plan.clone(),
                term,
                index,
                shards,
                manifest_jobs: BTreeMap::new(),
                done: false,
                cut: None,
                cut_failures: Vec::new(),
            },
        );
        self.settle_window(term, index, id);
        Response {
            window: Some(id),
            ..Response::default()
        }
    }

    /// Hands the shard to its candidate number `attempt` (skipping candidates whose agent is
    /// unknown), or fails it when there is none left.
    fn start_attempt(
        &mut self,
        term: u64,
        index: u64,
        window: u64,
        plan: &WindowPlan,
        shard: &mut WindowShard,
    ) {
        let candidate = loop {
            match shard.candidate().cloned() {
                Some(c) if !self.agents.contains_key(&c.agent) => {
                    shard.failures.push(format!(
                        "{}: its agent {:?} is not registered",
                        c.address, c.agent
                    ));
                    shard.attempt += 1;
                }
                other => break other,
            }
        };
        let Some(c) = candidate else {
            let reason = if shard.failures.is_empty() {
                shard
                    .plan
                    .failure
                    .clone()
                    .unwrap_or_else(|| "no candidate".to_string())
            } else {
                format!("every candidate failed: {}", shard.failures.join("; "))
            };
            shard.state = ShardState::Failed { reason };
            shard.job = None;
            return;
        };
        let p = &plan.policy;
        let spec = SnapshotSpec {
            instance: c.name.clone(),
            destinations: p.destinations.iter().map(|d| p.agent_url(d)).collect(),
            cluster: shard.cluster.to_string(),
            shard: storage_shard(&shard.plan.shard),
            compress: p.compress.clone(),
            encrypt_to: p.encrypt_to.clone(),
            source: p.source.clone(),
            backup_id: plan.backup_id.to_string(),
            window: Some(window),
            regions: p.destinations.iter().map(|d| d.region.clone()).collect(),
            // A retried shard starts when it can: the instant has passed.
            fire_at_ms: plan.fire_at_ms.filter(|_| shard.attempt == 0),
            consistent_cut: p.consistency == Consistency::Consistent,
        };
        shard.job = Some(self.new_job(term, index, &c.agent, JobKind::Snapshot(spec)));
        shard.state = ShardState::Running;
        shard.synced = None;
    }

    /// A new pending job.
    pub(crate) fn new_job(&mut self, term: u64, index: u64, agent: &str, kind: JobKind) -> u64 {
        self.next_job += 1;
        let id = self.next_job;
        self.jobs.insert(
            id,
            Job {
                id,
                agent: agent.to_string(),
                kind,
                term,
                index,
                created_index: index,
                dispatches: 0,
                state: JobState::Pending,
            },
        );
        id
    }

    /// After a job of a window ended: moves its shard or its set on.
    pub(crate) fn window_job_ended(&mut self, term: u64, index: u64, job: u64) {
        let Some(Job {
            kind,
            state: JobState::Done(outcome),
            ..
        }) = self.jobs.get(&job).cloned()
        else {
            return;
        };
        let window_id = match &kind {
            JobKind::Snapshot(s) => s.window,
            JobKind::WriteManifest(m) => Some(m.window),
            JobKind::Catalog(_) => None,
        };
        let Some(mut window) = window_id.and_then(|w| self.windows.remove(&w)) else {
            return;
        };
        match kind {
            JobKind::Snapshot(_) => {
                let Window {
                    id,
                    plan,
                    shards,
                    cut,
                    ..
                } = &mut window;
                // A shard no longer running (its window gave up the cut) takes no more attempts.
                if let Some(shard) = shards
                    .iter_mut()
                    .find(|s| s.job == Some(job) && s.state == ShardState::Running)
                {
                    match outcome {
                        JobOutcome::Succeeded {
                            result: Some(JobResult::Shard(r)),
                            ..
                        } if r.regions.iter().any(|g| g.ok) => shard.state = ShardState::Stored(r),
                        outcome => {
                            let why = match outcome {
                                JobOutcome::Failed { reason } => reason,
                                _ => "no region took the snapshot".to_string(),
                            };
                            let node = shard.candidate().map(|c| c.address.clone());
                            // A stream that breaks after its snapshot, before the cut, is most
                            // often a failover: the node disconnects the streams it serves when
                            // its history changes. It is read once more, on its new history.
                            let again =
                                shard.synced.is_some() && cut.is_none() && !shard.read_again;
                            let note = if again {
                                "; the stream broke after the snapshot (a failover changes the \
                                 history): the same node once more"
                            } else {
                                ""
                            };
                            shard
                                .failures
                                .push(format!("{}: {why}{note}", node.unwrap_or_default()));
                            if again {
                                shard.read_again = true;
                            } else {
                                shard.attempt += 1;
                                shard.read_again = false;
                            }
                            self.start_attempt(term, index, *id, plan, shard);
                        }
                    }
                }
            }
            JobKind::WriteManifest(m) => {
                if let Some(set) = self.sets.get_mut(&set_key(&m.cluster, &m.backup_id)) {
                    let results = match outcome {
                        JobOutcome::Succeeded {
                            result:
                                Some(JobResult::Manifest {
                                    regions,
                                    finished_at_ms,
                                }),
                            ..
                        } => {
                            set.completed_at_ms = finished_at_ms;
                            regions
                        }
                        JobOutcome::Failed { reason } => m
                            .regions
                            .iter()
                            .map(|r| RegionResult {
                                region: r.clone(),
                                ok: false,
                                error: Some(reason.clone()),
                                stored_bytes: 0,
                            })
                            .collect(),
                        JobOutcome::Succeeded { .. } => Vec::new(),
                    };
                    for r in results {
                        if let Some(status) = set.regions.get_mut(&r.region) {
                            status.state = if r.ok {
                                RegionState::Complete
                            } else {
                                RegionState::Failed
                            };
                            status.error = r.error;
                            status.stored_bytes += r.stored_bytes;
                        }
                    }
                    set.count_regions();
                }
            }
            JobKind::Catalog(_) => {}
        }
        let id = window.id;
        self.windows.insert(id, window);
        self.settle_window(term, index, id);
    }

    /// `ShardSynced`: a consistent window's job has its stream.
    pub(crate) fn shard_synced(&mut self, job: u64, replid: &str, offset: u64) -> Response {
        for w in self.windows.values_mut().filter(|w| !w.done) {
            if let Some(s) = w
                .shards
                .iter_mut()
                .find(|s| s.job == Some(job) && s.state == ShardState::Running)
            {
                s.synced.get_or_insert_with(|| (replid.to_string(), offset));
                return Response::default();
            }
        }
        Response {
            refused: Some(format!("job {job} is no running shard of a window")),
            ..Response::default()
        }
    }

    /// `CommitCut`: the leader's attempt at a window's cut.
    pub(crate) fn commit_cut(
        &mut self,
        term: u64,
        index: u64,
        window: u64,
        outcome: &CutOutcome,
    ) -> Response {
        let Some(w) = self.windows.get_mut(&window) else {
            return Response {
                refused: Some(format!("there is no window {window}")),
                ..Response::default()
            };
        };
        if w.cut.is_some() || w.done {
            return Response {
                refused: Some(format!("window {window} has its cut already")),
                ..Response::default()
            };
        }
        match outcome {
            CutOutcome::Taken(cut) => w.cut = Some(cut.clone()),
            CutOutcome::Failed { reason } => {
                w.cut_failures.push(reason.clone());
                if w.cut_failures.len() >= MAX_CUT_ATTEMPTS {
                    let why = format!(
                        "the consistent cut failed {} time(s), last: {reason}",
                        w.cut_failures.len()
                    );
                    for s in w
                        .shards
                        .iter_mut()
                        .filter(|s| s.state == ShardState::Running)
                    {
                        s.state = ShardState::Failed {
                            reason: why.clone(),
                        };
                    }
                }
            }
        }
        self.settle_window(term, index, window);
        Response::default()
    }

    /// Once every shard has ended: a set per cluster, and its manifest job; once every manifest
    /// job has ended: done.
    fn settle_window(&mut self, term: u64, index: u64, id: u64) {
        let Some(mut window) = self.windows.remove(&id) else {
            return;
        };
        let shards_ended = window
            .shards
            .iter()
            .all(|s| !matches!(s.state, ShardState::Running));
        if shards_ended && !window.done {
            if window.manifest_jobs.is_empty() {
                self.make_sets(term, index, &mut window);
            }
            window.done = window.manifest_jobs.values().all(|j| {
                self.jobs
                    .get(j)
                    .is_none_or(|j| matches!(j.state, JobState::Done(_)))
            });
        }
        self.windows.insert(id, window);
    }

    /// A set per cluster of the window; a manifest job for each whose shards are all stored.
    fn make_sets(&mut self, term: u64, index: u64, window: &mut Window) {
        for (cluster, why) in &window.plan.missing {
            let mut set = empty_set(window, cluster);
            set.state = SetState::Failed;
            set.reason = Some(why.clone());
            self.sets.insert(set.key(), set);
        }
        let mut clusters: Vec<ClusterId> =
            window.shards.iter().map(|s| s.cluster.clone()).collect();
        clusters.sort();
        clusters.dedup();
        for cluster in clusters {
            let mut set = empty_set(window, &cluster);
            let mut failed = Vec::new();
            let mut stored: Vec<(&WindowShard, &ShardResult)> = Vec::new();
            for s in window.shards.iter().filter(|s| s.cluster == cluster) {
                match &s.state {
                    ShardState::Stored(r) => stored.push((s, r)),
                    ShardState::Failed { reason } => {
                        failed.push(format!("shard {}: {reason}", s.plan.shard))
                    }
                    ShardState::Running => {}
                }
            }
            set.shards = stored.iter().map(|(s, r)| set_shard(s, r)).collect();
            if window.plan.policy.consistency == Consistency::Simultaneous && stored.len() > 1 {
                let starts = || {
                    stored
                        .iter()
                        .map(|(_, r)| r.started_at_us.unwrap_or(r.started_at_ms * 1000))
                };
                let spread = (starts().max().unwrap_or(0) - starts().min().unwrap_or(0)) as u64;
                set.skew_us = Some(spread);
            }
            if let Some(cut) = &window.cut {
                set.write_pause_us = Some(cut.pause_us);
            }
            if !failed.is_empty() {
                set.state = SetState::Failed;
                set.reason = Some(failed.join("; "));
                for r in set.regions.values_mut() {
                    r.state = RegionState::Failed;
                    r.error = Some("a shard is missing".into());
                }
                self.sets.insert(set.key(), set);
                continue;
            }
            // Regions that hold every shard get the manifest; the others are failed here.
            let mut regions = Vec::new();
            let mut urls = Vec::new();
            for d in &window.plan.policy.destinations {
                let results: Vec<(&WindowShard, Option<&RegionResult>)> = stored
                    .iter()
                    .map(|(s, r)| (*s, r.regions.iter().find(|g| g.region == d.region)))
                    .collect();
                let status = set.regions.get_mut(&d.region).expect("every region");
                status.stored_bytes = results
                    .iter()
                    .filter_map(|(_, g)| g.filter(|g| g.ok))
                    .map(|g| g.stored_bytes)
                    .sum();
                let errors: Vec<String> = results
                    .iter()
                    .filter(|(_, g)| !g.is_some_and(|g| g.ok))
                    .map(|(s, g)| {
                        let why = g.and_then(|g| g.error.clone());
                        format!("shard {}: {}", s.plan.shard, why.unwrap_or_default())
                    })
                    .collect();
                if errors.is_empty() {
                    regions.push(d.region.clone());
                    urls.push(window.plan.policy.agent_url(d));
                } else {
                    status.state = RegionState::Failed;
                    status.error = Some(errors.join("; "));
                }
            }
            let writer = stored
                .first()
                .and_then(|(s, _)| s.candidate())
                .map(|c| c.agent.clone());
            match writer.filter(|_| !regions.is_empty()) {
                Some(agent) => {
                    let manifest = manifest(window, &cluster, &stored, set.skew_us);

                    let job = self.new_job(
                        term,
                        index,
                        &agent,
                        JobKind::WriteManifest(ManifestSpec {
                            window: window.id,
                            cluster: cluster.clone(),
                            backup_id: window.plan.backup_id.clone(),
                            destinations: urls,
                            regions,
                            manifest_json: String::from_utf8(manifest.to_json())
                                .expect("manifests are UTF-8"),
                        }),
                    );
                    window.manifest_jobs.insert(cluster.clone(), job);
                }
                None => {
                    set.state = SetState::Failed;
                    set.reason = Some("no region holds every shard".into());
                }
            }
            self.sets.insert(set.key(), set);
        }
    }
}

fn empty_set(window: &Window, cluster: &ClusterId) -> BackupSet {
    let p = &window.plan.policy;
    let pending = |url: String| RegionStatus {
        state: RegionState::Pending,
        error: None,
        stored_bytes: 0,
        url,
    };
    BackupSet {
        backup_id: window.plan.backup_id.clone(),
        cluster: cluster.clone(),
        policy: p.name.clone(),
        window: window.id,
        consistency: p.consistency,
        opened_at_ms: window.plan.opened_at_ms,
        skew_us: None,
        write_pause_us: None,
        completed_at_ms: None,
        shards: Vec::new(),
        regions: p
            .destinations
            .iter()
            .map(|d| (d.region.clone(), pending(p.agent_url(d))))
            .collect(),
        min_regions: p.min_regions,
        state: SetState::Running,
        reason: None,
        task: None,
        deleting: None,
        verified: None,
    }
}

fn set_shard(s: &WindowShard, r: &ShardResult) -> SetShard {
    let chosen = s.candidate();
    SetShard {
        shard: s.plan.shard.clone(),
        source_node: r.entry.source_node.clone(),
        agent: chosen.map(|c| c.agent.clone()).unwrap_or_default(),
        why: chosen.map(|c| c.reason.clone()).unwrap_or_default(),
        failures: s.failures.clone(),
        replid: r.entry.replid.clone(),
        start_offset: r.entry.start_offset,
        cut_offset: r.entry.cut_offset,
        raw_bytes: r.entry.objects.iter().map(|o| o.raw_bytes).sum(),
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
    }
}

/// The set's manifest: the agents' entries (already named by the storage shard) with the slot
/// ranges only the coordinator knows.
fn manifest(
    window: &Window,
    cluster: &ClusterId,
    stored: &[(&WindowShard, &ShardResult)],
    skew_us: Option<u64>,
) -> Manifest {
    let p = &window.plan.policy;
    let started = stored
        .iter()
        .map(|(_, r)| r.started_at_ms)
        .min()
        .unwrap_or(0);
    let finished = stored
        .iter()
        .map(|(_, r)| r.finished_at_ms)
        .max()
        .unwrap_or(0);
    Manifest {
        format: FORMAT_VERSION,
        backup_id: window.plan.backup_id.clone(),
        cluster: cluster.clone(),
        policy: Some(p.name.clone()),
        consistency: p.consistency.as_str().into(),
        started_at: from_unix_ms(started),
        finished_at: from_unix_ms(finished),
        skew_ms: skew_us.map(|us| us.div_ceil(1000)),
        write_pause_ms: window.cut.as_ref().map(|c| c.pause_us.div_ceil(1000)),
        written_by: concat!("fleetsnap-coordinator ", env!("CARGO_PKG_VERSION")).into(),
        shards: stored
            .iter()
            .map(|(s, r)| {
                let mut e = r.entry.clone();
                e.slot_ranges = s.plan.slots.clone();
                e
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use fleetsnap_core::planner::{Rules, plan_shard};
    use fleetsnap_core::report::Role;
    use fleetsnap_core::topology::{NodeView, ShardView};
    use fleetsnap_core::{ShardEntry, ShardId};

    fn node(addr: &str, agent: &str, role: Role, lag: u64) -> NodeView {
        NodeView {
            name: addr.into(),
            address: addr.into(),
            agent: agent.into(),
            role,
            reachable: true,
            lag_bytes: (role == Role::Replica).then_some(lag),
            link: (role == Role::Replica).then(|| "up".into()),
            persistence: "ok".into(),
            sync_allowed: Some(true),
            ..Default::default()
        }
    }

    fn cluster(name: &str) -> ClusterId {
        ClusterId::new(name).unwrap()
    }

    fn id() -> BackupId {
        "20261121T100000Z-abcdef".parse().unwrap()
    }

    fn policy() -> Policy {
        serde_json::from_value(serde_json::json!({
            "name": "p",
            "clusters": ["c"],
            "destinations": [
                {"region": "a", "url": "file:///a"},
                {"region": "b", "url": "file:///b"}
            ],
            "min_regions": 2
        }))
        .unwrap()
    }

    fn stored(shard: &str, regions: &[(&str, bool)]) -> JobOutcome {
        JobOutcome::Succeeded {
            backup_id: None,
            result: Some(JobResult::Shard(Box::new(ShardResult {
                entry: ShardEntry {
                    shard: ShardId::new(shard).unwrap(),
                    source_node: "x".into(),
                    source_kind: "replication".into(),
                    run_id: None,
                    replid: None,
                    start_offset: Some(1),
                    cut_offset: None,
                    rdb_version: 10,
                    redis_version: None,
                    slot_ranges: Vec::new(),
                    dbs: Default::default(),
                    objects: vec![fleetsnap_core::ObjectEntry {
                        kind: fleetsnap_core::ObjectKind::Rdb,
                        name: format!("{shard}.rdb"),
                        codecs: Default::default(),
                        raw_bytes: 5,
                        stored_bytes: 5,
                        sha256: "0".repeat(64),
                        crc64: None,
                    }],
                },
                regions: regions
                    .iter()
                    .map(|(r, ok)| RegionResult {
                        region: r.to_string(),
                        ok: *ok,
                        error: (!ok).then(|| "disk full".into()),
                        stored_bytes: 10,
                    })
                    .collect(),
                started_at_ms: 1000,
                finished_at_ms: 2000,
                started_at_us: None,
            }))),
        }
    }

    #[test]
    fn a_window_retries_the_next_candidate_then_writes_manifests_and_counts_regions() {
        let mut s = FleetState::default();
        s.apply(
            1,
            1,
            &Command::RegisterAgents {
                agents: vec!["a1".into(), "a2".into(), "a3".into()],
            },
        );
        let shard = |id: &str, nodes| ShardView {
            id: id.into(),
            nodes,
            ..Default::default()
        };
        let plans = vec![
            (
                cluster("c"),
                plan_shard(
                    &shard(
                        "s1",
                        vec![
                            node("p1:1", "a1", Role::Primary, 0),
                            node("r1:1", "a2", Role::Replica, 5),
                            node("r2:1", "a3", Role::Replica, 9),
                        ],
                    ),
                    &Rules::default(),
                ),
            ),
            (
                cluster("c"),
                plan_shard(
                    &shard("s2", vec![node("p2:1", "a1", Role::Primary, 0)]),
                    &Rules::default(),
                ),
            ),
        ];
        let plan = WindowPlan {
            policy: policy(),
            backup_id: id(),
            opened_at_ms: 1,
            fire_at_ms: None,
            shards: plans,
            missing: Vec::new(),
            trace: None,
        };
        let w = s.apply(2, 2, &Command::OpenWindow { plan }).window.unwrap();
        let job_of = |s: &FleetState, i: usize| s.windows[&w].shards[i].job.unwrap();
        // The freshest replica first; the primary-only shard uses its primary (fallback).
        let j1 = job_of(&s, 0);
        assert_eq!(s.jobs[&j1].agent, "a2");
        let j2 = job_of(&s, 1);
        assert_eq!(s.jobs[&j2].agent, "a1");
        // The first candidate fails: the next one gets a new job.
        s.apply(
            2,
            3,
            &Command::FinishJob {
                job: j1,
                outcome: JobOutcome::Failed {
                    reason: "connection refused".into(),
                },
            },
        );
        let j1b = job_of(&s, 0);
        assert_ne!(j1b, j1);
        assert_eq!(s.jobs[&j1b].agent, "a3");
        assert_eq!(
            s.windows[&w].shards[0].failures,
            vec!["r1:1: connection refused"]
        );
        s.apply(
            2,
            4,
            &Command::FinishJob {
                job: j1b,
                outcome: stored("s1", &[("a", true), ("b", true)]),
            },
        );
        assert!(s.windows[&w].manifest_jobs.is_empty());
        // Region b lost shard s2: the manifest goes to region a only.
        s.apply(
            2,
            5,
            &Command::FinishJob {
                job: j2,
                outcome: stored("s2", &[("a", true), ("b", false)]),
            },
        );
        let m = s.windows[&w].manifest_jobs[&cluster("c")];
        let JobKind::WriteManifest(spec) = &s.jobs[&m].kind else {
            panic!("not a manifest job")
        };
        assert_eq!(spec.regions, vec!["a"]);
        let manifest = Manifest::from_json(spec.manifest_json.as_bytes(), "test").unwrap();
        assert_eq!(manifest.shards.len(), 2);
        assert_eq!(manifest.policy.as_deref(), Some("p"));
        assert!(!s.windows[&w].done);
        s.apply(
            2,
            6,
            &Command::FinishJob {
                job: m,
                outcome: JobOutcome::Succeeded {
                    backup_id: None,
                    result: Some(JobResult::Manifest {
                        regions: vec![RegionResult {
                            region: "a".into(),
                            ok: true,
                            error: None,
                            stored_bytes: 100,
                        }],
                        finished_at_ms: Some(3000),
                    }),
                },
            },
        );
        let set = &s.sets["c/20261121T100000Z-abcdef"];
        // One region of the two it asks for: degraded, never complete.
        assert_eq!(set.state, SetState::Degraded);
        assert_eq!(set.regions["a"].state, RegionState::Complete);
        assert_eq!(set.regions["b"].state, RegionState::Failed);
        assert!(
            set.regions["b"]
                .error
                .as_ref()
                .unwrap()
                .contains("disk full")
        );
        assert!(s.windows[&w].done);
    }

    #[test]
    fn a_stream_broken_before_the_cut_reads_the_same_node_once_more() {
        let mut s = FleetState::default();
        s.apply(
            1,
            1,
            &Command::RegisterAgents {
                agents: vec!["a1".into(), "a2".into()],
            },
        );
        let mut p = policy();
        p.consistency = Consistency::Consistent;
        let shard = |id: &str, agent: &str| {
            plan_shard(
                &ShardView {
                    id: id.into(),
                    nodes: vec![node(&format!("{id}:1"), agent, Role::Replica, 0)],
                    ..Default::default()
                },
                &Rules::default(),
            )
        };
        let plan = WindowPlan {
            policy: p,
            backup_id: id(),
            opened_at_ms: 1,
            fire_at_ms: None,
            shards: vec![
                (cluster("c"), shard("s1", "a1")),
                (cluster("c"), shard("s2", "a2")),
            ],
            missing: Vec::new(),
            trace: None,
        };
        let w = s.apply(2, 2, &Command::OpenWindow { plan }).window.unwrap();
        let jobs: Vec<u64> = s.windows[&w]
            .shards
            .iter()
            .map(|x| x.job.unwrap())
            .collect();
        let synced = |s: &mut FleetState, index: u64, job: u64, replid: &str| {
            s.apply(
                2,
                index,
                &Command::ShardSynced {
                    job,
                    replid: replid.into(),
                    offset: 10,
                },
            );
        };
        synced(&mut s, 3, jobs[0], "old");
        synced(&mut s, 4, jobs[1], "old");
        // Shard s2 failed over: its stream broke (or the leader aborted it on finding its
        // primary on another history). The same node gets a new job; s1 keeps its own.
        let broken = |s: &mut FleetState, index: u64, job: u64| {
            s.apply(
                2,
                index,
                &Command::FinishJob {
                    job,
                    outcome: JobOutcome::Failed {
                        reason: "the shard failed over before the cut".into(),
                    },
                },
            );
        };
        broken(&mut s, 5, jobs[1]);
        let win = &s.windows[&w];
        assert_eq!(win.shards[0].job, Some(jobs[0]));
        assert!(win.shards[0].synced.is_some());
        let again = win.shards[1].job.unwrap();
        assert_ne!(again, jobs[1]);
        assert_eq!(
            s.jobs[&again].agent, "a2",
            "the same node, on its new history"
        );
        assert_eq!(win.shards[1].synced, None);
        assert_eq!(win.shards[1].state, ShardState::Running);
        assert!(win.shards[1].read_again);
        assert!(win.shards[1].failures[0].contains("the same node once more"));
        // The old job's end, reported again, changes nothing.
        broken(&mut s, 6, jobs[1]);
        assert_eq!(s.windows[&w].shards[1].job, Some(again));
        assert_eq!(s.windows[&w].shards[1].state, ShardState::Running);
        // Once only: the second break moves on, and with no other candidate the shard fails.
        synced(&mut s, 7, again, "new");
        broken(&mut s, 8, again);
        assert!(matches!(
            s.windows[&w].shards[1].state,
            ShardState::Failed { .. }
        ));
    }

    #[test]
    fn a_shard_with_no_candidate_fails_its_set_and_writes_no_manifest() {
        let mut s = FleetState::default();
        let mut down = node("r1:1", "a2", Role::Replica, 0);
        down.link = Some("down".into());
        let mut p = policy();
        p.allow_primary = fleetsnap_core::planner::AllowPrimary::Never;
        let plan = WindowPlan {
            shards: vec![(
                cluster("c"),
                plan_shard(
                    &ShardView {
                        id: "s1".into(),
                        nodes: vec![node("p1:1", "a1", Role::Primary, 0), down],
                        ..Default::default()
                    },
                    &p.rules(),
                ),
            )],
            policy: p,
            backup_id: id(),
            opened_at_ms: 1,
            fire_at_ms: None,
            missing: vec![(cluster("d"), "no agent reports cluster d".into())],
            trace: None,
        };
        let w = s.apply(1, 1, &Command::OpenWindow { plan }).window.unwrap();
        assert!(s.windows[&w].done);
        assert!(s.jobs.is_empty());
        let set = &s.sets["c/20261121T100000Z-abcdef"];
        assert_eq!(set.state, SetState::Failed);
        assert!(
            set.reason
                .as_ref()
                .unwrap()
                .contains("link to the primary is down")
        );
        assert_eq!(s.sets["d/20261121T100000Z-abcdef"].state, SetState::Failed);
    }
}
