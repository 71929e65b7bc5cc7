//! `apply`: every command's effect on the state, as a pure function of the state, the command and
//! the log id `(term, index)` that carries it. Jobs and policies are handled here; windows,
//! the catalog and runbooks each in a module of their own.

mod catalog;
mod runbooks;
mod windows;

use super::failures::failure_reason;
use super::fleet::{AgentRecord, Command, FleetState, Response};
use super::{JobOutcome, JobState};

impl FleetState {
    /// Applies a command carried by the log entry `(term, index)`.
    pub fn apply(&mut self, term: u64, index: u64, command: &Command) -> Response {
        let refuse = |why: String| Response {
            refused: Some(why),
            ..Response::default()
        };
        match command {
            Command::SetClusterId { id } => {
                self.cluster_id.get_or_insert_with(|| id.clone());
                Response::default()
            }
            Command::RegisterAgents { agents } => {
                for agent in agents {
                    self.agents.entry(agent.clone()).or_insert(AgentRecord {
                        agent: agent.clone(),
                        registered_at: index,
                    });
                }
                Response::default()
            }
            Command::CreateJob { agent, job } => {
                if !self.agents.contains_key(agent) {
                    return refuse(format!("agent {agent:?} is not registered"));
                }
                Response {
                    job: Some(self.new_job(term, index, agent, job.clone())),
                    ..Response::default()
                }
            }
            Command::DispatchJob { job, incarnation } => match self.jobs.get_mut(job) {
                Some(j) => match j.state {
                    JobState::Pending => {
                        j.state = JobState::Running {
                            incarnation: *incarnation,
                        };
                        (j.term, j.index, j.dispatches) = (term, index, j.dispatches + 1);
                        Response::default()
                    }
                    JobState::Running { incarnation: i } if i == *incarnation => {
                        (j.term, j.index, j.dispatches) = (term, index, j.dispatches + 1);
                        Response::default()
                    }
                    JobState::Running { .. } => refuse(format!(
                        "job {job} was handed to another run of agent {:?}: it never runs twice",
                        j.agent
                    )),
                    JobState::Done(_) => refuse(format!("job {job} has already ended")),
                },
                None => refuse(format!("job {job} does not exist")),
            },
            Command::FinishJob { job, outcome } => match self.jobs.get_mut(job) {
                Some(j) if !matches!(j.state, JobState::Done(_)) => {
                    j.state = JobState::Done(outcome.clone());
                    if let JobOutcome::Failed { reason } = outcome {
                        let key = format!("{}/{}", j.kind.name(), failure_reason(reason));
                        *self.job_failures.entry(key).or_default() += 1;
                    }
                    self.window_job_ended(term, index, *job);
                    self.catalog_job_ended(*job);
                    self.runbook_job_ended(*job);
                    Response::default()
                }
                Some(_) => refuse(format!("job {job} has already ended")),
                None => refuse(format!("job {job} does not exist")),
            },
            Command::SetPolicy { policy } => {
                if let Err(e) = policy.validate() {
                    return refuse(e.to_string());
                }
                self.policies.insert(policy.name.clone(), policy.clone());
                Response::default()
            }
            Command::DeletePolicy { name } => match self.policies.remove(name) {
                Some(_) => Response::default(),
                None => refuse(format!("there is no policy {name:?}")),
            },
            Command::OpenWindow { plan } => self.open_window(term, index, plan),
            Command::ShardSynced {
                job,
                replid,
                offset,
            } => self.shard_synced(*job, replid, *offset),
            Command::CommitCut { window, outcome } => {
                self.commit_cut(term, index, *window, outcome)
            }
            Command::CreateCatalogJob { agent, spec } => {
                self.create_catalog_job(term, index, agent, spec)
            }
            Command::StartRunbook { runbook } => self.start_runbook(runbook),
            Command::RunbookStep { runbook, step } => {
                self.runbook_step(term, index, *runbook, *step)
            }
            Command::RunbookCheck {
                runbook,
                step,
                ok,
                detail,
            } => self.runbook_check(*runbook, *step, *ok, detail),
        }
    }
}
