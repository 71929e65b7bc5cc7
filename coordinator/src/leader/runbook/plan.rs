//! Planning a runbook: a failover, a catalog rebuild, a cluster restore or a region's loss, as
//! the steps the replicated state will carry out, each checked against the fleet as it is now.

use std::collections::BTreeMap;

use crate::leader::LeaderError;
use fleetsnap_core::Role;
use fleetsnap_core::topology::NodeView;
use fleetsnap_core::window::{
    CatalogTask, NodeOp, NodeTask, ProbeTask, ProbeWant, RegionUrl, RestoreMode, RestoreTask,
    unix_ms,
};
use fleetsnap_proto::v1;

use super::run::{ALIVE_MS, CHECK_TIMEOUT_MS};
use crate::leader::Node;
use crate::state::Command;
use crate::state::RegionState;
use crate::state::{Action, Runbook, RunbookState, Step};

impl Node {
    /// The plan of a runbook, from the request and the fleet as the leader sees it now.
    pub(crate) fn plan_runbook(&self, r: &v1::RunbookRequest) -> Result<Runbook, LeaderError> {
        let steps_and_findings = match r.name.as_str() {
            "failover" => self.plan_failover(r)?,
            "rebuild-coordinator" => self.plan_rebuild(r)?,
            "restore-cluster" => self.plan_restore_cluster(r)?,
            "region-loss" => self.plan_region_loss(r)?,
            other => {
                return Err(LeaderError::invalid(format!(
                    "no runbook {other:?}: failover, restore-cluster, region-loss, rebuild-coordinator"
                )));
            }
        };
        let (steps, findings) = steps_and_findings;
        Ok(Runbook {
            id: 0,
            name: r.name.clone(),
            args: describe(r),
            steps,
            next: 0,
            state: RunbookState::Running,
            started_at_ms: unix_ms(time::OffsetDateTime::now_utc()),
            findings,
            trace: fleetsnap_telemetry::trace::traceparent(&tracing::Span::current()),
        })
    }

    pub(in crate::leader) fn plan_failover(
        &self,
        r: &v1::RunbookRequest,
    ) -> Result<(Vec<Step>, BTreeMap<String, String>), LeaderError> {
        let cluster = r.cluster.trim();
        let shard = r.shard.trim();
        if cluster.is_empty() || shard.is_empty() {
            return Err(LeaderError::invalid(
                "failover needs --cluster C --shard S (`fleetsnap status` shows shard ids)",
            ));
        }
        let view = self.view(cluster);
        let cv = view
            .clusters
            .iter()
            .find(|c| c.name == cluster)
            .ok_or_else(|| {
                LeaderError::not_found(format!("no agent reports a cluster {cluster:?}"))
            })?;
        let all: Vec<&NodeView> = cv.shards.iter().flat_map(|s| s.nodes.iter()).collect();
        // The shard by id while its primary reports; by the dead primary's name or address
        // once it does not (its replicas then point at an address nobody serves).
        let (primary, replicas): (&NodeView, Vec<&NodeView>) = if let Some(sv) =
            cv.shards.iter().find(|s| s.id == shard)
        {
            let p = sv
                .nodes
                .iter()
                .find(|n| n.role == Role::Primary)
                .ok_or_else(|| {
                    LeaderError::refused(format!("shard {shard} has no primary in the reports"))
                })?;
            (
                p,
                sv.nodes
                    .iter()
                    .filter(|n| n.role == Role::Replica)
                    .collect(),
            )
        } else {
            let p = all
                    .iter()
                    .find(|n| (n.name == shard || n.address == shard) && n.role != Role::Replica)
                    .copied()
                    .ok_or_else(|| {
                        let ids: Vec<&str> = cv.shards.iter().map(|s| s.id.as_str()).collect();
                        LeaderError::not_found(format!(
                            "cluster {cluster} has no shard {shard:?} (its shards: {}); name a dead primary by its instance name or address",
                            ids.join(", ")
                        ))
                    })?;
            let reps = all
                .iter()
                .filter(|n| n.replicating_from.as_deref() == Some(p.address.as_str()))
                .copied()
                .collect();
            (p, reps)
        };
        let alive =
            primary.reachable && primary.role == Role::Primary && primary.report_age_ms < ALIVE_MS;
        let candidates: Vec<&NodeView> = replicas.iter().filter(|n| n.reachable).copied().collect();
        let chosen = if r.to.is_empty() {
            candidates
                .iter()
                .max_by_key(|n| (n.offset, std::cmp::Reverse(n.address.clone())))
                .copied()
                .ok_or_else(|| {
                    LeaderError::refused(format!(
                        "shard {shard} has no reachable replica to promote"
                    ))
                })?
        } else {
            candidates
                .iter()
                .find(|n| n.name == r.to || n.address == r.to)
                .copied()
                .ok_or_else(|| {
                    LeaderError::refused(format!(
                        "--to {:?} is not a reachable replica of shard {shard} (its replicas: {})",
                        r.to,
                        replicas
                            .iter()
                            .map(|n| format!("{} ({})", n.name, n.address))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                })?
        };
        let others: Vec<String> = replicas
            .iter()
            .filter(|n| n.address != chosen.address)
            .map(|n| n.address.clone())
            .collect();
        let cluster_mode = cv.mode == "redis-cluster";
        let pause_ms = if r.pause_ms == 0 { 5000 } else { r.pause_ms };
        let mut findings = BTreeMap::new();
        findings.insert(
            "mode".into(),
            if alive { "graceful" } else { "forced" }.into(),
        );
        findings.insert("primary".into(), primary.address.clone());
        findings.insert("promote".into(), chosen.address.clone());
        findings.insert("promote_offset_at_plan".into(), chosen.offset.to_string());
        // A primary whose agent still reports it as one (alive, or its host gone with the agent)
        // has its last offset in the view; one its agent reports unreachable or without the
        // primary role, in the agent's memory.
        let last = if primary.reachable && primary.role == Role::Primary {
            Some(primary.offset)
        } else {
            let agents = self.fleet.agents.lock().expect("lock");
            agents
                .get(&primary.agent)
                .and_then(|a| a.dead_primaries.get(&primary.address).copied())
        };
        if let Some(last) = last {
            findings.insert("primary_last_offset".into(), last.to_string());
        }
        let sentinel = (!cluster_mode && !chosen.sentinel_master.is_empty())
            .then_some(chosen.sentinel_master.as_str());
        let title = if let Some(master) = sentinel {
            format!(
                "promote {} ({}) through its Sentinel (SENTINEL FAILOVER {master}): {}the other replicas at replica-priority 0 meanwhile, wait until the Sentinel announces {}, re-point {}{}",
                chosen.name,
                chosen.address,
                if alive {
                    format!(
                        "pause writes on {} (at most {pause_ms} ms), wait until {} has its offset, ",
                        primary.address, chosen.name
                    )
                } else {
                    String::new()
                },
                chosen.name,
                std::iter::once(primary.address.clone())
                    .filter(|_| alive)
                    .chain(others.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", "),
                if alive { ", resume writes" } else { "" }
            )
        } else if cluster_mode {
            if alive {
                format!(
                    "promote {} ({}) with CLUSTER FAILOVER: Redis pauses the primary's writes, waits for the replica, promotes it",
                    chosen.name, chosen.address
                )
            } else {
                format!(
                    "promote {} ({}) with CLUSTER FAILOVER FORCE (then TAKEOVER): the primary {} is dead",
                    chosen.name, chosen.address, primary.address
                )
            }
        } else if alive {
            format!(
                "promote {} ({}): pause writes on {} (at most {pause_ms} ms), wait until {} has its offset, REPLICAOF NO ONE, re-point {} to it, resume writes",
                chosen.name,
                chosen.address,
                primary.address,
                chosen.name,
                std::iter::once(primary.address.clone())
                    .chain(others.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "promote {} ({}, the replica with the highest offset, {}): REPLICAOF NO ONE, re-point {}; the primary {} is dead",
                chosen.name,
                chosen.address,
                chosen.offset,
                if others.is_empty() {
                    "no other replica".to_string()
                } else {
                    others.join(", ")
                },
                primary.address
            )
        };
        let mut must_follow: Vec<String> = others
            .iter()
            .filter(|o| replicas.iter().any(|n| &n.address == *o && n.reachable))
            .cloned()
            .collect();
        if alive {
            must_follow.push(primary.address.clone());
        }
        let steps = vec![
            Step {
                title,
                action: Action::Agent {
                    agent: chosen.agent.clone(),
                    task: CatalogTask::Node(NodeTask {
                        instance: chosen.name.clone(),
                        op: NodeOp::Promote {
                            primary: alive.then(|| primary.address.clone()),
                            others: others.clone(),
                            cluster: cluster_mode,
                            pause_ms,
                        },
                    }),
                },
                job: None,
                outcome: None,
                ok: None,
            },
            Step {
                title: format!(
                    "check: the reports show {} as the primary{}",
                    chosen.address,
                    if must_follow.is_empty() {
                        String::new()
                    } else {
                        format!(" and {} replicating from it", must_follow.join(", "))
                    }
                ),
                action: Action::CheckPrimary {
                    cluster: cluster.to_string(),
                    address: chosen.address.clone(),
                    replicas: must_follow,
                    timeout_ms: CHECK_TIMEOUT_MS,
                },
                job: None,
                outcome: None,
                ok: None,
            },
        ];
        Ok((steps, findings))
    }

    pub(in crate::leader) fn plan_rebuild(
        &self,
        r: &v1::RunbookRequest,
    ) -> Result<(Vec<Step>, BTreeMap<String, String>), LeaderError> {
        if r.regions.is_empty() {
            return Err(LeaderError::invalid(
                "rebuild-coordinator needs the regions to read: --from REGION=URL (repeat)",
            ));
        }
        let regions: Vec<RegionUrl> = r.regions.iter().map(|t| RegionUrl::from_arg(t)).collect();
        let preferred: Vec<String> = (!r.agent.is_empty())
            .then(|| r.agent.clone())
            .into_iter()
            .collect();
        let agent = self.pick_agent(&preferred)?;
        let names: Vec<&str> = regions.iter().map(|r| r.region.as_str()).collect();
        let steps = vec![
            Step {
                title: format!(
                    "agent {agent} reads every manifest in {} into the catalog",
                    names.join(", ")
                ),
                action: Action::Agent {
                    agent,
                    task: CatalogTask::Scan { regions },
                },
                job: None,
                outcome: None,
                ok: None,
            },
            Step {
                title: "check: the catalog holds every set a manifest was found for".into(),
                action: Action::CheckCatalog,
                job: None,
                outcome: None,
                ok: None,
            },
        ];
        Ok((steps, BTreeMap::new()))
    }

    pub(in crate::leader) fn plan_restore_cluster(
        &self,
        r: &v1::RunbookRequest,
    ) -> Result<(Vec<Step>, BTreeMap<String, String>), LeaderError> {
        let target = r.target.trim();
        if target.is_empty() || (r.cluster.trim().is_empty() && r.set.trim().is_empty()) {
            return Err(LeaderError::invalid(
                "restore-cluster needs the set (--set CLUSTER/BACKUP_ID, or --cluster C [--at TIME]) and the new cluster: --target redis://HOST:PORT",
            ));
        }
        crate::leader::restore::no_password_in(target)?;
        // A cluster a policy archives goes back to the second asked for, from its archive.
        let cluster = r.cluster.trim();
        if r.set.trim().is_empty()
            && (r.at_ms != 0 || !r.before.is_empty())
            && self.archiving_policy(cluster).is_some()
        {
            return self.plan_restore_cluster_at(r, target);
        }
        if r.exact || !r.before.is_empty() {
            return Err(LeaderError::refused(format!(
                "--exact and --before restore from the continuous archive, and no policy archives cluster {cluster:?}: give its policy an [archive] section (docs/archive.md)"
            )));
        }
        let set = self.restorable(r.set.trim(), r.cluster.trim(), r.at_ms)?;
        let regions = self.regions_to_restore(&set)?;
        let agent = self.restoring_agent(&set, &r.agent)?;
        let names: Vec<&str> = regions.iter().map(|g| g.region.as_str()).collect();
        let tails = set.shards.iter().filter(|s| s.cut_offset.is_some()).count();
        let steps = restore_steps(
            &agent,
            target,
            format!(
                "agent {agent} restores set {} ({} shards, taken {}) into {target} key by key, reading {}{}",
                set.key(),
                set.shards.len(),
                fleetsnap_core::window::from_unix_ms(set.opened_at_ms)
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                names.join(", then "),
                if tails > 0 {
                    ", and replays the consistent cut's tails"
                } else {
                    ""
                }
            ),
            CatalogTask::Restore(Box::new(RestoreTask {
                cluster: set.cluster.clone(),
                backup_id: set.backup_id.clone(),
                regions,
                shard: None,
                db: None,
                pattern: None,
                mode: RestoreMode::Online {
                    target: target.to_string(),
                    replace_existing: false,
                },
                taken_at_ms: Some(set.opened_at_ms),
            })),
        );
        let mut findings = BTreeMap::new();
        findings.insert("set".into(), set.key());
        Ok((steps, findings))
    }

    /// restore-cluster of an archived cluster to a time, an exact point or just before found
    /// commands: the target checked empty, every shard restored into it by one agent's job,
    /// the target checked.
    fn plan_restore_cluster_at(
        &self,
        r: &v1::RunbookRequest,
        target: &str,
    ) -> Result<(Vec<Step>, BTreeMap<String, String>), LeaderError> {
        let cluster = r.cluster.trim();
        let task = self.restore_at_task(
            cluster,
            r.at_ms,
            r.exact,
            &r.before,
            RestoreMode::Online {
                target: target.to_string(),
                replace_existing: false,
            },
        )?;
        let agent = self.archive_agent(cluster, &r.agent)?;
        let to = if !r.before.is_empty() {
            format!("just before {}", r.before.join(", "))
        } else {
            let t = fleetsnap_core::window::from_unix_ms(r.at_ms)
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            if r.exact {
                format!("the latest exact point at or before {t}")
            } else {
                t
            }
        };
        let steps = restore_steps(
            &agent,
            target,
            format!(
                "agent {agent} restores every shard of cluster {cluster} from its archive to {to} into {target}"
            ),
            CatalogTask::RestoreAt(Box::new(task)),
        );
        let mut findings = BTreeMap::new();
        findings.insert("archive".into(), format!("{cluster} to {to}"));
        Ok((steps, findings))
    }

    pub(in crate::leader) fn plan_region_loss(
        &self,
        r: &v1::RunbookRequest,
    ) -> Result<(Vec<Step>, BTreeMap<String, String>), LeaderError> {
        let lost = r.region.trim();
        if lost.is_empty() || !r.standby.contains('=') {
            return Err(LeaderError::invalid(
                "region-loss needs the region lost and a standby to take its place: --region R --standby NAME=URL",
            ));
        }
        let standby = RegionUrl::from_arg(r.standby.trim());
        if standby.region == lost {
            return Err(LeaderError::invalid(format!(
                "the standby must be another region than {lost:?}: name it differently"
            )));
        }
        let (sets, policies) = {
            let st = self.state.read().expect("state lock");
            (
                st.state.sets.values().cloned().collect::<Vec<_>>(),
                st.state.policies.values().cloned().collect::<Vec<_>>(),
            )
        };
        let known = policies
            .iter()
            .any(|p| p.destinations.iter().any(|d| d.region == lost))
            || sets.iter().any(|s| s.regions.contains_key(lost));
        if !known {
            return Err(LeaderError::not_found(format!(
                "no policy and no set names a region {lost:?}; `fleetsnap policy list` shows the regions"
            )));
        }
        let complete_in = |s: &crate::state::BackupSet, region: &str| {
            s.regions
                .get(region)
                .is_some_and(|g| g.state == RegionState::Complete)
        };
        let mut clusters: Vec<String> = sets.iter().map(|s| s.cluster.to_string()).collect();
        clusters.sort();
        clusters.dedup();
        let mut findings = BTreeMap::new();
        let mut steps = Vec::new();
        let mut wanted = Vec::new();
        for cluster in clusters {
            let of_cluster = || {
                let cluster = cluster.as_str();
                sets.iter()
                    .filter(move |s| s.cluster.as_str() == cluster && s.deleting.is_none())
            };
            let latest = of_cluster()
                .filter(|s| s.regions.values().any(|g| g.state == RegionState::Complete))
                .max_by_key(|s| (s.opened_at_ms, s.backup_id.clone()));
            let survivor = of_cluster()
                .filter(|s| {
                    s.regions
                        .iter()
                        .any(|(n, g)| n != lost && g.state == RegionState::Complete)
                })
                .max_by_key(|s| (s.opened_at_ms, s.backup_id.clone()));
            let Some(survivor) = survivor else {
                findings.insert(
                    format!("{cluster}: lost"),
                    format!("no set of {cluster} is complete outside {lost}: its backups went with the region"),
                );
                continue;
            };
            if let Some(l) = latest
                && l.key() != survivor.key()
            {
                findings.insert(
                    format!("{cluster}: newest lost"),
                    format!(
                        "{} was complete only in {lost}; the newest elsewhere is {}, {} s older",
                        l.key(),
                        survivor.key(),
                        (l.opened_at_ms - survivor.opened_at_ms) / 1000
                    ),
                );
            }
            // The newest survivor, then every other set the lost region held a copy of that
            // survives elsewhere (the standby takes the region's place for all of them), newest
            // first.
            let mut copies: Vec<&crate::state::BackupSet> = vec![survivor];
            let mut held: Vec<&crate::state::BackupSet> = of_cluster()
                .filter(|s| s.key() != survivor.key() && complete_in(s, lost))
                .filter(|s| {
                    s.regions
                        .iter()
                        .any(|(n, g)| n != lost && g.state == RegionState::Complete)
                })
                .collect();
            held.sort_by_key(|s| std::cmp::Reverse((s.opened_at_ms, s.backup_id.clone())));
            copies.extend(held);
            for set in copies {
                wanted.push(set.key());
                if complete_in(set, &standby.region) {
                    continue;
                }
                let from = self
                    .read_order(set)
                    .into_iter()
                    .find(|g| g.region != lost)
                    .ok_or_else(|| {
                        LeaderError::refused(format!(
                            "set {} has no region URL to copy from outside {lost}",
                            set.key()
                        ))
                    })?;
                let agent = self.pick_agent(&Self::set_agents(set))?;
                steps.push(Step {
                    title: format!(
                        "agent {agent} copies set {} from {} to {}, checking every object's sha256",
                        set.key(),
                        from.region,
                        standby.region
                    ),
                    action: Action::Agent {
                        agent,
                        task: CatalogTask::Repair {
                            cluster: set.cluster.clone(),
                            backup_id: set.backup_id.clone(),
                            from,
                            to: vec![standby.clone()],
                        },
                    },
                    job: None,
                    outcome: None,
                    ok: None,
                });
            }
        }
        let switched: Vec<&str> = policies
            .iter()
            .filter(|p| p.destinations.iter().any(|d| d.region == lost))
            .map(|p| p.name.as_str())
            .collect();
        steps.push(Step {
            title: format!(
                "switch {} from {lost} to {} ({})",
                if switched.is_empty() {
                    "no policy (none lists it)".to_string()
                } else {
                    format!("policies {}", switched.join(", "))
                },
                standby.region,
                standby.url
            ),
            action: Action::SwitchPolicies {
                lost: lost.to_string(),
                standby: standby.clone(),
            },
            job: None,
            outcome: None,
            ok: None,
        });
        steps.push(Step {
            title: format!(
                "check: {} in {}, and no policy lists {lost}",
                if wanted.is_empty() {
                    "no set".to_string()
                } else {
                    format!("sets {} complete", wanted.join(", "))
                },
                standby.region
            ),
            action: Action::CheckStandby {
                lost: lost.to_string(),
                standby: standby.region.clone(),
                sets: wanted,
            },
            job: None,
            outcome: None,
            ok: None,
        });
        Ok((steps, findings))
    }

    /// Rewrites every policy that lists `lost` to list `standby` in its place (a policy that
    /// already lists the standby just drops `lost`, its `min_regions` capped to what is left).
    /// Writing a policy twice is harmless, so a new leader may repeat this step.
    pub(in crate::leader) async fn switch_policies(
        &self,
        lost: &str,
        standby: &RegionUrl,
    ) -> (bool, String) {
        let policies: Vec<fleetsnap_core::policy::Policy> = {
            let st = self.state.read().expect("state lock");
            st.state
                .policies
                .values()
                .filter(|p| p.destinations.iter().any(|d| d.region == lost))
                .cloned()
                .collect()
        };
        let mut done = Vec::new();
        for mut p in policies {
            let has_standby = p.destinations.iter().any(|d| d.region == standby.region);
            if has_standby {
                p.destinations.retain(|d| d.region != lost);
                p.min_regions = p.min_regions.min(p.destinations.len() as u32).max(1);
            } else if let Some(d) = p.destinations.iter_mut().find(|d| d.region == lost) {
                d.region = standby.region.clone();
                d.url = standby.url.clone();
                d.credentials = None;
            }
            let name = p.name.clone();
            match self.write(Command::SetPolicy { policy: p }).await {
                Ok((resp, _, _)) if resp.refused.is_none() => done.push(name),
                Ok((resp, _, _)) => {
                    return (
                        false,
                        format!(
                            "policy {name} refused the switch: {}",
                            resp.refused.unwrap_or_default()
                        ),
                    );
                }
                Err(e) => return (false, format!("policy {name} not written: {}", e.message())),
            }
        }
        (
            true,
            if done.is_empty() {
                format!("no policy lists {lost}")
            } else {
                format!(
                    "policies {} now write to {}",
                    done.join(", "),
                    standby.region
                )
            },
        )
    }

    /// Whether every set in `sets` is complete in `standby` and no policy lists `lost`.
    pub(in crate::leader) fn check_standby(
        &self,
        lost: &str,
        standby: &str,
        sets: &[String],
    ) -> (bool, String) {
        let st = self.state.read().expect("state lock");
        let mut problems = Vec::new();
        for key in sets {
            match st.state.sets.get(key).and_then(|s| s.regions.get(standby)) {
                Some(g) if g.state == RegionState::Complete => {}
                Some(g) => problems.push(format!("{key} is {:?} in {standby}", g.state)),
                None => problems.push(format!("{key} is not in {standby}")),
            }
        }
        for p in st.state.policies.values() {
            if p.destinations.iter().any(|d| d.region == lost) {
                problems.push(format!("policy {} still lists {lost}", p.name));
            }
        }
        if problems.is_empty() {
            (
                true,
                format!(
                    "{} sets complete in {standby}; no policy lists {lost}",
                    sets.len()
                ),
            )
        } else {
            (false, problems.join("; "))
        }
    }
}

/// restore-cluster's steps, all run by `agent`: `target` checked answering, serving every slot
/// and empty; `restore` (titled `title`) into it; `target` checked holding what it restored.
fn restore_steps(agent: &str, target: &str, title: String, restore: CatalogTask) -> Vec<Step> {
    let step = |title: String, task: CatalogTask| Step {
        title,
        action: Action::Agent {
            agent: agent.to_string(),
            task,
        },
        job: None,
        outcome: None,
        ok: None,
    };
    let probe = |want: ProbeWant| {
        CatalogTask::Probe(ProbeTask {
            target: target.to_string(),
            want,
        })
    };
    vec![
        step(
            format!(
                "agent {agent} checks that {target} answers, serves every slot if it is a Redis Cluster, and holds no key"
            ),
            probe(ProbeWant::Empty),
        ),
        step(title, restore),
        step(
            format!("check: {target} serves every slot and holds the keys the restore wrote"),
            probe(ProbeWant::Restored),
        ),
    ]
}

fn describe(r: &v1::RunbookRequest) -> String {
    let mut parts = vec![r.name.clone()];
    for (flag, v) in [
        ("--cluster", &r.cluster),
        ("--shard", &r.shard),
        ("--to", &r.to),
        ("--agent", &r.agent),
        ("--set", &r.set),
        ("--target", &r.target),
        ("--region", &r.region),
        ("--standby", &r.standby),
    ] {
        if !v.is_empty() {
            parts.push(format!("{flag} {v}"));
        }
    }
    if r.at_ms != 0 {
        parts.push(format!("--at {}", r.at_ms));
    }
    if r.exact {
        parts.push("--exact".into());
    }
    for b in &r.before {
        parts.push(format!("--before {b}"));
    }
    for region in &r.regions {
        parts.push(format!("--from {region}"));
    }
    parts.join(" ")
}
