//! The replicated state of the fleet and the commands that change it.
//!
//! `apply` is a pure function of the state, the command and the log id that carries it: every
//! coordinator applies the same entries and reaches the same state.

use std::collections::BTreeMap;

use fleetsnap_core::policy::Policy;
use fleetsnap_core::window::JobResult;
use fleetsnap_core::{BackupId, ClusterId};
use serde::{Deserialize, Serialize};

use crate::catalog::CatalogSpec;
use crate::window::{BackupSet, CutOutcome, Window, WindowPlan};

/// A job an agent can run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobKind {
    /// Snapshot one Redis node to destinations (the agent's `snapshot` command).
    Snapshot(SnapshotSpec),
    /// Write a backup set's manifest to regions (a window's last step).
    WriteManifest(ManifestSpec),
    /// Work on stored sets: repair, verify, delete, scan, collect orphans.
    Catalog(CatalogSpec),
}

/// What a manifest job does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestSpec {
    /// The window.
    pub window: u64,
    /// The set's cluster.
    pub cluster: ClusterId,
    /// The set's id.
    pub backup_id: BackupId,
    /// Destination URLs that hold every shard.
    pub destinations: Vec<String>,
    /// Their region names.
    pub regions: Vec<String>,
    /// The manifest.
    pub manifest_json: String,
}

/// What a snapshot job does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotSpec {
    /// The instance, as the agent's config names it.
    pub instance: String,
    /// Destination URLs.
    pub destinations: Vec<String>,
    /// Cluster name in the storage layout (empty: the instance's cluster in the agent's config).
    pub cluster: String,
    /// Shard name in the storage layout (empty: the agent chooses HOST-PORT).
    pub shard: String,
    /// `zstd:LEVEL` or `none` (empty: zstd:3).
    pub compress: String,
    /// age recipients.
    pub encrypt_to: Vec<String>,
    /// `replication` or `bgsave-file` (empty: replication).
    pub source: String,
    /// A window's set id (empty: the agent makes one and writes the manifest itself).
    #[serde(default)]
    pub backup_id: String,
    /// The window, for a window's job.
    #[serde(default)]
    pub window: Option<u64>,
    /// Region names, in the order of destinations.
    #[serde(default)]
    pub regions: Vec<String>,
    /// `simultaneous`: when to read the source (Unix milliseconds).
    #[serde(default)]
    pub fire_at_ms: Option<i64>,
    /// `consistent` windows: keep the replication stream and store it up to the cut.
    #[serde(default)]
    pub consistent_cut: bool,
}

/// How a job ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Done; for snapshots, the backup id; for a window's jobs, what was stored where.
    Succeeded {
        backup_id: Option<String>,
        #[serde(default)]
        result: Option<JobResult>,
    },
    /// Failed, with the reason the agent gave (or the lease expiry).
    Failed { reason: String },
}

/// A state change, the only way the replicated state changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// The cluster's identity (applied once; later ones change nothing).
    SetClusterId { id: String },
    /// Agents joined (identities come from their certificates). One entry for every agent that
    /// said Hello while the previous such entry was being committed: after a leader change the
    /// whole fleet registers in a few entries, not one each.
    RegisterAgents { agents: Vec<String> },
    /// A job for an agent.
    CreateJob { agent: String, job: JobKind },
    /// The leader hands a job to the agent process `incarnation`; the entry's (term, index) is the
    /// job's fencing token from then on. Handing it again to the same incarnation (the agent said
    /// it never received it) is allowed; to another incarnation it is not: the job could then run
    /// twice.
    DispatchJob { job: u64, incarnation: u64 },
    /// A job ended.
    FinishJob { job: u64, outcome: JobOutcome },
    /// Adds or replaces a policy (already validated).
    SetPolicy { policy: Policy },
    /// Removes a policy; its sets stay in the catalog.
    DeletePolicy { name: String },
    /// Opens a backup window as the leader planned it.
    OpenWindow { plan: WindowPlan },
    /// A consistent window's snapshot job has its replication stream, from `offset` of `replid`.
    ShardSynced {
        job: u64,
        replid: String,
        offset: u64,
    },
    /// The leader's attempt at a consistent window's cut.
    CommitCut { window: u64, outcome: CutOutcome },
    /// Work on stored sets for an agent (the leader chose the agent and the regions).
    CreateCatalogJob { agent: String, spec: CatalogSpec },
    /// Starts a runbook as the leader planned it.
    StartRunbook { runbook: crate::runbook::Runbook },
    /// Creates the job of a runbook's current step.
    RunbookStep { runbook: u64, step: usize },
    /// The leader's check of a runbook's current step.
    RunbookCheck {
        runbook: u64,
        step: usize,
        ok: bool,
        detail: String,
    },
}

/// What applying a command produced.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The id of a job created by the command.
    pub job: Option<u64>,
    /// Why the command changed nothing.
    pub refused: Option<String>,
    /// The id of a window opened by the command.
    #[serde(default)]
    pub window: Option<u64>,
    /// The id of a runbook started by the command.
    #[serde(default)]
    pub runbook: Option<u64>,
}

/// Where a job is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its agent.
    Pending,
    /// Handed to the agent process `incarnation`.
    Running { incarnation: u64 },
    /// It ended.
    Done(JobOutcome),
}

/// A job with its fencing token: the term and index of the log entry that created it, then of the
/// entry that dispatched it. An agent refuses a job whose term is older than the newest it has
/// seen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Job id, unique in the fleet.
    pub id: u64,
    /// The agent that runs it.
    pub agent: String,
    /// What to do.
    pub kind: JobKind,
    /// Raft term of the creating (then dispatching) entry.
    pub term: u64,
    /// Raft log index of the creating (then dispatching) entry.
    pub index: u64,
    /// Log index of the entry that created the job.
    pub created_index: u64,
    /// How many times it was handed to its agent.
    pub dispatches: u32,
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
    /// Policies by name.
    #[serde(default)]
    pub policies: BTreeMap<String, Policy>,
    /// Windows by id.
    #[serde(default)]
    pub windows: BTreeMap<u64, Window>,
    /// The last window id.
    #[serde(default)]
    pub next_window: u64,
    /// The catalog: sets by `cluster/backup_id`.
    #[serde(default)]
    pub sets: BTreeMap<String, BackupSet>,
    /// When each policy last opened a window (Unix milliseconds): the scheduler's memory.
    #[serde(default)]
    pub last_window: BTreeMap<String, i64>,
    /// When each policy's drill schedule last ran its drills (Unix milliseconds).
    #[serde(default)]
    pub last_drill: BTreeMap<String, i64>,
    /// Runbooks by id.
    #[serde(default)]
    pub runbooks: BTreeMap<u64, crate::runbook::Runbook>,
    /// The last runbook id.
    #[serde(default)]
    pub next_runbook: u64,
    /// This coordinator cluster's identity, set once by its first leader. Agents fence by term
    /// within one cluster; a cluster rebuilt from nothing has a new identity.
    #[serde(default)]
    pub cluster_id: Option<String>,
    /// Failed jobs since the cluster began, by `kind/reason` (see [`failure_reason`]): the
    /// same count on every coordinator, and it never goes back.
    #[serde(default)]
    pub job_failures: BTreeMap<String, u64>,
}

impl JobKind {
    /// `snapshot`, `manifest`, `restore`, `drill`, `runbook_step`, `catalog`: a bounded name
    /// for metrics.
    pub fn name(&self) -> &'static str {
        use fleetsnap_core::window::{CatalogTask, RestoreMode};
        match self {
            JobKind::Snapshot(_) => "snapshot",
            JobKind::WriteManifest(_) => "manifest",
            JobKind::Catalog(c) => match &c.task {
                CatalogTask::Restore(r) if r.mode == RestoreMode::Drill => "drill",
                CatalogTask::Restore(_) => "restore",
                CatalogTask::Node(_) | CatalogTask::Probe(_) => "runbook_step",
                _ => "catalog",
            },
        }
    }
}

/// The class of a failure, from its reason: `lease_expired`, `agent_restarted`, `fenced`,
/// `cut`, `verify`, `destination`, `source` or `other`. A bounded label for metrics; the
/// reason itself stays with the job.
pub fn failure_reason(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| r.contains(w));
    if any(&["lease expired"]) {
        "lease_expired"
    } else if any(&["restarted while it held"]) {
        "agent_restarted"
    } else if any(&["older term", "fenc", "newer term"]) {
        "fenced"
    } else if any(&["cut"]) {
        "cut"
    } else if any(&[
        "checksum", "sha256", "crc", "corrupt", "mismatch", "digest", "verif",
    ]) {
        "verify"
    } else if any(&[
        "s3://",
        "file://",
        "region",
        "upload",
        "bucket",
        "destination",
        "spool",
    ]) {
        "destination"
    } else if any(&[
        "redis", "psync", "sync", "bgsave", "replica", "primary", "node",
    ]) {
        "source"
    } else {
        "other"
    }
}

impl FleetState {
    /// The trace a job belongs to: its window's, or its restore's, drill's or runbook's.
    pub fn trace_of(&self, job: &Job) -> Option<String> {
        match &job.kind {
            JobKind::Snapshot(s) => s
                .window
                .and_then(|w| self.windows.get(&w))
                .and_then(|w| w.plan.trace.clone()),
            JobKind::WriteManifest(m) => self
                .windows
                .get(&m.window)
                .and_then(|w| w.plan.trace.clone()),
            JobKind::Catalog(c) => c.trace.clone(),
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_job() -> JobKind {
        JobKind::Snapshot(SnapshotSpec {
            instance: "redis-1".into(),
            destinations: vec!["file:///b".into()],
            ..Default::default()
        })
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
        s.apply(
            1,
            2,
            &Command::RegisterAgents {
                agents: vec!["a1".into()],
            },
        );
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
        let dispatch = |incarnation| Command::DispatchJob {
            job: id,
            incarnation,
        };
        assert_eq!(s.apply(3, 8, &dispatch(42)).refused, None);
        assert_eq!((s.jobs[&id].term, s.jobs[&id].index), (3, 8));
        // A new leader hands it again to the same agent process: the token moves on.
        assert_eq!(s.apply(4, 9, &dispatch(42)).refused, None);
        assert_eq!(
            (s.jobs[&id].term, s.jobs[&id].index, s.jobs[&id].dispatches),
            (4, 9, 2)
        );
        // Another run of the agent never gets it.
        assert!(
            s.apply(4, 10, &dispatch(43))
                .refused
                .unwrap()
                .contains("never runs twice")
        );
        let done = Command::FinishJob {
            job: id,
            outcome: JobOutcome::Succeeded {
                backup_id: None,
                result: None,
            },
        };
        assert_eq!(s.apply(3, 10, &done).refused, None);
        assert!(s.apply(3, 11, &done).refused.is_some());
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            Command::RegisterAgents {
                agents: vec!["a".into()],
            },
            Command::CreateJob {
                agent: "a".into(),
                job: snapshot_job(),
            },
            Command::DispatchJob {
                job: 1,
                incarnation: 9,
            },
        ];
        let (mut x, mut y) = (FleetState::default(), FleetState::default());
        for (i, c) in cmds.iter().enumerate() {
            assert_eq!(x.apply(2, i as u64, c), y.apply(2, i as u64, c));
        }
        assert_eq!(x, y);
    }
}
