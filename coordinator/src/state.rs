//! The replicated state of the fleet and the commands that change it.
//!
//! `apply` is a pure function of the state, the command and the log id that carries it: every
//! coordinator applies the same entries and reaches the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A job an agent can run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Snapshot one Redis node to destinations (the agent's `snapshot` command).
    Snapshot {
        /// The node, as the agent's config names it.
        node: String,
        /// Destination URLs.
        destinations: Vec<String>,
    },
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Done; for snapshots, the backup id.
    Succeeded { backup_id: Option<String> },
    /// Failed, with the reason the agent gave (or the lease expiry).
    Failed { reason: String },
}

/// A state change, the only way the replicated state changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// An agent joined (its identity comes from its certificate).
    RegisterAgent { agent: String },
    /// A job for an agent.
    CreateJob { agent: String, job: JobKind },
    /// An agent started a job.
    StartJob { job: u64 },
    /// A job ended.
    FinishJob { job: u64, outcome: JobOutcome },
}

/// What applying a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The id of a job created by the command.
    pub job: Option<u64>,
    /// Why the command changed nothing.
    pub refused: Option<String>,
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its agent.
    Pending,
    /// The agent took it.
    Running,
    /// It ended.
    Done(JobOutcome),
}

/// A job with its fencing token: the term and index of the log entry that created it. An agent
/// refuses a job whose term is older than the newest it has seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id, unique in the fleet.
    pub id: u64,
    /// The agent that runs it.
    pub agent: String,
    /// What to do.
    pub kind: JobKind,
    /// Raft term of the creating entry.
    pub term: u64,
    /// Raft log index of the creating entry.
    pub index: u64,
    /// Progress.
    pub state: JobState,
}

/// An agent known to the fleet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's identity.
    pub agent: String,
    /// Log index at which it registered.
    pub registered_at: u64,
}

/// The replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetState {
    /// Agents by identity.
    pub agents: BTreeMap<String, AgentRecord>,
    /// Jobs by id.
    pub jobs: BTreeMap<u64, Job>,
    /// The next job id.
    pub next_job: u64,
}

impl FleetState {
    /// Applies a command carried by the log entry `(term, index)`.
    pub fn apply(&mut self, term: u64, index: u64, command: &Command) -> Response {
        let refuse = |why: String| Response {
            job: None,
            refused: Some(why),
        };
        match command {
            Command::RegisterAgent { agent } => {
                self.agents.entry(agent.clone()).or_insert(AgentRecord {
                    agent: agent.clone(),
                    registered_at: index,
                });
                Response::default()
            }
            Command::CreateJob { agent, job } => {
                if !self.agents.contains_key(agent) {
                    return refuse(format!("agent {agent:?} is not registered"));
                }
                self.next_job += 1;
                let id = self.next_job;
                self.jobs.insert(
                    id,
                    Job {
                        id,
                        agent: agent.clone(),
                        kind: job.clone(),
                        term,
                        index,
                        state: JobState::Pending,
                    },
                );
                Response {
                    job: Some(id),
                    refused: None,
                }
            }
            Command::StartJob { job } => match self.jobs.get_mut(job) {
                Some(j) if j.state == JobState::Pending => {
                    j.state = JobState::Running;
                    Response::default()
                }
                Some(j) => refuse(format!(
                    "job {job} is {:?}, not pending: it never runs twice",
                    j.state
                )),
                None => refuse(format!("job {job} does not exist")),
            },
            Command::FinishJob { job, outcome } => match self.jobs.get_mut(job) {
                Some(j) if !matches!(j.state, JobState::Done(_)) => {
                    j.state = JobState::Done(outcome.clone());
                    Response::default()
                }
                Some(_) => refuse(format!("job {job} has already ended")),
                None => refuse(format!("job {job} does not exist")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_job() -> JobKind {
        JobKind::Snapshot {
            node: "redis-1".into(),
            destinations: vec!["file:///b".into()],
        }
    }

    #[test]
    fn jobs_carry_their_fencing_token_and_run_once() {
        let mut s = FleetState::default();
        let r = s.apply(
            1,
            1,
            &Command::CreateJob {
                agent: "a1".into(),
                job: snapshot_job(),
            },
        );
        assert!(r.refused.unwrap().contains("not registered"));
        s.apply(1, 2, &Command::RegisterAgent { agent: "a1".into() });
        let id = s
            .apply(
                3,
                7,
                &Command::CreateJob {
                    agent: "a1".into(),
                    job: snapshot_job(),
                },
            )
            .job
            .unwrap();
        assert_eq!((s.jobs[&id].term, s.jobs[&id].index), (3, 7));
        assert_eq!(s.apply(3, 8, &Command::StartJob { job: id }).refused, None);
        assert!(
            s.apply(3, 9, &Command::StartJob { job: id })
                .refused
                .unwrap()
                .contains("never runs twice")
        );
        let done = Command::FinishJob {
            job: id,
            outcome: JobOutcome::Succeeded { backup_id: None },
        };
        assert_eq!(s.apply(3, 10, &done).refused, None);
        assert!(s.apply(3, 11, &done).refused.is_some());
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            Command::RegisterAgent { agent: "a".into() },
            Command::CreateJob {
                agent: "a".into(),
                job: snapshot_job(),
            },
            Command::StartJob { job: 1 },
        ];
        let (mut x, mut y) = (FleetState::default(), FleetState::default());
        for (i, c) in cmds.iter().enumerate() {
            assert_eq!(x.apply(2, i as u64, c), y.apply(2, i as u64, c));
        }
        assert_eq!(x, y);
    }
}
