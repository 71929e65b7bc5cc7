//! Leadership: who leads, the lease that stops a deposed leader from acting, writes through Raft
//! and linearizable reads.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ServerState};
use tokio::sync::Notify;

use super::session::redirect;
use super::*;
use crate::NodeId;
use crate::state::Command;

/// A leader that cannot confirm a quorum for this long lets its agents go.
const LEASE_LOST: Duration = Duration::from_secs(3);

impl Node {
    /// Paces every periodic loop that only the leader runs (windows, jobs, cuts, drills,
    /// runbooks, upkeep): waits `period`, or less when `wake` is notified, then says whether
    /// this node leads now. A loop that is told no forgets what it held for this leadership and
    /// waits again.
    pub(super) async fn next_round(&self, period: Duration, wake: Option<&Notify>) -> bool {
        match wake {
            Some(w) => {
                tokio::select! {
                    _ = w.notified() => {}
                    _ = tokio::time::sleep(period) => {}
                }
            }
            None => tokio::time::sleep(period).await,
        }
        self.is_leader()
    }

    /// The leader as a redirect may name it: never this node while it does not lead. A leader
    /// cut off from its quorum stays Raft's leader until it hears of a newer term, and naming it
    /// would send its agents straight back to it; without a leader elsewhere, agents go through
    /// their coordinator list.
    pub(super) fn leader_elsewhere(&self) -> LeaderInfo {
        let l = self.leader();
        if l.id == Some(self.id) {
            LeaderInfo {
                id: None,
                address: String::new(),
            }
        } else {
            l
        }
    }

    pub(super) fn leader(&self) -> LeaderInfo {
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

    pub(super) fn is_leader(&self) -> bool {
        self.raft_says_leader() && self.confirmed.load(Ordering::SeqCst)
    }

    /// This cluster's identity, written by the leader the first time it is asked for (a
    /// follower answers with what it has applied, or "" when it has none yet).
    pub(super) async fn cluster_id(&self) -> Result<String, LeaderError> {
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

    pub(super) fn raft_says_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id)
    }

    /// Sends every connected agent away: to `to`, or (no address) to try the other coordinators.
    pub(super) fn release_agents(&self, to: &LeaderInfo) {
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
    pub(super) async fn lease_loop(self: Arc<Self>) {
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

    pub(super) fn not_leader(
        &self,
        leader: Option<&ForwardToLeader<NodeId, BasicNode>>,
    ) -> LeaderError {
        let (id, address) = match leader {
            Some(f) => (
                f.leader_id,
                f.leader_node
                    .as_ref()
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
            ),
            None => {
                let l = self.leader_elsewhere();
                (l.id, l.address)
            }
        };
        match id {
            Some(id) => LeaderError::NotLeader {
                message: format!(
                    "coordinator {} is not the leader; the leader is coordinator {id} at {address}",
                    self.id
                ),
                leader: Some(address),
            },
            None => LeaderError::NotLeader {
                message: format!(
                    "coordinator {} is not the leader and knows no leader yet (an election may be \
                     running); retry in a few seconds",
                    self.id
                ),
                leader: None,
            },
        }
    }

    /// Commits a command; a follower's refusal names the leader. A command whose entry created
    /// jobs (a window, a retry, a manifest, a catalog task) wakes the job loop, which hands them
    /// out at once instead of at its next round.
    pub(crate) async fn write(
        &self,
        cmd: Command,
    ) -> Result<(crate::state::Response, u64, u64), LeaderError> {
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

    pub(crate) fn write_error(
        &self,
        e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    ) -> LeaderError {
        match &e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => self.not_leader(Some(f)),
            RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
                LeaderError::refused(c.to_string())
            }
            RaftError::Fatal(f) => LeaderError::internal(format!("raft stopped: {f}")),
        }
    }

    pub(crate) async fn linearizable(&self) -> Result<(), LeaderError> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(self.not_leader(Some(f))),
                None => Err(LeaderError::unavailable(format!(
                    "coordinator {} cannot confirm it leads: {e}",
                    self.id
                ))),
            },
        }
    }

    /// Leadership changes: a new leader starts with an empty view; a deposed one sends its agents
    /// to the new leader.
    pub(super) async fn watch_leadership(self: Arc<Self>) {
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
                let l = self.leader_elsewhere();
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

    /// The voting members.
    pub(crate) fn voters(&self) -> BTreeSet<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}
