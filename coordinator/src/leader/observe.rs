//! What a coordinator shows its operators: the spans of the traces it leads, and `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! Metrics from the replicated state (last backups, sets, job failures, drills) are the same on
//! every coordinator; dashboards and alerts take their `max`. Metrics from the leader's soft
//! state (agents, source candidates) come only from the leader.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Instant;

use fleetsnap_core::planner;
use fleetsnap_core::retention::SetState;
use fleetsnap_core::window::{JobResult, RestoreMode, unix_ms};
use fleetsnap_telemetry::metrics::{Exposition, Kind, unix_seconds};
use fleetsnap_telemetry::trace;
use openraft::ServerState;
use tracing::{Instrument, Span};

use super::Node;
use crate::state::RunbookState;
use crate::state::{BackupSet, RegionState, RegionStatus, SetShard};
use crate::state::{Job, JobKind, JobOutcome, JobState};

/// Spans this leader keeps open, by `traceparent`.
#[derive(Default)]
pub(super) struct Traces(Mutex<HashMap<String, Span>>);

impl Traces {
    /// Keeps `span` open until nothing open carries its context.
    pub(super) fn keep(&self, span: &Span) {
        if let Some(tp) = trace::traceparent(span) {
            self.0.lock().expect("traces lock").insert(tp, span.clone());
        }
    }

    /// Leadership lost: this node's spans end (a new leader's jobs keep the trace going).
    pub(super) fn end_all(&self) {
        self.0.lock().expect("traces lock").clear();
    }
}

impl Node {
    /// Runs `work` in `span`, started as a trace's root on this node (a child of the remote span
    /// `parent` names, if any); once `work` succeeds the span stays open until nothing open
    /// carries its context.
    pub(crate) async fn in_trace<R, E>(
        &self,
        span: Span,
        parent: Option<&str>,
        work: impl Future<Output = Result<R, E>>,
    ) -> Result<R, E> {
        let span = trace::begin(span, parent);
        let out = work.instrument(span.clone()).await;
        if out.is_ok() {
            self.traces.keep(&span);
        }
        out
    }

    /// Ends the spans whose window, jobs and runbook have all ended (`open_jobs`: the jobs the
    /// job loop found open).
    pub(super) fn end_finished_traces(&self, open_jobs: &[Job]) {
        if self.traces.0.lock().expect("traces lock").is_empty() {
            return;
        }
        let live: HashSet<String> = {
            let s = self.state.read().expect("state lock");
            let st = &s.state;
            let windows = st
                .windows
                .values()
                .filter(|w| !w.done)
                .filter_map(|w| w.plan.trace.clone());
            let jobs = open_jobs.iter().filter_map(|j| st.trace_of(j));
            let runbooks = st
                .runbooks
                .values()
                .filter(|r| r.state == RunbookState::Running)
                .filter_map(|r| r.trace.clone());
            windows.chain(jobs).chain(runbooks).collect()
        };
        self.traces
            .0
            .lock()
            .expect("traces lock")
            .retain(|tp, _| live.contains(tp));
    }

    /// `/healthz`: Raft runs.
    pub fn healthy(&self) -> Result<(), String> {
        match &self.raft.metrics().borrow().running_state {
            Ok(()) => Ok(()),
            Err(e) => Err(format!("raft stopped: {e}")),
        }
    }

    /// `/readyz`: a leader is known, and (on the leader) a quorum confirms it.
    pub fn ready(&self) -> Result<(), String> {
        self.healthy()?;
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            None => Err(format!("no leader known in term {}", m.current_term)),
            Some(l) if l == self.id && !self.is_leader() => Err(format!(
                "raft calls this node leader of term {} but no quorum has confirmed it lately",
                m.current_term
            )),
            Some(_) => Ok(()),
        }
    }

    /// The `/metrics` text.
    pub fn metrics_text(&self) -> String {
        let mut e = Exposition::default();
        self.raft_metrics(&mut e);
        self.catalog_metrics(&mut e);
        if self.is_leader() {
            self.leader_metrics(&mut e);
        }
        e.finish()
    }

    pub(super) fn raft_metrics(&self, e: &mut Exposition) {
        let m = self.raft.metrics().borrow().clone();
        let last_log = m.last_log_index.unwrap_or(0) as f64;
        let applied = m.last_applied.map_or(0, |l| l.index) as f64;
        e.single(
            "fleetsnap_raft_term",
            Kind::Gauge,
            "The Raft term this coordinator is in.",
            m.current_term as f64,
        );
        e.single(
            "fleetsnap_raft_is_leader",
            Kind::Gauge,
            "1 on the leader (Raft calls it leader and a quorum confirmed it lately), else 0.",
            f64::from(u8::from(m.state == ServerState::Leader && self.is_leader())),
        );
        e.single(
            "fleetsnap_raft_leader_known",
            Kind::Gauge,
            "1 when this coordinator knows a leader, else 0.",
            f64::from(u8::from(m.current_leader.is_some())),
        );
        e.single(
            "fleetsnap_raft_last_log_index",
            Kind::Gauge,
            "The index of the last entry in this coordinator's log.",
            last_log,
        );
        e.single(
            "fleetsnap_raft_applied_index",
            Kind::Gauge,
            "The index of the last entry applied to this coordinator's state.",
            applied,
        );
        e.single(
            "fleetsnap_raft_apply_lag_entries",
            Kind::Gauge,
            "Entries in the log not yet applied.",
            (last_log - applied).max(0.0),
        );
        e.single(
            "fleetsnap_raft_voters",
            Kind::Gauge,
            "Voters in the membership this coordinator knows.",
            m.membership_config.membership().voter_ids().count() as f64,
        );
        if let Some(replication) = &m.replication {
            let mut f = e.family(
                "fleetsnap_raft_follower_lag_entries",
                Kind::Gauge,
                "On the leader: entries each follower has yet to match.",
            );
            for (peer, matched) in replication {
                let matched = matched.map_or(0, |l| l.index) as f64;
                f.sample(
                    &[("peer", &peer.to_string())],
                    (last_log - matched).max(0.0),
                );
            }
        }
    }

    pub(super) fn catalog_metrics(&self, e: &mut Exposition) {
        let s = self.state.read().expect("state lock");
        let st = &s.state;
        let now_ms = unix_ms(time::OffsetDateTime::now_utc());

        // Per policy and cluster: the newest complete set, and the oldest set as a floor for
        // the age when none is complete yet.
        let mut newest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut oldest: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        let mut latest_settled: BTreeMap<&str, &BackupSet> = BTreeMap::new();
        for set in st.sets.values() {
            let key = (set.policy.as_str(), set.cluster.as_str());
            let state = match set.state {
                SetState::Running => "running",
                SetState::Complete => "complete",
                SetState::Degraded => "degraded",
                SetState::Failed => "failed",
            };
            *counts.entry((set.cluster.as_str(), state)).or_default() += 1;
            let o = oldest.entry(key).or_insert(set.opened_at_ms);
            *o = (*o).min(set.opened_at_ms);
            if set.state == SetState::Complete {
                let n = newest.entry(key).or_insert(set.opened_at_ms);
                *n = (*n).max(set.opened_at_ms);
            }
            if set.state != SetState::Running {
                let l = latest_settled.entry(set.cluster.as_str()).or_insert(set);
                if set.opened_at_ms > l.opened_at_ms {
                    *l = set;
                }
            }
        }
        let mut f = e.family(
            "fleetsnap_backup_last_success_timestamp_seconds",
            Kind::Gauge,
            "When the newest complete set of a cluster was taken (its window's opening, Unix time).",
        );
        for ((policy, cluster), at) in &newest {
            f.sample(
                &[("cluster", cluster), ("policy", policy)],
                unix_seconds(*at),
            );
        }
        let mut f = e.family(
            "fleetsnap_backup_age_seconds",
            Kind::Gauge,
            "The live RPO: how far the newest complete set of a cluster is behind now (from its \
             oldest set while none is complete).",
        );
        for (key, first) in &oldest {
            let at = newest.get(key).copied().unwrap_or(*first);
            f.sample(
                &[("cluster", key.1), ("policy", key.0)],
                ((now_ms - at) as f64 / 1000.0).max(0.0),
            );
        }
        let mut f = e.family(
            "fleetsnap_policy_rpo_seconds",
            Kind::Gauge,
            "The RPO a policy promises: its rpo_seconds, or twice its schedule's interval.",
        );
        let now = time::OffsetDateTime::now_utc();
        for p in st.policies.values() {
            if let Some(rpo) = p.promised_rpo_seconds(now) {
                f.sample(&[("policy", &p.name)], rpo as f64);
            }
        }
        let mut f = e.family(
            "fleetsnap_backup_sets",
            Kind::Gauge,
            "Sets in the catalog, by cluster and state.",
        );
        for ((cluster, state), n) in &counts {
            f.sample(&[("cluster", cluster), ("state", state)], *n as f64);
        }
        // The newest settled set of each cluster, by region, by shard and as a whole.
        let by_region = |e: &mut Exposition, name, help, value: fn(&RegionStatus) -> f64| {
            let mut f = e.family(name, Kind::Gauge, help);
            for (cluster, set) in &latest_settled {
                for (region, status) in &set.regions {
                    f.sample(&[("cluster", cluster), ("region", region)], value(status));
                }
            }
        };
        by_region(
            e,
            "fleetsnap_backup_region_complete",
            "1 when a cluster's newest settled set is complete in the region, else 0.",
            |r| f64::from(u8::from(r.state == RegionState::Complete)),
        );
        by_region(
            e,
            "fleetsnap_backup_stored_bytes",
            "Bytes a cluster's newest settled set holds in each region.",
            |r| r.stored_bytes as f64,
        );
        let by_shard = |e: &mut Exposition, name, help, value: fn(&SetShard) -> f64| {
            let mut f = e.family(name, Kind::Gauge, help);
            for (cluster, set) in &latest_settled {
                for shard in &set.shards {
                    f.sample(
                        &[("cluster", cluster), ("shard", &shard.shard)],
                        value(shard),
                    );
                }
            }
        };
        by_shard(
            e,
            "fleetsnap_backup_shard_source_bytes",
            "Bytes read from each shard's source for the cluster's newest settled set.",
            |s| s.raw_bytes as f64,
        );
        by_shard(
            e,
            "fleetsnap_backup_shard_duration_seconds",
            "How long each shard's snapshot of the cluster's newest settled set took.",
            |s| ((s.finished_at_ms - s.started_at_ms) as f64 / 1000.0).max(0.0),
        );
        let by_cluster = |e: &mut Exposition, name, help, value: fn(&BackupSet) -> Option<f64>| {
            let mut f = e.family(name, Kind::Gauge, help);
            for (cluster, set) in &latest_settled {
                if let Some(v) = value(set) {
                    f.sample(&[("cluster", cluster)], v);
                }
            }
        };
        by_cluster(
            e,
            "fleetsnap_window_skew_seconds",
            "simultaneous: the spread of the shards' start times in the cluster's newest settled set.",
            |s| s.skew_us.map(|us| us as f64 / 1e6),
        );
        by_cluster(
            e,
            "fleetsnap_window_write_pause_seconds",
            "consistent: the longest write pause of the cut of the cluster's newest settled set.",
            |s| s.write_pause_us.map(|us| us as f64 / 1e6),
        );
        let mut f = e.family(
            "fleetsnap_job_failures_total",
            Kind::Counter,
            "Failed jobs since the coordinator cluster began, by kind and reason.",
        );
        for (key, n) in &st.job_failures {
            let (kind, reason) = key.split_once('/').unwrap_or((key, "other"));
            f.sample(&[("kind", kind), ("reason", reason)], *n as f64);
        }
        // The newest finished restore and drill of each cluster.
        let mut restores: BTreeMap<(&str, &str), (u64, bool, f64)> = BTreeMap::new();
        for job in st.jobs.values() {
            let JobKind::Catalog(spec) = &job.kind else {
                continue;
            };
            let fleetsnap_core::window::CatalogTask::Restore(task) = &spec.task else {
                continue;
            };
            let JobState::Done(outcome) = &job.state else {
                continue;
            };
            let kind = if task.mode == RestoreMode::Drill {
                "drill"
            } else {
                "restore"
            };
            let (ok, seconds) = match outcome {
                JobOutcome::Succeeded {
                    result:
                        Some(JobResult::Restored {
                            ok, report_json, ..
                        }),
                    ..
                } => (*ok, report_seconds(report_json)),
                _ => (false, f64::NAN),
            };
            let entry = restores
                .entry((kind, task.cluster.as_str()))
                .or_insert((job.id, ok, seconds));
            if job.id >= entry.0 {
                *entry = (job.id, ok, seconds);
            }
        }
        let mut f = e.family(
            "fleetsnap_restore_rto_seconds",
            Kind::Gauge,
            "The RTO of a cluster's newest finished restore or drill (shard job), by kind.",
        );
        for ((kind, cluster), (_, _, seconds)) in &restores {
            if seconds.is_finite() {
                f.sample(&[("cluster", cluster), ("kind", kind)], *seconds);
            }
        }
        let mut f = e.family(
            "fleetsnap_restore_last_ok",
            Kind::Gauge,
            "1 when a cluster's newest finished restore or drill (shard job) succeeded and \
             checked out, else 0.",
        );
        for ((kind, cluster), (_, ok, _)) in &restores {
            f.sample(
                &[("cluster", cluster), ("kind", kind)],
                f64::from(u8::from(*ok)),
            );
        }
    }

    pub(super) fn leader_metrics(&self, e: &mut Exposition) {
        let now = Instant::now();
        let registered: Vec<String> = {
            let s = self.state.read().expect("state lock");
            s.state.agents.keys().cloned().collect()
        };
        {
            let agents = self.fleet.agents.lock().expect("lock");
            let mut f = e.family(
                "fleetsnap_agent_connected",
                Kind::Gauge,
                "On the leader: 1 when a registered agent's session is open, else 0.",
            );
            for agent in &registered {
                let up = agents.get(agent).is_some_and(|a| a.tx.is_some());
                f.sample(&[("agent", agent)], f64::from(u8::from(up)));
            }
            let mut f = e.family(
                "fleetsnap_agent_report_age_seconds",
                Kind::Gauge,
                "On the leader: seconds since each agent's last report (since its session \
                 opened, before the first).",
            );
            for (agent, a) in agents.iter() {
                f.sample(
                    &[("agent", agent)],
                    now.duration_since(a.last_heard()).as_secs_f64(),
                );
            }
        }
        e.single(
            "fleetsnap_agent_reports_total",
            Kind::Counter,
            "On the leader: reports received since this process started.",
            self.fleet
                .reports
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        );
        let policies: Vec<fleetsnap_core::policy::Policy> = {
            let s = self.state.read().expect("state lock");
            s.state.policies.values().cloned().collect()
        };
        let view = self.view("");
        let mut f = e.family(
            "fleetsnap_shard_source_candidates",
            Kind::Gauge,
            "On the leader: nodes of a shard a policy would take a snapshot from now (0: the \
             shard cannot be backed up).",
        );
        for p in &policies {
            let rules = p.rules();
            for cluster in &p.clusters {
                let Some(c) = view.clusters.iter().find(|c| c.name == cluster.as_str()) else {
                    continue;
                };
                for shard in &c.shards {
                    let plan = planner::plan_shard(shard, &rules);
                    f.sample(
                        &[
                            ("cluster", cluster.as_str()),
                            ("policy", &p.name),
                            ("shard", &plan.shard),
                        ],
                        plan.candidates().count() as f64,
                    );
                }
            }
        }
    }
}

/// The seconds a restore or drill report gives: `rto_seconds` (drills), else `seconds`.
fn report_seconds(report_json: &str) -> f64 {
    /// The two durations a restore's or a drill's report may carry.
    #[derive(serde::Deserialize)]
    struct Timed {
        rto_seconds: Option<f64>,
        seconds: Option<f64>,
    }
    serde_json::from_str::<Timed>(report_json)
        .ok()
        .and_then(|t| t.rto_seconds.or(t.seconds))
        .unwrap_or(f64::NAN)
}
