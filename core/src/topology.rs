//! The fleet's topology, derived from the latest report of every instance: clusters, their
//! shards (a primary and the replicas that replicate from it, or a Redis Cluster slot owner),
//! and per node its role, offset, replication lag, link and persistence state.
//!
//! Nothing is typed in by hand: a replica belongs to the primary whose address it replicates
//! from (`master_host:master_port`), else to the primary with its replication id, else to the
//! primary serving the same slots. Pure: the coordinator passes the reports and their ages.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::report::{InstanceReport, Role};

/// One instance's latest report as the leader holds it.
#[derive(Clone, Debug)]
pub struct Observed<'a> {
    /// The agent that watches it.
    pub agent: &'a str,
    /// Its latest report.
    pub report: &'a InstanceReport,
    /// How old that report is, in milliseconds.
    pub age_ms: u64,
}

/// The whole fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetView {
    /// Clusters by name.
    pub clusters: Vec<ClusterView>,
}

/// A named cluster: a Redis Cluster, or primary/replica sets grouped under one name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The name the agents' configs give it.
    pub name: String,
    /// `redis-cluster` when its nodes run in cluster mode, else `replication`.
    pub mode: String,
    /// Its shards, by slots then by name.
    pub shards: Vec<ShardView>,
}

/// A shard's id as the storage layout names it: slot ranges `0-5460,10923-16383` become
/// `0-5460_10923-16383`.
pub fn storage_shard(id: &str) -> String {
    id.replace(',', "_")
}

/// A primary and its replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardView {
    /// Slot ranges in cluster mode (`0-5460`), else the primary's name; `unreachable` for
    /// nodes nobody could ask, `unattached` for replicas whose primary no agent watches.
    pub id: String,
    /// Slot ranges served, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// The primary's address, when known.
    pub primary: Option<String>,
    /// The shard's replication id (the primary's `master_replid`).
    pub replid: String,
    /// The primary first, then replicas by address.
    pub nodes: Vec<NodeView>,
}

/// One Redis instance.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its name in its agent's config.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The agent watching it.
    pub agent: String,
    /// Replication role.
    pub role: Role,
    /// Whether its agent can reach it.
    pub reachable: bool,
    /// Why not.
    pub error: Option<String>,
    /// Replication offset: `master_repl_offset` for a primary, the processed offset for a
    /// replica.
    pub offset: u64,
    /// Bytes behind the primary (replicas), from the primary's own view of the replica's
    /// acknowledged offset when it reports one, else from the two reports.
    pub lag_bytes: Option<u64>,
    /// Seconds since the replica's last acknowledgement, as the primary reports it.
    pub lag_seconds: Option<u64>,
    /// The replica's link to its primary: `up` or `down`.
    pub link: Option<String>,
    /// The address it replicates from.
    pub replicating_from: Option<String>,
    /// Age of its latest report, milliseconds.
    pub report_age_ms: u64,
    /// `ok`, `loading`, `bgsave`, `aof-rewrite`, `bgsave-failed`, `aof-write-failed`.
    pub persistence: String,
    /// Writes since the last successful save.
    pub changes_since_save: u64,
    /// Unix time of the last successful save.
    pub last_save_unix: i64,
    /// Whether the agent may sync from it.
    pub sync_allowed: Option<bool>,
    /// Redis Cluster node id.
    pub cluster_myid: Option<String>,
    /// `redis_version`.
    pub redis_version: String,
    /// The server and its own version (`valkey 8.1.8`).
    #[serde(default)]
    pub server: String,
    /// `used_memory` in bytes.
    pub used_memory_bytes: u64,
    /// The host's available memory, when its agent can read it.
    pub host_memory_available_bytes: Option<u64>,
    /// The availability zone its agent's config names (empty: none).
    pub zone: String,
    /// The Sentinel master name its agent's config names (empty: no Sentinel manages it).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sentinel_master: String,
}

fn persistence(r: &InstanceReport) -> &'static str {
    if !r.reachable {
        "unknown"
    } else if r.loading {
        "loading"
    } else if r.rdb_bgsave_in_progress {
        "bgsave"
    } else if r.aof_rewrite_in_progress {
        "aof-rewrite"
    } else if !r.rdb_last_bgsave_ok {
        "bgsave-failed"
    } else if r.aof_enabled && !r.aof_last_write_ok {
        "aof-write-failed"
    } else {
        "ok"
    }
}

fn node(o: &Observed<'_>) -> NodeView {
    let r = o.report;
    NodeView {
        name: r.name.clone(),
        address: r.address.clone(),
        agent: o.agent.to_string(),
        role: r.role,
        reachable: r.reachable,
        error: r.error.clone(),
        offset: match r.role {
            Role::Replica => r.replica_offset.unwrap_or_default(),
            _ => r.master_repl_offset,
        },
        lag_bytes: None,
        lag_seconds: None,
        link: r
            .link_up
            .map(|up| if up { "up" } else { "down" }.to_string()),
        replicating_from: r.primary_address.clone(),
        report_age_ms: o.age_ms,
        persistence: persistence(r).to_string(),
        changes_since_save: r.rdb_changes_since_last_save,
        last_save_unix: r.rdb_last_save_time,
        sync_allowed: r.sync_allowed,
        cluster_myid: r.cluster_myid.clone(),
        redis_version: r.redis_version.clone(),
        server: r.server.clone(),
        used_memory_bytes: r.used_memory_bytes,
        host_memory_available_bytes: r.host_memory_available_bytes,
        zone: r.zone.clone(),
        sentinel_master: r.sentinel_master.clone(),
    }
}

/// Sorted slots as ranges: `[1, 2, 3, 7]` → `[(1, 3), (7, 7)]`.
pub fn slot_ranges(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &s in slots {
        match out.last_mut() {
            Some((_, b)) if b.checked_add(1) == Some(s) => *b = s,
            Some((_, b)) if *b == s => {}
            _ => out.push((s, s)),
        }
    }
    out
}

/// `0-5460,10923-10999`.
pub fn format_slots(slots: &[(u16, u16)]) -> String {
    slots
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Builds the fleet view from the latest reports.
pub fn derive(observed: &[Observed<'_>]) -> FleetView {
    let mut by_cluster: BTreeMap<&str, Vec<&Observed<'_>>> = BTreeMap::new();
    for o in observed {
        let name = if o.report.cluster.is_empty() {
            "default"
        } else {
            o.report.cluster.as_str()
        };
        by_cluster.entry(name).or_default().push(o);
    }
    FleetView {
        clusters: by_cluster
            .into_iter()
            .map(|(name, members)| cluster(name, &members))
            .collect(),
    }
}

fn cluster(name: &str, members: &[&Observed<'_>]) -> ClusterView {
    let cluster_mode = members.iter().any(|o| o.report.cluster_myid.is_some());
    let mut shards: Vec<ShardView> = Vec::new();
    let primaries: Vec<&&Observed<'_>> = members
        .iter()
        .filter(|o| o.report.role == Role::Primary)
        .collect();
    for p in &primaries {
        let r = p.report;
        shards.push(ShardView {
            id: if cluster_mode && !r.slots.is_empty() {
                format_slots(&r.slots)
            } else {
                r.name.clone()
            },
            slots: r.slots.clone(),
            primary: Some(r.address.clone()),
            replid: r.replid.clone(),
            nodes: vec![node(p)],
        });
    }
    let mut unattached = Vec::new();
    let mut unreachable = Vec::new();
    for o in members.iter().filter(|o| o.report.role != Role::Primary) {
        let r = o.report;
        if r.role != Role::Replica {
            unreachable.push(node(o));
            continue;
        }
        let by_address = primaries
            .iter()
            .position(|p| Some(&p.report.address) == r.primary_address.as_ref());
        let by_replid = || {
            primaries
                .iter()
                .position(|p| !r.replid.is_empty() && p.report.replid == r.replid)
        };
        let by_slots = || {
            primaries
                .iter()
                .position(|p| !r.slots.is_empty() && p.report.slots == r.slots)
        };
        let Some(i) = by_address.or_else(by_replid).or_else(by_slots) else {
            unattached.push(node(o));
            continue;
        };
        let primary = primaries[i].report;
        let mut n = node(o);
        // The primary's own view of the replica's acknowledged offset is consistent with its
        // offset (one INFO); fall back to comparing two reports taken up to a second apart.
        let seen = primary.replicas.iter().find(|c| c.address == r.address);
        match seen {
            Some(c) => {
                n.lag_bytes = Some(primary.master_repl_offset.saturating_sub(c.offset));
                n.lag_seconds = Some(c.lag_seconds);
            }
            None => {
                n.lag_bytes = r
                    .replica_offset
                    .map(|off| primary.master_repl_offset.saturating_sub(off));
            }
        }
        shards[i].nodes.push(n);
    }
    for s in &mut shards {
        s.nodes[1..].sort_by(|a, b| a.address.cmp(&b.address));
    }
    shards.sort_by(|a, b| {
        let key = |s: &ShardView| s.slots.first().map(|r| r.0).unwrap_or(u16::MAX);
        key(a).cmp(&key(b)).then_with(|| a.id.cmp(&b.id))
    });
    for (id, mut nodes) in [("unattached", unattached), ("unreachable", unreachable)] {
        if nodes.is_empty() {
            continue;
        }
        nodes.sort_by(|a, b| a.address.cmp(&b.address));
        shards.push(ShardView {
            id: id.to_string(),
            nodes,
            ..Default::default()
        });
    }
    ClusterView {
        name: name.to_string(),
        mode: if cluster_mode {
            "redis-cluster"
        } else {
            "replication"
        }
        .to_string(),
        shards,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn slots_become_ranges() {
        assert_eq!(
            slot_ranges(&[1, 2, 3, 7, 9, 10]),
            vec![(1, 3), (7, 7), (9, 10)]
        );
        assert_eq!(format_slots(&slot_ranges(&[5, 6, 16383])), "5-6,16383");
        assert!(slot_ranges(&[]).is_empty());
    }

    use super::*;

    fn info(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn primary(name: &str, addr: &str, offset: &str, replicas: &[(&str, &str)]) -> InstanceReport {
        let mut pairs = vec![
            ("role", "master"),
            ("master_replid", "r-p"),
            ("master_repl_offset", offset),
            ("rdb_last_bgsave_status", "ok"),
        ];
        let lines: Vec<String> = replicas
            .iter()
            .map(|(a, off)| {
                let (ip, port) = a.split_once(':').unwrap();
                format!("ip={ip},port={port},state=online,offset={off},lag=1")
            })
            .collect();
        let keys: Vec<String> = (0..lines.len()).map(|i| format!("slave{i}")).collect();
        for (k, l) in keys.iter().zip(&lines) {
            pairs.push((k, l));
        }
        InstanceReport::from_info(name, addr, &info(&pairs))
    }

    fn replica(name: &str, addr: &str, of: &str, offset: &str) -> InstanceReport {
        let (host, port) = of.split_once(':').unwrap();
        InstanceReport::from_info(
            name,
            addr,
            &info(&[
                ("role", "slave"),
                ("master_host", host),
                ("master_port", port),
                ("master_link_status", "up"),
                ("slave_repl_offset", offset),
                ("master_replid", "r-p"),
                ("rdb_last_bgsave_status", "ok"),
                ("rdb_bgsave_in_progress", "1"),
            ]),
        )
    }

    #[test]
    fn replicas_join_their_primary_with_lag_from_its_view() {
        let p = primary("p", "10.0.0.1:6379", "1000", &[("10.0.0.2:6379", "900")]);
        let r = replica("r", "10.0.0.2:6379", "10.0.0.1:6379", "950");
        let lost = InstanceReport::unreachable("x", "10.0.0.9:6379", "refused".into());
        let obs = [
            Observed {
                agent: "b",
                report: &r,
                age_ms: 200,
            },
            Observed {
                agent: "a",
                report: &p,
                age_ms: 100,
            },
            Observed {
                agent: "c",
                report: &lost,
                age_ms: 50,
            },
        ];
        let v = derive(&obs);
        assert_eq!(v.clusters.len(), 1);
        let c = &v.clusters[0];
        assert_eq!(
            (c.name.as_str(), c.mode.as_str()),
            ("default", "replication")
        );
        assert_eq!(c.shards.len(), 2);
        let s = &c.shards[0];
        assert_eq!(s.primary.as_deref(), Some("10.0.0.1:6379"));
        assert_eq!(s.nodes.len(), 2);
        let (pn, rn) = (&s.nodes[0], &s.nodes[1]);
        assert_eq!(
            (pn.role, pn.offset, pn.agent.as_str()),
            (Role::Primary, 1000, "a")
        );
        assert_eq!(
            (rn.role, rn.offset, rn.agent.as_str()),
            (Role::Replica, 950, "b")
        );
        // Lag from the primary's acknowledged offset (900), not the replica's own (950).
        assert_eq!((rn.lag_bytes, rn.lag_seconds), (Some(100), Some(1)));
        assert_eq!(rn.link.as_deref(), Some("up"));
        assert_eq!(rn.persistence, "bgsave");
        assert_eq!(c.shards[1].id, "unreachable");
        assert_eq!(c.shards[1].nodes[0].error.as_deref(), Some("refused"));
    }

    #[test]
    fn cluster_shards_are_named_by_slots_and_sorted() {
        let mut a = primary("a", "h:1", "5", &[]);
        a.cluster_myid = Some("id-a".into());
        a.slots = vec![(5461, 10922)];
        a.cluster = "orders".into();
        let mut b = primary("b", "h:2", "7", &[]);
        b.cluster_myid = Some("id-b".into());
        b.slots = vec![(0, 5460)];
        b.cluster = "orders".into();
        b.replid = "other".into();
        // A replica whose primary address is unknown to us joins by slots.
        let mut r = replica("r", "h:3", "192.168.0.1:2", "7");
        r.cluster_myid = Some("id-r".into());
        r.slots = vec![(0, 5460)];
        r.cluster = "orders".into();
        r.replid = "nope".into();
        let orphan = replica("o", "h:9", "h:99", "1");
        let obs: Vec<Observed<'_>> = [&a, &b, &r, &orphan]
            .into_iter()
            .map(|report| Observed {
                agent: "x",
                report,
                age_ms: 0,
            })
            .collect();
        let v = derive(&obs);
        let orders = v.clusters.iter().find(|c| c.name == "orders").unwrap();
        assert_eq!(orders.mode, "redis-cluster");
        let ids: Vec<&str> = orders.shards.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["0-5460", "5461-10922"]);
        assert_eq!(orders.shards[0].nodes.len(), 2);
        assert_eq!(orders.shards[0].nodes[1].lag_bytes, Some(0));
        let default = v.clusters.iter().find(|c| c.name == "default").unwrap();
        assert_eq!(default.shards[0].id, "unattached");
    }
}
