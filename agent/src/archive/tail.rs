//! A restore's tail from the archive, written by a task of its own from the moment the target
//! is resolved, so the base is fetched (and, for `replace`, loaded by the node) while the
//! segments are read. Whoever uses the tail waits for it with [`ArchiveTail::ready`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;

use fleetsnap_core::archive::{
    Borrowed, SegmentName, commands_borrowed, db_at, offset_at, stamp_of,
};

use super::read::{Base, Chain, Holdings, PointInTime, Segment, Target, holdings, not_restorable};
use crate::error::{Error, Result};
use crate::restore::load_identities;
use crate::storage::DestSpec;
use fleetsnap_core::{ClusterId, ShardId};

/// A tail being written, or written; cloning shares it.
#[derive(Clone)]
pub struct ArchiveTail {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    state: Mutex<State>,
    /// Holds the file; removed with the last clone.
    _dir: tempfile::TempDir,
}

enum State {
    Writing(JoinHandle<Result<PointInTime>>),
    Done(PointInTime),
    Failed(String),
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Nobody waits for it any more: its directory goes now, so the writer stops too.
        if let State::Writing(h) = self.state.get_mut() {
            h.abort();
        }
    }
}

impl std::fmt::Debug for ArchiveTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ArchiveTail({})", self.inner.path.display())
    }
}

impl ArchiveTail {
    /// Starts writing `plan`'s tail into `dir`.
    pub(super) fn start(plan: TailPlan, dir: tempfile::TempDir) -> Self {
        let path = dir.path().join("archive.tail");
        let task = {
            let path = path.clone();
            tokio::spawn(async move { plan.write(&path).await })
        };
        Self {
            inner: Arc::new(Inner {
                path,
                state: Mutex::new(State::Writing(task)),
                _dir: dir,
            }),
        }
    }

    /// Waits until the tail is written: what the target resolved to, or why the tail could not
    /// be built (the first caller gets the error itself, later ones its text).
    pub async fn ready(&self) -> Result<PointInTime> {
        let mut state = self.inner.state.lock().await;
        if let State::Writing(task) = &mut *state {
            let r = match task.await {
                Ok(r) => r,
                Err(e) => Err(Error::Failed(format!(
                    "writing the archive's tail failed: {e}"
                ))),
            };
            *state = match &r {
                Ok(p) => State::Done(p.clone()),
                Err(e) => State::Failed(e.to_string()),
            };
            return r;
        }
        match &*state {
            State::Done(p) => Ok(p.clone()),
            State::Failed(e) => Err(Error::Failed(e.clone())),
            State::Writing(_) => unreachable!("a finished task is replaced above"),
        }
    }

    /// The tail file: complete once [`ready`](Self::ready) has answered `Ok`.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

/// How long before a point a key's arrival by migration marks its slot as moving.
pub const MOVING_WINDOW_MS: i64 = 10_000;

/// The slot of the key a command of a migration brings in (`RESTORE-ASKING`, which the
/// importing primary's stream carries for each key `MIGRATE` sends it).
fn moved_in_slot(c: &Borrowed<'_>) -> Option<u16> {
    c.is("RESTORE-ASKING")
        .then(|| c.args.get(1).map(|k| fleetsnap_core::keys::key_slot(k)))
        .flatten()
}

/// A shard's target resolved against the archive's listing: the chain whose base is restored
/// and the segments its tail is read from. Nothing of the tail is read yet.
pub struct TailPlan {
    pub(super) chain: Chain,
    pub(super) wanted: Vec<SegmentName>,
    pub(super) holdings: Arc<Holdings>,
    pub(super) target: Target,
    pub(super) identity: Option<PathBuf>,
}

/// Resolves `target` for one shard to a chain and the segments it needs (see [`TailPlan`]).
pub async fn plan(
    from: &[DestSpec],
    cluster: &ClusterId,
    shard: &ShardId,
    target: &Target,
    identity: Option<&Path>,
) -> Result<TailPlan> {
    if let Some(p) = identity {
        load_identities(p)?;
    }
    let h = holdings(from, cluster, shard).await?;
    let chains = h.chains();
    // The chain that reaches the target from the latest base.
    let chain = match target {
        Target::At(t) => chains
            .iter()
            .filter(|c| c.base.at_ms <= *t && *t <= c.end_ms)
            .max_by_key(|c| c.base.at_ms)
            .ok_or_else(|| not_restorable(*t, &chains))?,
        Target::Before { replid, offset } => chains
                .iter()
                .filter(|c| {
                    c.base.offset <= *offset
                        && *offset <= c.end_offset
                        && c.segments.iter().any(|s| s.replid == *replid && s.start <= *offset && *offset <= s.end)
                })
                .max_by_key(|c| c.base.offset)
                .ok_or_else(|| {
                    Error::Input(format!(
                        "no chain of the archive holds offset {offset} of {replid} after a base: run `archive find` again, or restore --at a time"
                    ))
                })?,
    };
    // The segments this target needs.
    let wanted: Vec<SegmentName> = chain
        .segments
        .iter()
        .take_while(|n| match target {
            Target::At(t) => n.first_ms <= *t,
            Target::Before { .. } => true,
        })
        .cloned()
        .collect();
    Ok(TailPlan {
        chain: chain.clone(),
        wanted,
        holdings: Arc::new(h),
        target: target.clone(),
        identity: identity.map(Path::to_path_buf),
    })
}

impl TailPlan {
    /// The base the tail starts from.
    pub fn base(&self) -> &Base {
        &self.chain.base
    }

    /// Reads the segments and writes the tail that brings the base to the target to `tail`
    /// (RESP commands; the replication stream's `PING` and `REPLCONF` left out), synced.
    pub async fn write(self, tail: &Path) -> Result<PointInTime> {
        let TailPlan {
            chain,
            wanted,
            holdings,
            target,
            identity,
        } = self;
        write_tail(chain, wanted, holdings, &target, identity.as_deref(), tail).await
    }
}

/// The segments, read ahead by a task of their own (two at most wait) while the ones read are
/// written out.
async fn write_tail(
    chain: Chain,
    wanted: Vec<SegmentName>,
    h: Arc<Holdings>,
    target: &Target,
    identity: Option<&Path>,
    tail: &Path,
) -> Result<PointInTime> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(Segment, Vec<String>)>>(2);
    let reader = {
        let (h, identity) = (h.clone(), identity.map(Path::to_path_buf));
        tokio::spawn(async move {
            for name in wanted {
                let mut fallbacks = Vec::new();
                let read = h
                    .read(&name, identity.as_deref(), &mut fallbacks)
                    .await
                    .map(|s| (s, fallbacks));
                let failed = read.is_err();
                if tx.send(read).await.is_err() || failed {
                    return;
                }
            }
        })
    };
    let file = std::fs::File::create(tail).map_err(|e| Error::file("cannot create", tail, e))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let put = |out: &mut std::io::BufWriter<std::fs::File>, bytes: &[u8]| {
        out.write_all(bytes)
            .map_err(|e| Error::file("cannot write", tail, e))
    };
    let mut fallbacks = Vec::new();
    let mut written = 0u64;
    let mut result = (
        chain.base.offset,
        chain.base.replid.clone(),
        chain.base.at_ms,
    );
    let mut started = false;
    // Everything up to here is in the tail (or the base).
    let mut done = chain.base.offset;
    let mut segments = 0;
    let mut replid = chain.base.replid.clone();
    // Slots keys arrived in by migration: when last, up to the point; and after it.
    let mut moved_in: BTreeMap<u16, i64> = BTreeMap::new();
    let mut moving_after: BTreeSet<u16> = Default::default();
    let mut arrived: HashMap<Vec<u8>, i64> = HashMap::new();
    while let Some(read) = rx.recv().await {
        let (seg, fell_back) = read?;
        fallbacks.extend(fell_back);
        let h = &seg.header;
        segments += 1;
        if h.replid != replid && h.switched_from.as_deref() != Some(replid.as_str()) {
            return Err(Error::Failed(format!(
                "archive segment {}-{} of {} does not follow {replid}: the chain is broken there",
                h.start, h.end, h.replid
            )));
        }
        replid = h.replid.clone();
        let stream = seg.stream();
        let cmds =
            commands_borrowed(stream, h.start, h.db).map_err(|e| Error::Failed(e.to_string()))?;
        // Where this segment stops: at the target's offset, or its end.
        let stop = match target {
            Target::At(t) => offset_at(&h.index, *t).unwrap_or(h.start),
            Target::Before { offset, .. } if *offset < h.end => {
                // The last boundary outside a transaction at or before the command.
                cmds.iter()
                    .take_while(|c| c.end <= *offset)
                    .filter(|c| c.cuttable)
                    .map(|c| c.end)
                    .last()
                    .unwrap_or(h.start)
            }
            Target::Before { .. } => h.end,
        };
        // A segment that overlaps the one before (another archiver's cut) goes on from where
        // that one stopped.
        let stop = stop.max(h.start).max(done);
        // The base may sit inside the first segment (a window's backup): the database selected
        // there is the scanner's, and the tail starts with it.
        for c in &cmds {
            if c.end <= done {
                continue;
            }
            if c.end > stop {
                // Past the point, in this segment: a migration still under way.
                moving_after.extend(moved_in_slot(c));
                continue;
            }
            if let Some(slot) = moved_in_slot(c) {
                let ms = stamp_of(&h.index, c.end).unwrap_or(h.last_ms);
                moved_in.insert(slot, ms);
                arrived.insert(c.args[1].to_vec(), ms);
            }
            if !started {
                let db = db_at(stream, h.start, h.db, chain.base.offset)
                    .map_err(|e| Error::Failed(e.to_string()))?;
                let mut select = Vec::new();
                crate::redis::encode(&mut select, &[b"SELECT", db.to_string().as_bytes()]);
                put(&mut out, &select)?;
                started = true;
            }
            if c.is("PING") || c.is("REPLCONF") {
                continue;
            }
            // The command's own bytes, as the node sent them.
            put(
                &mut out,
                &stream[(c.start - h.start) as usize..(c.end - h.start) as usize],
            )?;
            // Data commands, as a replay counts them.
            written += u64::from(!c.is("SELECT"));
        }
        if stop > chain.base.offset && stop > h.start {
            result = (
                stop,
                h.replid.clone(),
                stamp_of(&h.index, stop).unwrap_or(h.last_ms),
            );
        }
        done = stop;
        if stop < h.end {
            break;
        }
    }
    drop(rx);
    let _ = reader.await;
    let file = out
        .into_inner()
        .map_err(|e| Error::file("cannot write", tail, e.into_error()))?;
    file.sync_all()
        .map_err(|e| Error::file("cannot write", tail, e))?;
    let since = result.2 - MOVING_WINDOW_MS;
    moving_after.extend(
        moved_in
            .into_iter()
            .filter(|(_, ms)| *ms >= since)
            .map(|(slot, _)| slot),
    );
    Ok(PointInTime {
        base: chain.base.clone(),
        offset: result.0,
        replid: result.1,
        stamp_ms: result.2,
        tail_commands: written,
        segments,
        fallbacks,
        moving_slots: moving_after.into_iter().collect(),
        arrived: Arc::new(arrived),
    })
}
