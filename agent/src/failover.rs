//! A runbook's failover step, run by the agent beside the replica to promote: graceful (writes
//! paused on the live primary until the replica has every acknowledged write) or forced (the
//! primary is dead; the replica is promoted at the offset it has).

use std::time::{Duration, Instant};

use fleetsnap_core::window::{JobResult, NodeOp, NodeTask};
use serde::Serialize;

use crate::daemon::AgentConfig;
use crate::error::{Error, Result};
use crate::resp::{Connection, info_field};
use crate::target::RedisTarget;

/// What a promotion did.
#[derive(Clone, Debug, Serialize)]
pub struct PromoteReport {
    /// The node promoted (`host:port`).
    pub promoted: String,
    /// Whether the old primary was alive and paused.
    pub graceful: bool,
    /// Whether through `CLUSTER FAILOVER`.
    pub cluster: bool,
    /// The paused primary's offset, which the replica reached (graceful).
    pub primary_offset: Option<u64>,
    /// The promoted node's replication offset when it was promoted.
    pub offset: u64,
    /// Milliseconds writes were paused (graceful, standalone).
    pub paused_ms: Option<u64>,
    /// Nodes now replicating from it.
    pub repointed: Vec<String>,
    /// Nodes that could not be re-pointed, and why.
    pub not_repointed: Vec<(String, String)>,
}

/// Runs a node task for an instance of this agent.
pub async fn run(task: NodeTask, config: &AgentConfig) -> Result<JobResult> {
    let i = config
        .instances
        .iter()
        .find(|i| i.name == task.instance)
        .ok_or_else(|| {
            Error::Input(format!(
                "agent {:?} watches no instance named {:?}",
                config.agent_id, task.instance
            ))
        })?;
    let me = RedisTarget::parse(&i.url)?;
    let report = match task.op {
        NodeOp::Promote {
            primary,
            others,
            cluster,
            pause_ms,
        } => promote(&me, primary.as_deref(), &others, cluster, pause_ms).await?,
    };
    Ok(JobResult::Step {
        report_json: serde_json::to_string(&report).expect("reports serialise"),
    })
}

/// The same credentials and TLS at another address (the shard's nodes share them).
fn at(me: &RedisTarget, address: &str) -> Result<RedisTarget> {
    let (host, port) = address
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse().ok()?)))
        .ok_or_else(|| Error::Input(format!("{address:?} is not HOST:PORT")))?;
    Ok(RedisTarget {
        host,
        port,
        ..me.clone()
    })
}

async fn replication(c: &mut Connection) -> Result<Vec<(String, String)>> {
    c.info("replication").await
}

fn offset_of(info: &[(String, String)]) -> u64 {
    info_field(info, "slave_repl_offset")
        .or_else(|| info_field(info, "master_repl_offset"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

async fn promote(
    me: &RedisTarget,
    primary: Option<&str>,
    others: &[String],
    cluster: bool,
    pause_ms: u64,
) -> Result<PromoteReport> {
    let mut c = Connection::connect(me).await?;
    let info = replication(&mut c).await?;
    if info_field(&info, "role") != Some("slave") {
        return Err(Error::Input(format!(
            "{me} is not a replica (role {}): nothing to promote; `fleetsnap status` shows the shard as it is now",
            info_field(&info, "role").unwrap_or("unknown")
        )));
    }
    let mut report = PromoteReport {
        promoted: me.address(),
        graceful: primary.is_some(),
        cluster,
        primary_offset: None,
        offset: offset_of(&info),
        paused_ms: None,
        repointed: Vec::new(),
        not_repointed: Vec::new(),
    };
    if cluster {
        let tries: &[(&[u8], u64)] = if primary.is_some() {
            &[(b"", pause_ms + 5000)]
        } else {
            &[(b"FORCE", 6000), (b"TAKEOVER", 10_000)]
        };
        for (how, wait_ms) in tries {
            let mut args: Vec<&[u8]> = vec![b"CLUSTER", b"FAILOVER"];
            if !how.is_empty() {
                args.push(how);
            }
            report.offset = offset_of(&replication(&mut c).await?);
            c.checked(&args).await?;
            let deadline = Instant::now() + Duration::from_millis(*wait_ms);
            while Instant::now() < deadline {
                if info_field(&replication(&mut c).await?, "role") == Some("master") {
                    return Ok(report);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        return Err(Error::Failed(format!(
            "{me} was not promoted by CLUSTER FAILOVER{}; `fleetsnap status` shows the shard as it is now",
            if primary.is_some() {
                ""
            } else {
                " FORCE nor TAKEOVER"
            }
        )));
    }
    let mine = me.host.as_bytes().to_vec();
    let my_port = me.port.to_string();
    let mut old = None;
    if let Some(p) = primary {
        let pt = at(me, p)?;
        let mut pc = Connection::connect(&pt).await.map_err(|e| {
            Error::Failed(format!(
                "the primary {p} cannot be reached for a graceful failover ({e}); if it is down, run the failover again: it is then forced"
            ))
        })?;
        pc.checked(&[
            b"CLIENT",
            b"PAUSE",
            pause_ms.to_string().as_bytes(),
            b"WRITE",
        ])
        .await?;
        let paused = Instant::now();
        let target = offset_of(&replication(&mut pc).await?);
        report.primary_offset = Some(target);
        loop {
            let now = offset_of(&replication(&mut c).await?);
            report.offset = now;
            if now >= target {
                break;
            }
            if paused.elapsed() >= Duration::from_millis(pause_ms * 4 / 5) {
                pc.command(&[b"CLIENT", b"UNPAUSE"]).await.ok();
                return Err(Error::Failed(format!(
                    "{me} was at offset {now} and did not reach the primary's {target} within {pause_ms} ms; writes resumed on {p} and nothing changed"
                )));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        c.checked(&[b"REPLICAOF", b"NO", b"ONE"]).await?;
        match pc.checked(&[b"REPLICAOF", &mine, my_port.as_bytes()]).await {
            Ok(_) => report.repointed.push(p.to_string()),
            Err(e) => report.not_repointed.push((p.to_string(), e.to_string())),
        }
        pc.command(&[b"CLIENT", b"UNPAUSE"]).await.ok();
        report.paused_ms = Some(paused.elapsed().as_millis() as u64);
        old = Some(p);
    } else {
        c.checked(&[b"REPLICAOF", b"NO", b"ONE"]).await?;
    }
    for o in others.iter().filter(|o| Some(o.as_str()) != old) {
        let r = async {
            let mut oc = Connection::connect(&at(me, o)?).await?;
            oc.checked(&[b"REPLICAOF", &mine, my_port.as_bytes()]).await
        }
        .await;
        match r {
            Ok(_) => report.repointed.push(o.clone()),
            Err(e) => report.not_repointed.push((o.clone(), e.to_string())),
        }
    }
    Ok(report)
}
