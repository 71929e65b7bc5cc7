//! Restores and restore drills: the leader picks the set, orders its regions (healthy first, in
//! the policy's order), and hands the work to agents as catalog jobs in the log. Drills also run
//! on the policies' drill schedules.

use std::sync::Arc;
use std::time::Duration;

use super::LeaderError;
use fleetsnap_core::outcomes::DrillReport;
use fleetsnap_core::records::DrillRow;
use fleetsnap_core::window::{CatalogTask, RegionUrl, RestoreMode, RestoreTask, unix_ms};
use fleetsnap_core::{ClusterId, Role};
use fleetsnap_proto::v1;

use super::Node;
use crate::state::CatalogSpec;
use crate::state::{BackupSet, RegionState};
use crate::state::{JobKind, JobOutcome, JobState};

/// What a restore request resolved to.
pub(crate) struct Started {
    /// The jobs, one per agent's part.
    pub(crate) jobs: Vec<u64>,
    /// The set restored.
    pub(crate) set: String,
    /// The agents, in the order of `jobs`.
    pub(crate) agents: Vec<String>,
}

impl Node {
    /// The set to restore: one named, or the cluster's latest restorable set taken at or before
    /// `at_ms` (0: the latest).
    pub(super) fn restorable(
        &self,
        set: &str,
        cluster: &str,
        at_ms: i64,
    ) -> Result<BackupSet, LeaderError> {
        let set = if !set.is_empty() {
            self.resolve_set(set)?
        } else {
            if cluster.is_empty() {
                return Err(LeaderError::invalid(
                    "name a set (CLUSTER/BACKUP_ID) or a cluster (--cluster C, with --at TIME for an older one)",
                ));
            }
            let st = self.state.read().expect("state lock");
            st.state
                .sets
                .values()
                .filter(|s| s.cluster.as_str() == cluster)
                .filter(|s| at_ms == 0 || s.opened_at_ms <= at_ms)
                .filter(|s| s.regions.values().any(|r| r.state == RegionState::Complete))
                .filter(|s| s.deleting.is_none())
                .max_by_key(|s| (s.opened_at_ms, s.backup_id.clone()))
                .cloned()
                .ok_or_else(|| {
                    LeaderError::not_found(if at_ms == 0 {
                        format!("cluster {cluster:?} has no set complete in any region; `fleetsnap backup list` shows its sets")
                    } else {
                        format!(
                            "cluster {cluster:?} has no set complete in any region taken at or before {}; `fleetsnap backup list` shows its sets",
                            fleetsnap_core::window::from_unix_ms(at_ms)
                        )
                    })
                })?
        };
        if set.deleting.is_some() {
            return Err(LeaderError::refused(format!(
                "set {} is being deleted",
                set.key()
            )));
        }
        Ok(set)
    }

    /// The regions to read a set from: those that hold it whole, in the order its policy lists
    /// them (nearest first), those whose last verification failed after the others.
    pub(super) fn read_order(&self, set: &BackupSet) -> Vec<RegionUrl> {
        let order: Vec<String> = {
            let st = self.state.read().expect("state lock");
            st.state
                .policies
                .get(&set.policy)
                .map(|p| p.destinations.iter().map(|d| d.region.clone()).collect())
                .unwrap_or_default()
        };
        let failed_verify = |name: &str| {
            set.verified
                .as_ref()
                .is_some_and(|v| v.regions.iter().any(|r| r.region == name && !r.ok))
        };
        let mut regions: Vec<(bool, usize, RegionUrl)> = set
            .regions
            .iter()
            .filter(|(_, r)| r.state == RegionState::Complete && !r.url.is_empty())
            .map(|(name, r)| {
                let rank = order.iter().position(|o| o == name).unwrap_or(usize::MAX);
                (
                    failed_verify(name),
                    rank,
                    RegionUrl {
                        region: name.clone(),
                        url: r.url.clone(),
                    },
                )
            })
            .collect();
        regions.sort_by(|a, b| (a.0, a.1, &a.2.region).cmp(&(b.0, b.1, &b.2.region)));
        regions.into_iter().map(|(_, _, r)| r).collect()
    }

    /// `read_order`, refusing a set that is complete in no region.
    pub(super) fn regions_to_restore(
        &self,
        set: &BackupSet,
    ) -> Result<Vec<RegionUrl>, LeaderError> {
        let regions = self.read_order(set);
        if regions.is_empty() {
            return Err(LeaderError::refused(format!(
                "set {} is complete in no region: there is nothing to restore from",
                set.key()
            )));
        }
        Ok(regions)
    }

    /// `fleetsnap restore`: one job for an online restore, one per shard's primary for a
    /// replace.
    pub(crate) async fn restore(&self, r: &v1::RestoreRequest) -> Result<Started, LeaderError> {
        // A cluster a policy archives goes back to the second asked for, from its archive.
        let archived = r.set.trim().is_empty() && self.archiving_policy(r.cluster.trim()).is_some();
        if r.exact || !r.before.is_empty() || (r.at_ms != 0 && archived) {
            return self.restore_at(r).await;
        }
        let set = self.restorable(r.set.trim(), r.cluster.trim(), r.at_ms)?;
        let regions = self.regions_to_restore(&set)?;
        let shard = (!r.shard.is_empty()).then(|| r.shard.clone());
        if let Some(s) = &shard
            && !set.shards.iter().any(|x| &x.shard == s)
        {
            return Err(LeaderError::invalid(format!(
                "set {} has no shard {s:?}; its shards: {}",
                set.key(),
                set.shards
                    .iter()
                    .map(|x| x.shard.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let task = |shard: Option<String>, mode: RestoreMode| RestoreTask {
            cluster: set.cluster.clone(),
            backup_id: set.backup_id.clone(),
            regions: regions.clone(),
            shard,
            db: r.db,
            pattern: (!r.pattern.is_empty()).then(|| r.pattern.clone()),
            mode,
            taken_at_ms: Some(set.opened_at_ms),
        };
        let mut started = Started {
            jobs: Vec::new(),
            set: set.key(),
            agents: Vec::new(),
        };
        match r.mode.as_str() {
            "online" => {
                if r.target.is_empty() {
                    return Err(LeaderError::invalid(
                        "an online restore needs --target redis://HOST:PORT",
                    ));
                }
                no_password_in(&r.target)?;
                let agent = self.restoring_agent(&set, &r.agent)?;
                let mode = RestoreMode::Online {
                    target: r.target.clone(),
                    replace_existing: r.replace_existing,
                };
                let job = self
                    .restore_job(&agent, &set, task(shard, mode), None)
                    .await?;
                started.jobs.push(job);
                started.agents.push(agent);
            }
            "replace" => {
                if r.db.is_some() || !r.pattern.is_empty() {
                    return Err(LeaderError::invalid(
                        "a replace restore puts whole shards back: --db and --match apply to --mode online",
                    ));
                }
                let view = self.view(set.cluster.as_str());
                let mut plan = Vec::new();
                for s in set
                    .shards
                    .iter()
                    .filter(|s| shard.as_ref().is_none_or(|x| x == &s.shard))
                {
                    let now = view
                        .clusters
                        .iter()
                        .flat_map(|c| c.shards.iter())
                        .find(|v| {
                            v.id == s.shard || v.nodes.iter().any(|n| n.address == s.source_node)
                        })
                        .and_then(|v| v.nodes.iter().find(|n| n.role == Role::Primary))
                        .ok_or_else(|| {
                            LeaderError::refused(format!(
                                "shard {} of set {} matches no shard of cluster {} with a primary that an agent reports now; restore it with --mode online into a running target instead",
                                s.shard,
                                set.key(),
                                set.cluster
                            ))
                        })?;
                    plan.push((s.shard.clone(), now.agent.clone(), now.name.clone()));
                }
                for (s, agent, instance) in plan {
                    let job = self
                        .restore_job(
                            &agent,
                            &set,
                            task(Some(s), RestoreMode::Replace { instance }),
                            None,
                        )
                        .await?;
                    started.jobs.push(job);
                    started.agents.push(agent);
                }
            }
            other => {
                return Err(LeaderError::invalid(format!(
                    "--mode {other:?}: use online (into a running target) or replace (the cluster's own nodes)"
                )));
            }
        }
        Ok(started)
    }

    /// The agent to restore a set online: the one asked for, which must be connected, else one
    /// that took the set, else any connected.
    pub(super) fn restoring_agent(
        &self,
        set: &BackupSet,
        asked: &str,
    ) -> Result<String, LeaderError> {
        self.pick_asked(asked, || Self::set_agents(set))
    }

    /// A restore or drill job; `drill_of` names the schedule that called for a drill.
    pub(super) async fn restore_job(
        &self,
        agent: &str,
        set: &BackupSet,
        task: RestoreTask,
        drill_of: Option<(String, i64)>,
    ) -> Result<u64, LeaderError> {
        let reason = match &task.mode {
            RestoreMode::Drill => "restore drill",
            _ => "restore asked by an operator",
        };
        self.catalog_job(
            agent.to_string(),
            CatalogSpec {
                task: CatalogTask::Restore(Box::new(task)),
                set: None,
                reason: format!("{reason} of {}", set.key()),
                drill_of,
                trace: fleetsnap_telemetry::trace::traceparent(&tracing::Span::current()),
            },
        )
        .await
    }

    /// Drills of a set (the cluster's latest when none is named): one job per shard.
    pub(crate) async fn drill(
        &self,
        cluster: &str,
        set: &str,
        shard: &str,
        agent: &str,
        drill_of: Option<(String, i64)>,
    ) -> Result<Started, LeaderError> {
        let set = self.restorable(set, cluster, 0)?;
        let regions = self.read_order(&set);
        let mut started = Started {
            jobs: Vec::new(),
            set: set.key(),
            agents: Vec::new(),
        };
        let shards: Vec<_> = set
            .shards
            .iter()
            .filter(|s| shard.is_empty() || s.shard == shard)
            .collect();
        if shards.is_empty() {
            return Err(LeaderError::invalid(format!(
                "set {} has no shard {shard:?}",
                set.key()
            )));
        }
        for s in shards {
            let who = if agent.is_empty() {
                self.pick_drill_agent(&s.agent)?
            } else {
                self.pick_agent(&[agent.to_string()])?
            };
            let task = RestoreTask {
                cluster: set.cluster.clone(),
                backup_id: set.backup_id.clone(),
                regions: regions.clone(),
                shard: Some(s.shard.clone()),
                db: None,
                pattern: None,
                mode: RestoreMode::Drill,
                taken_at_ms: Some(s.started_at_ms),
            };
            let job = self.restore_job(&who, &set, task, drill_of.clone()).await?;
            started.jobs.push(job);
            started.agents.push(who);
        }
        Ok(started)
    }

    /// Every drill job, newest last, as JSON.
    pub(crate) fn drills_json(&self, cluster: &str) -> String {
        let st = self.state.read().expect("state lock");
        let mut out = Vec::new();
        for job in st.state.jobs.values() {
            let JobKind::Catalog(spec) = &job.kind else {
                continue;
            };
            let CatalogTask::Restore(task) = &spec.task else {
                continue;
            };
            if task.mode != RestoreMode::Drill
                || (!cluster.is_empty() && task.cluster.as_str() != cluster)
            {
                continue;
            }
            let (state, ok, problem, report) = match &job.state {
                JobState::Done(JobOutcome::Succeeded {
                    result:
                        Some(fleetsnap_core::window::JobResult::Restored {
                            ok,
                            problem,
                            report_json,
                        }),
                    ..
                }) => (
                    if *ok { "passed" } else { "failed" },
                    Some(*ok),
                    problem.clone(),
                    serde_json::from_str::<DrillReport>(report_json).ok(),
                ),
                JobState::Done(JobOutcome::Failed { reason }) => {
                    ("failed", Some(false), Some(reason.clone()), None)
                }
                JobState::Done(_) => ("failed", Some(false), Some("no report".into()), None),
                _ => ("running", None, None, None),
            };
            out.push(DrillRow {
                job: job.id,
                agent: job.agent.clone(),
                cluster: task.cluster.clone(),
                backup_id: task.backup_id.clone(),
                shard: task.shard.clone(),
                scheduled_by: spec.drill_of.as_ref().map(|d| d.0.clone()),
                state: state.to_string(),
                ok,
                problem,
                report,
            });
        }
        serde_json::to_string_pretty(&out).expect("drills serialise")
    }

    /// Runs the drills that policies' drill schedules call for (the leader only), counting from
    /// the last scheduled drill in the log.
    pub(super) async fn drill_loop(self: Arc<Self>) {
        let mut cadence = super::Cadence::default();
        loop {
            if !self.next_round(Duration::from_millis(500), None).await {
                cadence.forget();
                continue;
            }
            let now = time::OffsetDateTime::now_utc();
            let due: Vec<(String, Vec<ClusterId>, Option<String>)> = {
                let s = self.state.read().expect("state lock");
                s.state
                    .policies
                    .values()
                    .filter_map(|p| {
                        let d = p.drill.as_ref()?;
                        let last = s.state.last_drill.get(&p.name).copied();
                        cadence
                            .due(&p.name, last, &d.schedule, now)
                            .then(|| (p.name.clone(), p.clusters.clone(), d.agent.clone()))
                    })
                    .collect()
            };
            for (policy, clusters, agent) in due {
                let mut any = false;
                for c in clusters {
                    let agent = agent.clone().unwrap_or_default();
                    let drill_of = Some((policy.clone(), unix_ms(now)));
                    let span = tracing::info_span!(
                        parent: None,
                        "drill",
                        %policy,
                        cluster = %c,
                        set = tracing::field::Empty,
                        trace_id = tracing::field::Empty,
                    );
                    let started = self
                        .in_trace(span, None, async {
                            let s = self.drill(c.as_str(), "", "", &agent, drill_of).await?;
                            tracing::Span::current().record("set", s.set.as_str());
                            Ok::<_, LeaderError>(s)
                        })
                        .await;
                    match started {
                        Ok(s) => {
                            any = true;
                            tracing::info!(%policy, set = %s.set, jobs = ?s.jobs, "scheduled drill started");
                        }
                        Err(e) => {
                            tracing::warn!(%policy, cluster = %c, error = %e.message(), "scheduled drill not started")
                        }
                    }
                }
                if !any {
                    cadence.failed(policy, now);
                }
            }
        }
    }
}

/// Whether a Redis URL carries a password in itself.
/// Refuses a target URL that carries a password: it would be stored in the coordinators' log.
pub(super) fn no_password_in(target: &str) -> Result<(), LeaderError> {
    if inline_password(target) {
        return Err(LeaderError::invalid(format!(
            "--target {:?} carries a password, which would be stored in the coordinators' log: put it in a file on the agent's host and use ?password_file=PATH",
            redact(target)
        )));
    }
    Ok(())
}

fn inline_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let auth = rest.split(['/', '?']).next().unwrap_or("");
    auth.contains('@') || url.contains("password=")
}

/// The URL without what is between `//` and `@`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(a), Some(b)) if b > a => format!("{}***{}", &url[..a + 3], &url[b..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_target_urls_are_spotted() {
        assert!(inline_password("redis://:secret@10.0.0.1:6379"));
        assert!(inline_password("redis://user:secret@h:1"));
        assert!(!inline_password("redis://10.0.0.1:6379"));
        assert!(!inline_password("redis://h:1?password_file=/etc/x"));
        assert_eq!(redact("redis://u:p@h:1"), "redis://***@h:1");
    }
}
