//! What an agent reports about one Redis instance every second (docs/design.md §2), parsed from `INFO`
//! and `CLUSTER NODES` text. Pure: the agent fetches the text, this module reads it.

use serde::{Deserialize, Serialize};

/// Replication role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// A primary (`role:master`).
    Primary,
    /// A replica (`role:slave`).
    Replica,
    /// Not known (unreachable, or INFO said something else).
    #[default]
    Unknown,
}

/// A replica as its primary sees it (`slaveN:` lines).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectedReplica {
    /// `ip:port`.
    pub address: String,
    /// Its acknowledged replication offset.
    pub offset: u64,
    /// `online`, `wait_bgsave`, `send_bulk`, …
    pub state: String,
    /// Seconds since its last acknowledgement.
    pub lag_seconds: u64,
}

/// One instance's report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceReport {
    /// The instance's name in the agent's config (its address for one-shot reports).
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The cluster the agent's config puts the instance in (empty for one-shot reports).
    #[serde(default)]
    pub cluster: String,
    /// The availability zone the agent's config puts the instance in (empty: not said).
    #[serde(default)]
    pub zone: String,
    /// The Sentinel master name the agent's config gives the instance (empty: no Sentinel).
    #[serde(default)]
    pub sentinel_master: String,
    /// Memory the host can still give (`MemAvailable` of the agent's host, which runs the
    /// instance), for the copy-on-write of a fork; `None` when the agent cannot read it.
    #[serde(default)]
    pub host_memory_available_bytes: Option<u64>,
    /// Whether the agent could talk to it.
    pub reachable: bool,
    /// Why not, when unreachable.
    pub error: Option<String>,
    /// Replication role.
    pub role: Role,
    /// `run_id`.
    pub run_id: String,
    /// `master_replid`.
    pub replid: String,
    /// `master_replid2`.
    pub replid2: String,
    /// `master_repl_offset`.
    pub master_repl_offset: u64,
    /// `slave_repl_offset` (replicas).
    pub replica_offset: Option<u64>,
    /// `master_link_status:up` (replicas).
    pub link_up: Option<bool>,
    /// `master_host:master_port` (replicas).
    pub primary_address: Option<String>,
    /// `master_last_io_seconds_ago` (replicas).
    pub primary_last_io_seconds: Option<i64>,
    /// Replicas connected to this primary.
    pub replicas: Vec<ConnectedReplica>,
    /// `loading:1`.
    pub loading: bool,
    /// `rdb_bgsave_in_progress:1`.
    pub rdb_bgsave_in_progress: bool,
    /// `rdb_last_bgsave_status:ok`.
    pub rdb_last_bgsave_ok: bool,
    /// `rdb_changes_since_last_save`.
    pub rdb_changes_since_last_save: u64,
    /// `rdb_last_save_time` (Unix seconds).
    pub rdb_last_save_time: i64,
    /// `aof_enabled:1`.
    pub aof_enabled: bool,
    /// `aof_rewrite_in_progress:1`.
    pub aof_rewrite_in_progress: bool,
    /// `aof_last_write_status:ok`.
    pub aof_last_write_ok: bool,
    /// `used_memory` in bytes.
    pub used_memory_bytes: u64,
    /// `maxmemory` in bytes (0: no limit).
    pub maxmemory_bytes: u64,
    /// `total_system_memory` in bytes.
    pub total_system_memory_bytes: u64,
    /// `redis_version` (Valkey's: the Redis version it is compatible with).
    pub redis_version: String,
    /// The server and its own version: `valkey 8.1.8`, `redis 7.0.15` ("" when unknown).
    #[serde(default)]
    pub server: String,
    /// Cluster node id (`CLUSTER MYID`), in cluster mode.
    pub cluster_myid: Option<String>,
    /// Slot ranges of the shard this node belongs to (its own, or its primary's), inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Whether the agent may sync from it: PSYNC exists and the agent's user may run it; `None` when
    /// the agent's user may not ask (`ACL DRYRUN` refused).
    pub sync_allowed: Option<bool>,
}

fn field<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn number<T: std::str::FromStr + Default>(info: &[(String, String)], key: &str) -> T {
    field(info, key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

fn flag(info: &[(String, String)], key: &str) -> bool {
    field(info, key) == Some("1")
}

/// Parses a `slaveN:ip=…,port=…,state=…,offset=…,lag=…` value.
fn parse_replica(value: &str) -> Option<ConnectedReplica> {
    let mut r = ConnectedReplica::default();
    let (mut ip, mut port) = (None, None);
    for part in value.split(',') {
        let (k, v) = part.split_once('=')?;
        match k {
            "ip" => ip = Some(v),
            "port" => port = Some(v),
            "state" => r.state = v.to_string(),
            "offset" => r.offset = v.parse().ok()?,
            "lag" => r.lag_seconds = v.parse().unwrap_or_default(),
            _ => {}
        }
    }
    r.address = format!("{}:{}", ip?, port?);
    Some(r)
}

impl InstanceReport {
    /// Fills the report from `INFO` key/value pairs (sections server, replication, persistence,
    /// memory).
    pub fn from_info(name: &str, address: &str, info: &[(String, String)]) -> Self {
        let role = match field(info, "role") {
            Some("master") => Role::Primary,
            Some("slave") => Role::Replica,
            _ => Role::Unknown,
        };
        let replica = role == Role::Replica;
        let replicas = info
            .iter()
            .filter(|(k, _)| {
                k.starts_with("slave") && k[5..].bytes().all(|b| b.is_ascii_digit()) && k.len() > 5
            })
            .filter_map(|(_, v)| parse_replica(v))
            .collect();
        Self {
            name: name.to_string(),
            address: address.to_string(),
            reachable: true,
            error: None,
            role,
            zone: String::new(),
            sentinel_master: String::new(),
            host_memory_available_bytes: None,
            run_id: field(info, "run_id").unwrap_or_default().to_string(),
            replid: field(info, "master_replid").unwrap_or_default().to_string(),
            replid2: field(info, "master_replid2")
                .unwrap_or_default()
                .to_string(),
            master_repl_offset: number(info, "master_repl_offset"),
            replica_offset: replica.then(|| number(info, "slave_repl_offset")),
            link_up: replica.then(|| field(info, "master_link_status") == Some("up")),
            primary_address: replica.then(|| {
                format!(
                    "{}:{}",
                    field(info, "master_host").unwrap_or_default(),
                    field(info, "master_port").unwrap_or_default()
                )
            }),
            primary_last_io_seconds: replica.then(|| number(info, "master_last_io_seconds_ago")),
            replicas,
            loading: flag(info, "loading"),
            rdb_bgsave_in_progress: flag(info, "rdb_bgsave_in_progress"),
            rdb_last_bgsave_ok: field(info, "rdb_last_bgsave_status") == Some("ok"),
            rdb_changes_since_last_save: number(info, "rdb_changes_since_last_save"),
            rdb_last_save_time: number(info, "rdb_last_save_time"),
            aof_enabled: flag(info, "aof_enabled"),
            aof_rewrite_in_progress: flag(info, "aof_rewrite_in_progress"),
            aof_last_write_ok: field(info, "aof_last_write_status") == Some("ok"),
            used_memory_bytes: number(info, "used_memory"),
            maxmemory_bytes: number(info, "maxmemory"),
            total_system_memory_bytes: number(info, "total_system_memory"),
            redis_version: field(info, "redis_version").unwrap_or_default().to_string(),
            server: crate::server::Server::from_info(|k| field(info, k))
                .map(|s| s.to_string())
                .unwrap_or_default(),
            cluster_myid: None,
            slots: Vec::new(),
            sync_allowed: None,
            cluster: String::new(),
        }
    }

    /// A report for an instance the agent cannot reach.
    pub fn unreachable(name: &str, address: &str, error: String) -> Self {
        Self {
            name: name.to_string(),
            address: address.to_string(),
            reachable: false,
            error: Some(error),
            ..Self::default()
        }
    }

    /// Bytes this replica is behind its primary's offset as the replica last heard it.
    pub fn lag_bytes(&self) -> Option<u64> {
        self.replica_offset
            .map(|o| self.master_repl_offset.saturating_sub(o))
    }
}

/// The slot ranges served by the shard of node `myid`, from `CLUSTER NODES` text: a primary's own
/// ranges, or, for a replica, its primary's.
pub fn shard_slots(cluster_nodes: &str, myid: &str) -> Vec<(u16, u16)> {
    let lines: Vec<Vec<&str>> = cluster_nodes
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.len() >= 8)
        .collect();
    let Some(me) = lines.iter().find(|w| w[0] == myid) else {
        return Vec::new();
    };
    let owner = if me[2].contains("slave") || me[2].contains("replica") {
        me[3]
    } else {
        myid
    };
    let Some(primary) = lines.iter().find(|w| w[0] == owner) else {
        return Vec::new();
    };
    let mut out: Vec<(u16, u16)> = primary[8..]
        .iter()
        .filter(|s| !s.starts_with('['))
        .filter_map(|s| match s.split_once('-') {
            Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
            None => s.parse().ok().map(|n| (n, n)),
        })
        .collect();
    out.sort_unstable();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn primary_with_replicas() {
        let r = InstanceReport::from_info(
            "p",
            "10.0.0.1:6379",
            &info(
                "redis_version:7.0.15\nrole:master\nconnected_slaves:2\nslave0:ip=10.0.0.2,port=6379,state=online,offset=900,lag=0\nslave1:ip=10.0.0.3,port=6379,state=wait_bgsave,offset=0,lag=1\nmaster_replid:abc\nmaster_repl_offset:1000\nrdb_last_bgsave_status:ok\nused_memory:1048576",
            ),
        );
        assert_eq!(r.role, Role::Primary);
        assert_eq!(r.replicas.len(), 2);
        assert_eq!(
            r.replicas[0],
            ConnectedReplica {
                address: "10.0.0.2:6379".into(),
                offset: 900,
                state: "online".into(),
                lag_seconds: 0
            }
        );
        assert_eq!(
            (
                r.master_repl_offset,
                r.used_memory_bytes,
                r.rdb_last_bgsave_ok
            ),
            (1000, 1 << 20, true)
        );
        assert_eq!(r.lag_bytes(), None);
    }

    #[test]
    fn replica_link_and_lag() {
        let r = InstanceReport::from_info(
            "r",
            "10.0.0.2:6379",
            &info(
                "role:slave\nmaster_host:10.0.0.1\nmaster_port:6379\nmaster_link_status:down\nmaster_last_io_seconds_ago:-1\nslave_repl_offset:700\nmaster_repl_offset:1000\nslave_read_only:1",
            ),
        );
        assert_eq!(r.role, Role::Replica);
        assert_eq!(r.link_up, Some(false));
        assert_eq!(r.primary_address.as_deref(), Some("10.0.0.1:6379"));
        assert_eq!(r.lag_bytes(), Some(300));
        assert!(
            r.replicas.is_empty(),
            "slave_read_only is not a replica line"
        );
    }

    #[test]
    fn cluster_nodes_give_the_shard_slots() {
        let text = "\
aaa 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 [5461->-bbb]
bbb 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922 16000
ccc 127.0.0.1:7002@17002 slave bbb 0 0 2 connected
";
        assert_eq!(shard_slots(text, "aaa"), vec![(0, 5460)]);
        assert_eq!(
            shard_slots(text, "ccc"),
            vec![(5461, 10922), (16000, 16000)]
        );
        assert!(shard_slots(text, "zzz").is_empty());
    }
}
