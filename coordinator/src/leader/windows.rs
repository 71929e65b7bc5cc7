//! Opening windows: the fleet as the reports show it, each shard's plan, the wait for reports of
//! every node, and the schedule of every policy.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetsnap_core::BackupId;
use fleetsnap_core::planner;
use fleetsnap_core::policy::Consistency;
use fleetsnap_core::topology::{self, Observed};
use fleetsnap_core::window::unix_ms;
use fleetsnap_telemetry::trace;
use tracing::field::Empty;

use super::*;
use crate::state::Command;
use crate::state::WindowPlan;

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

/// How far ahead of the opening a `simultaneous` window fires: time to commit the window and
/// hand every agent its job.
const SIMULTANEOUS_LEAD_MS: i64 = 1500;

impl Node {
    /// The fleet view from the latest reports: every cluster, or one.
    pub(super) fn view(&self, cluster: &str) -> topology::FleetView {
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
    ) -> Result<(u64, String), LeaderError> {
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

    pub(super) async fn plan_and_open(
        &self,
        policy: &str,
        trace: Option<String>,
    ) -> Result<(u64, String), LeaderError> {
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
                LeaderError::not_found(format!(
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
            .ok_or_else(|| LeaderError::internal("the window was not opened"))?;
        tracing::info!(window, %backup_id, policy, "window opened");
        Ok((window, backup_id.to_string()))
    }

    /// Opens the windows that policies' schedules call for (the leader only).
    pub(super) async fn schedule_loop(self: Arc<Self>) {
        let mut cadence = Cadence::default();
        loop {
            if !self.next_round(Duration::from_millis(500), None).await {
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
