//! Windows through `apply`: a window is opened by one log entry that carries everything the
//! leader decided (the plan of every shard, the set's id, the instant to fire); from there on,
//! every change follows from job results: a failed shard moves to its next candidate, a window
//! whose shards have all ended hands each cluster's manifest to an agent, and a set's state is
//! counted from the regions that hold its manifest. Nothing here reads a clock.

use std::collections::BTreeMap;

use crate::state::{
    BackupSet, CutOutcome, FleetState, Job, JobKind, JobOutcome, JobState, MAX_CUT_ATTEMPTS,
    ManifestSpec, RegionState, RegionStatus, Response, SetShard, ShardState, SnapshotSpec, Window,
    WindowPlan, WindowShard, set_key,
};
use fleetsnap_core::ClusterId;
use fleetsnap_core::manifest::{Manifest, SetFacts};
use fleetsnap_core::policy::Consistency;
use fleetsnap_core::retention::SetState;
use fleetsnap_core::topology::storage_shard;
use fleetsnap_core::window::{JobResult, RegionResult, ShardResult, from_unix_ms};

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
            JobKind::Catalog(_) | JobKind::Archive(_) | JobKind::StorePoint(_) => None,
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
            JobKind::Catalog(_) | JobKind::Archive(_) | JobKind::StorePoint(_) => {}
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
    Manifest::of_set(
        SetFacts {
            backup_id: window.plan.backup_id.clone(),
            cluster: cluster.clone(),
            policy: Some(p.name.clone()),
            consistency: p.consistency,
            started_at: from_unix_ms(started),
            finished_at: from_unix_ms(finished),
            skew_us,
            write_pause_us: window.cut.as_ref().map(|c| c.pause_us),
            writer: "fleetsnap-coordinator",
        },
        stored
            .iter()
            .map(|(s, r)| {
                let mut e = r.entry.clone();
                e.slot_ranges = s.plan.slots.clone();
                e
            })
            .collect(),
    )
}
