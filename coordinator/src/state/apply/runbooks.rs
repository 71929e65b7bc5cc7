//! Runbooks through `apply`: every step's start and end is a log entry, so a new leader carries
//! on from the step the old one was at.

use crate::state::{
    Action, CatalogSpec, FleetState, JobOutcome, JobState, Response, Runbook, RunbookState,
};
use fleetsnap_core::outcomes::{OnlineRestoreReport, PromoteReport};
use fleetsnap_core::window::{CatalogTask, JobResult, ProbeWant};

/// The keys a target must hold after an online restore reported in `report_json`: exactly the
/// keys it restored, less those with an expiry (which may lapse before the check). A replayed
/// tail may add and delete any number of keys, so after one only the target's health is checked.
fn restored_bounds(report_json: &str) -> Option<(u64, u64)> {
    if let Some((shards, _, _)) = archive_shards(report_json) {
        // A restore from the archive replays each shard's tail past its base.
        let tail: u64 = shards
            .iter()
            .flat_map(|r| r.shards.iter())
            .map(|s| s.applied.tail_commands)
            .sum();
        let keys: u64 = shards.iter().map(|r| r.keys).sum();
        return Some(if tail > 0 { (0, u64::MAX) } else { (0, keys) });
    }
    let r: OnlineRestoreReport = serde_json::from_str(report_json).ok()?;
    let tail: u64 = r.shards.iter().map(|s| s.applied.tail_commands).sum();
    if tail > 0 {
        return Some((0, u64::MAX));
    }
    let expiring: u64 = r
        .shards
        .iter()
        .flat_map(|s| s.read.dbs.iter().flatten())
        .map(|d| d.expires)
        .sum();
    Some((r.keys.saturating_sub(expiring), r.keys))
}

/// The shards' reports of a restore of a whole cluster from the archive (its report has each
/// shard's point and restore) and the spread of their stamps (ms); `None` for any other report.
fn archive_shards(report_json: &str) -> Option<(Vec<OnlineRestoreReport>, i64, String)> {
    let doc: serde_json::Value = serde_json::from_str(report_json).ok()?;
    let spread = doc.get("stamp_spread_ms")?.as_i64()?;
    let moving = doc
        .get("moving_slots")
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_string();
    let shards = doc
        .get("shards")?
        .as_array()?
        .iter()
        .map(|s| serde_json::from_value(s.get("restore")?.clone()).ok())
        .collect::<Option<_>>()?;
    Some((shards, spread, moving))
}

/// One line for a restore step's outcome.
fn restored_summary(report_json: &str) -> String {
    if let Some((shards, spread, moving)) = archive_shards(report_json) {
        let keys: u64 = shards.iter().map(|r| r.keys).sum();
        let tail: u64 = shards
            .iter()
            .flat_map(|r| r.shards.iter())
            .map(|s| s.applied.tail_commands)
            .sum();
        let moving = if moving.is_empty() {
            String::new()
        } else {
            format!(
                "; slots {moving} were moving between shards around the point: their keys may be on two shards or none, check them"
            )
        };
        return format!(
            "{keys} keys of {} shards restored from the archive; {tail} archived commands replayed; the shards' stamps spread {spread} ms{moving}",
            shards.len()
        );
    }
    let Ok(r) = serde_json::from_str::<OnlineRestoreReport>(report_json) else {
        return report_json.to_string();
    };
    let mut read: Vec<String> = r
        .shards
        .iter()
        .map(|s| s.read.destination.clone())
        .collect();
    read.dedup();
    let tail: u64 = r.shards.iter().map(|s| s.applied.tail_commands).sum();
    format!(
        "{} keys of {} shards restored in {:.1} s from {}; {tail} tail commands replayed",
        r.keys,
        r.shards.len(),
        r.seconds,
        read.join(", ")
    )
}

impl FleetState {
    /// `StartRunbook`.
    pub(crate) fn start_runbook(&mut self, runbook: &Runbook) -> Response {
        if runbook.steps.is_empty() {
            return Response {
                refused: Some("the runbook has no steps".into()),
                ..Response::default()
            };
        }
        self.next_runbook += 1;
        let id = self.next_runbook;
        let mut r = runbook.clone();
        r.id = id;
        r.next = 0;
        r.state = RunbookState::Running;
        self.runbooks.insert(id, r);
        Response {
            runbook: Some(id),
            ..Response::default()
        }
    }

    /// `RunbookStep`: creates the current step's job.
    pub(crate) fn runbook_step(&mut self, term: u64, index: u64, id: u64, step: usize) -> Response {
        let refuse = |why: String| Response {
            refused: Some(why),
            ..Response::default()
        };
        let Some(r) = self.runbooks.get(&id) else {
            return refuse(format!("there is no runbook {id}"));
        };
        if r.state != RunbookState::Running || r.next != step || r.steps[step].job.is_some() {
            return refuse(format!("runbook {id} is not waiting to start step {step}"));
        }
        let Action::Agent { agent, mut task } = r.steps[step].action.clone() else {
            return refuse(format!("step {step} of runbook {id} is not an agent job"));
        };
        if let CatalogTask::Probe(p) = &mut task
            && p.want == ProbeWant::Restored
        {
            let restored = step
                .checked_sub(1)
                .and_then(|prev| r.steps[prev].job)
                .and_then(|j| self.jobs.get(&j))
                .and_then(|j| match &j.state {
                    JobState::Done(JobOutcome::Succeeded {
                        result: Some(JobResult::Restored { report_json, .. }),
                        ..
                    }) => restored_bounds(report_json),
                    _ => None,
                });
            match restored {
                Some((min, max)) => p.want = ProbeWant::Keys { min, max },
                None => {
                    let reason =
                        "the step before left no restore report to check against".to_string();
                    self.end_step(id, false, reason.clone());
                    return refuse(reason);
                }
            }
        }
        // A copy into another region is the set's job: it waits while another job holds the
        // set, and lands in the set's catalog entry.
        let set = match &task {
            CatalogTask::Repair {
                cluster, backup_id, ..
            } => Some(crate::state::set_key(cluster, backup_id)),
            _ => None,
        };
        if let Some(j) = set
            .as_ref()
            .and_then(|k| self.sets.get(k))
            .and_then(|s| s.task)
        {
            return refuse(format!(
                "the step's set is busy with job {j}; asked again later"
            ));
        }
        let spec = CatalogSpec {
            task,
            set,
            reason: format!("step {} of runbook {id} ({})", step + 1, r.name),
            drill_of: None,
            trace: r.trace.clone(),
        };
        let resp = self.create_catalog_job(term, index, &agent, &spec);
        match (resp.job, &resp.refused) {
            (Some(job), _) => {
                if let Some(r) = self.runbooks.get_mut(&id) {
                    r.steps[step].job = Some(job);
                }
            }
            // An agent not registered, a set gone or being deleted: waiting will not help.
            (None, Some(why)) => self.end_step(id, false, why.clone()),
            (None, None) => {}
        }
        resp
    }

    /// `RunbookCheck`: the leader's check of the current step.
    pub(crate) fn runbook_check(
        &mut self,
        id: u64,
        step: usize,
        ok: bool,
        detail: &str,
    ) -> Response {
        match self.runbooks.get(&id) {
            Some(r) if r.state == RunbookState::Running && r.next == step => {
                self.end_step(id, ok, detail.to_string());
                Response::default()
            }
            _ => Response {
                refused: Some(format!("runbook {id} is not at step {step}")),
                ..Response::default()
            },
        }
    }

    /// After a job ended: the runbook step it was, if any, ends with it.
    pub(crate) fn runbook_job_ended(&mut self, job: u64) {
        let Some(id) = self
            .runbooks
            .values()
            .find(|r| {
                r.state == RunbookState::Running
                    && r.steps.get(r.next).and_then(|s| s.job) == Some(job)
            })
            .map(|r| r.id)
        else {
            return;
        };
        let Some(JobState::Done(outcome)) = self.jobs.get(&job).map(|j| j.state.clone()) else {
            return;
        };
        match outcome {
            JobOutcome::Failed { reason } => self.end_step(id, false, reason),
            JobOutcome::Succeeded { result, .. } => {
                let text = match &result {
                    Some(JobResult::Step { report_json }) => {
                        self.note_promotion(id, report_json);
                        report_json.clone()
                    }
                    Some(JobResult::Scanned { found, errors }) => {
                        if !errors.is_empty() {
                            let why: Vec<String> = errors
                                .iter()
                                .map(|e| {
                                    format!("{}: {}", e.region, e.error.clone().unwrap_or_default())
                                })
                                .collect();
                            self.end_step(
                                id,
                                false,
                                format!("regions could not be read: {}", why.join("; ")),
                            );
                            return;
                        }
                        let sets: std::collections::BTreeSet<String> = found
                            .iter()
                            .map(|f| format!("{}/{}", f.manifest.cluster, f.manifest.backup_id))
                            .collect();
                        if let Some(r) = self.runbooks.get_mut(&id) {
                            r.findings
                                .insert("sets_found".into(), sets.len().to_string());
                        }
                        format!("{} manifests of {} sets read", found.len(), sets.len())
                    }
                    Some(JobResult::Restored {
                        ok: false, problem, ..
                    }) => {
                        self.end_step(id, false, problem.clone().unwrap_or_default());
                        return;
                    }
                    Some(JobResult::Restored { report_json, .. }) => restored_summary(report_json),
                    Some(JobResult::Regions { regions }) => {
                        let failed: Vec<String> = regions
                            .iter()
                            .filter(|r| !r.ok)
                            .map(|r| {
                                format!("{}: {}", r.region, r.error.clone().unwrap_or_default())
                            })
                            .collect();
                        if !failed.is_empty() {
                            self.end_step(id, false, failed.join("; "));
                            return;
                        }
                        let done: Vec<String> = regions
                            .iter()
                            .map(|r| format!("{} ({} bytes)", r.region, r.stored_bytes))
                            .collect();
                        format!("copied to {}", done.join(", "))
                    }
                    Some(other) => serde_json::to_string(other).unwrap_or_default(),
                    None => "done".into(),
                };
                self.end_step(id, true, text);
            }
        }
    }

    /// A promotion's offset against the primary's last: the bytes of replication lost.
    fn note_promotion(&mut self, id: u64, report_json: &str) {
        let Some(r) = self.runbooks.get_mut(&id) else {
            return;
        };
        let Ok(report) = serde_json::from_str::<PromoteReport>(report_json) else {
            return;
        };
        let offset = report.offset;
        r.findings
            .insert("promoted_offset".into(), offset.to_string());
        if report.graceful {
            r.findings.insert("lost_bytes".into(), "0".into());
        } else if let Some(last) = r
            .findings
            .get("primary_last_offset")
            .and_then(|o| o.parse::<u64>().ok())
        {
            r.findings
                .insert("lost_bytes".into(), last.saturating_sub(offset).to_string());
        }
    }

    fn end_step(&mut self, id: u64, ok: bool, outcome: String) {
        let Some(r) = self.runbooks.get_mut(&id) else {
            return;
        };
        let n = r.next;
        let Some(step) = r.steps.get_mut(n) else {
            return;
        };
        step.ok = Some(ok);
        step.outcome = Some(outcome.clone());
        if !ok {
            r.state = RunbookState::Failed {
                reason: format!("step {} ({}) failed: {outcome}", n + 1, step.title),
            };
            return;
        }
        r.next += 1;
        if r.next == r.steps.len() {
            r.state = RunbookState::Succeeded;
        }
    }
}
