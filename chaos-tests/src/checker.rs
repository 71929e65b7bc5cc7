//! The invariants, checked after a scenario with every fault healed:
//!
//! - every set the fleet calls complete verifies (size, sha256, RDB checksum of every object) in
//!   at least `min_regions` of its regions;
//! - every complete set restores, and holds per shard a prefix of the writes the writer saw
//!   acknowledged (a `consistent` set: one prefix for the whole cluster), nothing never sent, and
//!   every write acknowledged before its window opened;
//! - no window's shard was finished by jobs of two different Raft terms.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, bail};
use fleetsnap_agent::redis::Value;
use fleetsnap_testkit::RedisServer;
use fleetsnap_testkit::fleet::bin;

use crate::fleet::{Fleet, SHARDS};
use crate::workload::{History, write_of};

/// One invariant's outcome.
#[derive(Clone, Debug)]
pub struct Finding {
    pub invariant: String,
    pub ok: bool,
    pub detail: String,
}

/// What the checker found.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub findings: Vec<Finding>,
}

impl Verdict {
    pub fn add(&mut self, invariant: impl Into<String>, ok: bool, detail: impl Into<String>) {
        self.findings.push(Finding {
            invariant: invariant.into(),
            ok,
            detail: detail.into(),
        });
    }

    pub fn ok(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    pub fn failures(&self) -> Vec<&Finding> {
        self.findings.iter().filter(|f| !f.ok).collect()
    }
}

/// Runs `fleetsnap-agent ARGS` on the client host with the regions' credentials.
fn agent(fleet: &Fleet, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = fleetsnap_testkit::output_within(
        std::process::Command::new(bin("fleetsnap-agent"))
            .args(args)
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", &fleet.creds)
            .env("NO_COLOR", "1"),
        Duration::from_secs(120),
    )?;
    Ok(out)
}

/// The writes a restored copy of set `id` read from `dest` holds.
pub async fn restored_writes(fleet: &Fleet, dest: &str, id: &str) -> anyhow::Result<BTreeSet<u64>> {
    let scratch = RedisServer::start().await?;
    let out = agent(
        fleet,
        &[
            "restore",
            "--from",
            dest,
            "--backup",
            id,
            "--online",
            &scratch.url(),
            "--json",
        ],
    )?;
    if !out.status.success() {
        bail!(
            "restoring {id} from {dest} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut conn = scratch.conn().await?;
    let mut writes = BTreeSet::new();
    scan_writes(&mut conn, &mut writes).await?;
    Ok(writes)
}

/// The writes the live cluster holds now (every primary scanned).
pub async fn live_writes(fleet: &Fleet) -> anyhow::Result<BTreeSet<u64>> {
    let mut writes = BTreeSet::new();
    for n in &fleet.nodes {
        if n.info("replication", "role")
            .await
            .ok()
            .flatten()
            .as_deref()
            != Some("master")
        {
            continue;
        }
        let mut conn = n.conn().await?;
        scan_writes(&mut conn, &mut writes).await?;
    }
    Ok(writes)
}

/// The writer's writes a server holds.
pub async fn scan(conn: &mut fleetsnap_agent::redis::Connection) -> anyhow::Result<BTreeSet<u64>> {
    let mut writes = BTreeSet::new();
    scan_writes(conn, &mut writes).await?;
    Ok(writes)
}

async fn scan_writes(
    conn: &mut fleetsnap_agent::redis::Connection,
    writes: &mut BTreeSet<u64>,
) -> anyhow::Result<()> {
    let mut cursor = b"0".to_vec();
    loop {
        let reply = conn
            .command(&[b"SCAN", &cursor, b"MATCH", b"*:w:*", b"COUNT", b"1000"])
            .await?;
        let Value::Array(Some(parts)) = reply else {
            bail!("SCAN gave {reply:?}");
        };
        let (Some(Value::Bulk(Some(next))), Some(Value::Array(Some(keys)))) =
            (parts.first(), parts.get(1))
        else {
            bail!("SCAN gave {parts:?}");
        };
        for k in keys {
            if let Value::Bulk(Some(k)) = k
                && let Some(g) = write_of(&String::from_utf8_lossy(k))
            {
                writes.insert(g);
            }
        }
        if next.as_slice() == b"0" {
            return Ok(());
        }
        cursor = next.clone();
    }
}

/// Checks one restored set against the writer's history. `before`: the last write acknowledged
/// before its window opened. Returns the last write the set holds.
pub fn check_writes(
    v: &mut Verdict,
    id: &str,
    consistent: bool,
    writes: &BTreeSet<u64>,
    history: &History,
    before: u64,
) -> u64 {
    let last = writes.iter().next_back().copied().unwrap_or(0);
    let phantom: Vec<u64> = writes
        .iter()
        .filter(|g| **g >= history.next)
        .copied()
        .collect();
    v.add(
        "restored data holds only writes that were sent",
        phantom.is_empty(),
        format!(
            "{id}: {} writes never sent: {:?}",
            phantom.len(),
            &phantom[..phantom.len().min(5)]
        ),
    );
    let mut gaps = Vec::new();
    if consistent {
        for g in history.acked.keys().take_while(|g| **g < last) {
            if !writes.contains(g) {
                gaps.push(*g);
            }
        }
    } else {
        for shard in 0..SHARDS as u64 {
            let top = writes
                .iter()
                .rfind(|g| *g % SHARDS as u64 == shard)
                .copied()
                .unwrap_or(0);
            for g in history
                .acked
                .keys()
                .filter(|g| *g % SHARDS as u64 == shard && **g < top)
            {
                if !writes.contains(g) {
                    gaps.push(*g);
                }
            }
        }
    }
    v.add(
        if consistent {
            "a consistent set holds one prefix of the acknowledged writes"
        } else {
            "a set holds a prefix of the acknowledged writes per shard"
        },
        gaps.is_empty(),
        format!(
            "{id}: {} writes up to {last}, {} acknowledged writes missing below it: {:?}",
            writes.len(),
            gaps.len(),
            &gaps[..gaps.len().min(5)]
        ),
    );
    let stale: Vec<u64> = history
        .acked
        .keys()
        .take_while(|g| **g <= before)
        .filter(|g| !writes.contains(g))
        .copied()
        .collect();
    v.add(
        "a set holds every write acknowledged before its window opened",
        stale.is_empty(),
        format!(
            "{id}: {} of the writes up to {before} missing: {:?}",
            stale.len(),
            &stale[..stale.len().min(5)]
        ),
    );
    last
}

/// Whether set `id` verifies in the region at `dest`.
pub fn verifies(fleet: &Fleet, dest: &str, id: &str) -> anyhow::Result<bool> {
    let out = agent(fleet, &["verify", "--from", dest, "--backup", id])?;
    Ok(out.status.success())
}

/// The fleet's sets, as `backup list` gives them.
pub fn sets(fleet: &Fleet) -> anyhow::Result<Vec<serde_json::Value>> {
    let list = fleet.cli.json(&["backup", "list", "--json"])?;
    Ok(list
        .as_array()
        .context("backup list is not an array")?
        .clone())
}

/// Every job the fleet has made, by id (ids count up from 1).
pub fn jobs(fleet: &Fleet) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut misses = 0;
    for id in 1u64.. {
        match fleet.cli.json(&["job", "show", &id.to_string()]) {
            Ok(j) => {
                misses = 0;
                out.push(j);
            }
            Err(_) => {
                misses += 1;
                if misses == 3 {
                    break;
                }
            }
        }
    }
    out
}

/// For every window shard, the terms of the snapshot jobs that succeeded for it: a shard with
/// two is a violation (a job of an old leader's term was let finish beside a new leader's).
pub fn check_terms(v: &mut Verdict, jobs: &[serde_json::Value], windows: &[String]) {
    use std::collections::BTreeMap;
    let mut terms: BTreeMap<(String, String), BTreeSet<u64>> = BTreeMap::new();
    for j in jobs {
        let k = &j["kind"];
        let (Some(window), Some(shard)) = (k["window"].as_u64(), k["shard"].as_str()) else {
            continue;
        };
        if k["kind"] != "snapshot" || !windows.contains(&window.to_string()) {
            continue;
        }
        let entry = terms
            .entry((window.to_string(), shard.to_string()))
            .or_default();
        if j["state"]["outcome"] == "succeeded"
            && let Some(t) = j["term"].as_u64()
        {
            entry.insert(t);
        }
    }
    for ((window, shard), t) in &terms {
        v.add(
            "no shard of a window finished by jobs of two terms",
            t.len() <= 1,
            format!("window {window} shard {shard}: succeeded in terms {t:?}"),
        );
    }
    v.add(
        "the jobs of every window were found",
        windows.iter().all(|w| terms.keys().any(|(tw, _)| tw == w)),
        format!("{} snapshot jobs over windows {windows:?}", terms.len()),
    );
}
