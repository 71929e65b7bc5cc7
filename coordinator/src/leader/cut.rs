//! The leader's part of a consistent cut (docs/design.md §6).
//!
//! Once every running shard of a `consistent` window has its replication stream (`Synced`,
//! committed as `ShardSynced`), the leader has the agents of the shards' primaries prepare a
//! connection each, pause writes on all of them, then read each offset and unpause. Each reply
//! travels on the agent's session stream; nothing here waits on the log until the offsets are
//! known, so the pause lasts two round trips to the agents and no fork. The cut is then committed
//! (`CommitCut`) and sent to every shard's job as a `CutDecision`, again and again until the job
//! ends, so that a new leader or a reconnected agent gets it too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetsnap_core::policy::Consistency;
use fleetsnap_core::report::Role;
use fleetsnap_proto::v1::{self, coordinator_message, cut_step::Step};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use super::Node;
use crate::state::{Command, JobState};
use crate::state::{Cut, CutOutcome, ShardState, Window, WindowShard};

/// How long a `PREPARE` or `RELEASE` may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a decision is sent again to a job that has not ended.
const DECISION_EVERY: Duration = Duration::from_secs(1);

/// A cut step's reply, routed back from an agent's session.
pub(super) type Waiters =
    std::sync::Mutex<HashMap<(u64, String, i32), oneshot::Sender<v1::CutReply>>>;

/// A shard's primary, where writes are paused.
pub(super) struct Primary {
    /// The shard's index in what the caller pauses.
    pub(super) shard: usize,
    pub(super) agent: String,
    pub(super) instance: String,
    pub(super) address: String,
}

/// Every primary paused and released: their replies (replication id, offset, pause), in the
/// order of the primaries.
pub(super) struct Paused {
    pub(super) replies: Vec<v1::CutReply>,
    /// From the first pause sent to the last release answered.
    pub(super) round: Duration,
    /// When the pauses were sent (Unix µs).
    pub(super) paused_at_us: i64,
}

impl Node {
    /// Routes an agent's `CutReply` to the step waiting for it.
    pub(super) fn cut_reply(&self, r: v1::CutReply) {
        let key = (r.cut, r.instance.clone(), r.step);
        if let Some(tx) = self.cut_waiters.lock().expect("lock").remove(&key) {
            let _ = tx.send(r);
        }
    }

    /// Commits a job's `Synced`.
    pub(super) async fn synced(&self, agent: &str, s: v1::Synced) {
        let known = {
            let st = self.state.read().expect("state lock");
            match st.state.jobs.get(&s.job_id) {
                Some(j) if j.agent == agent => st.state.windows.values().any(|w| {
                    w.shards
                        .iter()
                        .any(|sh| sh.job == Some(s.job_id) && sh.synced.is_some())
                }),
                _ => return,
            }
        };
        if known {
            return;
        }
        match self
            .write(Command::ShardSynced {
                job: s.job_id,
                replid: s.replid,
                offset: s.offset,
            })
            .await
        {
            Ok(_) => self.cut_wake.notify_one(),
            Err(e) => {
                tracing::warn!(job = s.job_id, error = %e.message(), "could not record a shard's stream")
            }
        }
    }

    /// On the leader: takes the cuts that are due and sends the decisions that are out.
    pub(super) async fn cut_loop(self: Arc<Self>) {
        let mut sent: HashMap<u64, Instant> = HashMap::new();
        let mut last_attempt: HashMap<u64, Instant> = HashMap::new();
        // Jobs told to abort because their shard failed over; until they end (and the shard is
        // read again on its new history), their window waits.
        let mut aborting: HashSet<u64> = HashSet::new();
        loop {
            if !self
                .next_round(Duration::from_millis(200), Some(&self.cut_wake))
                .await
            {
                sent.clear();
                aborting.clear();
                continue;
            }
            let windows: Vec<Window> = {
                let st = self.state.read().expect("state lock");
                st.state
                    .windows
                    .values()
                    .filter(|w| !w.done && w.plan.policy.consistency == Consistency::Consistent)
                    .cloned()
                    .collect()
            };
            for w in windows {
                let running: Vec<_> = w
                    .shards
                    .iter()
                    .filter(|s| s.state == ShardState::Running)
                    .collect();
                let due = w.cut.is_none()
                    && !running.is_empty()
                    && running.iter().all(|s| {
                        s.synced.is_some() && !s.job.is_some_and(|j| aborting.contains(&j))
                    })
                    && last_attempt
                        .get(&w.id)
                        .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
                if due {
                    last_attempt.insert(w.id, Instant::now());
                    let (outcome, moved) = self.clone().take_cut(&w).await;
                    if let CutOutcome::Failed { reason, .. } = &outcome {
                        tracing::warn!(window = w.id, %reason, "consistent cut not taken");
                    }
                    if let CutOutcome::Taken(c) = &outcome {
                        tracing::info!(
                            window = w.id,
                            pause_us = c.pause_us,
                            round_us = c.round_us,
                            "consistent cut taken"
                        );
                    }
                    if let Err(e) = self
                        .write(Command::CommitCut {
                            window: w.id,
                            outcome,
                        })
                        .await
                    {
                        tracing::warn!(window = w.id, error = %e.message(), "could not commit a cut");
                        continue;
                    }
                    // A shard that failed over is read again like any whose stream broke:
                    // its job ends, and `apply` hands the same node a new one.
                    for job in moved {
                        let abort = v1::CutDecision {
                            job_id: job,
                            abort: "the shard failed over before the cut: its stream is on the \
                                    old history"
                                .into(),
                            ..Default::default()
                        };
                        if self.send_decision(abort).await {
                            aborting.insert(job);
                        }
                    }
                    // The jobs wait on the decision: send it now, from the committed state.
                    let committed = self
                        .state
                        .read()
                        .expect("state lock")
                        .state
                        .windows
                        .get(&w.id)
                        .cloned();
                    if let Some(w) = committed {
                        self.send_decisions(&w, &mut sent).await;
                    }
                    continue;
                }
                self.send_decisions(&w, &mut sent).await;
            }
            let st = self.state.read().expect("state lock");
            sent.retain(|job, _| {
                st.state
                    .jobs
                    .get(job)
                    .is_some_and(|j| !matches!(j.state, JobState::Done(_)))
            });
            last_attempt.retain(|w, _| st.state.windows.get(w).is_some_and(|w| !w.done));
            aborting.retain(|job| {
                st.state
                    .jobs
                    .get(job)
                    .is_some_and(|j| !matches!(j.state, JobState::Done(_)))
            });
        }
    }

    /// Sends every job of the window that waits on the cut its decision (again every
    /// `DECISION_EVERY`, until the job ends).
    pub(super) async fn send_decisions(&self, w: &Window, sent: &mut HashMap<u64, Instant>) {
        let decisions: Vec<v1::CutDecision> = w
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| decision(w, i, s))
            .collect();
        for decision in decisions {
            let job = decision.job_id;
            if sent.get(&job).is_some_and(|t| t.elapsed() < DECISION_EVERY) {
                continue;
            }
            if self.send_decision(decision).await {
                sent.insert(job, Instant::now());
            }
        }
    }

    /// Sends a decision to the agent of its job, if the job is still open; whether it went.
    pub(super) async fn send_decision(&self, decision: v1::CutDecision) -> bool {
        let open = {
            let st = self.state.read().expect("state lock");
            st.state
                .jobs
                .get(&decision.job_id)
                .filter(|j| !matches!(j.state, JobState::Done(_)))
                .map(|j| j.agent.clone())
        };
        let Some(agent) = open else { return false };
        let tx = self
            .fleet
            .agents
            .lock()
            .expect("lock")
            .get(&agent)
            .and_then(|a| a.tx.clone());
        let Some(tx) = tx else { return false };
        let msg = v1::CoordinatorMessage {
            body: Some(coordinator_message::Body::CutDecision(decision)),
        };
        tx.send(Ok(msg)).await.is_ok()
    }

    /// One attempt at the window's cut, and the jobs whose shard failed over (their streams
    /// are on an old history).
    pub(super) async fn take_cut(self: Arc<Self>, w: &Window) -> (CutOutcome, Vec<u64>) {
        let failed = |reason: String| (CutOutcome::Failed { reason }, Vec::new());
        let primaries = match self.primaries(w) {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let paused = match self
            .clone()
            .pause_all(&primaries, w.plan.policy.write_pause_budget_ms)
            .await
        {
            Ok(p) => p,
            Err(e) => return failed(e),
        };
        let (replies, round, paused_at_us) = (paused.replies, paused.round, paused.paused_at_us);
        let mut offsets = vec![None; w.shards.len()];
        let mut pause_us = 0;
        let (mut moved, mut why) = (Vec::new(), Vec::new());
        for (p, r) in primaries.iter().zip(&replies) {
            let (replid, start) = w.shards[p.shard].synced.clone().unwrap_or_default();
            if r.replid != replid {
                moved.extend(w.shards[p.shard].job);
                why.push(format!(
                    "shard {}: its primary {} is on replication history {} but the snapshot's \
                     stream is on {replid}: the shard failed over; it is read again",
                    w.shards[p.shard].plan.shard, p.address, r.replid
                ));
                continue;
            }
            if r.offset < start {
                return failed(format!(
                    "shard {}: its primary {} is at offset {} but the snapshot's stream starts at \
                     {start}",
                    w.shards[p.shard].plan.shard, p.address, r.offset
                ));
            }
            offsets[p.shard] = Some((r.replid.clone(), r.offset));
            pause_us = pause_us.max(r.paused_us);
        }
        if !why.is_empty() {
            let reason = why.join("; ");
            return (CutOutcome::Failed { reason }, moved);
        }
        let cut = CutOutcome::Taken(Cut {
            offsets,
            pause_us,
            round_us: round.as_micros() as u64,
            paused_at_us,
        });
        (cut, Vec::new())
    }

    /// Prepares a connection on every primary, pauses their writes, then reads each offset and
    /// releases them; aborts (unpausing) on any failure, and fails when the round took longer
    /// than the budget (a primary may have resumed before its offset was read).
    pub(super) async fn pause_all(
        self: Arc<Self>,
        primaries: &[Primary],
        budget_ms: u64,
    ) -> Result<Paused, String> {
        let budget_ms = u32::try_from(budget_ms.max(1)).unwrap_or(u32::MAX);
        let cut: u64 = rand::random();
        // Connections first, so that the pause costs no connect or AUTH.
        if let Err(e) = self
            .clone()
            .all_steps(cut, primaries, Step::Prepare, budget_ms, STEP_TIMEOUT)
            .await
        {
            self.clone().abort(cut, primaries).await;
            return Err(e);
        }
        let started = Instant::now();
        let paused_at_us = fleetsnap_proto::convert::unix_micros();
        let pause = Duration::from_millis(budget_ms.into());
        if let Err(e) = self
            .clone()
            .all_steps(cut, primaries, Step::Pause, budget_ms, pause)
            .await
        {
            self.clone().abort(cut, primaries).await;
            return Err(e);
        }
        let released = self
            .clone()
            .all_steps(cut, primaries, Step::Release, budget_ms, STEP_TIMEOUT)
            .await;
        let round = started.elapsed();
        let replies = match released {
            Ok(r) => r,
            Err(e) => {
                self.clone().abort(cut, primaries).await;
                return Err(e);
            }
        };
        if round > pause {
            return Err(format!(
                "pausing and releasing every primary took {} ms, over the budget of {budget_ms} ms: \
                 a primary may have resumed writes before its offset was read (raise \
                 write_pause_budget_ms, or look for a slow agent or primary)",
                round.as_millis()
            ));
        }
        Ok(Paused {
            replies,
            round,
            paused_at_us,
        })
    }

    /// The primary of every running shard, from the latest reports (a shard that failed over
    /// since the window opened is paused on its new primary), else from the plan.
    fn primaries(&self, w: &Window) -> Result<Vec<Primary>, String> {
        let view = self.view("");
        let mut out = Vec::new();
        for (i, s) in w.shards.iter().enumerate() {
            if s.state != ShardState::Running {
                continue;
            }
            let live = view
                .clusters
                .iter()
                .filter(|c| c.name == s.cluster.as_str())
                .flat_map(|c| &c.shards)
                .find(|v| v.id == s.plan.shard)
                .and_then(|v| v.nodes.iter().find(|n| n.role == Role::Primary))
                .map(|n| (n.agent.clone(), n.name.clone(), n.address.clone()));
            let planned = s
                .plan
                .nodes
                .iter()
                .find(|n| n.role == Role::Primary)
                .map(|n| (n.agent.clone(), n.name.clone(), n.address.clone()));
            let Some((agent, instance, address)) = live.or(planned) else {
                return Err(format!(
                    "shard {}: no agent reports its primary, whose writes a cut must pause",
                    s.plan.shard
                ));
            };
            out.push(Primary {
                shard: i,
                agent,
                instance,
                address,
            });
        }
        Ok(out)
    }

    /// Runs one step on every primary at once; the replies in the order of `primaries`.
    async fn all_steps(
        self: Arc<Self>,
        cut: u64,
        primaries: &[Primary],
        step: Step,
        budget_ms: u32,
        timeout: Duration,
    ) -> Result<Vec<v1::CutReply>, String> {
        let mut set = JoinSet::new();
        for (i, p) in primaries.iter().enumerate() {
            let node = self.clone();
            let (agent, address) = (p.agent.clone(), p.address.clone());
            let msg = v1::CutStep {
                cut,
                instance: p.instance.clone(),
                step: step as i32,
                budget_ms,
            };
            set.spawn(async move {
                let r = node.step(&agent, msg, timeout).await;
                (
                    i,
                    r.map_err(|e| format!("{step:?} on {address} (agent {agent:?}): {e}")),
                )
            });
        }
        let mut replies = vec![None; primaries.len()];
        let mut errors = Vec::new();
        while let Some(done) = set.join_next().await {
            match done {
                Ok((i, Ok(r))) => replies[i] = Some(r),
                Ok((_, Err(e))) => errors.push(e),
                Err(e) => errors.push(format!("{step:?}: {e}")),
            }
        }
        if !errors.is_empty() {
            errors.sort();
            return Err(errors.join("; "));
        }
        Ok(replies.into_iter().flatten().collect())
    }

    /// Unpauses and drops the prepared connections (best effort; a pause also ends by itself
    /// when its budget does).
    async fn abort(self: Arc<Self>, cut: u64, primaries: &[Primary]) {
        let _ = self
            .all_steps(cut, primaries, Step::Abort, 0, STEP_TIMEOUT)
            .await;
    }

    /// Sends one step to an agent and waits for its reply.
    pub(super) async fn step(
        &self,
        agent: &str,
        msg: v1::CutStep,
        timeout: Duration,
    ) -> Result<v1::CutReply, String> {
        let tx = self
            .fleet
            .agents
            .lock()
            .expect("lock")
            .get(agent)
            .and_then(|a| a.tx.clone())
            .ok_or_else(|| "the agent is not connected to the leader".to_string())?;
        let key = (msg.cut, msg.instance.clone(), msg.step);
        let (reply_tx, reply_rx) = oneshot::channel();
        self.cut_waiters
            .lock()
            .expect("lock")
            .insert(key.clone(), reply_tx);
        let body = coordinator_message::Body::CutStep(msg);
        let sent = tx
            .send(Ok(v1::CoordinatorMessage { body: Some(body) }))
            .await;
        let r = match sent {
            Ok(()) => tokio::time::timeout(timeout, reply_rx).await,
            Err(_) => {
                self.cut_waiters.lock().expect("lock").remove(&key);
                return Err("the agent's session closed".into());
            }
        };
        self.cut_waiters.lock().expect("lock").remove(&key);
        match r {
            Ok(Ok(r)) if r.error.is_empty() => Ok(r),
            Ok(Ok(r)) => Err(r.error),
            Ok(Err(_)) => Err("no reply".into()),
            Err(_) => Err(format!("no reply within {} ms", timeout.as_millis())),
        }
    }
}

/// What the current job of shard `i` is told: its offset once the cut is taken, or to abort
/// once its shard has failed; nothing while it waits.
fn decision(w: &Window, i: usize, s: &WindowShard) -> Option<v1::CutDecision> {
    let job = s.job?;
    let abort = |abort: String| v1::CutDecision {
        job_id: job,
        abort,
        ..Default::default()
    };
    Some(match (&s.state, &s.synced, &w.cut) {
        (ShardState::Running, Some((replid, start)), Some(cut)) => {
            match cut.offsets.get(i).cloned().flatten() {
                Some((cut_replid, offset)) if cut_replid == *replid && offset >= *start => {
                    v1::CutDecision {
                        job_id: job,
                        replid: cut_replid,
                        offset,
                        abort: String::new(),
                    }
                }
                Some((cut_replid, offset)) => abort(format!(
                    "this attempt's stream starts at {start} of history {replid}, past or beside \
                     the cut at {offset} of {cut_replid}"
                )),
                None => abort("the shard is not part of the cut".into()),
            }
        }
        (ShardState::Failed { reason }, _, _) => abort(reason.clone()),
        _ => return None,
    })
}
