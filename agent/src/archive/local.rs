//! The archiver's local spool: where the chain stands (the position after the last durable
//! segment), the segments made durable here and not yet in every region, and one uploader per
//! region that sends them in order, retrying, and removes each once every region has it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fleetsnap_core::archive::{SegmentHeader, decode_segment, segment_key};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::snapshot::{EncodeOptions, encode_bytes};
use crate::storage::Store;

/// Where a chain stands: every stream byte up to `offset` of `replid` is in a durable segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The replication id the stream is on.
    pub replid: String,
    /// The offset after the last durable segment.
    pub offset: u64,
    /// The database selected at `offset`.
    pub db: u64,
    /// When the stream byte at `offset` had been received (Unix ms).
    pub at_ms: i64,
}

/// The spool directory of one shard's archive.
pub struct Local {
    dir: PathBuf,
    /// The segments waiting, by name, with when their first byte came (Unix ms).
    pending: std::sync::Mutex<std::collections::BTreeMap<String, i64>>,
    /// Bytes of segments waiting here.
    pub waiting: Arc<AtomicU64>,
    /// The most bytes that may wait.
    pub max_bytes: u64,
    /// The position as last read or written, for reports (which must not read the disk).
    last: std::sync::Mutex<Option<Position>>,
}

fn io(what: &'static str, path: &Path, e: std::io::Error) -> Error {
    Error::file(what, path, e)
}

/// Writes `bytes` to `path` atomically and durably (a temporary file, fsync, rename, fsync of
/// the directory).
fn write_durable(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = crate::restore::with_suffix(path, ".tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("cannot move into place", path, e))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("cannot sync", dir, e))?;
    }
    Ok(())
}

impl Local {
    /// Opens (creating) `dir`, counting the segments already waiting there.
    pub fn open(dir: PathBuf, max_bytes: u64) -> Result<Self> {
        std::fs::create_dir_all(dir.join("segments"))
            .map_err(|e| io("cannot create the archive spool", &dir, e))?;
        let local = Self {
            dir,
            pending: Default::default(),
            waiting: Arc::new(AtomicU64::new(0)),
            max_bytes,
            last: Default::default(),
        };
        *local.last.lock().expect("position lock") = local.position()?;
        let mut n = 0;
        for (name, p) in local.segments()? {
            n += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            let first = std::fs::read(&p)
                .ok()
                .and_then(|b| decode_segment(&b).ok().map(|(h, _)| h.first_ms))
                .unwrap_or(0);
            local
                .pending
                .lock()
                .expect("pending lock")
                .insert(name, first);
        }
        local.waiting.store(n, Ordering::Relaxed);
        Ok(local)
    }

    /// The position after the last durable segment, if a chain was started here.
    pub fn position(&self) -> Result<Option<Position>> {
        let p = self.dir.join("position.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                Error::Input(format!(
                    "{} is not a chain position ({e}): remove it to start a new chain",
                    p.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("cannot read", &p, e)),
        }
    }

    /// Records where the chain stands.
    pub fn set_position(&self, pos: &Position) -> Result<()> {
        write_durable(
            &self.dir.join("position.json"),
            &serde_json::to_vec(pos).expect("serialises"),
        )?;
        *self.last.lock().expect("position lock") = Some(pos.clone());
        Ok(())
    }

    /// The position as last recorded, from memory.
    pub fn last_position(&self) -> Option<Position> {
        self.last.lock().expect("position lock").clone()
    }

    /// Makes a segment durable here, then moves the position past it.
    /// `db` is the database selected at the segment's end.
    pub fn add(&self, plain: &[u8], h: &SegmentHeader, db: u64) -> Result<()> {
        let name = format!("{:020}-{}.seg", h.start, h.replid);
        write_durable(&self.dir.join("segments").join(&name), plain)?;
        self.pending
            .lock()
            .expect("pending lock")
            .insert(name, h.first_ms);
        self.waiting
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        self.set_position(&Position {
            replid: h.replid.clone(),
            offset: h.end,
            db,
            at_ms: h.last_ms,
        })
    }

    /// The segments waiting, in stream order (by name).
    fn segments(&self) -> Result<Vec<(String, PathBuf)>> {
        let dir = self.dir.join("segments");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(|e| io("cannot list", &dir, e))? {
            let e = e.map_err(|e| io("cannot list", &dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".seg") {
                out.push((name, e.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn sent_mark(&self, seg: &str, region: &str) -> PathBuf {
        self.dir
            .join("segments")
            .join(format!("{seg}.{region}.sent"))
    }

    /// When the first byte of the oldest segment not yet in every region came (Unix ms).
    pub fn oldest_pending_ms(&self) -> Option<i64> {
        self.pending
            .lock()
            .expect("pending lock")
            .values()
            .min()
            .copied()
    }

    /// Whether the spool has room for `more` bytes. An empty spool takes any one segment, even
    /// one larger than its limit, or the archiver would wait for room that never comes.
    pub fn has_room(&self, more: u64) -> bool {
        let waiting = self.waiting.load(Ordering::Relaxed);
        waiting == 0 || waiting + more <= self.max_bytes
    }
}

/// A region's name in the spool's marks: a short hash of its spec, so marks survive a change in
/// the order of `--to`.
fn region_tag(store: &Store) -> String {
    hex::encode(&Sha256::digest(store.spec().to_string().as_bytes())[..6])
}

/// What an uploader has done, for the status and the lag.
#[derive(Debug, Default)]
pub struct Uploaded {
    /// Its last receive time (Unix ms).
    pub last_ms: AtomicU64,
    /// Segments that failed to store, retried.
    pub failures: AtomicU64,
}

/// Sends the waiting segments to `store`, in order, until `stop` and nothing is left. A failure
/// is retried after a pause growing to 10 s: the chain in a region never skips a segment.
pub async fn upload_loop(
    local: Arc<Local>,
    stores: Arc<Vec<Store>>,
    index: usize,
    encode: EncodeOptions,
    done: Arc<Uploaded>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let store = &stores[index];
    let tag = region_tag(store);
    let mut pause = Duration::from_millis(200);
    loop {
        let pending = match local.segments() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the archive spool");
                Vec::new()
            }
        };
        let mut sent_any = false;
        let mut failed = false;
        for (name, path) in pending {
            if local.sent_mark(&name, &tag).exists() {
                continue;
            }
            match send_one(store, &path, &encode).await {
                Ok(h) => {
                    let _ = std::fs::File::create(local.sent_mark(&name, &tag));
                    done.last_ms.store(h.last_ms as u64, Ordering::Relaxed);
                    sent_any = true;
                    pause = Duration::from_millis(200);
                    let all = stores
                        .iter()
                        .all(|s| local.sent_mark(&name, &region_tag(s)).exists());
                    if all {
                        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        if std::fs::remove_file(&path).is_ok() {
                            local.waiting.fetch_sub(len, Ordering::Relaxed);
                            local.pending.lock().expect("pending lock").remove(&name);
                        }
                        for s in stores.iter() {
                            let _ = std::fs::remove_file(local.sent_mark(&name, &region_tag(s)));
                        }
                    }
                }
                Err(e) => {
                    done.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(region = %store, segment = %name, error = %e, "an archive segment could not be stored; retrying");
                    failed = true;
                    break;
                }
            }
        }
        if !sent_any && !failed && *stop.borrow() {
            return;
        }
        if failed {
            pause = (pause * 2).min(Duration::from_secs(10));
        }
        if !sent_any || failed {
            let wait = if failed {
                pause
            } else {
                Duration::from_millis(50)
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

async fn send_one(store: &Store, path: &Path, encode: &EncodeOptions) -> Result<SegmentHeader> {
    let plain = std::fs::read(path).map_err(|e| io("cannot read", path, e))?;
    let (h, _) = decode_segment(&plain).map_err(|e| {
        Error::Input(format!(
            "{}: {e}; the spooled segment is damaged (remove it and the chain position to start a new chain)",
            path.display()
        ))
    })?;
    let stored = encode_bytes(encode, &plain)?;
    let key = segment_key(store.spec().prefix(), &h, &encode.chain());
    store.put(&key, Bytes::from(stored)).await?;
    Ok(h)
}
