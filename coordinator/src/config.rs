//! The coordinator's config file (TOML). Unknown keys are errors, so a typo never silently falls
//! back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleetsnap_proto::tls::TlsFiles;
use serde::Deserialize;

use crate::NodeId;

/// `fleetsnap-coordinator --config FILE`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's Raft id: unique in the cluster, kept for life (the data directory remembers it).
    pub node_id: NodeId,
    /// Where to serve gRPC (agents, the CLI and peers on one port).
    pub listen: SocketAddr,
    /// The address others reach this node at; by default its address in `initial_members`,
    /// else `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// The Raft log and state machine live here.
    pub data_dir: PathBuf,
    /// Certificates; required unless the coordinator runs with `--insecure`. `{node_id}` in a
    /// path stands for the node id (one Secret holding every peer's files, on Kubernetes).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The members of a new cluster, the same list on each of them. A node started with an empty
    /// data directory and this list forms the cluster with them (one entry naming itself: the
    /// single-node mode). Without it, a new node waits to be added with `fleetsnap cluster
    /// add-node`. Ignored once the data directory holds a log.
    #[serde(default)]
    pub initial_members: Vec<Member>,
    /// Raft timing and log compaction.
    #[serde(default)]
    pub raft: RaftSettings,
    /// Job leases.
    #[serde(default)]
    pub jobs: JobSettings,
    /// Backup policies (`[[policy]]`). Whichever node leads writes them to the replicated state
    /// when they differ from it; `fleetsnap policy set` changes policies at run time, and a
    /// policy named here is set back to this text when a node with this config next leads.
    #[serde(default)]
    pub policy: Vec<fleetsnap_core::policy::Policy>,
    /// Traces and the metrics endpoint.
    #[serde(default)]
    pub telemetry: fleetsnap_telemetry::TelemetryConfig,
}

/// The node id a StatefulSet pod's name gives: `fleetsnap-coordinator-2` is node 3 (ordinals
/// count from 0, node ids from 1).
pub fn node_id_from_hostname(hostname: &str) -> Result<NodeId, String> {
    hostname
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse::<u64>().ok())
        .map(|n| n + 1)
        .ok_or_else(|| {
            format!(
                "--node-id-from-hostname: the host name {hostname:?} does not end in -N (a \
                 StatefulSet ordinal); give node_id in the config instead"
            )
        })
}

/// A member of a new cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// Its advertised address.
    pub address: String,
}

/// Raft timing and log compaction.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    /// The leader's heartbeat.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in this range starts an election.
    pub election_timeout_min_ms: u64,
    /// See `election_timeout_min_ms`.
    pub election_timeout_max_ms: u64,
    /// Snapshot the state machine after this many log entries, then drop the log behind it.
    pub snapshot_every: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 150,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            snapshot_every: 1000,
        }
    }
}

/// Job leases.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSettings {
    /// A job whose agent has not reported for this long is failed (its lease expired).
    pub lease_seconds: u64,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self { lease_seconds: 15 }
    }
}

impl Config {
    /// Reads and checks the config file.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_as(path, None)
    }

    fn check(&self) -> Result<(), String> {
        if self.node_id == 0 {
            return Err("node_id must be 1 or more (0 means \"no node\" in status replies)".into());
        }
        let r = &self.raft;
        if r.heartbeat_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_ms * 2 {
            return Err(format!(
                "[raft] election_timeout_min_ms ({}) must be more than twice heartbeat_ms ({})",
                r.election_timeout_min_ms, r.heartbeat_ms
            ));
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return Err(
                "[raft] election_timeout_max_ms must be above election_timeout_min_ms".into(),
            );
        }
        if r.snapshot_every == 0 {
            return Err("[raft] snapshot_every must be 1 or more".into());
        }
        self.telemetry.check()?;
        if self.jobs.lease_seconds == 0 {
            return Err("[jobs] lease_seconds must be 1 or more".into());
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.policy {
            p.validate().map_err(|e| format!("[[policy]]: {e}"))?;
            if !names.insert(&p.name) {
                return Err(format!("[[policy]]: two policies are named {:?}", p.name));
            }
        }
        let mut ids: Vec<NodeId> = self.initial_members.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.initial_members.len() {
            return Err("initial_members lists a node id twice".into());
        }
        if !self.initial_members.is_empty() && !ids.contains(&self.node_id) {
            return Err(format!(
                "initial_members does not list this node ({}); list every member of the new \
                 cluster, this one included, or leave it out to join an existing cluster",
                self.node_id
            ));
        }
        Ok(())
    }

    /// The address others reach this node at.
    pub fn advertise(&self) -> String {
        self.advertise
            .clone()
            .or_else(|| {
                self.initial_members
                    .iter()
                    .find(|m| m.id == self.node_id)
                    .map(|m| m.address.clone())
            })
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// Reads and checks the config file of node `node_id` (given, it replaces the file's), with
    /// `{node_id}` in certificate paths replaced.
    pub fn load_as(path: &Path, node_id: Option<NodeId>) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
        if let Some(id) = node_id {
            config.node_id = id;
        }
        config.tls = config
            .tls
            .map(|t| t.with("{node_id}", &config.node_id.to_string()));
        config
            .check()
            .map_err(|e| format!("config file {}: {e}", path.display()))?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let e = toml::from_str::<Config>(
            "node_id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\nheartbeat = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("heartbeat"), "{e}");
        let e = toml::from_str::<Config>(
            "node_id = 1\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n[raft]\nsnapshot_evry = 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("snapshot_evry"), "{e}");
    }

    #[test]
    fn statefulset_pods_are_numbered_from_node_1() {
        assert_eq!(node_id_from_hostname("fleetsnap-coordinator-0"), Ok(1));
        assert_eq!(node_id_from_hostname("fleetsnap-coordinator-2"), Ok(3));
        let e = node_id_from_hostname("coordinator").unwrap_err();
        assert!(e.contains("does not end in -N"), "{e}");
    }

    #[test]
    fn initial_members_must_include_this_node() {
        let c: Config = toml::from_str(
            "node_id = 2\nlisten = \"127.0.0.1:1\"\ndata_dir = \"/x\"\n\
             [[initial_members]]\nid = 1\naddress = \"a:1\"\n",
        )
        .unwrap();
        assert!(c.check().unwrap_err().contains("does not list this node"));
    }
}
