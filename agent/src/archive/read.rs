//! Reading the archive from the regions alone: its chains (a base and the segments that follow
//! it without a break), the offset a time or a found command resolves to, the tail that brings a
//! base there, and the search for commands.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use fleetsnap_core::archive::{
    self, MAX_HEADER, MAX_SEGMENT_STREAM, SegmentHeader, SegmentName, Wanted, archive_dir,
    commands, decode_segment, parse_segment_key, stamp_of,
};
use fleetsnap_core::manifest::{MANIFEST_NAME, join_key};
use fleetsnap_core::window::{from_unix_ms, unix_ms};
use fleetsnap_core::{BackupId, ClusterId, ShardId};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::restore::{decode_bytes, load_identities};
use crate::storage::{DestSpec, Store};

/// A base a chain can start from: a backup of the shard taken through replication.
#[derive(Clone, Debug, Serialize)]
pub struct Base {
    /// Its backup id.
    pub backup_id: String,
    /// The replication id and offset its RDB is at.
    pub replid: String,
    /// See above.
    pub offset: u64,
    /// When it was taken (Unix ms): the state it holds.
    pub at_ms: i64,
    /// The Redis Cluster slots its shard served then (none for a standalone shard).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub slot_ranges: Vec<(u16, u16)>,
}

/// A stretch of restorable history: a base and the segments that follow it without a break.
#[derive(Clone, Debug, Serialize)]
pub struct Chain {
    /// Where it starts.
    pub base: Base,
    /// The segments, in stream order.
    #[serde(skip)]
    pub segments: Vec<SegmentName>,
    /// The offset its last segment ends at.
    pub end_offset: u64,
    /// The latest time it restores to (Unix ms).
    pub end_ms: i64,
    /// The replication ids it passes through, in order.
    pub replids: Vec<String>,
}

/// What a point in time resolved to.
#[derive(Clone, Debug, Serialize)]
pub struct PointInTime {
    /// The base restored.
    pub base: Base,
    /// The offset the shard is restored to.
    pub offset: u64,
    /// The replication id at that offset.
    pub replid: String,
    /// When the last command restored had been received (Unix ms); the base's time when none.
    pub stamp_ms: i64,
    /// Commands in the tail (`SELECT`s not counted).
    pub tail_commands: u64,
    /// Segments read.
    pub segments: usize,
    /// Regions a segment had to be read from because the preferred one failed.
    pub fallbacks: Vec<String>,
    /// Redis Cluster slots that were moving around the point: keys of them arrived by
    /// migration (`RESTORE-ASKING`) within [`MOVING_WINDOW_MS`](super::MOVING_WINDOW_MS) before it, or after it in the
    /// last segment read. Restored with other shards at their own points, such a key may be on
    /// both shards or on neither.
    pub moving_slots: Vec<u16>,
    /// The keys that arrived by migration up to the point, each with when it last did.
    #[serde(skip)]
    pub arrived: Arc<HashMap<Vec<u8>, i64>>,
}

/// What to restore to.
#[derive(Clone, Debug)]
pub enum Target {
    /// The last command received at or before this Unix ms.
    At(i64),
    /// Just before the command at this offset of this replication id (as `find` prints it).
    Before {
        /// Replication id.
        replid: String,
        /// The command's first offset.
        offset: u64,
    },
}

impl Target {
    /// `[SHARD@]REPLID:OFFSET`, as `find` prints in its `before` column: the shard, when named,
    /// and the target.
    pub fn parse_before(s: &str) -> Result<(Option<ShardId>, Target)> {
        let bad = || {
            Error::Input(format!(
                "--before {s:?} is not a found command: give the SHARD@REPLID:OFFSET that `archive find` prints"
            ))
        };
        let (shard, rest) = match s.split_once('@') {
            Some((sh, rest)) => (Some(ShardId::new(sh).map_err(|_| bad())?), rest),
            None => (None, s),
        };
        Ok((shard, rest.parse().map_err(|_| bad())?))
    }
}

impl std::str::FromStr for Target {
    type Err = Error;
    /// `REPLID:OFFSET`.
    fn from_str(s: &str) -> Result<Self> {
        let bad = || {
            Error::Input(format!(
                "--before {s:?} is not a found command: give the SHARD@REPLID:OFFSET that `archive find` prints"
            ))
        };
        let (r, o) = s.split_once(':').ok_or_else(bad)?;
        if !archive::is_replid(r) {
            return Err(bad());
        }
        Ok(Target::Before {
            replid: r.to_string(),
            offset: o.parse().map_err(|_| bad())?,
        })
    }
}

/// A command the search found.
#[derive(Clone, Debug, Serialize)]
pub struct Found {
    /// When it had been received (RFC 3339, ms).
    pub time: String,
    /// The same in Unix ms.
    pub time_ms: i64,
    /// The shard.
    pub shard: String,
    /// Its replication id and first offset.
    pub replid: String,
    /// See above.
    pub offset: u64,
    /// What `restore --before` takes to stop just before it.
    pub before: String,
    /// The command (the name and its first arguments).
    pub command: String,
}

/// Everything one shard's archive holds, gathered from every region: the bases and, per
/// segment name, the regions that list it.
pub(super) struct Holdings {
    cluster: ClusterId,
    shard: ShardId,
    pub(super) stores: Vec<Store>,
    pub(super) bases: Vec<Base>,
    pub(super) segments: BTreeMap<String, (SegmentName, Vec<usize>)>,
    pub(super) refused: Vec<String>,
}

pub(super) async fn holdings(
    from: &[DestSpec],
    cluster: &ClusterId,
    shard: &ShardId,
) -> Result<Holdings> {
    if from.is_empty() {
        return Err(Error::Input(
            "no source: give at least one --from DEST".into(),
        ));
    }
    let mut h = Holdings {
        cluster: cluster.clone(),
        shard: shard.clone(),
        stores: Vec::new(),
        bases: Vec::new(),
        segments: BTreeMap::new(),
        refused: Vec::new(),
    };
    let mut seen_bases = std::collections::BTreeSet::new();
    for spec in from {
        let store = Store::open(spec).await?;
        let i = h.stores.len();
        let cluster_dir = join_key(spec.prefix(), cluster.as_str());
        let keys = match store.list(&format!("{cluster_dir}/")).await {
            Ok(k) => k,
            Err(e) => {
                h.refused.push(format!("{spec}: {e}"));
                h.stores.push(store);
                continue;
            }
        };
        let dir = archive_dir(spec.prefix(), cluster, shard);
        for key in &keys {
            if let Some(parsed) = parse_segment_key(&dir, key) {
                match parsed {
                    Ok(n) => {
                        let name = key.rsplit_once('/').map_or(key.as_str(), |(_, n)| n);
                        let id = format!("{}/{name}", n.replid);
                        h.segments
                            .entry(id)
                            .or_insert_with(|| (n, Vec::new()))
                            .1
                            .push(i);
                    }
                    Err(e) => h.refused.push(format!("{spec}: {e}")),
                }
                continue;
            }
            if !key.ends_with(&format!("/{MANIFEST_NAME}")) || key.starts_with(&format!("{dir}/")) {
                continue;
            }
            let m = match store.read_manifest(key).await {
                Ok(m) => m,
                Err(e) => {
                    h.refused.push(e.to_string());
                    continue;
                }
            };
            let Some(s) = m.shard(shard) else { continue };
            if let (Some(replid), Some(offset), "replication") =
                (&s.replid, s.start_offset, s.source_kind.as_str())
                && seen_bases.insert(m.backup_id.to_string())
            {
                h.bases.push(Base {
                    backup_id: m.backup_id.to_string(),
                    replid: replid.clone(),
                    offset,
                    at_ms: unix_ms(m.started_at),
                    slot_ranges: s.slot_ranges.clone(),
                });
            }
        }
        h.stores.push(store);
    }
    h.bases.sort_by_key(|b| b.at_ms);
    Ok(h)
}

impl Holdings {
    /// The chain that starts at `base`: each next segment holds the offset where the last
    /// ended, on the same replication id (two archivers of one shard, one taking over while the
    /// other still ran, cut the same stream at other places: the longest reach is taken and
    /// what was written already is skipped), or begins there on one a promotion switched to (its
    /// header says which, checked when it is read).
    fn chain(&self, base: &Base) -> Chain {
        let mut segs: Vec<SegmentName> = Vec::new();
        let (mut replid, mut at) = (base.replid.clone(), base.offset);
        loop {
            let first = segs.is_empty();
            let next = self
                .segments
                .values()
                .map(|(n, _)| n)
                .filter(|n| {
                    let holds = n.start <= at && at < n.end;
                    // A segment on another id starts where a promotion switched it.
                    (holds && n.replid == replid) || (!first && n.start == at && n.end > at)
                })
                // The same replication id first, then the longest.
                .max_by_key(|n| (n.replid == replid, n.end));
            match next {
                Some(n) => {
                    at = n.end;
                    replid = n.replid.clone();
                    segs.push(n.clone());
                }
                None => break,
            }
        }
        let mut replids = vec![base.replid.clone()];
        for s in &segs {
            if replids.last() != Some(&s.replid) {
                replids.push(s.replid.clone());
            }
        }
        Chain {
            base: base.clone(),
            end_offset: segs.last().map_or(base.offset, |s| s.end),
            end_ms: segs.last().map_or(base.at_ms, |s| s.last_ms),
            segments: segs,
            replids,
        }
    }

    pub(super) fn chains(&self) -> Vec<Chain> {
        self.bases.iter().map(|b| self.chain(b)).collect()
    }

    /// A segment read from the first region that gives a good copy, checked against its name.
    pub(super) async fn read(
        &self,
        id: &SegmentName,
        identity: Option<&Path>,
        fallbacks: &mut Vec<String>,
    ) -> Result<Segment> {
        let key_name = id.key.rsplit_once('/').map_or(id.key.as_str(), |(_, n)| n);
        let (_, regions) = &self.segments[&format!("{}/{key_name}", id.replid)];
        let mut why = Vec::new();
        for &i in regions {
            let store = &self.stores[i];
            let key = format!(
                "{}/{}/{key_name}",
                archive_dir(store.spec().prefix(), &self.cluster, &self.shard),
                id.replid
            );
            match read_one(store, &key, id, identity).await {
                Ok(x) => {
                    if !why.is_empty() {
                        fallbacks.push(format!("{key_name} read from {store}"));
                    }
                    return Ok(x);
                }
                Err(e @ Error::Input(_)) => return Err(e),
                Err(e) => why.push(format!("{store}: {e}")),
            }
        }
        Err(Error::Failed(format!(
            "archive segment {key_name} could not be read from any region, so no restore past offset {} is possible from this chain:\n  {}",
            id.start,
            why.join("\n  ")
        )))
    }
}

/// A segment read and checked: its header, and its plain bytes with where the stream starts.
pub(super) struct Segment {
    pub(super) header: SegmentHeader,
    plain: Vec<u8>,
    at: usize,
}

impl Segment {
    pub(super) fn stream(&self) -> &[u8] {
        &self.plain[self.at..]
    }
}

async fn read_one(
    store: &Store,
    key: &str,
    id: &SegmentName,
    identity: Option<&Path>,
) -> Result<Segment> {
    if id.codecs.encrypted() && identity.is_none() {
        return Err(Error::Input(
            "the archive is encrypted with age: pass --identity AGE_KEY_FILE".into(),
        ));
    }
    let limit = MAX_SEGMENT_STREAM + MAX_HEADER as u64 + 4096;
    let mut d = store.get(key, limit).await?;
    let mut stored = Vec::new();
    while let Some(c) = d.next().await? {
        stored.extend_from_slice(&c);
    }
    // Decoded and checked off the runtime's threads, so the next segment downloads meanwhile.
    let (codecs, identity) = (id.codecs.clone(), identity.map(Path::to_path_buf));
    let decoded = tokio::task::spawn_blocking(move || {
        let ids = identity.as_deref().map(load_identities).transpose()?;
        let plain = decode_bytes(stored, &codecs.0, ids.as_deref(), limit)?;
        let (h, stream) = decode_segment(&plain).map_err(|e| Error::Decode(e.to_string()))?;
        let at = plain.len() - stream.len();
        Ok::<_, Error>((h, at, plain))
    })
    .await
    .map_err(|e| Error::Failed(format!("decoding a segment failed: {e}")))?;
    let (h, at, plain) = match decoded {
        Err(e @ Error::Input(_)) => return Err(e),
        Err(e) => return Err(Error::storage(store, format!("{key}: {e}"))),
        Ok(x) => x,
    };
    if (h.replid.as_str(), h.start, h.end, h.first_ms, h.last_ms)
        != (
            id.replid.as_str(),
            id.start,
            id.end,
            id.first_ms,
            id.last_ms,
        )
    {
        return Err(Error::storage(
            store,
            format!(
                "{key}: its header does not match its name: the region's copy was moved or altered"
            ),
        ));
    }
    Ok(Segment {
        header: h,
        plain,
        at,
    })
}

pub(super) fn when(ms: i64) -> String {
    from_unix_ms(ms)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Why a time cannot be restored, with the restorable stretches nearest it.
pub(super) fn not_restorable(t: i64, chains: &[Chain]) -> Error {
    let mut ranges: Vec<(i64, i64)> = chains.iter().map(|c| (c.base.at_ms, c.end_ms)).collect();
    ranges.sort();
    if ranges.is_empty() {
        return Error::Input(
            "the archive holds no base for this shard in the regions given: start an archiver, or check --from, --cluster and --shard".into(),
        );
    }
    let where_ = if t < ranges[0].0 {
        "before the archive's first base"
    } else if t > ranges.iter().map(|r| r.1).max().unwrap_or(0) {
        "later than the archive reaches (in the future, or not yet in the regions)"
    } else {
        "inside a gap of the archive"
    };
    let shown: Vec<String> = ranges
        .iter()
        .map(|(a, b)| format!("{} … {}", when(*a), when(*b)))
        .collect();
    Error::Input(format!(
        "{} is {where_}; the restorable stretches are: {}",
        when(t),
        shown.join(", ")
    ))
}

/// The commands in a shard's archive that `wanted` names, received between `since` and
/// `until` (Unix ms), oldest first.
pub async fn find(
    from: &[DestSpec],
    cluster: &ClusterId,
    shard: &ShardId,
    wanted: &Wanted,
    since: i64,
    until: i64,
    identity: Option<&Path>,
) -> Result<Vec<Found>> {
    if let Some(p) = identity {
        load_identities(p)?;
    }
    let h = holdings(from, cluster, shard).await?;
    let mut out = Vec::new();
    let mut fallbacks = Vec::new();
    let names: Vec<SegmentName> = h
        .segments
        .values()
        .map(|(n, _)| n.clone())
        .filter(|n| n.last_ms >= since && n.first_ms <= until)
        .collect();
    for name in names {
        let seg = h.read(&name, identity, &mut fallbacks).await?;
        let hd = &seg.header;
        let cmds =
            commands(seg.stream(), hd.start, hd.db).map_err(|e| Error::Failed(e.to_string()))?;
        let mut boundary = hd.start;
        for c in &cmds {
            if wanted.matches(c) {
                let t = stamp_of(&hd.index, c.end).unwrap_or(hd.last_ms);
                if t >= since && t <= until {
                    out.push(Found {
                        time: when(t),
                        time_ms: t,
                        shard: shard.to_string(),
                        replid: hd.replid.clone(),
                        offset: c.start,
                        before: format!("{shard}@{}:{}", hd.replid, c.start.max(boundary)),
                        command: c.display(),
                    });
                }
            }
            if c.cuttable {
                boundary = c.end;
            }
        }
    }
    // Two archivers of one shard (a takeover) may both hold a command: it is named once.
    out.sort_by(|a, b| (&a.replid, a.offset).cmp(&(&b.replid, b.offset)));
    out.dedup_by(|a, b| a.replid == b.replid && a.offset == b.offset);
    out.sort_by_key(|f| (f.time_ms, f.offset));
    Ok(out)
}

/// One shard's archive as the regions hold it: its chains, oldest first, and what was refused.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Cluster.
    pub cluster: String,
    /// Shard.
    pub shard: String,
    /// The restorable stretches.
    pub chains: Vec<Chain>,
    /// Segments stored past every chain's reach (no base before them, or a break).
    pub orphan_segments: usize,
    /// The stretches a restore can reach (Unix ms, merged), and the gaps between them.
    pub restorable: Vec<(i64, i64)>,
    /// See above: `(end of one stretch, start of the next)`.
    pub gaps: Vec<(i64, i64)>,
    /// The newest time restorable, and how far it is behind now (s): the recovery point as
    /// the regions hold it.
    pub restorable_until: Option<String>,
    /// See above.
    pub lag_seconds: Option<f64>,
    /// Keys and manifests refused, with why.
    pub refused: Vec<String>,
}

/// The archive's state of one shard, read from the regions.
pub async fn status(from: &[DestSpec], cluster: &ClusterId, shard: &ShardId) -> Result<Status> {
    let h = holdings(from, cluster, shard).await?;
    let mut chains = h.chains();
    // A base inside another chain's reach adds no stretch of its own.
    chains.sort_by_key(|c| c.base.at_ms);
    let mut kept: Vec<Chain> = Vec::new();
    for c in chains {
        match kept.last() {
            Some(k) if c.end_ms <= k.end_ms && c.replids.iter().all(|r| k.replids.contains(r)) => {}
            _ => kept.push(c),
        }
    }
    let used: std::collections::BTreeSet<&str> = kept
        .iter()
        .flat_map(|c| c.segments.iter().map(|s| s.key.as_str()))
        .collect();
    let end = kept.iter().map(|c| c.end_ms).max();
    let stretches = fleetsnap_core::archive::merge_ranges(
        kept.iter().map(|c| (c.base.at_ms, c.end_ms)).collect(),
    );
    let now = unix_ms(time::OffsetDateTime::now_utc());
    Ok(Status {
        cluster: cluster.to_string(),
        shard: shard.to_string(),
        orphan_segments: h
            .segments
            .values()
            .filter(|(n, _)| !used.contains(n.key.as_str()))
            .count(),
        restorable_until: end.map(when),
        restorable: stretches.clone(),
        gaps: fleetsnap_core::archive::gaps_between(&stretches),
        lag_seconds: end.map(|e| ((now - e).max(0) as f64) / 1000.0),
        chains: kept,
        refused: h.refused,
    })
}

/// `BackupId` of a base, checked.
pub fn base_id(b: &Base) -> Result<BackupId> {
    b.backup_id
        .parse()
        .map_err(|e| Error::Failed(format!("base {}: {e}", b.backup_id)))
}

/// The shards of `cluster` that have an archive in any of the regions.
pub async fn shards(from: &[DestSpec], cluster: &ClusterId) -> Result<Vec<ShardId>> {
    let mut out = std::collections::BTreeSet::new();
    for spec in from {
        let store = Store::open(spec).await?;
        let dir = join_key(spec.prefix(), &format!("{cluster}/archive"));
        let keys = match store.list(&format!("{dir}/")).await {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(region = %spec, error = %e, "cannot list the archive");
                continue;
            }
        };
        for key in keys {
            if let Some(shard) = key
                .strip_prefix(&format!("{dir}/"))
                .and_then(|r| r.split('/').next())
                .and_then(|s| ShardId::new(s).ok())
            {
                out.insert(shard);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::Input(format!(
            "no archive of cluster {cluster} in the regions given: check --from and --cluster"
        )));
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_archivers_make_one_chain_with_the_longest_reach() {
        let (cluster, shard) = (ClusterId::new("c").unwrap(), ShardId::new("s").unwrap());
        let dir = fleetsnap_core::archive::archive_dir("", &cluster, &shard);
        let mut segments = BTreeMap::new();
        let r1 = "a".repeat(40);
        // One archiver cut at 200 and 300; another, taking over at 150, at 260 and 400.
        for (a, b) in [(100, 200), (200, 300), (150, 260), (260, 400), (500, 600)] {
            let key = format!("{dir}/{r1}/{a:020}-{b:020}-{a}-{b}.seg");
            let n = parse_segment_key(&dir, &key).unwrap().unwrap();
            segments.insert(format!("r1/{a}"), (n, vec![0]));
        }
        let h = Holdings {
            cluster,
            shard,
            stores: Vec::new(),
            bases: Vec::new(),
            segments,
            refused: Vec::new(),
        };
        let base = Base {
            backup_id: "b".into(),
            replid: r1,
            offset: 120,
            at_ms: 0,
            slot_ranges: Vec::new(),
        };
        let c = h.chain(&base);
        let reach: Vec<(u64, u64)> = c.segments.iter().map(|s| (s.start, s.end)).collect();
        // 500–600 is past a break: not in the chain.
        assert_eq!(reach, vec![(100, 200), (200, 300), (260, 400)]);
        assert_eq!(c.end_offset, 400);
    }
}
