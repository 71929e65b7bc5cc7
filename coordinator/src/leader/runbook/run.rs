//! Running runbooks: each step started through the log, its job or check awaited, and the checks
//! the leader makes itself (catalog, the primary of a replica set).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::leader::LeaderError;
use fleetsnap_core::Role;
use fleetsnap_core::topology::NodeView;

use crate::leader::Node;
use crate::state::Command;
use crate::state::{Action, Runbook, RunbookState};

/// How long the reports may take to show a failover's new topology.
pub(super) const CHECK_TIMEOUT_MS: u64 = 30_000;

/// A primary whose last report is older than this counts as dead.
pub(super) const ALIVE_MS: u64 = 5_000;

impl Node {
    /// Starts a planned runbook; its id.
    pub(crate) async fn start_runbook(&self, runbook: Runbook) -> Result<u64, LeaderError> {
        let (resp, _, _) = self.write(Command::StartRunbook { runbook }).await?;
        if let Some(why) = resp.refused {
            return Err(LeaderError::refused(why));
        }
        resp.runbook
            .ok_or_else(|| LeaderError::internal("the runbook was not started"))
    }

    /// Starts the job of each runbook's current step and makes the leader's checks.
    pub(in crate::leader) async fn runbook_loop(self: Arc<Self>) {
        let mut waiting: HashMap<(u64, usize), Instant> = HashMap::new();
        loop {
            if !self.next_round(Duration::from_millis(250), None).await {
                waiting.clear();
                continue;
            }
            let running: Vec<Runbook> = {
                let s = self.state.read().expect("state lock");
                s.state
                    .runbooks
                    .values()
                    .filter(|r| r.state == RunbookState::Running)
                    .cloned()
                    .collect()
            };
            for r in running {
                let step = &r.steps[r.next];
                let since = *waiting.entry((r.id, r.next)).or_insert_with(Instant::now);
                let cmd = match &step.action {
                    Action::Agent { .. } if step.job.is_none() => Some(Command::RunbookStep {
                        runbook: r.id,
                        step: r.next,
                    }),
                    Action::Agent { .. } => None,
                    Action::CheckPrimary {
                        cluster,
                        address,
                        replicas,
                        timeout_ms,
                    } => {
                        let (ok, detail) = self.check_primary(cluster, address, replicas);
                        if ok || since.elapsed() >= Duration::from_millis(*timeout_ms) {
                            Some(Command::RunbookCheck {
                                runbook: r.id,
                                step: r.next,
                                ok,
                                detail,
                            })
                        } else {
                            None
                        }
                    }
                    Action::SwitchPolicies { lost, standby } => {
                        let (ok, detail) = self.switch_policies(lost, standby).await;
                        Some(Command::RunbookCheck {
                            runbook: r.id,
                            step: r.next,
                            ok,
                            detail,
                        })
                    }
                    Action::CheckStandby {
                        lost,
                        standby,
                        sets,
                    } => {
                        let (ok, detail) = self.check_standby(lost, standby, sets);
                        Some(Command::RunbookCheck {
                            runbook: r.id,
                            step: r.next,
                            ok,
                            detail,
                        })
                    }
                    Action::CheckCatalog => {
                        let scan = r.next.checked_sub(1).and_then(|p| r.steps[p].job);
                        let (ok, detail) = self.check_catalog(scan);
                        Some(Command::RunbookCheck {
                            runbook: r.id,
                            step: r.next,
                            ok,
                            detail,
                        })
                    }
                };
                if let Some(cmd) = cmd
                    && let Err(e) = self.write(cmd).await
                {
                    tracing::warn!(runbook = r.id, error = %e.message(), "runbook step not recorded");
                }
            }
        }
    }

    /// Whether every set the scan job found whole in some region is in the catalog.
    pub(in crate::leader) fn check_catalog(&self, scan: Option<u64>) -> (bool, String) {
        let st = self.state.read().expect("state lock");
        let found = scan
            .and_then(|j| st.state.jobs.get(&j))
            .and_then(|j| match &j.state {
                crate::state::JobState::Done(crate::state::JobOutcome::Succeeded {
                    result: Some(fleetsnap_core::window::JobResult::Scanned { found, .. }),
                    ..
                }) => Some(found),
                _ => None,
            });
        let Some(found) = found else {
            return (
                false,
                "the scan step left no result to check against".into(),
            );
        };
        let whole: std::collections::BTreeSet<String> = found
            .iter()
            .filter(|f| f.problems.is_empty())
            .map(|f| crate::state::set_key(&f.manifest.cluster, &f.manifest.backup_id))
            .collect();
        let missing: Vec<&String> = whole
            .iter()
            .filter(|k| !st.state.sets.contains_key(*k))
            .collect();
        if missing.is_empty() {
            (
                true,
                format!(
                    "the catalog holds all {} sets found whole in a region",
                    whole.len()
                ),
            )
        } else {
            (
                false,
                format!("sets found whole but not in the catalog: {missing:?}"),
            )
        }
    }

    /// Whether the reports show `address` as primary with `replicas` replicating from it.
    pub(in crate::leader) fn check_primary(
        &self,
        cluster: &str,
        address: &str,
        replicas: &[String],
    ) -> (bool, String) {
        let view = self.view(cluster);
        let nodes: Vec<&NodeView> = view
            .clusters
            .iter()
            .flat_map(|c| c.shards.iter())
            .flat_map(|s| s.nodes.iter())
            .collect();
        let Some(p) = nodes.iter().find(|n| n.address == address) else {
            return (false, format!("no report of {address}"));
        };
        if p.role != Role::Primary {
            return (false, format!("{address} reports role {:?}", p.role));
        }
        let mut behind = Vec::new();
        for r in replicas {
            match nodes.iter().find(|n| &n.address == r) {
                Some(n)
                    if n.replicating_from.as_deref() == Some(address)
                        && n.link.as_deref() == Some("up") => {}
                Some(n) => behind.push(format!(
                    "{r} replicates from {} (link {})",
                    n.replicating_from.as_deref().unwrap_or("nothing"),
                    n.link.as_deref().unwrap_or("-")
                )),
                None => behind.push(format!("no report of {r}")),
            }
        }
        if behind.is_empty() {
            (
                true,
                format!(
                    "{address} is the primary{}",
                    if replicas.is_empty() {
                        String::new()
                    } else {
                        format!("; {} replicate from it", replicas.join(", "))
                    }
                ),
            )
        } else {
            (
                false,
                format!("{address} is the primary but {}", behind.join("; ")),
            )
        }
    }

    /// A runbook as JSON.
    pub(crate) fn runbook_json(&self, id: u64) -> Result<String, LeaderError> {
        let s = self.state.read().expect("state lock");
        let r = s
            .state
            .runbooks
            .get(&id)
            .ok_or_else(|| LeaderError::not_found(format!("there is no runbook {id}")))?;
        Ok(serde_json::to_string_pretty(r).expect("runbooks serialise"))
    }
}
