//! A runbook's probe of a running target: it answers, a cluster serves every slot, and it holds
//! the wanted number of keys.

use fleetsnap_core::outcomes::ProbeReport;
use fleetsnap_core::window::{JobResult, ProbeTask, ProbeWant};

use crate::error::{Error, Result};
use crate::redis::RedisTarget;
use crate::redis::Value;
use crate::redis::keyspace_keys;
use crate::restore::Target;

/// A runbook's check of a running target: it answers, a Redis Cluster has every slot served
/// and `cluster_state:ok`, and its primaries hold between the wanted numbers of keys.
pub async fn probe(task: ProbeTask) -> Result<JobResult> {
    let (min, max) = match task.want {
        ProbeWant::Empty => (0, 0),
        ProbeWant::Keys { min, max } => (min, max),
        ProbeWant::Restored => {
            return Err(Error::Input(
                "the probe's bounds were not filled in from the restore before it: is the coordinator older than this agent?".into(),
            ));
        }
    };
    let target = RedisTarget::parse(&task.target)?;
    let mut t = Target::open(&target).await?;
    let cluster = t.is_cluster();
    let mut primaries = Vec::new();
    let mut keys = 0;
    for conn in t.primaries() {
        let name = conn.target().to_string();
        if cluster
            && let Value::Bulk(Some(b)) = conn.checked(&[b"CLUSTER", b"INFO"]).await?
            && !String::from_utf8_lossy(&b).contains("cluster_state:ok")
        {
            return Err(Error::Failed(format!(
                "{name} does not report cluster_state:ok (CLUSTER INFO): the cluster is not ready for traffic"
            )));
        }
        keys += keyspace_keys(&conn.info("keyspace").await?);
        primaries.push(name);
    }
    let report = ProbeReport {
        target: target.to_string(),
        cluster,
        primaries,
        keys,
        min,
        max,
    };
    if keys < min || keys > max {
        let want = if max == 0 {
            "none: restore into an empty target, or empty this one first".to_string()
        } else if min == max {
            format!("{min}")
        } else {
            format!("between {min} and {max}")
        };
        return Err(Error::Failed(format!(
            "{} holds {keys} keys on {} primaries; wanted {want}",
            report.target,
            report.primaries.len()
        )));
    }
    Ok(JobResult::Step {
        report_json: serde_json::to_string(&report).expect("reports serialise"),
    })
}
