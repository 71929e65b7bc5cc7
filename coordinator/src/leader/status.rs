//! What the leader shows of the fleet: `fleetsnap status` and the cluster's status.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetsnap_proto::v1::{self};

use super::*;
use crate::NodeId;
use crate::state::JobState;
use fleetsnap_core::records::{AgentRow, StatusDoc};

/// An agent whose last `Standby` call is older has no spare connection here any more (agents
/// call every 30 s, jittered up to 37.5 s).
const SPARE_FRESH: Duration = Duration::from_secs(75);

impl Node {
    pub(crate) fn cluster_status(&self) -> v1::ClusterStatusReply {
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

    pub(crate) fn status_json(&self, cluster: &str) -> String {
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
            archives: self.archive_rows(cluster),
        })
        .expect("status serialises")
    }

    /// The leader's own figures: agents connected and reporting, reports taken, and the
    /// report→visible latency samples since the last reset (`reset` empties them).
    pub(crate) fn leader_stats(&self, reset: bool) -> v1::LeaderStatsReply {
        let fleet = &self.fleet;
        let mut samples = {
            let mut s = fleet.latency_us.lock().expect("lock");
            if reset {
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
        v1::LeaderStatsReply {
            node_id: self.id,
            connected_agents: connected as u64,
            reports: fleet.reports.load(Ordering::Relaxed),
            latency_p50_us: pct(0.5),
            latency_p99_us: pct(0.99),
            latency_max_us: samples.last().copied().unwrap_or_default().into(),
            samples: samples.len() as u64,
        }
    }
}
