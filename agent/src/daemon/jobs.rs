//! Jobs from the leader: the fence on terms, running each kind, and results sent whole or in
//! parts.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use fleetsnap_core::window::{JobResult, RegionUrl};
use fleetsnap_proto::v1::{self, agent_message, job_update};
use tokio::sync::mpsc;

use super::metrics::*;
use super::shared::*;
use crate::error::{Error, Result};
use tracing::Instrument;

/// A job's kind, for its span and metrics: `snapshot`, `manifest`, or the catalog task's.
pub(super) fn job_kind(job: &v1::Job) -> &'static str {
    match &job.kind {
        Some(v1::job::Kind::Snapshot(_)) => "snapshot",
        Some(v1::job::Kind::Manifest(_)) => "manifest",
        Some(v1::job::Kind::Archive(_)) => "archive",
        Some(v1::job::Kind::ExactPoint(_)) => "exact_point",
        Some(v1::job::Kind::Catalog(c)) => {
            match serde_json::from_str::<fleetsnap_core::window::CatalogTask>(&c.task_json) {
                Ok(fleetsnap_core::window::CatalogTask::Restore(r))
                    if r.mode == fleetsnap_core::window::RestoreMode::Drill =>
                {
                    "drill"
                }
                Ok(fleetsnap_core::window::CatalogTask::Restore(_))
                | Ok(fleetsnap_core::window::CatalogTask::RestoreAt(_)) => "restore",
                Ok(fleetsnap_core::window::CatalogTask::Node(_))
                | Ok(fleetsnap_core::window::CatalogTask::Probe(_)) => "runbook_step",
                Ok(fleetsnap_core::window::CatalogTask::Find(_)) => "archive_find",
                Ok(fleetsnap_core::window::CatalogTask::Chains { .. }) => "archive_catalog",
                Ok(_) => "catalog",
                Err(_) => "unknown",
            }
        }
        None => "unknown",
    }
}

/// The fence: a job created or dispatched in a term older than the newest term this agent has
/// seen comes from a deposed leader.
pub(super) fn fence(job: u64, term: u64, newest: u64) -> std::result::Result<(), String> {
    if term < newest {
        return Err(format!(
            "job {job} carries term {term} but this agent has seen term {newest}: it comes \
             from a deposed leader"
        ));
    }
    Ok(())
}

/// The most bytes of a result sent in one message; a longer one goes in parts of this size,
/// well inside gRPC's 4 MiB message limit.
pub(super) const RESULT_PART_BYTES: usize = 1 << 20;

/// Whether an update goes as one message (and so may ride in a Hello).
pub(super) fn fits_whole(u: &v1::JobUpdate) -> bool {
    match &u.state {
        Some(job_update::State::Finished(f)) => f.result_json.len() <= RESULT_PART_BYTES,
        _ => true,
    }
}

/// An update as the messages that carry it: a large result as its parts, then the `Finished`
/// that names how many there were.
pub(super) fn split_update(u: v1::JobUpdate) -> Vec<v1::JobUpdate> {
    let (job_id, term) = (u.job_id, u.term);
    match u.state {
        Some(job_update::State::Finished(mut f)) if f.result_json.len() > RESULT_PART_BYTES => {
            let bytes = std::mem::take(&mut f.result_json).into_bytes();
            let mut out: Vec<v1::JobUpdate> = bytes
                .chunks(RESULT_PART_BYTES)
                .enumerate()
                .map(|(seq, data)| v1::JobUpdate {
                    job_id,
                    term,
                    state: Some(job_update::State::Part(v1::ResultPart {
                        seq: seq as u32,
                        data: data.to_vec(),
                    })),
                })
                .collect();
            f.result_parts = out.len() as u32;
            out.push(v1::JobUpdate {
                job_id,
                term,
                state: Some(job_update::State::Finished(f)),
            });
            out
        }
        state => vec![v1::JobUpdate {
            job_id,
            term,
            state,
        }],
    }
}

pub(super) async fn send_update(
    up: &mpsc::Sender<v1::AgentMessage>,
    u: v1::JobUpdate,
) -> std::result::Result<(), mpsc::error::SendError<v1::AgentMessage>> {
    for piece in split_update(u) {
        up.send(v1::AgentMessage {
            body: Some(agent_message::Body::JobUpdate(piece)),
        })
        .await?;
    }
    Ok(())
}

/// Sends the results of ended jobs this session has not sent yet.
pub(super) async fn send_unsent(
    shared: &Shared,
    up: &mpsc::Sender<v1::AgentMessage>,
    sent: &mut HashSet<u64>,
) -> std::result::Result<(), ()> {
    let unsent: Vec<v1::JobUpdate> = shared
        .jobs
        .lock()
        .expect("jobs lock")
        .finished
        .iter()
        .filter(|u| !sent.contains(&u.job_id))
        .cloned()
        .collect();
    for u in unsent {
        sent.insert(u.job_id);
        send_update(up, u).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Checks the fence and starts the job; returns what to answer at once (refused, started, or the
/// result of a job delivered again). The result of a started job goes out when it ends.
pub(super) fn take_job(shared: &Arc<Shared>, job: v1::Job) -> Option<v1::JobUpdate> {
    let newest = shared.newest_term.load(Ordering::SeqCst);
    let update = |state| v1::JobUpdate {
        job_id: job.id,
        term: job.term,
        state: Some(state),
    };
    if let Err(why) = fence(job.id, job.term, newest) {
        tracing::warn!(%why, "refusing a job");
        return Some(update(job_update::State::Refused(why)));
    }
    shared.newest_term.fetch_max(job.term, Ordering::SeqCst);
    {
        let mut book = shared.jobs.lock().expect("jobs lock");
        if !book.seen.insert(job.id) {
            tracing::info!(job = job.id, "job delivered again; it runs once");
            return book.finished.iter().find(|u| u.job_id == job.id).cloned();
        }
        book.running.insert(job.id);
    }
    let started = update(job_update::State::Started(v1::Started {}));
    let shared = shared.clone();
    let kind = job_kind(&job);
    // A child of the window, restore, drill or runbook the coordinator traces.
    let span = fleetsnap_telemetry::trace::begin(
        tracing::info_span!(
            parent: None,
            "job",
            job = job.id,
            kind,
            agent = %shared.config.agent_id,
            trace_id = tracing::field::Empty,
        ),
        Some(job.traceparent.as_str()).filter(|t| !t.is_empty()),
    );
    tokio::spawn(
        async move {
            let id = job.id;
            let term = job.term;
            let began = Instant::now();
            tracing::info!(job = id, term, index = job.index, "running a job");
            let finished = match run_job(&shared, job).await {
                Ok(f) => f,
                Err(e) => v1::Finished {
                    ok: false,
                    error: e.to_string(),
                    ..Default::default()
                },
            };
            shared.cuts.leave(id);
            tracing::info!(job = id, ok = finished.ok, error = %finished.error, "job ended");
            let outcome = if finished.ok { "succeeded" } else { "failed" };
            shared
                .metrics
                .add(JOBS, &[("kind", kind), ("outcome", outcome)], 1.0);
            shared.metrics.set(
                JOB_SECONDS,
                &[("kind", kind)],
                began.elapsed().as_secs_f64(),
            );
            let done = v1::JobUpdate {
                job_id: id,
                term,
                state: Some(job_update::State::Finished(finished)),
            };
            {
                let mut book = shared.jobs.lock().expect("jobs lock");
                book.running.remove(&id);
                book.finished.push_back(done);
                while book.finished.len() > KEEP_FINISHED {
                    book.finished.pop_front();
                }
            }
            // The session of the moment sends it; with none, the next Hello carries it.
            shared.job_ended.notify_one();
        }
        .instrument(span),
    );
    Some(started)
}

pub(super) async fn run_job(shared: &Arc<Shared>, job: v1::Job) -> Result<v1::Finished> {
    let id = job.id;
    match job.kind {
        Some(v1::job::Kind::Snapshot(s)) => super::snapshot_job::run(shared, id, s.into()).await,
        Some(v1::job::Kind::Manifest(m)) => write_manifest(id, m).await,
        Some(v1::job::Kind::Archive(a)) => {
            let spec: fleetsnap_core::records::ArchiveSpec = serde_json::from_str(&a.spec_json)
                .map_err(|e| {
                    Error::Input(format!(
                        "job {id} carries an archive spec this agent cannot read ({e}); are the agent and the coordinators the same version?"
                    ))
                })?;
            super::archive_job::run(shared, id, spec).await
        }
        Some(v1::job::Kind::ExactPoint(p)) => {
            let spec: fleetsnap_core::records::PointSpec = serde_json::from_str(&p.spec_json)
                .map_err(|e| {
                    Error::Input(format!(
                        "job {id} carries an exact point this agent cannot read ({e}); are the agent and the coordinators the same version?"
                    ))
                })?;
            super::archive_job::store_point(id, spec).await
        }
        Some(v1::job::Kind::Catalog(c)) => {
            let task: fleetsnap_core::window::CatalogTask = serde_json::from_str(&c.task_json)
                .map_err(|e| {
                    Error::Input(format!(
                        "job {id} carries a catalog task this agent cannot read ({e}); are the agent and the coordinators the same version?"
                    ))
                })?;
            let result = match task {
                fleetsnap_core::window::CatalogTask::Restore(r) => {
                    super::restore_job::run(*r, &shared.config).await?
                }
                fleetsnap_core::window::CatalogTask::RestoreAt(r) => {
                    super::restore_job::run_at(*r, &shared.config).await?
                }
                fleetsnap_core::window::CatalogTask::Find(f) => {
                    super::restore_job::find(*f, &shared.config).await?
                }
                fleetsnap_core::window::CatalogTask::Node(n) => {
                    crate::runbook::failover(n, &shared.config).await?
                }
                fleetsnap_core::window::CatalogTask::Probe(p) => crate::runbook::probe(p).await?,
                task => crate::catalog::run(task).await?,
            };
            Ok(v1::Finished {
                ok: true,
                result_json: serde_json::to_string(&result).expect("results serialise"),
                ..Default::default()
            })
        }
        None => Err(Error::Input(format!(
            "job {id} is of a kind this agent does not know; upgrade the agent"
        ))),
    }
}

/// A window's last step for one cluster (see [`crate::catalog::write_manifest`]).
pub(super) async fn write_manifest(id: u64, m: v1::WriteManifestJob) -> Result<v1::Finished> {
    let manifest = fleetsnap_core::Manifest::from_json(m.manifest_json.as_bytes(), "the job")
        .map_err(|e| Error::Input(e.to_string()))?;
    let regions: Vec<RegionUrl> = m
        .destinations
        .iter()
        .zip(&m.regions)
        .map(|(url, region)| RegionUrl {
            region: region.clone(),
            url: url.clone(),
        })
        .collect();
    let results = crate::catalog::write_manifest(&manifest, &regions).await;
    let ok = results.iter().any(|r| r.ok);
    let error = results
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.region)))
        .collect::<Vec<_>>()
        .join("; ");
    tracing::info!(job = id, backup = %m.backup_id, cluster = %m.cluster, ok, "manifest job ended");
    Ok(v1::Finished {
        ok,
        error,
        backup_id: m.backup_id,
        result_json: serde_json::to_string(&JobResult::Manifest {
            regions: results,
            finished_at_ms: Some(fleetsnap_core::window::unix_ms(
                time::OffsetDateTime::now_utc(),
            )),
        })
        .expect("results serialise"),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_results_go_in_parts_that_make_them_whole() {
        let big = "x".repeat(3 * RESULT_PART_BYTES + 17);
        let u = v1::JobUpdate {
            job_id: 7,
            term: 3,
            state: Some(job_update::State::Finished(v1::Finished {
                ok: true,
                result_json: big.clone(),
                ..Default::default()
            })),
        };
        assert!(!fits_whole(&u));
        let pieces = split_update(u);
        assert_eq!(pieces.len(), 5);
        let mut joined = Vec::new();
        for (i, p) in pieces[..4].iter().enumerate() {
            let Some(job_update::State::Part(part)) = &p.state else {
                panic!("not a part")
            };
            assert_eq!(part.seq as usize, i);
            assert!(part.data.len() <= RESULT_PART_BYTES);
            joined.extend_from_slice(&part.data);
        }
        let Some(job_update::State::Finished(f)) = &pieces[4].state else {
            panic!("no finish")
        };
        assert_eq!((f.result_parts, f.result_json.as_str()), (4, ""));
        assert_eq!(String::from_utf8(joined).unwrap(), big);
    }

    #[test]
    fn jobs_from_older_terms_are_refused() {
        assert!(fence(1, 5, 5).is_ok());
        assert!(fence(1, 6, 5).is_ok());
        let e = fence(7, 4, 5).unwrap_err();
        assert!(e.contains("job 7") && e.contains("deposed"), "{e}");
    }
}
