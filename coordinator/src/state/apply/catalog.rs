//! The catalog through `apply`: repairs, verifications, deletions (retention), scans (catalog
//! rebuild) and orphan collection, each an agent job whose result is folded into the sets. Like
//! windows, nothing here reads a clock: times come in the commands.

use crate::state::{
    BackupSet, CatalogSpec, FleetState, Job, JobKind, JobOutcome, JobState, RegionState,
    RegionStatus, Response, SetShard, Verified, set_key,
};
use fleetsnap_core::manifest::Manifest;
use fleetsnap_core::policy::Consistency;
use fleetsnap_core::retention::SetState;
use fleetsnap_core::window::{CatalogTask, JobResult, RegionResult, RegionUrl, ScannedSet};

impl FleetState {
    /// `CreateCatalogJob`: one task at a time per set.
    pub(crate) fn create_catalog_job(
        &mut self,
        term: u64,
        index: u64,
        agent: &str,
        spec: &CatalogSpec,
    ) -> Response {
        let refuse = |why: String| Response {
            refused: Some(why),
            ..Response::default()
        };
        if !self.agents.contains_key(agent) {
            return refuse(format!("agent {agent:?} is not registered"));
        }
        if let Some(key) = &spec.set {
            let Some(set) = self.sets.get(key) else {
                return refuse(format!("there is no set {key}"));
            };
            if let Some(j) = set.task {
                return refuse(format!("set {key} is busy with job {j}"));
            }
            if set.deleting.is_some() && !matches!(spec.task, CatalogTask::Delete { .. }) {
                return refuse(format!("set {key} is being deleted"));
            }
        }
        if let Some((policy, at)) = &spec.drill_of {
            self.last_drill.insert(policy.clone(), *at);
        }
        let id = self.new_job(term, index, agent, JobKind::Catalog(spec.clone()));
        if let Some(set) = spec.set.as_ref().and_then(|k| self.sets.get_mut(k)) {
            set.task = Some(id);
            if matches!(spec.task, CatalogTask::Delete { .. }) {
                set.deleting = Some(spec.reason.clone());
            }
        }
        Response {
            job: Some(id),
            ..Response::default()
        }
    }

    /// After a catalog job ended: folds its result into the catalog.
    pub(crate) fn catalog_job_ended(&mut self, job: u64) {
        let Some(Job {
            kind: JobKind::Catalog(spec),
            state: JobState::Done(outcome),
            ..
        }) = self.jobs.get(&job).cloned()
        else {
            return;
        };
        if let Some(set) = spec.set.as_ref().and_then(|k| self.sets.get_mut(k))
            && set.task == Some(job)
        {
            set.task = None;
        }
        let regions = match &outcome {
            JobOutcome::Succeeded {
                result: Some(JobResult::Regions { regions }),
                ..
            } => regions.clone(),
            JobOutcome::Succeeded {
                result:
                    Some(JobResult::Chains {
                        scanned_at_ms,
                        shards,
                    }),
                ..
            } => {
                if let CatalogTask::Chains { cluster, .. } = &spec.task {
                    let entry = self.archive.entry(cluster.to_string()).or_default();
                    // A slower read that finishes after a newer one changes nothing.
                    if *scanned_at_ms >= entry.scanned_at_ms {
                        entry.scanned_at_ms = *scanned_at_ms;
                        entry.shards = shards.clone();
                    }
                }
                return;
            }
            JobOutcome::Succeeded {
                result: Some(JobResult::Scanned { found, .. }),
                ..
            } => {
                if let CatalogTask::Scan { regions } = &spec.task {
                    self.import(found.clone(), regions);
                }
                return;
            }
            JobOutcome::Failed { reason } => task_regions(&spec.task)
                .into_iter()
                .map(|region| RegionResult {
                    region,
                    ok: false,
                    error: Some(reason.clone()),
                    stored_bytes: 0,
                })
                .collect(),
            JobOutcome::Succeeded { .. } => Vec::new(),
        };
        let Some(key) = spec.set.clone() else { return };
        let Some(set) = self.sets.get_mut(&key) else {
            return;
        };
        match spec.task {
            CatalogTask::Repair { to, .. } => {
                for r in regions {
                    // A region the set was never written to (a standby taking a lost region's
                    // place) joins its entry once a copy is there.
                    if r.ok
                        && !set.regions.contains_key(&r.region)
                        && let Some(url) = to.iter().find(|t| t.region == r.region)
                    {
                        set.regions.insert(
                            r.region.clone(),
                            RegionStatus {
                                state: RegionState::Pending,
                                error: None,
                                stored_bytes: 0,
                                url: url.url.clone(),
                            },
                        );
                    }
                    if let Some(status) = set.regions.get_mut(&r.region) {
                        if r.ok {
                            status.state = RegionState::Complete;
                            status.error = None;
                            status.stored_bytes = status.stored_bytes.max(r.stored_bytes);
                        } else {
                            status.error =
                                Some(format!("repair failed: {}", r.error.unwrap_or_default()));
                        }
                    }
                }
                set.count_regions();
            }
            CatalogTask::Verify { .. } => {
                for r in &regions {
                    if let Some(status) = set.regions.get_mut(&r.region)
                        && !r.ok
                        && status.state == RegionState::Complete
                    {
                        status.state = RegionState::Failed;
                        status.error = Some(format!(
                            "verification failed: {}",
                            r.error.clone().unwrap_or_default()
                        ));
                    }
                }
                set.verified = Some(Verified { job, regions });
                set.count_regions();
            }
            CatalogTask::Delete { .. } => {
                for r in regions.iter().filter(|r| r.ok) {
                    set.regions.remove(&r.region);
                }
                if set.regions.is_empty() {
                    self.sets.remove(&key);
                } else {
                    let left: Vec<String> = regions
                        .iter()
                        .filter(|r| !r.ok)
                        .map(|r| format!("{}: {}", r.region, r.error.clone().unwrap_or_default()))
                        .collect();
                    set.reason = Some(format!(
                        "deletion unfinished (tried again later): {}",
                        left.join("; ")
                    ));
                }
            }
            CatalogTask::Scan { .. }
            | CatalogTask::Chains { .. }
            | CatalogTask::CollectOrphans { .. }
            | CatalogTask::Restore(_)
            | CatalogTask::RestoreAt(_)
            | CatalogTask::Find(_)
            | CatalogTask::Node(_)
            | CatalogTask::Probe(_) => {}
        }
    }

    /// Sets found by a scan: a set the catalog lacks is added from its manifest; a set it has
    /// gets every region where the scan found it whole.
    fn import(&mut self, found: Vec<ScannedSet>, urls: &[RegionUrl]) {
        for f in found {
            let url = urls
                .iter()
                .find(|r| r.region == f.region)
                .map(|r| r.url.clone())
                .unwrap_or_default();
            let key = set_key(&f.manifest.cluster, &f.manifest.backup_id);
            let min_regions = f
                .manifest
                .policy
                .as_ref()
                .and_then(|p| self.policies.get(p))
                .map_or(1, |p| p.min_regions);
            let set = self
                .sets
                .entry(key)
                .or_insert_with(|| set_from_manifest(&f.manifest, min_regions));
            let status = RegionStatus {
                state: if f.problems.is_empty() {
                    RegionState::Complete
                } else {
                    RegionState::Failed
                },
                error: (!f.problems.is_empty()).then(|| f.problems.join("; ")),
                stored_bytes: f.manifest.stored_bytes(),
                url,
            };
            match set.regions.get_mut(&f.region) {
                Some(s) if s.state == RegionState::Complete => {}
                Some(s) => *s = status,
                None => {
                    set.regions.insert(f.region.clone(), status);
                }
            }
            if set.deleting.is_none() && set.state != SetState::Running {
                set.count_regions();
            }
        }
    }
}

/// The regions a task names.
fn task_regions(task: &CatalogTask) -> Vec<String> {
    let names = |r: &[RegionUrl]| r.iter().map(|r| r.region.clone()).collect();
    match task {
        CatalogTask::Repair { to, .. } => names(to),
        CatalogTask::Restore(r) => names(&r.regions),
        CatalogTask::RestoreAt(r) => names(&r.regions),
        CatalogTask::Find(r) => names(&r.regions),
        CatalogTask::Node(_) | CatalogTask::Probe(_) => Vec::new(),
        CatalogTask::Verify { regions, .. }
        | CatalogTask::Delete { regions, .. }
        | CatalogTask::Scan { regions }
        | CatalogTask::Chains { regions, .. }
        | CatalogTask::CollectOrphans { regions, .. } => names(regions),
    }
}

/// A catalog entry rebuilt from a manifest alone.
fn set_from_manifest(m: &Manifest, min_regions: u32) -> BackupSet {
    let ms = fleetsnap_core::window::unix_ms;
    BackupSet {
        backup_id: m.backup_id.clone(),
        cluster: m.cluster.clone(),
        policy: m.policy.clone().unwrap_or_else(|| "-".into()),
        window: 0,
        consistency: serde_json::from_value(serde_json::Value::String(m.consistency.clone()))
            .unwrap_or(Consistency::Independent),
        opened_at_ms: ms(m.started_at),
        skew_us: m.skew_ms.map(|ms| ms * 1000),
        write_pause_us: m.write_pause_ms.map(|p| p * 1000),
        completed_at_ms: Some(ms(m.finished_at)),
        shards: m
            .shards
            .iter()
            .map(|s| SetShard {
                shard: s.shard.to_string(),
                source_node: s.source_node.clone(),
                agent: String::new(),
                why: "rebuilt from the manifest".into(),
                failures: Vec::new(),
                replid: s.replid.clone(),
                start_offset: s.start_offset,
                cut_offset: s.cut_offset,
                raw_bytes: s.objects.iter().map(|o| o.raw_bytes).sum(),
                started_at_ms: ms(m.started_at),
                finished_at_ms: ms(m.finished_at),
            })
            .collect(),
        regions: Default::default(),
        min_regions,
        state: SetState::Failed,
        reason: None,
        task: None,
        deleting: None,
        verified: None,
    }
}
