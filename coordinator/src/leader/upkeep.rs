//! The leader's catalog upkeep: repair, verify, rebuild, retention and orphan collection, on
//! request and on its own. Each decision is a `CreateCatalogJob` in the log (a deletion carries
//! retention's reason), run by a connected agent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::LeaderError;
use fleetsnap_core::records::PruneRow;
use fleetsnap_core::retention::{self, Action, SetInfo, SetState};
use fleetsnap_core::window::{CatalogTask, RegionUrl, from_unix_ms};
use fleetsnap_core::{BackupId, ClusterId};

use super::Node;
use crate::state::CatalogSpec;
use crate::state::Command;
use crate::state::{BackupSet, RegionState};

/// How often the leader looks for sets to repair and prune.
const UPKEEP_EVERY: Duration = Duration::from_secs(30);

/// A set whose automatic repair failed is tried again after this long.
const REPAIR_AGAIN: Duration = Duration::from_secs(600);

/// Orphans are looked for this often.
const ORPHANS_EVERY: Duration = Duration::from_secs(3600);

impl Node {
    /// A connected agent to run a catalog job, preferring those named.
    pub(super) fn pick_agent(&self, preferred: &[String]) -> Result<String, LeaderError> {
        self.pick_agent_where(preferred, |_| true).ok_or_else(|| {
            LeaderError::unavailable(
                "no agent is connected to the leader to read the regions: start one",
            )
        })
    }

    /// The agent an operator `asked` for (refused unless it is connected), else the first
    /// connected of `preferred()`, else any connected agent.
    pub(super) fn pick_asked(
        &self,
        asked: &str,
        preferred: impl FnOnce() -> Vec<String>,
    ) -> Result<String, LeaderError> {
        let preferred = if asked.is_empty() {
            preferred()
        } else {
            vec![asked.to_string()]
        };
        let agent = self.pick_agent(&preferred)?;
        if !asked.is_empty() && agent != asked {
            return Err(LeaderError::unavailable(format!(
                "agent {asked:?} is not connected to the leader"
            )));
        }
        Ok(agent)
    }

    /// A connected agent that can run drills (its config has a `[drill]` section): `preferred`
    /// if it can, else the first by name.
    pub(super) fn pick_drill_agent(&self, preferred: &str) -> Result<String, LeaderError> {
        self.pick_agent_where(&[preferred.to_string()], |a| a.drills)
            .ok_or_else(|| {
                LeaderError::refused(
                    "no connected agent has a [drill] section: add one to an agent's config (redis_server, work_dir) to let it run restore drills",
                )
            })
    }

    /// A registered agent connected to this leader and passing `can`: the first of `preferred`
    /// that is, else the first by name.
    pub(super) fn pick_agent_where(
        &self,
        preferred: &[String],
        can: impl Fn(&super::AgentLive) -> bool,
    ) -> Option<String> {
        let registered: Vec<String> = {
            let st = self.state.read().expect("state lock");
            st.state.agents.keys().cloned().collect()
        };
        let agents = self.fleet.agents.lock().expect("lock");
        let able = |a: &str| {
            agents.get(a).is_some_and(|x| x.tx.is_some() && can(x))
                && registered.iter().any(|r| r == a)
        };
        preferred.iter().find(|a| able(a)).cloned().or_else(|| {
            let mut all: Vec<&String> = agents.keys().filter(|a| able(a)).collect();
            all.sort();
            all.first().map(|a| a.to_string())
        })
    }

    /// A set by `CLUSTER/ID`, or by id when one cluster has it.
    pub(crate) fn resolve_set(&self, id: &str) -> Result<BackupSet, LeaderError> {
        let st = self.state.read().expect("state lock");
        if let Some(s) = st.state.sets.get(id) {
            return Ok(s.clone());
        }
        let found: Vec<&BackupSet> = st
            .state
            .sets
            .values()
            .filter(|s| s.backup_id.as_str() == id)
            .collect();
        match found.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(LeaderError::not_found(format!(
                "no backup set {id:?}; `fleetsnap backup list` shows them"
            ))),
            many => Err(LeaderError::invalid(format!(
                "backup {id} exists in {} clusters: name one as CLUSTER/{id} ({})",
                many.len(),
                many.iter().map(|s| s.key()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    pub(super) async fn catalog_job(
        &self,
        agent: String,
        spec: CatalogSpec,
    ) -> Result<u64, LeaderError> {
        let (resp, _, _) = self
            .write(Command::CreateCatalogJob { agent, spec })
            .await?;
        if let Some(why) = resp.refused {
            return Err(LeaderError::refused(why));
        }
        resp.job
            .ok_or_else(|| LeaderError::internal("the job was not created"))
    }

    pub(super) fn region_urls(
        set: &BackupSet,
        which: impl Fn(RegionState) -> bool,
    ) -> Vec<RegionUrl> {
        set.regions
            .iter()
            .filter(|(_, r)| which(r.state) && !r.url.is_empty())
            .map(|(name, r)| RegionUrl {
                region: name.clone(),
                url: r.url.clone(),
            })
            .collect()
    }

    pub(super) fn set_agents(set: &BackupSet) -> Vec<String> {
        set.shards.iter().map(|s| s.agent.clone()).collect()
    }

    /// Copies the set from a complete region to every other one.
    pub(crate) async fn repair(&self, set: &BackupSet, reason: &str) -> Result<u64, LeaderError> {
        if set.state == SetState::Running {
            return Err(LeaderError::refused(format!(
                "set {} is still being written",
                set.key()
            )));
        }
        let from = Self::region_urls(set, |s| s == RegionState::Complete)
            .into_iter()
            .next()
            .ok_or_else(|| {
                LeaderError::refused(format!(
                    "set {} is complete in no region: there is nothing to copy from",
                    set.key()
                ))
            })?;
        let to = Self::region_urls(set, |s| s != RegionState::Complete);
        if to.is_empty() {
            return Err(LeaderError::refused(format!(
                "set {} is complete in every region it has; nothing to repair",
                set.key()
            )));
        }
        let agent = self.pick_agent(&Self::set_agents(set))?;
        self.catalog_job(
            agent,
            CatalogSpec {
                task: CatalogTask::Repair {
                    cluster: set.cluster.clone(),
                    backup_id: set.backup_id.clone(),
                    from,
                    to,
                },
                set: Some(set.key()),
                reason: reason.into(),
                drill_of: None,
                trace: None,
            },
        )
        .await
    }

    /// Reads the set back in every complete region.
    pub(crate) async fn verify(&self, set: &BackupSet) -> Result<u64, LeaderError> {
        let regions = Self::region_urls(set, |s| s == RegionState::Complete);
        if regions.is_empty() {
            return Err(LeaderError::refused(format!(
                "set {} is complete in no region: there is nothing to verify",
                set.key()
            )));
        }
        let agent = self.pick_agent(&Self::set_agents(set))?;
        self.catalog_job(
            agent,
            CatalogSpec {
                task: CatalogTask::Verify {
                    cluster: set.cluster.clone(),
                    backup_id: set.backup_id.clone(),
                    regions,
                },
                set: Some(set.key()),
                reason: "asked by an operator".into(),
                drill_of: None,
                trace: None,
            },
        )
        .await
    }

    /// Reads every manifest in `regions` into the catalog.
    pub(crate) async fn rebuild(
        &self,
        regions: Vec<RegionUrl>,
        agent: &str,
    ) -> Result<(u64, String), LeaderError> {
        let preferred: Vec<String> = (!agent.is_empty())
            .then(|| agent.to_string())
            .into_iter()
            .collect();
        let agent = self.pick_agent(&preferred)?;
        let job = self
            .catalog_job(
                agent.clone(),
                CatalogSpec {
                    task: CatalogTask::Scan { regions },
                    set: None,
                    reason: "catalog rebuild".into(),
                    drill_of: None,
                    trace: None,
                },
            )
            .await?;
        // The archives' chains too, from their policies' regions.
        for (cluster, _) in self.archived_clusters() {
            if let Err(e) = self.read_archive_chains(&cluster).await {
                tracing::warn!(%cluster, error = %e, "catalog rebuild: the archive's chains were not read");
            }
        }
        Ok((job, agent))
    }

    /// Retention over every policy (or one): the decisions, and with `execute` a deletion job
    /// per set to delete, plus orphan collection in the policy's regions.
    pub(crate) async fn prune(
        &self,
        only: &str,
        execute: bool,
        orphans: bool,
    ) -> Result<Vec<PruneRow>, LeaderError> {
        let now = time::OffsetDateTime::now_utc();
        let (policies, sets, running) = {
            let st = self.state.read().expect("state lock");
            let policies: Vec<_> = st
                .state
                .policies
                .values()
                .filter(|p| only.is_empty() || p.name == only)
                .cloned()
                .collect();
            let running: Vec<BackupId> = st
                .state
                .windows
                .values()
                .filter(|w| !w.done)
                .map(|w| w.plan.backup_id.clone())
                .collect();
            (policies, st.state.sets.clone(), running)
        };
        if !only.is_empty() && policies.is_empty() {
            return Err(LeaderError::not_found(format!(
                "there is no policy {only:?}"
            )));
        }
        let mut out = Vec::new();
        for p in &policies {
            let mut by_cluster: HashMap<&ClusterId, Vec<&BackupSet>> = HashMap::new();
            for s in sets.values().filter(|s| s.policy == p.name) {
                by_cluster.entry(&s.cluster).or_default().push(s);
            }
            for (cluster, list) in by_cluster {
                let infos: Vec<SetInfo> = list
                    .iter()
                    .map(|s| {
                        let at = from_unix_ms(s.opened_at_ms);
                        SetInfo {
                            id: s.backup_id.clone(),
                            at,
                            state: s.state,
                            locked_until: p
                                .object_lock
                                .as_ref()
                                .map(|l| at + time::Duration::days(l.days.into())),
                        }
                    })
                    .collect();
                for (d, s) in retention::select(&infos, &p.retention, now)
                    .into_iter()
                    .zip(&list)
                {
                    let mut job = None;
                    let mut error = None;
                    if let (Action::Delete { reason }, true) = (&d.action, execute)
                        && s.deleting.is_none()
                        && s.task.is_none()
                    {
                        let regions = Self::region_urls(s, |_| true);
                        let r = match self.pick_agent(&Self::set_agents(s)) {
                            Ok(agent) => {
                                self.catalog_job(
                                    agent,
                                    CatalogSpec {
                                        task: CatalogTask::Delete {
                                            cluster: s.cluster.clone(),
                                            backup_id: s.backup_id.clone(),
                                            regions,
                                        },
                                        set: Some(s.key()),
                                        reason: format!("retention of {}: {reason}", p.name),
                                        drill_of: None,
                                        trace: None,
                                    },
                                )
                                .await
                            }
                            Err(e) => Err(e),
                        };
                        match r {
                            Ok(j) => job = Some(j),
                            Err(e) => error = Some(e.message().to_string()),
                        }
                    }
                    out.push(PruneRow {
                        policy: p.name.clone(),
                        cluster: cluster.clone(),
                        backup_id: s.backup_id.clone(),
                        state: s.state,
                        decision: d.action,
                        job,
                        error,
                    });
                }
            }
            if orphans && execute {
                let regions: Vec<RegionUrl> = p
                    .destinations
                    .iter()
                    .map(|d| RegionUrl {
                        region: d.region.clone(),
                        url: p.agent_url(d),
                    })
                    .collect();
                // An object under Object Lock cannot be deleted before its lock ends.
                let locked = p
                    .object_lock
                    .as_ref()
                    .map_or(0, |l| i64::from(l.days) * 86_400);
                let grace =
                    time::Duration::seconds((p.retention.orphan_grace_seconds as i64).max(locked));
                let before = BackupId::from_parts(now - grace, 0);
                if let Ok(agent) = self.pick_agent(&[]) {
                    let r = self
                        .catalog_job(
                            agent,
                            CatalogSpec {
                                task: CatalogTask::CollectOrphans {
                                    regions,
                                    before,
                                    keep: running.clone(),
                                },
                                set: None,
                                reason: format!("orphans of {}", p.name),
                                drill_of: None,
                                trace: None,
                            },
                        )
                        .await;
                    if let Err(e) = r {
                        tracing::warn!(policy = %p.name, error = %e.message(), "orphan collection not started");
                    }
                }
            }
        }
        Ok(out)
    }

    /// On the leader: repairs degraded sets, applies retention, collects orphans.
    pub(super) async fn upkeep_loop(self: Arc<Self>) {
        let mut repaired: HashMap<String, Instant> = HashMap::new();
        let mut orphans_at: Option<Instant> = None;
        loop {
            if !self.next_round(UPKEEP_EVERY, None).await {
                orphans_at = None;
                continue;
            }
            let degraded: Vec<BackupSet> = {
                let st = self.state.read().expect("state lock");
                st.state
                    .sets
                    .values()
                    .filter(|s| {
                        s.state == SetState::Degraded && s.task.is_none() && s.deleting.is_none()
                    })
                    .cloned()
                    .collect()
            };
            for s in degraded {
                if repaired
                    .get(&s.key())
                    .is_some_and(|t| t.elapsed() < REPAIR_AGAIN)
                {
                    continue;
                }
                repaired.insert(s.key(), Instant::now());
                match self.repair(&s, "automatic: the set is degraded").await {
                    Ok(job) => tracing::info!(set = %s.key(), job, "repairing a degraded set"),
                    Err(e) => {
                        tracing::warn!(set = %s.key(), error = %e.message(), "automatic repair not started")
                    }
                }
            }
            let orphans = orphans_at.is_none_or(|t| t.elapsed() > ORPHANS_EVERY);
            if orphans {
                orphans_at = Some(Instant::now());
            }
            if let Err(e) = self.prune("", true, orphans).await {
                tracing::warn!(error = %e.message(), "retention not applied");
            }
        }
    }
}
