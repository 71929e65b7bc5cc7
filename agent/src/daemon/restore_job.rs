//! Restores and drills the coordinator hands to this agent: the same code as the agent's
//! `restore` and `drill` commands, with the regions in the order the coordinator chose (nearest
//! healthy first) and the node's hooks from this agent's config.

use std::time::Duration;

use fleetsnap_core::ShardId;
use fleetsnap_core::window::{FindTask, JobResult, RestoreAtTask, RestoreMode, RestoreTask};

use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::restore::OnlineOptions;
use crate::restore::ReplaceRequest;
use crate::restore::RestoreRequest;
use crate::storage::DestSpec;

/// Runs a restore or drill job; a drill that finds a difference, or an online restore that left
/// conflicting keys, is a result with `ok: false`, not an error.
pub async fn run(task: RestoreTask, config: &AgentConfig) -> Result<JobResult> {
    if task.regions.is_empty() {
        return Err(Error::Input(format!(
            "set {}/{} is complete in no region: there is nothing to restore from",
            task.cluster, task.backup_id
        )));
    }
    let from = task
        .regions
        .iter()
        .map(|r| DestSpec::parse(&r.url))
        .collect::<Result<Vec<_>>>()?;
    let shard = task
        .shard
        .as_deref()
        .map(|s| ShardId::new(s).map_err(|e| Error::Input(e.to_string())))
        .transpose()?;
    let read = RestoreRequest {
        from,
        backup: task.backup_id.clone(),
        cluster: Some(task.cluster.clone()),
        shard,
        to_file: Default::default(),
        aof_dir: false,
        identity: config.restore.identity.clone(),
        sync: true,
        force: true,
        archive_tail: None,
    };
    Ok(match task.mode {
        RestoreMode::Online {
            target,
            replace_existing,
        } => {
            let target = RedisTarget::parse(&target)?;
            let r = crate::restore::restore_online(
                read,
                config.restore.work_dir.as_deref(),
                &target,
                &OnlineOptions {
                    replace_existing,
                    db: task.db,
                    pattern: task.pattern.clone(),
                    progress: false,
                    keep: None,
                },
            )
            .await?;
            let problem = r.conflict_problem();
            JobResult::Restored {
                ok: problem.is_none(),
                problem,
                report_json: json(&r),
            }
        }
        RestoreMode::Replace { instance } => {
            let r = replace_own(read, &instance, config).await?;
            JobResult::Restored {
                ok: true,
                problem: None,
                report_json: json(&r),
            }
        }
        RestoreMode::Drill => {
            let settings = config.drill.as_ref().ok_or_else(|| {
                Error::Input(format!(
                    "agent {:?} has no [drill] section: add one to its config to let it run restore drills",
                    config.agent_id
                ))
            })?;
            let r = crate::restore::drill(read, settings, task.taken_at_ms).await?;
            JobResult::Restored {
                ok: r.ok,
                problem: (!r.ok).then(|| r.problems.join("; ")),
                report_json: json(&r),
            }
        }
    })
}

/// Where a job reads `cluster`'s archive (its regions, the agent's identity for an encrypted
/// one), and the one shard it names, if any.
fn archive_of(
    cluster: &fleetsnap_core::ClusterId,
    regions: &[fleetsnap_core::window::RegionUrl],
    shard: Option<&str>,
    config: &AgentConfig,
) -> Result<(crate::archive::PointSource, Option<ShardId>)> {
    let source = crate::archive::PointSource {
        from: regions
            .iter()
            .map(|r| DestSpec::parse(&r.url))
            .collect::<Result<Vec<_>>>()?,
        cluster: cluster.clone(),
        identity: config.restore.identity.clone(),
    };
    if source.from.is_empty() {
        return Err(Error::Input(format!(
            "no region holds an archive of cluster {cluster}"
        )));
    }
    let shard = shard
        .map(|s| ShardId::new(s).map_err(|e| Error::Input(e.to_string())))
        .transpose()?;
    Ok((source, shard))
}

/// Runs a restore from the archive: online (one shard or the whole cluster) or replacing the
/// agent's own instance (one shard).
pub async fn run_at(task: RestoreAtTask, config: &AgentConfig) -> Result<JobResult> {
    use crate::archive::ClusterTarget;
    let (source, shard) = archive_of(&task.cluster, &task.regions, task.shard.as_deref(), config)?;
    let to = match (task.at_ms, task.exact) {
        (Some(t), true) => ClusterTarget::Exact(t),
        (Some(t), false) => ClusterTarget::At(t),
        (None, _) => ClusterTarget::Before(task.before.clone()),
    };
    let (targets, exact) = source.targets(shard.as_ref(), &to).await?;
    let work_dir = config.restore.work_dir.as_deref();
    Ok(match task.mode {
        RestoreMode::Online {
            target,
            replace_existing,
        } => {
            let target = RedisTarget::parse(&target)?;
            let done = source
                .restore_online(
                    targets,
                    exact,
                    &target,
                    work_dir,
                    &OnlineOptions {
                        replace_existing,
                        db: task.db,
                        pattern: task.pattern.clone(),
                        progress: false,
                        keep: None,
                    },
                )
                .await?;
            let problems: Vec<String> = done
                .shards
                .iter()
                .filter_map(|s| s.restore.conflict_problem())
                .collect();
            JobResult::Restored {
                ok: problems.is_empty(),
                problem: (!problems.is_empty()).then(|| problems.join("; ")),
                report_json: json(&done),
            }
        }
        RestoreMode::Replace { instance } => {
            let [(shard, t)] = targets.as_slice() else {
                return Err(Error::Input(
                    "a replace restore from the archive puts back one shard: name it".into(),
                ));
            };
            let (read, point) = source.shard(shard, t, work_dir).await?;
            let r = replace_own(read, &instance, config).await?;
            let point = point.ready().await?;
            JobResult::Restored {
                ok: true,
                problem: None,
                report_json: serde_json::to_string(&serde_json::json!({
                    "point_in_time": point,
                    "replace": r,
                }))
                .expect("reports serialise"),
            }
        }
        RestoreMode::Drill => {
            return Err(Error::Input(
                "a drill restores sets: `fleetsnap drill run`; from the archive, restore --at into a scratch target".into(),
            ));
        }
    })
}

/// Finds commands in the archive of a cluster (every shard, or one).
pub async fn find(task: FindTask, config: &AgentConfig) -> Result<JobResult> {
    let (source, shard) = archive_of(&task.cluster, &task.regions, task.shard.as_deref(), config)?;
    let wanted = fleetsnap_core::archive::Wanted {
        names: task.commands,
        key: task.key.map(String::into_bytes),
    };
    let found = source
        .find(shard.as_ref(), &wanted, task.since_ms, task.until_ms)
        .await?;
    Ok(JobResult::Found {
        report_json: json(&found),
    })
}

/// `read` put in place of the data of this agent's instance `instance`, through its hooks.
async fn replace_own(
    read: RestoreRequest,
    instance: &str,
    config: &AgentConfig,
) -> Result<crate::restore::ReplaceReport> {
    let i = config
        .instances
        .iter()
        .find(|i| i.name == instance)
        .ok_or_else(|| {
            Error::Input(format!(
                "agent {:?} watches no instance named {instance:?}",
                config.agent_id
            ))
        })?;
    let start = i.start_command.clone().ok_or_else(|| {
        Error::Input(format!(
            "instance {instance:?} of agent {:?} has no start_command: a replace restore stops the node and must be able to start it again; add start_command = \"systemctl start redis@PORT\" (or the command that starts it) to the instance in the agent's config",
            config.agent_id
        ))
    })?;
    crate::restore::replace(ReplaceRequest {
        read,
        node: RedisTarget::parse(&i.url)?,
        stop: i.stop_command.clone(),
        start,
        rdb_path: i.rdb_path.clone(),
        timeout: Duration::from_secs(i.restore_timeout_seconds),
    })
    .await
}

fn json<T: serde::Serialize>(report: &T) -> String {
    serde_json::to_string(report).expect("reports serialise")
}
