//! The job loop: dispatch to the agent's session, results (whole or in parts) written to the log,
//! and jobs whose agent stayed away past the lease failed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetsnap_proto::v1::{self, coordinator_message, job_update};

use super::*;
use crate::state::{Command, Job, JobOutcome, JobState};

/// The most bytes of results in parts one session may hold at once (a catalog scan carries every
/// manifest it found): an agent cannot make the leader hold more, whatever job ids it names.
const MAX_RESULT_BYTES: usize = 256 << 20;

/// Gathers a result sent in parts: keeps each part, and gives the `Finished` back whole once it
/// comes after all of them. A part out of order, a result over [`MAX_RESULT_BYTES`] or a count
/// that does not match fails the job with the reason, never waits.
pub(super) fn assemble(
    agent: &str,
    parts: &mut HashMap<u64, (u32, Vec<u8>)>,
    u: v1::JobUpdate,
) -> Option<v1::JobUpdate> {
    let fail = |u: &v1::JobUpdate, why: String| {
        tracing::warn!(job = u.job_id, agent, %why, "a job's result came back broken");
        Some(v1::JobUpdate {
            job_id: u.job_id,
            term: u.term,
            state: Some(job_update::State::Finished(v1::Finished {
                ok: false,
                error: format!(
                    "agent {agent:?} sent a result the coordinator could not put together: {why}"
                ),
                ..Default::default()
            })),
        })
    };
    match &u.state {
        Some(job_update::State::Part(p)) => {
            let held: usize = parts.values().map(|(_, b)| b.len()).sum();
            if held + p.data.len() > MAX_RESULT_BYTES {
                parts.remove(&u.job_id);
                return fail(
                    &u,
                    format!("results in parts over {MAX_RESULT_BYTES} bytes"),
                );
            }
            let (next, buf) = parts.entry(u.job_id).or_default();
            if p.seq == 0 {
                *next = 0;
                buf.clear();
            }
            if p.seq != *next {
                let why = format!("part {} came where part {next} belonged", p.seq);
                parts.remove(&u.job_id);
                return fail(&u, why);
            }
            buf.extend_from_slice(&p.data);
            *next += 1;
            None
        }
        Some(job_update::State::Finished(f)) if f.result_parts > 0 => {
            let (got, bytes) = parts.remove(&u.job_id).unwrap_or_default();
            let mut f = f.clone();
            if got != f.result_parts {
                return fail(&u, format!("{got} of its {} parts arrived", f.result_parts));
            }
            match String::from_utf8(bytes) {
                Ok(text) => {
                    f.result_json = text;
                    f.result_parts = 0;
                    Some(v1::JobUpdate {
                        job_id: u.job_id,
                        term: u.term,
                        state: Some(job_update::State::Finished(f)),
                    })
                }
                Err(_) => fail(&u, "its parts are not UTF-8 text".into()),
            }
        }
        _ => Some(u),
    }
}

fn job_message(job: &Job, term: u64, index: u64, trace: Option<String>) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        body: Some(coordinator_message::Body::Job(v1::Job {
            id: job.id,
            term,
            index,
            kind: Some((&job.kind).into()),
            traceparent: trace.unwrap_or_default(),
        })),
    }
}

impl Node {
    /// The job loop on the leader: hand pending jobs to their connected agents, fail jobs whose
    /// lease expired.
    pub(super) async fn job_loop(self: Arc<Self>) {
        let mut first_seen: HashMap<u64, Instant> = HashMap::new();
        loop {
            if !self
                .next_round(Duration::from_millis(500), Some(&self.wake))
                .await
            {
                first_seen.clear();
                self.traces.end_all();
                continue;
            }
            let Some(since) = *self.fleet.leader_since.lock().expect("lock") else {
                continue;
            };
            let open: Vec<Job> = {
                let s = self.state.read().expect("state lock");
                s.state
                    .jobs
                    .values()
                    .filter(|j| !matches!(j.state, JobState::Done(_)))
                    .cloned()
                    .collect()
            };
            self.end_finished_traces(&open);
            let now = Instant::now();
            first_seen.retain(|id, _| open.iter().any(|j| j.id == *id));
            for job in open {
                let seen = *first_seen.entry(job.id).or_insert(now);
                let (live, heard) = {
                    let agents = self.fleet.agents.lock().expect("lock");
                    match agents.get(&job.agent) {
                        Some(a) => (
                            a.tx.clone()
                                .map(|tx| (tx, a.incarnation, a.holding.contains(&job.id))),
                            Some(a.last_heard()),
                        ),
                        None => (None, None),
                    }
                };
                let reference = [Some(since), Some(seen), heard]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(now);
                let silent = now.duration_since(reference);
                if silent > self.lease {
                    let reason = format!(
                        "lease expired: agent {:?} has not reported for {} s (lease {} s)",
                        job.agent,
                        silent.as_secs(),
                        self.lease.as_secs()
                    );
                    self.fail_job(job.id, reason).await;
                    continue;
                }
                let Some((tx, incarnation, holding)) = live else {
                    continue;
                };
                if job.state == JobState::Pending && !holding {
                    self.dispatch(&job, incarnation, &tx).await;
                }
            }
        }
    }

    /// Commits the hand-over, then sends the job with its new fencing token.
    pub(super) async fn dispatch(&self, job: &Job, incarnation: u64, tx: &Outbound) {
        let r = self
            .write(Command::DispatchJob {
                job: job.id,
                incarnation,
            })
            .await;
        match r {
            Ok((resp, term, index)) if resp.refused.is_none() => {
                if let Some(a) = self.fleet.agents.lock().expect("lock").get_mut(&job.agent) {
                    a.holding.insert(job.id);
                }
                let trace = self.state.read().expect("state lock").state.trace_of(job);
                let msg = job_message(job, term, index, trace);
                if tx.send(Ok(msg)).await.is_err() {
                    tracing::info!(
                        job = job.id,
                        "agent left before the job reached it; it is handed again when it returns"
                    );
                }
            }
            Ok((resp, _, _)) => {
                tracing::warn!(job = job.id, refused = ?resp.refused, "dispatch refused")
            }
            Err(e) => tracing::warn!(job = job.id, error = %e.message(), "dispatch failed"),
        }
    }

    /// Records that a job failed, and why (a refusal just means it had ended already).
    pub(super) async fn fail_job(&self, job: u64, reason: String) {
        tracing::warn!(job, %reason, "failing job");
        let outcome = JobOutcome::Failed { reason };
        if let Err(e) = self.write(Command::FinishJob { job, outcome }).await {
            tracing::warn!(job, error = %e.message(), "could not record a job's failure");
        }
    }

    pub(super) async fn job_update(&self, agent: &str, u: v1::JobUpdate) {
        let outcome = match u.state {
            // Parts are put together by the session before they get here.
            Some(job_update::State::Started(_)) | Some(job_update::State::Part(_)) | None => {
                return;
            }
            Some(job_update::State::Refused(why)) => JobOutcome::Failed {
                reason: format!("agent {agent:?} refused the job: {why}"),
            },
            Some(job_update::State::Finished(f)) if f.ok => {
                let result = (!f.result_json.is_empty())
                    .then(|| serde_json::from_str(&f.result_json))
                    .transpose();
                match result {
                    Ok(result) => JobOutcome::Succeeded {
                        backup_id: (!f.backup_id.is_empty()).then_some(f.backup_id),
                        result,
                    },
                    Err(e) => JobOutcome::Failed {
                        reason: format!(
                            "agent {agent:?} sent a result this coordinator cannot read ({e}); \
                             are the agent and the coordinators the same version?"
                        ),
                    },
                }
            }
            Some(job_update::State::Finished(f)) => JobOutcome::Failed { reason: f.error },
        };
        let (owner, done) = self
            .state
            .read()
            .expect("state lock")
            .state
            .jobs
            .get(&u.job_id)
            .map(|j| (Some(j.agent.clone()), matches!(j.state, JobState::Done(_))))
            .unwrap_or_default();
        if owner.as_deref() != Some(agent) {
            tracing::warn!(
                job = u.job_id,
                agent,
                "update for a job the agent does not own; ignored"
            );
            return;
        }
        if done {
            // Agents repeat recent results in every Hello; this one is recorded already.
            return;
        }
        match self
            .write(Command::FinishJob {
                job: u.job_id,
                outcome,
            })
            .await
        {
            Ok(_) => {
                if let Some(a) = self.fleet.agents.lock().expect("lock").get_mut(agent) {
                    a.holding.remove(&u.job_id);
                }
            }
            Err(e) => {
                tracing::warn!(job = u.job_id, error = %e.message(), "could not record a job's end")
            }
        }
    }
}
