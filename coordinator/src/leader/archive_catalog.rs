//! The archive's part of the replicated catalog: every `catalog_every` of its policy (and at a
//! catalog rebuild) the leader has an agent read each archived cluster's chains from the
//! regions. The result is applied like any job's, so every coordinator holds it, and `fleetsnap
//! archive status` shows each shard's chains and gaps, and the stretches the whole cluster
//! restores to, on whichever is leader, without reading a region.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use fleetsnap_core::records::JobKind;
use fleetsnap_core::window::CatalogTask;

use super::*;
use crate::state::{CatalogSpec, JobState};

impl Node {
    /// Starts a read of each archived cluster (`clusters`: the name, and how often) whose last
    /// one began `catalog_every` ago or more, unless one is running. `began` is the leader's
    /// memory of when.
    pub(super) async fn refresh_archive_catalog(
        &self,
        clusters: &[(String, Duration)],
        began: &mut HashMap<String, Instant>,
    ) {
        let now_ms = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
        for (cluster, every) in clusters {
            // A new leader counts from the read its predecessor applied, not from nothing: a
            // change of leader does not list every segment again.
            if !began.contains_key(cluster)
                && let Some(read) = self.catalog_read_at(cluster)
            {
                let ago = Duration::from_millis((now_ms - read).max(0) as u64);
                began.insert(
                    cluster.clone(),
                    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now),
                );
            }
            if began.get(cluster).is_some_and(|t| t.elapsed() < *every) {
                continue;
            }
            if self.reading_chains(cluster) {
                continue;
            }
            match self.read_archive_chains(cluster).await {
                Ok(_) => {
                    began.insert(cluster.clone(), Instant::now());
                }
                Err(e) => {
                    tracing::debug!(%cluster, error = %e, "no archive catalog read this time")
                }
            }
        }
    }

    /// When the catalog's chains of `cluster` were read, if they were.
    fn catalog_read_at(&self, cluster: &str) -> Option<i64> {
        let s = self.state.read().expect("state lock");
        s.state.archive.get(cluster).map(|c| c.scanned_at_ms)
    }

    /// Whether a read of `cluster`'s chains is running.
    fn reading_chains(&self, cluster: &str) -> bool {
        let s = self.state.read().expect("state lock");
        s.state.jobs.values().any(|j| {
            !matches!(j.state, JobState::Done(_))
                && matches!(&j.kind, JobKind::Catalog(c)
                    if matches!(&c.task, CatalogTask::Chains { cluster: c, .. } if c.as_str() == cluster))
        })
    }

    /// One job that reads `cluster`'s chains from its policy's regions, on an agent that
    /// archives it (else any connected one).
    pub(crate) async fn read_archive_chains(&self, cluster: &str) -> Result<u64, LeaderError> {
        let regions = self.archive_regions(cluster)?;
        let agent = self.archive_agent(cluster, "")?;
        self.catalog_job(
            agent,
            CatalogSpec {
                task: CatalogTask::Chains {
                    cluster: fleetsnap_core::ClusterId::new(cluster)
                        .map_err(|e| LeaderError::invalid(format!("cluster {cluster:?}: {e}")))?,
                    regions,
                },
                set: None,
                reason: format!("the archive catalog of cluster {cluster}"),
                drill_of: None,
                trace: None,
            },
        )
        .await
    }

    /// Every cluster a policy archives (the first policy by name), with its `catalog_every`.
    pub(super) fn archived_clusters(&self) -> Vec<(String, Duration)> {
        let s = self.state.read().expect("state lock");
        let mut out: Vec<(String, Duration)> = Vec::new();
        for p in s.state.policies.values() {
            let Some(a) = &p.archive else { continue };
            for c in &p.clusters {
                if !out.iter().any(|(have, _)| have == c.as_str()) {
                    out.push((c.to_string(), a.catalog_span()));
                }
            }
        }
        out
    }
}
