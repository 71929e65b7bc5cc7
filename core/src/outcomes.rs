//! What agents report of restores, drills and runbook steps: one type per report, written by the
//! agent and read by the coordinator and the CLI as these types (never by key). Every field has
//! a default, so a report from an agent one version older still reads, except a promotion's
//! `promoted` and `offset`: they tell a promotion from the other reports a runbook step makes.

use serde::{Deserialize, Serialize};

/// The outcome of a restore.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestoreReport {
    /// The destination read.
    pub destination: String,
    /// Destinations tried before it, with why they failed.
    pub skipped: Vec<(String, String)>,
    /// The shard restored.
    pub shard: String,
    /// The RDB file written.
    pub rdb_file: String,
    /// The tail written, if the backup has one: replay it after loading the RDB.
    pub tail_file: Option<String>,
    /// RDB bytes.
    pub raw_bytes: u64,
    /// Written as an AOF directory.
    pub aof_dir: bool,
    /// The hash-slot ranges the shard owned (Redis Cluster).
    pub slot_ranges: Vec<(u16, u16)>,
    /// Keys per database, as the manifest recorded them (if it did).
    pub dbs: Option<Vec<crate::digest::DbDigest>>,
    /// The server the backup was taken from, as its manifest says (`valkey 8.1.8`).
    pub server: Option<String>,
}

/// What an online restore did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineReport {
    /// The target named.
    pub target: String,
    /// Whether it is a Redis Cluster.
    pub cluster: bool,
    /// Primaries written to.
    pub nodes: usize,
    /// Keys restored.
    pub keys: u64,
    /// Keys left out by `--db` or `--match`.
    pub filtered: u64,
    /// Keys of the copy (and tail commands on them) left to another shard of the same restore,
    /// which held them at the point: a slot migration had moved them there.
    pub moved_elsewhere: u64,
    /// Keys whose expiry had already passed.
    pub expired: u64,
    /// Keys (and libraries) that already existed and were left as they are.
    pub conflicts: u64,
    /// The first of them.
    pub conflicting_keys: Vec<String>,
    /// Function libraries loaded.
    pub functions: u64,
    /// Module auxiliary data skipped (the modules' own state, not keys).
    pub module_aux_skipped: Vec<String>,
    /// Whether the target cannot read the backup's RDB version: each value then went as a
    /// `RESTORE` re-encoded in the plainest RDB types, which every version loads, or, what those
    /// cannot hold (a stream, a hash field's expiry), as commands.
    pub across_versions: bool,
    /// Keys written as commands (XADD, XGROUP, HSET with HPEXPIREAT, …) for that reason.
    pub as_commands: u64,
    /// Keys no command could write into the target (a module's value, a hash field's expiry
    /// on a server without HPEXPIREAT): left out.
    pub refused: u64,
    /// The first of them, each with why.
    pub refused_keys: Vec<String>,
    /// Tail commands replayed.
    pub tail_commands: u64,
    /// Tail commands left out because they write to a key that was in the target before the
    /// restore (or, for `FLUSHALL`/`FLUSHDB`, to a target that held keys): merging, the restore
    /// changes nothing that was there.
    pub tail_skipped: u64,
    /// The first of them (command and key).
    pub tail_skipped_commands: Vec<String>,
    /// RDB bytes read.
    pub rdb_bytes: u64,
    /// Wall time of the whole restore.
    pub seconds: f64,
}

/// An online restore of one shard: which copy was read, and what applying it did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineShard {
    /// The verified copy read.
    pub read: RestoreReport,
    /// What RESTORE and the tail replay did.
    pub applied: OnlineReport,
}

/// An online restore of one shard or of every shard of a set.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OnlineRestoreReport {
    /// Each shard restored, in the manifest's order.
    pub shards: Vec<OnlineShard>,
    /// Keys restored in all.
    pub keys: u64,
    /// RDB bytes applied in all.
    pub rdb_bytes: u64,
    /// Keys (and function libraries) that already existed and were left as they are, in all.
    pub conflicts: u64,
    /// Wall time of the whole restore.
    pub seconds: f64,
}

/// What a replace did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReplaceReport {
    /// The verified copy read.
    pub read: RestoreReport,
    /// The node.
    pub node: String,
    /// Where the backup was placed (the RDB file, or the AOF directory).
    pub placed: String,
    /// Where the node's previous data was kept, if it had any.
    pub previous_kept_at: Option<String>,
    /// Keys in the backup's RDB.
    pub keys_in_backup: u64,
    /// Of which with an expiry (Redis does not load those already past).
    pub expires_in_backup: u64,
    /// Keys the node holds after its load.
    pub keys_loaded: u64,
    /// The replication offset the RDB carries, which the node took as its own.
    pub offset: Option<u64>,
    /// Tail commands replayed after the load.
    pub tail_commands: u64,
    /// How the tail went in: `replication` (the node a replica of the agent for the tail's
    /// length, applying it as a stream) or `commands` with the reason the stream was not
    /// possible; empty without a tail or for an AOF directory, which replays its own.
    pub tail_replayed_as: String,
    /// Seconds the tail's replay took, from the node serving the base.
    pub tail_seconds: f64,
    /// Seconds before the node was stopped: reading the manifest and fetching the tail, and for
    /// an AOF directory fetching and verifying the whole copy.
    pub staged_seconds: f64,
    /// Seconds from the stop to the node serving the restored data.
    pub down_seconds: f64,
    /// Seconds in all.
    pub seconds: f64,
}

/// One database as the drill found it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DbCheck {
    /// The logical database.
    pub db: u64,
    /// Keys the manifest recorded.
    pub keys_recorded: Option<u64>,
    /// Keys the scratch server served.
    pub keys_served: u64,
    /// Keys of the copy not served because their expiry had passed.
    pub keys_expired: u64,
    /// The digest the manifest recorded.
    pub digest_recorded: Option<String>,
    /// The digest of what was served, plus the expired keys.
    pub digest_found: String,
}

/// What a drill found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillReport {
    /// The set.
    pub backup_id: String,
    /// The shard drilled.
    pub shard: String,
    /// The region read.
    pub destination: String,
    /// Regions tried before it, with why they failed.
    pub skipped: Vec<(String, String)>,
    /// Whether the data served equals what the manifest recorded.
    pub ok: bool,
    /// Why not.
    pub problems: Vec<String>,
    /// Per database.
    pub dbs: Vec<DbCheck>,
    /// Whether the manifest recorded digests (sets written before it did carry none).
    pub digest_checked: bool,
    /// RDB bytes.
    pub rdb_bytes: u64,
    /// Tail commands replayed after the check.
    pub tail_commands: u64,
    /// Seconds to fetch and verify the copy.
    pub fetch_seconds: f64,
    /// Seconds for the scratch server to load it.
    pub load_seconds: f64,
    /// Seconds for the check (not part of the RTO).
    pub check_seconds: f64,
    /// Detection to data served: fetch, load and tail replay.
    pub rto_seconds: f64,
    /// The backup's age when its data was served (the RPO a restore now would have).
    pub rpo_seconds: Option<f64>,
}

/// What a promotion did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromoteReport {
    /// The node promoted (`host:port`).
    pub promoted: String,
    /// Whether the old primary was alive and paused.
    #[serde(default)]
    pub graceful: bool,
    /// Whether through `CLUSTER FAILOVER`.
    #[serde(default)]
    pub cluster: bool,
    /// The paused primary's offset, which the replica reached (graceful).
    #[serde(default)]
    pub primary_offset: Option<u64>,
    /// The promoted node's replication offset when it was promoted.
    pub offset: u64,
    /// Milliseconds writes were paused (graceful, standalone).
    #[serde(default)]
    pub paused_ms: Option<u64>,
    /// Nodes now replicating from it.
    #[serde(default)]
    pub repointed: Vec<String>,
    /// Nodes that could not be re-pointed, and why.
    #[serde(default)]
    pub not_repointed: Vec<(String, String)>,
    /// The Sentinel that promoted it (`SENTINEL FAILOVER`), when one manages the set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sentinel: Option<String>,
}

/// What a probe of a running target found.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProbeReport {
    /// The target probed.
    pub target: String,
    /// Whether it is a Redis Cluster.
    pub cluster: bool,
    /// Its primaries (`host:port`).
    pub primaries: Vec<String>,
    /// Keys on them, all databases.
    pub keys: u64,
    /// The bounds checked.
    pub min: u64,
    /// See `min`.
    pub max: u64,
}

impl OnlineRestoreReport {
    /// Why the restore is not whole when keys already existed and were left alone: each
    /// shard's count and its first keys.
    pub fn conflict_problem(&self) -> Option<String> {
        let skipped: u64 = self.shards.iter().map(|s| s.applied.tail_skipped).sum();
        let refused: Vec<String> = self
            .shards
            .iter()
            .filter(|s| s.applied.refused > 0)
            .map(|s| {
                format!(
                    "shard {}: {} keys the target's commands cannot write, left out ({})",
                    s.read.shard,
                    s.applied.refused,
                    s.applied.refused_keys.join("; ")
                )
            })
            .collect();
        if self.conflicts == 0 && skipped == 0 {
            return (!refused.is_empty()).then(|| {
                format!(
                    "{} keys restored; {}: restore them into a server that reads the backup's RDB version",
                    self.keys,
                    refused.join("; ")
                )
            });
        }
        let per: Vec<String> = self
            .shards
            .iter()
            .filter(|s| s.applied.conflicts > 0 || s.applied.tail_skipped > 0)
            .map(|s| {
                let mut t = format!(
                    "shard {}: {} (first: {})",
                    s.read.shard,
                    s.applied.conflicts,
                    s.applied.conflicting_keys.join(", ")
                );
                if s.applied.tail_skipped > 0 {
                    t += &format!(
                        ", and {} tail commands on keys that were there ({})",
                        s.applied.tail_skipped,
                        s.applied.tail_skipped_commands.join("; ")
                    );
                }
                t
            })
            .collect();
        Some(format!(
            "{} keys restored; {} already existed in {} and were left as they are ({}): pass --replace-existing to overwrite them",
            self.keys,
            self.conflicts,
            self.shards
                .first()
                .map(|s| s.applied.target.as_str())
                .unwrap_or("the target"),
            per.join("; ")
        ))
    }
}

/// A byte count as people read it (`1.5 MB`).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

impl DrillReport {
    /// The drill as people read it, one printer for the agent's `drill` and the CLI's: the
    /// regions skipped, the verdict, each database's counts and digests against the manifest's,
    /// the RTO and its parts, and every problem.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (d, e) in &self.skipped {
            let _ = writeln!(out, "skipped {d}: {e}");
        }
        let _ = writeln!(
            out,
            "drill of shard {} of backup {} from {}: {}",
            self.shard,
            self.backup_id,
            self.destination,
            if self.ok { "PASSED" } else { "FAILED" }
        );
        let _ = writeln!(
            out,
            "{:<4} {:>10} {:>10} {:>8} {:<14} {:<14}",
            "DB", "RECORDED", "SERVED", "EXPIRED", "DIGEST", "RECORDED"
        );
        for d in &self.dbs {
            let _ = writeln!(
                out,
                "{:<4} {:>10} {:>10} {:>8} {:<14} {:<14}",
                d.db,
                d.keys_recorded.map_or("-".into(), |k| k.to_string()),
                d.keys_served,
                d.keys_expired,
                &d.digest_found[..12.min(d.digest_found.len())],
                d.digest_recorded
                    .as_deref()
                    .map_or("-", |x| &x[..12.min(x.len())])
            );
        }
        let _ = writeln!(
            out,
            "RTO {:.2}s (fetch {:.2}s, load {:.2}s, {} tail commands); check {:.2}s; {} of RDB{}",
            self.rto_seconds,
            self.fetch_seconds,
            self.load_seconds,
            self.tail_commands,
            self.check_seconds,
            human_bytes(self.rdb_bytes),
            self.rpo_seconds
                .map(|s| format!("; backup age (RPO) {s:.0}s"))
                .unwrap_or_default()
        );
        if !self.digest_checked {
            let _ = writeln!(
                out,
                "note: the manifest records no digests (written before fleetsnap recorded them): only the copy's checksums were checked"
            );
        }
        for p in &self.problems {
            let _ = writeln!(out, "PROBLEM: {p}");
        }
        out
    }
}
