//! Backup windows and the catalog, in the replicated state.
//!
//! A window is opened by one log entry that carries everything the leader decided (the plan of
//! every shard, the set's id, the instant to fire); from there on, every change follows from job
//! results through [`FleetState::apply`]: a failed shard moves to its next candidate, a window
//! whose shards have all ended hands each cluster's manifest to an agent, and a set's state is
//! counted from the regions that hold its manifest. Nothing here reads a clock.

use std::collections::BTreeMap;

use fleetsnap_core::manifest::{FORMAT_VERSION, Manifest};
use fleetsnap_core::planner::ShardPlan;
use fleetsnap_core::policy::{Consistency, Policy};
use fleetsnap_core::retention::SetState;
use fleetsnap_core::window::{JobResult, RegionResult, ShardResult};
use fleetsnap_core::{BackupId, ClusterId, ShardId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::state::{
    FleetState, Job, JobKind, JobOutcome, JobState, ManifestSpec, Response, SnapshotSpec,
};

/// What the leader decided when it opened a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowPlan {
    /// The policy, as it was then.
    pub policy: Policy,
    /// The id every cluster's set of this window gets.
    pub backup_id: String,
    /// The leader's clock at the opening (Unix milliseconds).
    pub opened_at_ms: i64,
    /// `simultaneous`: the instant every snapshot starts.
    pub fire_at_ms: Option<i64>,
    /// Per cluster, the plan of each of its shards.
    pub shards: Vec<(String, ShardPlan)>,
    /// Clusters of the policy with no shard in the fleet view, and why.
    pub missing: Vec<(String, String)>,
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
    pub manifest_jobs: BTreeMap<String, u64>,
    /// Whether every set it makes has its final state.
    pub done: bool,
}

/// One shard of a window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowShard {
    /// Its cluster.
    pub cluster: String,
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

/// One region's hold on a set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionStatus {
    /// `pending`, `complete` (manifest written: every object verified there) or `failed`.
    pub state: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Bytes stored there (objects and manifest).
    pub stored_bytes: u64,
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
    pub backup_id: String,
    /// The cluster.
    pub cluster: String,
    /// The policy.
    pub policy: String,
    /// The window.
    pub window: u64,
    /// `independent`, `simultaneous`, `consistent`.
    pub consistency: String,
    /// When the window opened (Unix milliseconds, the leader's clock).
    pub opened_at_ms: i64,
    /// The spread of the shards' start times (`simultaneous`), milliseconds.
    pub skew_ms: Option<u64>,
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
}

impl BackupSet {
    /// The catalog key: sets are per cluster, ids per window.
    pub fn key(&self) -> String {
        format!("{}/{}", self.cluster, self.backup_id)
    }
}

/// Shard ids in the storage layout: slot ranges `0-5460,10923-16383` become `0-5460_10923-16383`.
pub fn storage_shard(id: &str) -> String {
    id.replace(',', "_")
}

fn ms_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl FleetState {
    /// `OpenWindow`: records the window and creates the first job of every plannable shard.
    pub(crate) fn open_window(&mut self, term: u64, index: u64, plan: &WindowPlan) -> Response {
        self.next_window += 1;
        let id = self.next_window;
        let mut window = Window {
            id,
            plan: plan.clone(),
            term,
            index,
            shards: Vec::new(),
            manifest_jobs: BTreeMap::new(),
            done: false,
        };
        for (cluster, shard_plan) in &plan.shards {
            let mut shard = WindowShard {
                cluster: cluster.clone(),
                plan: shard_plan.clone(),
                attempt: 0,
                job: None,
                state: ShardState::Running,
                failures: Vec::new(),
            };
            self.start_attempt(term, index, &window, &mut shard);
            window.shards.push(shard);
        }
        self.last_window
            .insert(plan.policy.name.clone(), plan.opened_at_ms);
        self.windows.insert(id, window);
        self.settle_window(term, index, id);
        Response {
            window: Some(id),
            ..Response::default()
        }
    }

    /// Hands the shard to its candidate number `attempt`, or fails it when there is none left.
    fn start_attempt(&mut self, term: u64, index: u64, window: &Window, shard: &mut WindowShard) {
        let Some(c) = shard.plan.candidates().nth(shard.attempt as usize).cloned() else {
            let mut reason = shard
                .plan
                .failure
                .clone()
                .unwrap_or_else(|| "every candidate failed".to_string());
            if !shard.failures.is_empty() {
                reason = format!("every candidate failed: {}", shard.failures.join("; "));
            }
            shard.state = ShardState::Failed { reason };
            shard.job = None;
            return;
        };
        if !self.agents.contains_key(&c.agent) {
            shard.failures.push(format!(
                "{}: its agent {:?} is not registered",
                c.address, c.agent
            ));
            shard.attempt += 1;
            return self.start_attempt(term, index, window, shard);
        }
        let p = &window.plan.policy;
        let spec = SnapshotSpec {
            instance: c.name.clone(),
            destinations: p.destinations.iter().map(|d| d.agent_url()).collect(),
            cluster: shard.cluster.clone(),
            shard: storage_shard(&shard.plan.shard),
            compress: p.compress.clone(),
            encrypt_to: p.encrypt_to.clone(),
            source: p.source.clone(),
            backup_id: window.plan.backup_id.clone(),
            window: Some(window.id),
            regions: p.destinations.iter().map(|d| d.region.clone()).collect(),
            // A retried shard starts when it can: the instant has passed.
            fire_at_ms: if shard.attempt == 0 {
                window.plan.fire_at_ms
            } else {
                None
            },
        };
        let job = self.new_job(term, index, &c.agent, JobKind::Snapshot(spec));
        shard.job = Some(job);
        shard.state = ShardState::Running;
    }

    fn new_job(&mut self, term: u64, index: u64, agent: &str, kind: JobKind) -> u64 {
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
        let Some(j) = self.jobs.get(&job).cloned() else {
            return;
        };
        let JobState::Done(outcome) = &j.state else {
            return;
        };
        let window_id = match &j.kind {
            JobKind::Snapshot(s) => s.window,
            JobKind::WriteManifest(m) => Some(m.window),
        };
        let Some(window_id) = window_id else {
            return;
        };
        let Some(mut window) = self.windows.remove(&window_id) else {
            return;
        };
        match &j.kind {
            JobKind::Snapshot(_) => {
                if let Some(pos) = window.shards.iter().position(|s| s.job == Some(job)) {
                    let mut shard = window.shards[pos].clone();
                    let stored = match outcome {
                        JobOutcome::Succeeded {
                            result: Some(JobResult::Shard(r)),
                            ..
                        } if r.regions.iter().any(|g| g.ok) => Some(r.clone()),
                        _ => None,
                    };
                    match stored {
                        Some(r) => shard.state = ShardState::Stored(r),
                        None => {
                            let why = match outcome {
                                JobOutcome::Failed { reason } => reason.clone(),
                                _ => "no region took the snapshot".to_string(),
                            };
                            let node = shard
                                .plan
                                .candidates()
                                .nth(shard.attempt as usize)
                                .map(|c| c.address.clone())
                                .unwrap_or_default();
                            shard.failures.push(format!("{node}: {why}"));
                            shard.attempt += 1;
                            self.start_attempt(term, index, &window, &mut shard);
                        }
                    }
                    window.shards[pos] = shard;
                }
            }
            JobKind::WriteManifest(m) => {
                let key = format!("{}/{}", m.cluster, window.plan.backup_id);
                if let Some(set) = self.sets.get_mut(&key) {
                    let results = match outcome {
                        JobOutcome::Succeeded {
                            result: Some(JobResult::Manifest { regions }),
                            ..
                        } => regions.clone(),
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
                        _ => Vec::new(),
                    };
                    for r in results {
                        if let Some(status) = set.regions.get_mut(&r.region) {
                            status.state = if r.ok { "complete" } else { "failed" }.into();
                            status.error = r.error.clone();
                            status.stored_bytes += r.stored_bytes;
                        }
                    }
                    for status in set.regions.values_mut() {
                        if status.state == "pending" {
                            status.state = "failed".into();
                            status.error = Some("the manifest job did not report it".into());
                        }
                    }
                    let complete = set
                        .regions
                        .values()
                        .filter(|r| r.state == "complete")
                        .count() as u32;
                    set.state = if complete >= set.min_regions {
                        SetState::Complete
                    } else if complete > 0 {
                        SetState::Degraded
                    } else {
                        SetState::Failed
                    };
                    if set.state == SetState::Failed && set.reason.is_none() {
                        set.reason = Some("no region took the manifest".into());
                    }
                }
            }
        }
        self.windows.insert(window_id, window);
        self.settle_window(term, index, window_id);
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
        if shards_ended && window.manifest_jobs.is_empty() && !window.done {
            self.make_sets(term, index, &mut window);
        }
        if shards_ended && !window.done {
            window.done = window.manifest_jobs.values().all(|j| {
                self.jobs
                    .get(j)
                    .is_none_or(|j| matches!(j.state, JobState::Done(_)))
            });
        }
        self.windows.insert(id, window);
    }

    fn make_sets(&mut self, term: u64, index: u64, window: &mut Window) {
        let p = window.plan.policy.clone();
        let mut clusters: Vec<String> = window.shards.iter().map(|s| s.cluster.clone()).collect();
        clusters.dedup();
        for (cluster, why) in &window.plan.missing {
            let set = self.empty_set(window, cluster);
            self.sets.insert(
                set.key(),
                BackupSet {
                    state: SetState::Failed,
                    reason: Some(why.clone()),
                    ..set
                },
            );
        }
        for cluster in clusters {
            let shards: Vec<&WindowShard> = window
                .shards
                .iter()
                .filter(|s| s.cluster == cluster)
                .collect();
            let mut set = self.empty_set(window, &cluster);
            let failed: Vec<String> = shards
                .iter()
                .filter_map(|s| match &s.state {
                    ShardState::Failed { reason } => {
                        Some(format!("shard {}: {reason}", s.plan.shard))
                    }
                    _ => None,
                })
                .collect();
            let stored: Vec<(&WindowShard, &ShardResult)> = shards
                .iter()
                .filter_map(|s| match &s.state {
                    ShardState::Stored(r) => Some((*s, &**r)),
                    _ => None,
                })
                .collect();
            for (s, r) in &stored {
                let chosen = s.plan.candidates().nth(s.attempt as usize);
                set.shards.push(SetShard {
                    shard: s.plan.shard.clone(),
                    source_node: r.entry.source_node.clone(),
                    agent: chosen.map(|c| c.agent.clone()).unwrap_or_default(),
                    why: chosen.map(|c| c.reason.clone()).unwrap_or_default(),
                    failures: s.failures.clone(),
                    replid: r.entry.replid.clone(),
                    start_offset: r.entry.start_offset,
                    raw_bytes: r.entry.objects.iter().map(|o| o.raw_bytes).sum(),
                    started_at_ms: r.started_at_ms,
                    finished_at_ms: r.finished_at_ms,
                });
            }
            if p.consistency == Consistency::Simultaneous && stored.len() > 1 {
                let starts = stored.iter().map(|(_, r)| r.started_at_ms);
                let (lo, hi) = (starts.clone().min(), starts.max());
                if let (Some(lo), Some(hi)) = (lo, hi) {
                    set.skew_ms = Some((hi - lo) as u64);
                }
            }
            if !failed.is_empty() {
                set.state = SetState::Failed;
                set.reason = Some(failed.join("; "));
                for r in set.regions.values_mut() {
                    r.state = "failed".into();
                    r.error = Some("a shard is missing".into());
                }
                self.sets.insert(set.key(), set);
                continue;
            }
            // Regions that hold every shard get the manifest.
            let mut regions = Vec::new();
            let mut urls = Vec::new();
            for d in &p.destinations {
                let all = stored
                    .iter()
                    .all(|(_, r)| r.regions.iter().any(|g| g.region == d.region && g.ok));
                let bytes: u64 = stored
                    .iter()
                    .flat_map(|(_, r)| r.regions.iter())
                    .filter(|g| g.region == d.region && g.ok)
                    .map(|g| g.stored_bytes)
                    .sum();
                let status = set.regions.get_mut(&d.region).expect("every region");
                status.stored_bytes = bytes;
                if all {
                    regions.push(d.region.clone());
                    urls.push(d.agent_url());
                } else {
                    let errors: Vec<String> = stored
                        .iter()
                        .flat_map(|(s, r)| {
                            r.regions
                                .iter()
                                .filter(|g| g.region == d.region && !g.ok)
                                .map(|g| {
                                    format!(
                                        "shard {}: {}",
                                        s.plan.shard,
                                        g.error.clone().unwrap_or_default()
                                    )
                                })
                        })
                        .collect();
                    status.state = "failed".into();
                    status.error = Some(errors.join("; "));
                }
            }
            let writer = stored
                .first()
                .and_then(|(s, _)| s.plan.candidates().nth(s.attempt as usize))
                .map(|c| c.agent.clone());
            match (regions.is_empty(), writer) {
                (false, Some(agent)) => {
                    let manifest = self.manifest(window, &cluster, &stored);
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
                _ => {
                    set.state = SetState::Failed;
                    set.reason = Some("no region holds every shard".into());
                }
            }
            self.sets.insert(set.key(), set);
        }
    }

    fn empty_set(&self, window: &Window, cluster: &str) -> BackupSet {
        let p = &window.plan.policy;
        BackupSet {
            backup_id: window.plan.backup_id.clone(),
            cluster: cluster.to_string(),
            policy: p.name.clone(),
            window: window.id,
            consistency: p.consistency.as_str().into(),
            opened_at_ms: window.plan.opened_at_ms,
            skew_ms: None,
            shards: Vec::new(),
            regions: p
                .destinations
                .iter()
                .map(|d| {
                    (
                        d.region.clone(),
                        RegionStatus {
                            state: "pending".into(),
                            error: None,
                            stored_bytes: 0,
                        },
                    )
                })
                .collect(),
            min_regions: p.min_regions,
            state: SetState::Running,
            reason: None,
        }
    }

    fn manifest(
        &self,
        window: &Window,
        cluster: &str,
        stored: &[(&WindowShard, &ShardResult)],
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
        let skew = (p.consistency == Consistency::Simultaneous && stored.len() > 1).then(|| {
            let max = stored
                .iter()
                .map(|(_, r)| r.started_at_ms)
                .max()
                .unwrap_or(0);
            (max - started) as u64
        });
        Manifest {
            format: FORMAT_VERSION,
            backup_id: window
                .plan
                .backup_id
                .parse::<BackupId>()
                .unwrap_or_else(|_| BackupId::from_parts(ms_time(window.plan.opened_at_ms), 0)),
            cluster: ClusterId::new(cluster)
                .unwrap_or_else(|_| ClusterId::new("invalid-cluster-name").expect("a valid id")),
            policy: Some(p.name.clone()),
            consistency: p.consistency.as_str().into(),
            started_at: ms_time(started),
            finished_at: ms_time(finished),
            skew_ms: skew,
            write_pause_ms: None,
            written_by: concat!("fleetsnap-coordinator ", env!("CARGO_PKG_VERSION")).into(),
            shards: stored
                .iter()
                .map(|(s, r)| {
                    let mut e = r.entry.clone();
                    e.slot_ranges = s.plan.slots.clone();
                    if let Ok(id) = ShardId::new(storage_shard(&s.plan.shard)) {
                        e.shard = id;
                    }
                    e
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Command;
    use fleetsnap_core::ShardEntry;
    use fleetsnap_core::planner::{Rules, plan_shard};
    use fleetsnap_core::report::Role;
    use fleetsnap_core::topology::{NodeView, ShardView};

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
                    objects: Vec::new(),
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
                "c".to_string(),
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
                "c".to_string(),
                plan_shard(
                    &shard("s2", vec![node("p2:1", "a1", Role::Primary, 0)]),
                    &Rules::default(),
                ),
            ),
        ];
        let plan = WindowPlan {
            policy: policy(),
            backup_id: "20261121T100000Z-abcdef".into(),
            opened_at_ms: 1,
            fire_at_ms: None,
            shards: plans,
            missing: Vec::new(),
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
        let m = s.windows[&w].manifest_jobs["c"];
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
                    }),
                },
            },
        );
        let set = &s.sets["c/20261121T100000Z-abcdef"];
        // One region of the two it asks for: degraded, never complete.
        assert_eq!(set.state, SetState::Degraded);
        assert_eq!(set.regions["a"].state, "complete");
        assert_eq!(set.regions["b"].state, "failed");
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
    fn a_shard_with_no_candidate_fails_its_set_and_writes_no_manifest() {
        let mut s = FleetState::default();
        let mut down = node("r1:1", "a2", Role::Replica, 0);
        down.link = Some("down".into());
        let mut p = policy();
        p.allow_primary = fleetsnap_core::planner::AllowPrimary::Never;
        let plan = WindowPlan {
            shards: vec![(
                "c".into(),
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
            backup_id: "20261121T100000Z-abcdef".into(),
            opened_at_ms: 1,
            fire_at_ms: None,
            missing: vec![("d".into(), "no agent reports cluster d".into())],
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
