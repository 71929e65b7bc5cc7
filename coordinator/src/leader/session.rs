//! Sessions with agents: the Hello (admission, registration batched into the log, results
//! delivered again), reports, redirects from followers, and the session's end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use fleetsnap_core::InstanceReport;
use fleetsnap_proto::tls::PeerIdentity;
use fleetsnap_proto::v1::{self, agent_message, coordinator_message};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::jobs::assemble;
use super::*;
use crate::state::{Command, Job, JobState};

/// Agents per registration entry at most.
const MAX_REGISTRATION_BATCH: usize = 2000;

/// How long a follower holds an agent's Hello while no usable leader is known.
const FOLLOWER_HOLD: Duration = Duration::from_secs(5);

/// At most this many latency samples are kept between two `LeaderStats(reset)` calls.
const MAX_SAMPLES: usize = 4 << 20;

pub(super) fn redirect(l: &LeaderInfo) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        body: Some(coordinator_message::Body::Redirect(v1::Redirect {
            leader_id: l.id.unwrap_or_default(),
            leader_address: l.address.clone(),
        })),
    }
}

impl Node {
    pub(crate) async fn run_session(
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
                    .send(Err(LeaderError::invalid(
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
                .send(Err(LeaderError::denied(format!(
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
            let _ = tx.send(Ok(redirect(&self.leader_elsewhere()))).await;
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
                    archives: Vec::new(),
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
                    // A primary that stops being one (unreachable, or answering without the
                    // role while it goes down) leaves its last offset for a forced failover; one
                    // that is a primary again is not dead.
                    let primary =
                        |i: &InstanceReport| i.reachable && i.role == fleetsnap_core::Role::Primary;
                    for now in &instances {
                        if primary(now) {
                            a.dead_primaries.remove(&now.address);
                        } else if let Some(was) = a
                            .instances
                            .iter()
                            .find(|o| o.name == now.name && primary(o))
                        {
                            a.dead_primaries
                                .insert(was.address.clone(), was.master_repl_offset);
                        }
                    }
                    a.instances = instances;
                    a.archives = r.archives;
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
    pub(super) async fn write_config_policies(self: Arc<Self>) {
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
    pub(super) async fn register_loop(
        self: Arc<Self>,
        mut asks: mpsc::UnboundedReceiver<Registration>,
    ) {
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
    pub(super) async fn admit(&self, hello: &v1::Hello) -> Result<(), LeaderError> {
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
                .map_err(|_| LeaderError::unavailable("the coordinator is stopping"))?;
            registered
                .await
                .map_err(|_| LeaderError::unavailable("the coordinator is stopping"))??;
        }
        for u in &hello.finished_jobs {
            self.job_update(&hello.agent_id, u.clone()).await;
        }
        Ok(())
    }

    pub(super) async fn redeliver(&self, agent: &str, hello: &v1::Hello, tx: &Outbound) {
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
        self.stop_ended(agent, &hello.running_jobs, tx).await;
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
}
