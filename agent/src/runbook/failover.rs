//! A runbook's failover step, run by the agent beside the replica to promote: graceful (writes
//! paused on the live primary until the replica has every acknowledged write) or forced (the
//! primary is dead; the replica is promoted at the offset it has).

use fleetsnap_core::outcomes::PromoteReport;
use std::time::{Duration, Instant};

use fleetsnap_core::window::{JobResult, NodeOp, NodeTask};

use crate::config::AgentConfig;
use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::{Connection, Value, info_field};

/// A Sentinel that monitors the set, and the name it monitors it under.
struct Sentinel {
    at: RedisTarget,
    master: String,
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
    let sentinel = match (&i.sentinel, &i.sentinel_master) {
        (Some(url), Some(master)) => Some(Sentinel {
            at: RedisTarget::parse(url)?,
            master: master.clone(),
        }),
        _ => None,
    };
    let report = match task.op {
        NodeOp::Promote {
            primary,
            others,
            cluster,
            pause_ms,
        } => match sentinel {
            Some(s) if !cluster => {
                by_sentinel(&me, &s, primary.as_deref(), &others, pause_ms).await?
            }
            _ => promote(&me, primary.as_deref(), &others, cluster, pause_ms).await?,
        },
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
    let (mut c, offset) = a_replica(me).await?;
    let mut report = promote_report(me, primary.is_some(), cluster, offset, None);
    if cluster {
        if let Some(p) = primary {
            primary_knows_me(me, &mut c, p).await?;
        }
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
    let mut old = None;
    if let Some(p) = primary {
        let paused = Instant::now();
        catch_up(me, &mut c, p, pause_ms, pause_ms * 4 / 5, &mut report).await?;
        c.checked(&[b"REPLICAOF", b"NO", b"ONE"]).await?;
        repoint(me, &[p.to_string()], &mut report).await;
        unpause(me, p).await;
        report.paused_ms = Some(paused.elapsed().as_millis() as u64);
        old = Some(p);
    } else {
        c.checked(&[b"REPLICAOF", b"NO", b"ONE"]).await?;
    }
    let rest: Vec<String> = others
        .iter()
        .filter(|o| Some(o.as_str()) != old)
        .cloned()
        .collect();
    repoint(me, &rest, &mut report).await;
    Ok(report)
}

/// Points each of `others` at `me` with `REPLICAOF`, noting in `report` which could not be.
async fn repoint(me: &RedisTarget, others: &[String], report: &mut PromoteReport) {
    let (mine, my_port) = (me.host.as_bytes().to_vec(), me.port.to_string());
    for o in others {
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
}

/// A connection to `me`, which must be a replica, and its replication offset.
async fn a_replica(me: &RedisTarget) -> Result<(Connection, u64)> {
    let mut c = Connection::connect(me).await?;
    let info = replication(&mut c).await?;
    if info_field(&info, "role") != Some("slave") {
        return Err(Error::Input(format!(
            "{me} is not a replica (role {}): nothing to promote; `fleetsnap status` shows the shard as it is now",
            info_field(&info, "role").unwrap_or("unknown")
        )));
    }
    Ok((c, offset_of(&info)))
}

/// The report of a promotion that has just begun.
fn promote_report(
    me: &RedisTarget,
    graceful: bool,
    cluster: bool,
    offset: u64,
    sentinel: Option<String>,
) -> PromoteReport {
    PromoteReport {
        promoted: me.address(),
        graceful,
        cluster,
        primary_offset: None,
        offset,
        paused_ms: None,
        repointed: Vec::new(),
        not_repointed: Vec::new(),
        sentinel,
    }
}

/// Pauses the writes of the primary `p` and waits until this replica (`c`) has processed the
/// offset the primary then had. If it has not within `within_ms`, the writes resume and the
/// error says nothing changed. Each command to the primary goes on a fresh connection: a Sentinel
/// kills the clients of the nodes it reconfigures.
async fn catch_up(
    me: &RedisTarget,
    c: &mut Connection,
    p: &str,
    pause_ms: u64,
    within_ms: u64,
    report: &mut PromoteReport,
) -> Result<()> {
    let started = Instant::now();
    let pause = pause_ms.to_string();
    once(me, p, &[b"CLIENT", b"PAUSE", pause.as_bytes(), b"WRITE"])
        .await
        .map_err(|e| {
            Error::Failed(format!(
                "the primary {p} cannot be paused for a graceful failover ({e}); if it is down, run the failover again: it is then forced"
            ))
        })?;
    let target = {
        let mut pc = Connection::connect(&at(me, p)?).await?;
        offset_of(&replication(&mut pc).await?)
    };
    report.primary_offset = Some(target);
    loop {
        report.offset = offset_of(&replication(c).await?);
        if report.offset >= target {
            return Ok(());
        }
        if started.elapsed() >= Duration::from_millis(within_ms) {
            unpause(me, p).await;
            return Err(Error::Failed(format!(
                "{me} was at offset {} and did not reach the primary's {target} within {within_ms} ms; writes resumed on {p} and nothing changed",
                report.offset
            )));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Lets the primary `p`'s writes resume (they are refused if it is a replica by then).
async fn unpause(me: &RedisTarget, p: &str) {
    once(me, p, &[b"CLIENT", b"UNPAUSE"]).await.ok();
}

/// A promotion through the Sentinel that manages the set. The other replicas get
/// `replica-priority 0` for the while, so the Sentinel picks this one; with the primary alive,
/// its writes are paused until this replica has its offset, and it is re-pointed here before
/// they resume, so no acknowledged write is lost.
async fn by_sentinel(
    me: &RedisTarget,
    s: &Sentinel,
    primary: Option<&str>,
    others: &[String],
    pause_ms: u64,
) -> Result<PromoteReport> {
    let (mut c, offset) = a_replica(me).await?;
    let mut report = promote_report(me, primary.is_some(), false, offset, Some(s.at.address()));
    let mut sc = Connection::connect(&s.at).await.map_err(|e| {
        Error::Failed(format!(
            "the Sentinel {} that the agent's config names for {me} cannot be reached ({e}): nothing changed",
            s.at
        ))
    })?;
    // Only this replica may be chosen: the others' priorities are set to 0 and put back after.
    let mut steered = Vec::new();
    for o in others {
        let r = async {
            let mut oc = Connection::connect(&at(me, o)?).await?;
            let was = oc.config_get("replica-priority").await?;
            oc.checked(&[b"CONFIG", b"SET", b"replica-priority", b"0"])
                .await?;
            Ok::<_, Error>(was)
        }
        .await;
        if let Ok(was) = r {
            steered.push((o.clone(), was));
        }
    }
    let others_steered: Vec<String> = steered.iter().map(|(o, _)| o.clone()).collect();
    let result = match sentinel_sees_priority_zero(&mut sc, s, &others_steered).await {
        Ok(()) => sentinel_failover(me, &mut c, &mut sc, s, primary, pause_ms, &mut report).await,
        Err(e) => Err(e),
    };
    for (o, was) in steered {
        if let Ok(t) = at(me, &o)
            && let Ok(mut oc) = Connection::connect(&t).await
        {
            let _ = oc
                .command(&[b"CONFIG", b"SET", b"replica-priority", was.as_bytes()])
                .await;
        }
    }
    result?;
    // The Sentinel re-points the others as well; doing it here too makes the shard whole sooner.
    repoint(me, others, &mut report).await;
    Ok(report)
}

/// Waits until the Sentinel's view of each of `others` has `slave-priority 0`: it reads a
/// replica's priority from its `INFO`, every 10 s, and would otherwise choose by what it last saw.
async fn sentinel_sees_priority_zero(
    sc: &mut Connection,
    s: &Sentinel,
    others: &[String],
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let Value::Array(Some(replicas)) = sc
            .checked(&[b"SENTINEL", b"REPLICAS", s.master.as_bytes()])
            .await?
        else {
            return Err(Error::Failed(format!(
                "the Sentinel {} gave no replica list for {}",
                s.at, s.master
            )));
        };
        let mut zero = Vec::new();
        for r in &replicas {
            let Value::Array(Some(kv)) = r else { continue };
            let field = |name: &str| {
                kv.chunks(2)
                    .find(|p| p.len() == 2 && p[0].text().as_deref() == Some(name))
                    .and_then(|p| p[1].text())
                    .unwrap_or_default()
            };
            if field("slave-priority") == "0" {
                zero.push(format!("{}:{}", field("ip"), field("port")));
            }
        }
        let waiting: Vec<&String> = others.iter().filter(|o| !zero.contains(o)).collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Failed(format!(
                "the Sentinel {} has not seen replica-priority 0 on {waiting:?} within 25 s, so it could promote one of them: nothing changed",
                s.at
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A manual failover goes nowhere until the cluster agrees this node is a replica: its link to
/// its primary must be up (to catch up), and every primary must see it as a replica (a primary
/// that still takes it for a master refuses its vote: "it is a master node"). Gossip lags a
/// replica that just joined or moved by seconds. Waits up to 15 s for both.
async fn primary_knows_me(me: &RedisTarget, c: &mut Connection, primary: &str) -> Result<()> {
    let my_id = match c.checked(&[b"CLUSTER", b"MYID"]).await? {
        Value::Bulk(Some(id)) => String::from_utf8_lossy(&id).into_owned(),
        other => return Err(Error::redis(me, format!("CLUSTER MYID gave {other:?}"))),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let link = info_field(&replication(c).await?, "master_link_status") == Some("up");
        let mut doubting = Vec::new();
        // Every primary this node knows of, each asked what it takes this node for.
        let mut primaries = vec![primary.to_string()];
        if let Value::Bulk(Some(nodes)) = c.checked(&[b"CLUSTER", b"NODES"]).await? {
            for line in String::from_utf8_lossy(&nodes).lines() {
                let f: Vec<&str> = line.split(' ').collect();
                if f.len() > 2 && f[2].contains("master") && !f[2].contains("fail") {
                    let address = f[1].split('@').next().unwrap_or_default().to_string();
                    if !primaries.contains(&address) {
                        primaries.push(address);
                    }
                }
            }
        }
        for p in &primaries {
            let sees_replica = match once(me, p, &[b"CLUSTER", b"NODES"]).await {
                Ok(Value::Bulk(Some(nodes))) => String::from_utf8_lossy(&nodes)
                    .lines()
                    .find(|l| l.starts_with(my_id.as_str()))
                    .and_then(|l| l.split(' ').nth(2).map(|flags| flags.contains("slave")))
                    .unwrap_or(false),
                _ => false,
            };
            if !sees_replica {
                doubting.push(p.clone());
            }
        }
        if link && doubting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Failed(format!(
                "{me} is not ready for a manual failover after 15 s ({}): nothing changed; try again once `CLUSTER NODES` agrees and the link is up",
                if link {
                    format!("{} do not yet see it as a replica", doubting.join(", "))
                } else {
                    "its link to the primary is down".to_string()
                }
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One command on a fresh connection to `address`: the Sentinel kills the normal clients of the
/// nodes it reconfigures, so a connection held across a failover may be gone.
async fn once(me: &RedisTarget, address: &str, args: &[&[u8]]) -> Result<Value> {
    Connection::connect(&at(me, address)?)
        .await?
        .checked(args)
        .await
}

async fn role_and_offset(me: &RedisTarget) -> Result<(String, u64)> {
    let mut c = Connection::connect(me).await?;
    let info = replication(&mut c).await?;
    Ok((
        info_field(&info, "role").unwrap_or_default().to_string(),
        offset_of(&info),
    ))
}

async fn sentinel_failover(
    me: &RedisTarget,
    c: &mut Connection,
    sc: &mut Connection,
    s: &Sentinel,
    primary: Option<&str>,
    pause_ms: u64,
    report: &mut PromoteReport,
) -> Result<()> {
    let started = Instant::now();
    if let Some(p) = primary {
        catch_up(me, c, p, pause_ms, pause_ms / 2, report).await?;
    }
    if let Err(e) = sc
        .checked(&[b"SENTINEL", b"FAILOVER", s.master.as_bytes()])
        .await
    {
        if let Some(p) = primary {
            unpause(me, p).await;
        }
        return Err(Error::Failed(format!(
            "the Sentinel {} refused SENTINEL FAILOVER {}: {e}; nothing changed",
            s.at, s.master
        )));
    }
    // The Sentinel promotes the replica and then announces it: within the pause when graceful.
    let limit = if primary.is_some() {
        Duration::from_millis(pause_ms)
    } else {
        Duration::from_secs(30)
    };
    let me_addr = me.address();
    loop {
        let role = role_and_offset(me).await.map(|r| r.0).unwrap_or_default();
        let announced = match sc
            .command(&[b"SENTINEL", b"GET-MASTER-ADDR-BY-NAME", s.master.as_bytes()])
            .await?
        {
            Value::Array(Some(v)) if v.len() == 2 => format!(
                "{}:{}",
                v[0].text().unwrap_or_default(),
                v[1].text().unwrap_or_default()
            ),
            _ => String::new(),
        };
        if role == "master" && announced == me_addr {
            break;
        }
        if started.elapsed() >= limit {
            if let Some(p) = primary {
                unpause(me, p).await;
                return Err(Error::Failed(format!(
                    "the Sentinel did not promote {me} within the {pause_ms} ms pause (role {role}, it announces {announced:?}); writes resumed on {p}: check `SENTINEL MASTERS` before retrying"
                )));
            }
            return Err(Error::Failed(format!(
                "the Sentinel did not promote {me} within 30 s (it announces {announced:?}); check `SENTINEL MASTERS`"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    report.offset = role_and_offset(me).await?.1;
    if let Some(p) = primary {
        // Re-pointed before its writes resume: they are refused, not lost.
        repoint(me, &[p.to_string()], report).await;
        unpause(me, p).await;
        let held = started.elapsed();
        report.paused_ms = Some(held.as_millis() as u64);
        if held >= Duration::from_millis(pause_ms) {
            return Err(Error::Failed(format!(
                "{me} was promoted, but after the {pause_ms} ms pause on {p} had run out: writes acknowledged by {p} in between may be lost; compare its keys with {me}"
            )));
        }
    }
    Ok(())
}
