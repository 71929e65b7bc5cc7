//! The agent's config file: its types, and every value checked when the file is loaded (a bad
//! value is an error naming the key and the fix, never a surprise at the first job).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use fleetsnap_core::ClusterId;
use fleetsnap_proto::tls::{Role, TlsFiles, Transport};
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::redis::RedisTarget;

/// The agent's config file (TOML). Unknown keys are errors.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// This agent's id; its certificate must name the same.
    pub agent_id: String,
    /// Coordinator addresses (`host:port`); any one of them leads the agent to the leader.
    pub coordinators: Vec<String>,
    /// Certificates; required unless the agent runs with `--insecure`. `{agent_id}` in a path
    /// stands for the agent id (one Secret holding every agent's files, on Kubernetes).
    #[serde(default)]
    pub tls: Option<TlsFiles>,
    /// The local address the agent connects to coordinators from (default: the system's
    /// choice). Coordinators limit unfinished handshakes per peer address; on a host with
    /// several addresses, this says which one the agent is.
    #[serde(default)]
    pub source_address: Option<std::net::IpAddr>,
    /// Milliseconds between two reports.
    #[serde(default = "default_report_interval")]
    pub report_interval_ms: u64,
    /// The Redis instances on this host.
    #[serde(default, rename = "instance")]
    pub instances: Vec<InstanceConfig>,
    /// Snapshot job settings.
    #[serde(default)]
    pub snapshot: SnapshotSettings,
    /// Restore job settings.
    #[serde(default)]
    pub restore: RestoreSettings,
    /// Restore drills: present, this agent runs them in scratch servers it starts.
    #[serde(default)]
    pub drill: Option<crate::restore::DrillSettings>,
    /// Traces and the metrics endpoint.
    #[serde(default)]
    pub telemetry: fleetsnap_telemetry::TelemetryConfig,
}

/// Restore job settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestoreSettings {
    /// Scratch space for online restores (default: the system's temporary directory).
    pub work_dir: Option<PathBuf>,
    /// age identity file, for sets encrypted to this agent's recipient.
    pub identity: Option<PathBuf>,
}

fn default_report_interval() -> u64 {
    1000
}

/// One watched instance.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    /// Its name in reports, jobs and the fleet view.
    pub name: String,
    /// `redis://[USER[:PASSWORD]@]HOST:PORT` (or `?password_file=PATH`, or rediss://…).
    pub url: String,
    /// The cluster it belongs to in the fleet view and the storage layout.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    /// Its availability zone, for policies that prefer some zones (optional).
    #[serde(default)]
    pub zone: String,
    /// Shell command that starts it and returns (`systemctl start redis@6379`): needed by
    /// `replace` restores, which stop it, place the backup and start it.
    #[serde(default)]
    pub start_command: Option<String>,
    /// Shell command that stops it (default: `SHUTDOWN NOSAVE` sent to it).
    #[serde(default)]
    pub stop_command: Option<String>,
    /// Its data file, for when it is down and cannot say (default: `CONFIG GET dir dbfilename`).
    #[serde(default)]
    pub rdb_path: Option<PathBuf>,
    /// Seconds the stop, and then the start and load, may take.
    #[serde(default = "default_restore_timeout")]
    pub restore_timeout_seconds: u64,
    /// A Sentinel that monitors its replica set: `redis://HOST:PORT` (with
    /// `sentinel_master`). A failover runbook then promotes through `SENTINEL FAILOVER`.
    #[serde(default)]
    pub sentinel: Option<String>,
    /// The name the Sentinel monitors the set under.
    #[serde(default)]
    pub sentinel_master: Option<String>,
}

fn default_restore_timeout() -> u64 {
    600
}

fn default_cluster() -> String {
    "default".into()
}

/// Snapshot job settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotSettings {
    /// Spool directory for destinations slower than the source.
    pub spool_dir: Option<PathBuf>,
    /// Largest spool file per destination.
    pub spool_max: String,
    /// Seconds a node may send nothing before a snapshot fails.
    pub idle_timeout_seconds: u64,
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        Self {
            spool_dir: None,
            spool_max: "8GiB".into(),
            idle_timeout_seconds: 60,
        }
    }
}

impl AgentConfig {
    /// Reads and checks the config file.
    pub fn load(path: &Path) -> Result<Self> {
        Self::load_as(path, None)
    }

    /// Reads and checks the config file of agent `agent_id` (given, it replaces the file's),
    /// with `{agent_id}` in certificate paths replaced.
    pub fn load_as(path: &Path, agent_id: Option<String>) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::file("cannot read the config file", path, e))?;
        let mut c: AgentConfig = toml::from_str(&text)
            .map_err(|e| Error::Input(format!("config file {}: {e}", path.display())))?;
        if let Some(id) = agent_id {
            c.agent_id = id;
        }
        c.tls = c.tls.map(|t| t.with("{agent_id}", &c.agent_id));
        let bad = |m: String| Error::Input(format!("config file {}: {m}", path.display()));
        // It names the agent's own directories (an archive's spool).
        fleetsnap_core::ids::check_name("agent_id", &c.agent_id).map_err(|e| bad(e.to_string()))?;
        if c.coordinators.is_empty() {
            return Err(bad(
                "coordinators is empty: list at least one coordinator address".into(),
            ));
        }
        c.telemetry.check().map_err(bad)?;
        if c.report_interval_ms == 0 {
            return Err(bad("report_interval_ms must be 1 or more".into()));
        }
        parse_size(&c.snapshot.spool_max).map_err(|e| bad(format!("[snapshot] spool_max: {e}")))?;
        if c.snapshot.idle_timeout_seconds == 0 {
            return Err(bad(
                "[snapshot] idle_timeout_seconds must be 1 or more".into()
            ));
        }
        let mut names = HashSet::new();
        for i in &c.instances {
            fleetsnap_core::ids::check_name("instance name", &i.name)
                .map_err(|e| bad(e.to_string()))?;
            ClusterId::new(&i.cluster).map_err(|e| bad(format!("instance {:?}: {e}", i.name)))?;
            if !names.insert(&i.name) {
                return Err(bad(format!("two instances are named {:?}", i.name)));
            }
            RedisTarget::parse(&i.url).map_err(|e| bad(format!("instance {:?}: {e}", i.name)))?;
            match (&i.sentinel, &i.sentinel_master) {
                (Some(url), Some(_)) => {
                    RedisTarget::parse(url)
                        .map_err(|e| bad(format!("instance {:?}: sentinel: {e}", i.name)))?;
                }
                (None, None) => {}
                _ => {
                    return Err(bad(format!(
                        "instance {:?}: give sentinel and sentinel_master together (the Sentinel's redis://HOST:PORT and the name it monitors the set under)",
                        i.name
                    )));
                }
            }
        }
        Ok(c)
    }
}

/// What `check-config` checks beyond [`AgentConfig::load`]: the certificates (unless
/// `insecure`), as `run` would use them.
pub fn check(config: &AgentConfig, insecure: bool) -> Result<()> {
    if !insecure {
        transport(config, false)?;
    }
    let dirs = [
        (&config.snapshot.spool_dir, "[snapshot] spool_dir"),
        (&config.restore.work_dir, "[restore] work_dir"),
    ];
    for (dir, what) in dirs {
        if let Some(d) = dir {
            fleetsnap_proto::host::check_writable_dir(d, what).map_err(Error::Input)?;
        }
    }
    if let Some(id) = &config.restore.identity {
        crate::restore::load_identities(id)?;
    }
    Ok(())
}

/// Builds the transport from the config, checking that the certificate is this agent's.
pub fn transport(config: &AgentConfig, insecure: bool) -> Result<Transport> {
    if insecure {
        tracing::warn!(
            "--insecure: talking to coordinators in plain text without certificates; use it \
             only on a test machine"
        );
        return Ok(Transport::Insecure);
    }
    let files = config.tls.as_ref().ok_or_else(|| {
        Error::Input(
            "the config has no [tls] section: add ca, cert and key (a test fleet's come from \
             `fleetsnap certs init`), or run with --insecure on a test machine"
                .into(),
        )
    })?;
    let loaded = files.load().map_err(Error::Input)?;
    if loaded.identity.role != Role::Agent || loaded.identity.name != config.agent_id {
        return Err(Error::Input(format!(
            "the certificate {} names {}, but this agent is {:?}: give it the agent \
             certificate made for it (`fleetsnap certs init --agents {}`)",
            files.cert.display(),
            loaded.identity,
            config.agent_id,
            config.agent_id
        )));
    }
    Ok(Transport::Tls(loaded))
}

/// Parses sizes such as `512MiB`, `8GiB`, `1000000`.
pub fn parse_size(text: &str) -> Result<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "TiB" | "T" => 1 << 40,
        _ => 0,
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) if mult > 0 => Ok(n),
        _ => Err(Error::Input(format!(
            "size {text:?} is not valid: use a number with an optional unit KiB, MiB, GiB or TiB"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_config_keys_are_errors() {
        let e = toml::from_str::<AgentConfig>(
            "agent_id = \"a\"\ncoordinators = [\"x:1\"]\n[[instance]]\nname = \"r\"\nurl = \"redis://h:1\"\nclustr = \"c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("clustr"), "{e}");
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("99999999999TiB").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
