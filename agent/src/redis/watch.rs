//! Collecting an instance report (docs/design.md §2) from a live node: one `INFO`, and in cluster mode
//! `CLUSTER MYID` and `CLUSTER NODES`, plus whether the agent may sync from it.

use fleetsnap_core::InstanceReport;
use fleetsnap_core::report::shard_slots;

use super::resp::{Connection, Value, info_field};
use super::target::RedisTarget;
use crate::error::Result;

/// One report of the instance at `target`; an unreachable node gives a report that says why.
pub async fn collect(name: &str, target: &RedisTarget) -> InstanceReport {
    match collect_from(name, target).await {
        Ok(r) => r,
        Err(e) => InstanceReport::unreachable(name, &target.address(), e.to_string()),
    }
}

async fn collect_from(name: &str, target: &RedisTarget) -> Result<InstanceReport> {
    let mut c = Connection::connect(target).await?;
    let info = c.info("default").await?;
    let mut report = InstanceReport::from_info(name, &target.address(), &info);
    if info_field(&info, "cluster_enabled") == Some("1") {
        let myid = c
            .checked(&[b"CLUSTER", b"MYID"])
            .await?
            .text()
            .unwrap_or_default();
        let nodes = c
            .checked(&[b"CLUSTER", b"NODES"])
            .await?
            .text()
            .unwrap_or_default();
        report.slots = shard_slots(&nodes, &myid);
        report.cluster_myid = Some(myid);
    }
    report.sync_allowed = sync_allowed(&mut c).await?;
    Ok(report)
}

/// Whether PSYNC exists on the node and the agent's user may run it; `None` when the user may not
/// ask the node (`ACL WHOAMI`/`ACL DRYRUN` refused).
async fn sync_allowed(c: &mut Connection) -> Result<Option<bool>> {
    // A renamed or disabled command is unknown to COMMAND INFO: a null in place of its entry
    // (`*1 $-1` on Redis 7.0).
    let psync = c.target().psync().to_vec();
    if let Value::Array(Some(v)) = c.command(&[b"COMMAND", b"INFO", &psync]).await?
        && v.first()
            .is_none_or(|first| matches!(first, Value::Array(None) | Value::Bulk(None)))
    {
        return Ok(Some(false));
    }
    let user = match c.command(&[b"ACL", b"WHOAMI"]).await? {
        Value::Bulk(Some(u)) => u,
        Value::Simple(u) => u.into_bytes(),
        _ => return Ok(None),
    };
    Ok(
        match c
            .command(&[b"ACL", b"DRYRUN", &user, &psync, b"?", b"-1"])
            .await?
        {
            Value::Simple(s) if s == "OK" => Some(true),
            // The reason it would be refused.
            Value::Bulk(Some(_)) => Some(false),
            _ => None,
        },
    )
}
