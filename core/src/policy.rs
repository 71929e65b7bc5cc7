//! Backup policies: what is backed up, when, how consistently, where to, and for how long.
//!
//! A policy is written in TOML (in the coordinator's config, or `fleetsnap policy set --file`),
//! checked by [`Policy::validate`], and kept in the replicated state.

use serde::{Deserialize, Serialize};

use crate::ids::{ClusterId, check_name};
use crate::planner::{AllowPrimary, Rules};
use crate::retention::Retention;
use crate::schedule::Schedule;

/// How the shards of a window relate in time (docs/design.md §6).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Each shard when it can.
    #[default]
    Independent,
    /// Every shard started at one instant; the skew achieved is measured.
    Simultaneous,
    /// An exact cut across every primary, by a short write pause.
    Consistent,
}

impl Consistency {
    /// The word used in manifests and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Independent => "independent",
            Consistency::Simultaneous => "simultaneous",
            Consistency::Consistent => "consistent",
        }
    }
}

/// One region a policy stores to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// The region's name in the catalog and in tables (`eu-west`, `dc2`).
    pub region: String,
    /// `file:///PATH` or `s3://BUCKET[/PREFIX]?region=R[&endpoint=URL]`.
    pub url: String,
    /// The credentials agents use for it: the name of a profile in their AWS credentials file.
    /// Secrets never travel: each agent host holds its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
}

impl Destination {
    /// The URL an agent opens: with the profile added when `credentials` names one.
    pub fn agent_url(&self) -> String {
        match &self.credentials {
            Some(p) if !self.url.contains("profile=") && self.url.starts_with("s3://") => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}profile={p}", self.url)
            }
            _ => self.url.clone(),
        }
    }
}

/// Checks a destination URL's form without opening it: `file:///ABSOLUTE/PATH` without
/// parameters, or `s3://BUCKET[/PREFIX]?…` without credentials in it (they belong in a profile
/// on each agent host, never in the replicated state). The message never repeats a secret.
pub fn check_destination_url(url: &str) -> Result<(), String> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') || path.contains(['?', '#']) {
            return Err("a file url is file:///ABSOLUTE/PATH, without parameters".into());
        }
        if path.split('/').any(|p| p == "..") {
            return Err("a file url's path may not contain ..".into());
        }
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err("the url is neither file:///PATH nor s3://BUCKET…".into());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err("the s3 url carries credentials (s3://KEY:SECRET@BUCKET): they are refused, never stored or shown; put them in a profile of each agent's AWS credentials file and name it with credentials = \"PROFILE\" (or profile= in the url)".into());
    }
    if authority.len() < 3 {
        return Err("the bucket name needs 3 or more characters".into());
    }
    Ok(())
}

/// Where a URL writes: the directory, or the bucket and prefix at its endpoint (AWS's bucket
/// names are global; other S3 servers are told apart by `endpoint=`).
fn same_place(url: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let endpoint = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("endpoint="))
        .unwrap_or("")
        .trim_end_matches('/');
    format!("{} {endpoint}", base.trim_end_matches('/'))
}

/// Checks an age X25519 recipient (`age1` and 58 more characters of Bech32, its checksum
/// valid), so a typo is refused when the policy is set rather than when a window runs.
pub fn check_age_recipient(text: &str) -> Result<(), String> {
    const CHARSET: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
    let bad = |why: &str| {
        let shown: String = text.chars().take(80).collect();
        Err(format!(
            "encrypt_to {shown:?} is not an age recipient ({why}): it is age1 followed by 58 characters, as `age-keygen -y KEYFILE` prints"
        ))
    };
    let Some(data) = text.strip_prefix("age1") else {
        return bad("it does not start with age1");
    };
    if data.len() != 58 {
        return bad("wrong length");
    }
    let mut values = Vec::with_capacity(data.len());
    for c in data.bytes() {
        match CHARSET.iter().position(|x| *x == c) {
            Some(v) => values.push(v as u8),
            None => return bad("a character outside Bech32's alphabet"),
        }
    }
    // Bech32 checksum over the expanded human-readable part "age" and the data.
    let mut check: u32 = 1;
    let hrp = b"age";
    let expanded = hrp
        .iter()
        .map(|c| c >> 5)
        .chain(std::iter::once(0))
        .chain(hrp.iter().map(|c| c & 31));
    for v in expanded.chain(values.iter().copied()) {
        let top = check >> 25;
        check = ((check & 0x1ff_ffff) << 5) ^ u32::from(v);
        for (i, g) in [
            0x3b6a_57b2u32,
            0x2650_8e6d,
            0x1ea1_19fa,
            0x3d42_33dd,
            0x2a14_62b3,
        ]
        .iter()
        .enumerate()
        {
            if (top >> i) & 1 == 1 {
                check ^= g;
            }
        }
    }
    if check != 1 {
        return bad("its checksum does not match: a character is mistyped");
    }
    Ok(())
}

/// S3 Object Lock on uploaded objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectLock {
    /// `governance` or `compliance`.
    pub mode: String,
    /// Days each object stays locked.
    pub days: u32,
}

impl ObjectLock {
    /// Checks the mode and the days.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.mode.as_str(), "governance" | "compliance") {
            return Err(format!(
                "object_lock mode {:?}: governance or compliance",
                self.mode
            ));
        }
        if self.days == 0 {
            return Err("object_lock days must be at least 1".into());
        }
        Ok(())
    }

    /// Whether nobody may shorten the lock (`compliance`), rather than users with a bypass
    /// permission (`governance`).
    pub fn compliance(&self) -> bool {
        self.mode == "compliance"
    }
}

/// `MODE:DAYS`, as a destination URL carries it (`object_lock=governance:30`).
impl std::fmt::Display for ObjectLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.mode, self.days)
    }
}

impl std::str::FromStr for ObjectLock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (mode, days) = s
            .split_once(':')
            .ok_or_else(|| format!("object_lock {s:?}: give MODE:DAYS"))?;
        let lock = ObjectLock {
            mode: mode.to_string(),
            days: days
                .parse()
                .map_err(|_| format!("object_lock {s:?}: DAYS is a whole number"))?,
        };
        lock.check()?;
        Ok(lock)
    }
}

/// A backup policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// The clusters it covers (names from the agents' configs); one window spans them all.
    pub clusters: Vec<ClusterId>,
    /// When windows open; none: only on `fleetsnap backup run`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// `independent`, `simultaneous` or `consistent`.
    #[serde(default)]
    pub consistency: Consistency,
    /// The longest write pause a `consistent` cut may take, in milliseconds; a cut that would
    /// take longer is aborted and the writes resume.
    #[serde(default = "default_pause_budget")]
    pub write_pause_budget_ms: u64,
    /// Where the sets go.
    pub destinations: Vec<Destination>,
    /// Regions that must hold a verified set for it to be `complete`.
    #[serde(default = "default_min_regions")]
    pub min_regions: u32,
    /// `zstd:LEVEL` or `none`.
    #[serde(default = "default_compress")]
    pub compress: String,
    /// age recipients (`age1…`): the sets are encrypted to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encrypt_to: Vec<String>,
    /// Whether a shard's primary may be the source.
    #[serde(default)]
    pub allow_primary: AllowPrimary,
    /// Zones to prefer among equally fresh nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub preferred_zones: Vec<String>,
    /// `replication` (default), `bgsave-file` (for servers that refuse SYNC), `scan` (for
    /// servers that refuse SYNC, PSYNC and BGSAVE: SCAN, DUMP and PTTL; each key consistent, the
    /// set not one point in time) or `auto` (replication, and a scan of each node that refuses
    /// it, said so in the set's notes).
    #[serde(default = "default_source")]
    pub source: String,
    /// Which sets are kept.
    #[serde(default)]
    pub retention: Retention,
    /// Object Lock on upload (S3 regions with Object Lock enabled on the bucket).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLock>,
    /// Restore drills of the policy's clusters on a schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillPolicy>,
    /// The most a cluster's newest complete set may be behind, in seconds, before alerts fire
    /// (`fleetsnap_policy_rpo_seconds`); default: twice the schedule's interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpo_seconds: Option<u64>,
    /// The continuous archive of the policy's clusters (`[policy.archive]`): one archiver per
    /// shard, leased to one agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchivePolicy>,
}

/// `[policy.archive]`: every shard of the policy's clusters has its replication stream archived
/// by one agent at a time (docs/archive.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivePolicy {
    /// A segment is cut this many seconds after its first byte: the recovery point's bound, and
    /// one PUT per region each.
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: u64,
    /// … or at this many stream bytes.
    #[serde(default = "default_segment_max_bytes")]
    pub segment_max_bytes: u64,
    /// The most bytes of segments an archiving agent keeps waiting for a region; past it the
    /// archiver stops reading until the regions catch up.
    #[serde(default = "default_archive_spool")]
    pub spool_max_bytes: u64,
    /// How far back the archive reaches (`7d`, `48h`): the archiving agent deletes, every hour,
    /// the segments no time within it needs. None: nothing is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep: Option<String>,
    /// Take an exact point of each archived cluster this often (`5m`, `1h`): every primary
    /// paused at once for at most the policy's `write_pause_budget_ms`, their offsets stored in
    /// every region, so that `restore --at T --exact` restores one instant of the whole cluster.
    /// None: no exact points (a restore `--at` is consistent within the clocks' skew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_points_every: Option<String>,
    /// How often the leader reads the archive's chains from the regions into the replicated
    /// catalog (`10m` when none): each read lists every segment of the cluster in one region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catalog_every: Option<String>,
}

impl ArchivePolicy {
    /// How often the leader reads the archive's chains into the catalog (`catalog_every`).
    pub fn catalog_span(&self) -> std::time::Duration {
        self.catalog_every
            .as_deref()
            .and_then(|e| parse_span(e).ok())
            .unwrap_or(std::time::Duration::from_secs(600))
    }
}

fn default_segment_seconds() -> u64 {
    1
}
fn default_segment_max_bytes() -> u64 {
    64 << 20
}
fn default_archive_spool() -> u64 {
    4 << 30
}

/// A span of time as `keep` and `--keep` write it: a whole number and one of s, m, h, d.
pub fn parse_span(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration: write 7d, 24h, 90m or 3600s");
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60).ok_or_else(bad)?,
        "h" => n.checked_mul(3600).ok_or_else(bad)?,
        "d" => n.checked_mul(86400).ok_or_else(bad)?,
        _ => return Err(bad()),
    };
    Ok(std::time::Duration::from_secs(secs))
}

impl ArchivePolicy {
    /// Checks the bounds and the `keep` span.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=3600).contains(&self.segment_seconds) {
            return Err(format!(
                "archive segment_seconds {} must be 1–3600",
                self.segment_seconds
            ));
        }
        if self.segment_max_bytes < 64 << 10 {
            return Err(format!(
                "archive segment_max_bytes {} is below 65536",
                self.segment_max_bytes
            ));
        }
        if self.spool_max_bytes < self.segment_max_bytes {
            return Err(format!(
                "archive spool_max_bytes {} is below segment_max_bytes {}: the spool holds at least one segment",
                self.spool_max_bytes, self.segment_max_bytes
            ));
        }
        if let Some(e) = &self.exact_points_every {
            let span = parse_span(e).map_err(|e| format!("archive exact_points_every: {e}"))?;
            if span.as_secs() < 10 {
                return Err(format!(
                    "archive exact_points_every {e:?} is under 10s: each point pauses every primary's writes"
                ));
            }
        }
        if let Some(e) = &self.catalog_every {
            let span = parse_span(e).map_err(|e| format!("archive catalog_every: {e}"))?;
            if span.is_zero() {
                return Err(format!(
                    "archive catalog_every {e:?} is 0: give a span of 1s or more, or leave it out for 10m"
                ));
            }
        }
        if let Some(k) = &self.keep {
            let span = parse_span(k).map_err(|e| format!("archive keep: {e}"))?;
            if span.is_zero() {
                return Err("archive keep is 0: leave it out to keep everything".into());
            }
        }
        Ok(())
    }
}

/// When a policy's clusters are drilled, and by which agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillPolicy {
    /// When (the same forms as `schedule`).
    pub schedule: Schedule,
    /// The agent that runs the scratch servers (it needs a `[drill]` section); default: the
    /// agent that took each shard's backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

fn default_pause_budget() -> u64 {
    50
}
fn default_min_regions() -> u32 {
    1
}
fn default_compress() -> String {
    "zstd:3".into()
}
fn default_source() -> String {
    "replication".into()
}

/// Why a policy is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {name:?}: {why}")]
pub struct PolicyError {
    name: String,
    why: String,
}

impl Policy {
    /// The RPO this policy promises at `now`: `rpo_seconds`, else twice the gap between the
    /// schedule's next two instants; `None` without either.
    pub fn promised_rpo_seconds(&self, now: time::OffsetDateTime) -> Option<u64> {
        if let Some(rpo) = self.rpo_seconds {
            return Some(rpo);
        }
        let schedule = self.schedule.as_ref()?;
        let first = schedule.next_after(now)?;
        let second = schedule.next_after(first)?;
        u64::try_from((second - first).whole_seconds())
            .ok()
            .map(|s| s * 2)
    }

    /// The URL an agent opens for destination `d` of this policy: its profile, and on S3 the
    /// policy's Object Lock, which every object it writes there carries.
    pub fn agent_url(&self, d: &Destination) -> String {
        let url = d.agent_url();
        match &self.object_lock {
            Some(l) if url.starts_with("s3://") && !url.contains("object_lock=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}object_lock={l}")
            }
            _ => url,
        }
    }

    /// Parses and checks one policy in its JSON form (how policies travel and are stored; the
    /// coordinator and the CLI read the TOML form with the same field names).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let p: Policy = serde_json::from_str(text).map_err(|e| format!("policy: {e}"))?;
        p.validate().map_err(|e| e.to_string())?;
        Ok(p)
    }

    /// Checks what serde cannot: names, counts, combinations.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let err = |why: String| PolicyError {
            name: self.name.clone(),
            why,
        };
        check_name("policy name", &self.name).map_err(|e| err(e.to_string()))?;
        if self.clusters.is_empty() {
            return Err(err(
                "clusters is empty: name the clusters it backs up".into()
            ));
        }
        if self.rpo_seconds == Some(0) {
            return Err(err(
                "rpo_seconds is 0: give the most seconds a cluster's newest complete set may                  be behind, or leave it out for twice the schedule's interval"
                    .into(),
            ));
        }
        if self.destinations.is_empty() {
            return Err(err(
                "no destinations: add [[destinations]] with region and url".into(),
            ));
        }
        let mut regions: Vec<&str> = self
            .destinations
            .iter()
            .map(|d| d.region.as_str())
            .collect();
        regions.sort();
        if let Some(w) = regions.windows(2).find(|w| w[0] == w[1]) {
            return Err(err(format!("region {:?} is listed twice", w[0])));
        }
        let mut urls = std::collections::BTreeMap::new();
        for d in &self.destinations {
            check_name("region name", &d.region).map_err(|e| err(e.to_string()))?;
            check_destination_url(&d.url)
                .map_err(|why| err(format!("region {:?}: {why}", d.region)))?;
            if let Some(other) = urls.insert(same_place(&d.url), &d.region) {
                return Err(err(format!(
                    "regions {other:?} and {:?} have the same url: a set would be written twice to one place and counted as two copies; give each region its own bucket or directory",
                    d.region
                )));
            }
            if let Some(p) = &d.credentials {
                check_name("credentials profile", p).map_err(|e| err(e.to_string()))?;
            }
        }
        for r in &self.encrypt_to {
            check_age_recipient(r).map_err(err)?;
        }
        if self.min_regions == 0 || self.min_regions as usize > self.destinations.len() {
            return Err(err(format!(
                "min_regions {} must be between 1 and the {} destinations",
                self.min_regions,
                self.destinations.len()
            )));
        }
        if !matches!(
            self.source.as_str(),
            "replication" | "bgsave-file" | "scan" | "auto"
        ) {
            return Err(err(format!(
                "source {:?}: replication, bgsave-file, scan (for servers that refuse SYNC, PSYNC and BGSAVE; not one point in time) or auto (replication, and scan where a node refuses it)",
                self.source
            )));
        }
        if self.consistency == Consistency::Consistent && self.source != "replication" {
            return Err(err(
                "a consistent cut needs the replication source (it keeps the stream up to the cut)"
                    .into(),
            ));
        }
        if self.consistency == Consistency::Consistent
            && !(1..=10_000).contains(&self.write_pause_budget_ms)
        {
            return Err(err(format!(
                "write_pause_budget_ms {} must be 1–10000",
                self.write_pause_budget_ms
            )));
        }
        if let Some(l) = &self.object_lock {
            l.check().map_err(err)?;
        }
        if let Some(a) = &self.archive {
            a.check().map_err(err)?;
            if a.exact_points_every.is_some() && !(1..=10_000).contains(&self.write_pause_budget_ms)
            {
                return Err(err(format!(
                    "write_pause_budget_ms {} must be 1–10000 (exact points pause writes)",
                    self.write_pause_budget_ms
                )));
            }
            if self.source != "replication" {
                return Err(err(
                    "the archive follows the replication stream: it needs source = \"replication\""
                        .into(),
                ));
            }
        }
        if self.compress != "none" {
            let level = self
                .compress
                .strip_prefix("zstd:")
                .and_then(|l| l.parse::<i32>().ok());
            if !level.is_some_and(|l| (1..=19).contains(&l)) {
                return Err(err(format!(
                    "compress {:?}: zstd:1 … zstd:19, or none",
                    self.compress
                )));
            }
        }
        Ok(())
    }

    /// The planner's rules for this policy.
    pub fn rules(&self) -> Rules {
        Rules {
            allow_primary: self.allow_primary,
            preferred_zones: self.preferred_zones.clone(),
            needs_sync: self.source == "replication",
            ..Rules::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            name: "nightly".into(),
            clusters: vec![ClusterId::new("orders").unwrap()],
            schedule: Some("@daily".parse().unwrap()),
            consistency: Consistency::Consistent,
            write_pause_budget_ms: 50,
            destinations: vec![
                Destination {
                    region: "a".into(),
                    url: "file:///var/backups/a".into(),
                    credentials: None,
                },
                Destination {
                    region: "b".into(),
                    url: "s3://bucket/x?region=eu-west-1".into(),
                    credentials: Some("dr".into()),
                },
            ],
            min_regions: 2,
            compress: "zstd:3".into(),
            encrypt_to: Vec::new(),
            allow_primary: AllowPrimary::Fallback,
            preferred_zones: Vec::new(),
            source: "replication".into(),
            retention: Retention::default(),
            object_lock: None,
            drill: None,
            rpo_seconds: None,
            archive: None,
        }
    }

    #[test]
    fn an_archive_section_is_checked() {
        let archive = |f: &dyn Fn(&mut ArchivePolicy)| {
            let mut a = ArchivePolicy {
                segment_seconds: 1,
                segment_max_bytes: 64 << 20,
                spool_max_bytes: 4 << 30,
                keep: Some("7d".into()),
                exact_points_every: Some("5m".into()),
                catalog_every: None,
            };
            f(&mut a);
            let mut p = policy();
            p.archive = Some(a);
            p.validate().map_err(|e| e.to_string())
        };
        assert!(archive(&|_| ()).is_ok());
        for (bad, want) in [
            (
                &(|a: &mut ArchivePolicy| a.segment_seconds = 0) as &dyn Fn(&mut ArchivePolicy),
                "segment_seconds",
            ),
            (
                &|a: &mut ArchivePolicy| a.keep = Some("7 days".into()),
                "keep",
            ),
            (
                &|a: &mut ArchivePolicy| a.keep = Some("0d".into()),
                "keep is 0",
            ),
            (
                &|a: &mut ArchivePolicy| a.exact_points_every = Some("5s".into()),
                "under 10s",
            ),
            (
                &|a: &mut ArchivePolicy| a.spool_max_bytes = 1 << 20,
                "spool_max_bytes",
            ),
        ] {
            let e = archive(bad).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
        let mut p = policy();
        p.consistency = Consistency::Independent;
        p.source = "bgsave-file".into();
        p.archive = Some(ArchivePolicy {
            segment_seconds: 1,
            segment_max_bytes: 64 << 20,
            spool_max_bytes: 4 << 30,
            keep: None,
            exact_points_every: None,
            catalog_every: None,
        });
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("replication")
        );
        let text = r#"{"name": "p", "clusters": ["c"], "archive": {},
            "destinations": [{"region": "a", "url": "file:///a"}]}"#;
        let p = Policy::from_json(text).unwrap();
        let a = p.archive.unwrap();
        assert_eq!(
            (a.segment_seconds, a.segment_max_bytes, a.keep),
            (1, 64 << 20, None)
        );
    }

    #[test]
    fn the_promised_rpo_is_given_or_twice_the_schedule() {
        let now = time::macros::datetime!(2026-11-21 10:30 UTC);
        let mut p = policy();
        assert_eq!(p.promised_rpo_seconds(now), Some(2 * 86_400));
        p.rpo_seconds = Some(900);
        assert_eq!(p.promised_rpo_seconds(now), Some(900));
        p.rpo_seconds = None;
        p.schedule = None;
        assert_eq!(p.promised_rpo_seconds(now), None);
        p.rpo_seconds = Some(0);
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("rpo_seconds")
        );
    }

    #[test]
    fn a_good_policy_passes_and_bad_ones_say_why() {
        policy().validate().unwrap();
        type Change = Box<dyn Fn(&mut Policy)>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|p| p.name = "a b".into()),
                "policy name \"a b\" is not valid",
            ),
            (Box::new(|p| p.clusters.clear()), "clusters is empty"),
            (Box::new(|p| p.destinations.clear()), "no destinations"),
            (
                Box::new(|p| p.destinations[1].region = "a".into()),
                "listed twice",
            ),
            (
                Box::new(|p| p.destinations[0].url = "/tmp/x".into()),
                "neither file",
            ),
            (
                Box::new(|p| p.destinations[1].url = "s3://AKIA:hunter2@bucket/x?region=r".into()),
                "carries credentials",
            ),
            (
                Box::new(|p| p.destinations[1].url = "file:///var/backups/a/".into()),
                "have the same url",
            ),
            (
                Box::new(|p| {
                    p.destinations[0].url = "s3://bkt/x?region=r&endpoint=http://h:1".into();
                    p.destinations[1].url = "s3://bkt/x/?endpoint=http://h:1/&region=q".into();
                }),
                "have the same url",
            ),
            (
                Box::new(|p| p.destinations[0].url = "file://host/x".into()),
                "file:///ABSOLUTE/PATH",
            ),
            (
                Box::new(|p| p.destinations[0].url = "file:///var/../etc".into()),
                "may not contain ..",
            ),
            (
                Box::new(|p| p.encrypt_to = vec!["age1notarecipient".into()]),
                "is not an age recipient",
            ),
            (Box::new(|p| p.min_regions = 3), "min_regions 3"),
            (Box::new(|p| p.min_regions = 0), "min_regions 0"),
            (
                Box::new(|p| p.source = "bgsave-file".into()),
                "needs the replication source",
            ),
            (Box::new(|p| p.source = "aof".into()), "source \"aof\""),
            (
                Box::new(|p| p.write_pause_budget_ms = 0),
                "write_pause_budget_ms 0",
            ),
            (
                Box::new(|p| p.compress = "gzip".into()),
                "compress \"gzip\"",
            ),
            (
                Box::new(|p| {
                    p.object_lock = Some(ObjectLock {
                        mode: "strict".into(),
                        days: 1,
                    })
                }),
                "governance or compliance",
            ),
        ];
        for (change, says) in cases {
            let mut p = policy();
            change(&mut p);
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("hunter2"), "a secret in the message: {e}");
            assert!(
                e.starts_with("policy \"nightly\"") || e.contains("a b"),
                "{e}"
            );
        }
    }

    #[test]
    fn one_bucket_at_two_endpoints_is_two_places() {
        let mut p = policy();
        p.destinations[0].url = "s3://bkt/x?region=r&endpoint=http://h:1".into();
        p.destinations[1].url = "s3://bkt/x?region=r&endpoint=http://h:2".into();
        p.validate().unwrap();
    }

    #[test]
    fn age_recipients_are_checked_by_their_checksum() {
        let r = age::x25519::Identity::generate().to_public().to_string();
        check_age_recipient(&r).unwrap();
        let mut p = policy();
        p.encrypt_to = vec![r.clone()];
        p.validate().unwrap();
        // One character changed anywhere is a checksum failure.
        for i in 4..r.len() {
            let mut b = r.clone().into_bytes();
            b[i] = if b[i] == b'q' { b'p' } else { b'q' };
            let typo = String::from_utf8(b).unwrap();
            assert!(check_age_recipient(&typo).is_err(), "{typo} accepted");
        }
        assert!(check_age_recipient(&r[..r.len() - 1]).is_err());
        assert!(check_age_recipient(&r.to_uppercase()).is_err());
    }

    #[test]
    fn credentials_become_the_agents_profile() {
        let p = policy();
        assert_eq!(p.destinations[0].agent_url(), "file:///var/backups/a");
        assert_eq!(
            p.destinations[1].agent_url(),
            "s3://bucket/x?region=eu-west-1&profile=dr"
        );
        let mut locked = p.clone();
        locked.object_lock = Some(ObjectLock {
            mode: "compliance".into(),
            days: 30,
        });
        assert_eq!(
            locked.agent_url(&p.destinations[1]),
            "s3://bucket/x?region=eu-west-1&profile=dr&object_lock=compliance:30"
        );
        // A file region has no Object Lock; retention alone keeps its sets.
        assert_eq!(
            locked.agent_url(&p.destinations[0]),
            "file:///var/backups/a"
        );
    }

    #[test]
    fn policies_travel_as_json() {
        let p = policy();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(Policy::from_json(&json).unwrap(), p);
        let e = Policy::from_json(&json.replacen("\"clusters\"", "\"cluster\"", 1)).unwrap_err();
        assert!(e.contains("unknown field `cluster`"), "{e}");
    }
}
