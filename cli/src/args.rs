//! Command-line values checked as they are parsed: a name that breaks the naming rules is bad
//! usage (exit 2), refused before anything is sent to a coordinator.

use fleetsnap_core::ids::{BackupId, IdError, check_name};

fn name(kind: &'static str, s: &str) -> Result<String, IdError> {
    check_name(kind, s).map(|()| s.to_string())
}

/// A cluster name.
pub fn cluster(s: &str) -> Result<String, IdError> {
    name("cluster name", s)
}

/// A shard name.
pub fn shard(s: &str) -> Result<String, IdError> {
    name("shard name", s)
}

/// A shard as the fleet view names it: slot ranges (`0-5460,10923-16383`), a primary's instance
/// name, or a dead primary's `host:port`.
pub fn fleet_shard(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 256
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:,[]".contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "shard {s:?} is not as `fleetsnap status` names shards: slot ranges (0-5460,10923-16383), an instance name or HOST:PORT"
        ))
    }
}

/// A policy name.
pub fn policy(s: &str) -> Result<String, IdError> {
    name("policy name", s)
}

/// An instance name (as in an agent's config).
pub fn instance(s: &str) -> Result<String, IdError> {
    name("instance name", s)
}

/// A set: `CLUSTER/BACKUP_ID`, a bare `BACKUP_ID`, or (where a window is meant) its number.
pub fn set_id(s: &str) -> Result<String, IdError> {
    if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        return Ok(s.to_string());
    }
    match s.split_once('/') {
        Some((c, id)) => {
            cluster(c)?;
            id.parse::<BackupId>()?;
        }
        None => {
            s.parse::<BackupId>()?;
        }
    }
    Ok(s.to_string())
}
