//! Reading backups back: listing, verifying and restoring to a file, with fallback across
//! destinations on any error or checksum mismatch.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fleetsnap_core::manifest::{self, MANIFEST_NAME};
use fleetsnap_core::{
    BackupId, ClusterId, Codec, Manifest, ObjectEntry, ObjectKind, RdbVerifier, ShardEntry, ShardId,
};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::storage::{DestSpec, Store};
use crate::error::{Error, Result};
use super::online::{OnlineOptions, OnlineReport};
use crate::snapshot::ChannelReader;
use crate::redis::RedisTarget;

/// One backup found in a destination.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// Cluster name.
    pub cluster: String,
    /// Backup id.
    pub backup_id: String,
    /// Shard names.
    pub shards: Vec<String>,
    /// Stored bytes.
    pub stored_bytes: u64,
    /// Source bytes.
    pub raw_bytes: u64,
    /// When it finished (RFC 3339).
    pub finished_at: String,
}

/// The complete backups in a destination, and the manifests it holds that were refused.
#[derive(Clone, Debug, Serialize)]
pub struct Listing {
    /// Sets whose manifest was read and checked, oldest first.
    pub sets: Vec<Listed>,
    /// Manifests refused (altered, damaged, unreadable), each with why: not verified sets.
    pub refused: Vec<String>,
}

/// Lists the complete backups (those with a manifest) in a destination, oldest first. A
/// manifest that cannot be read or breaks the layout's rules is listed as refused, not skipped
/// in silence, and does not hide the others.
pub async fn list(spec: &DestSpec) -> Result<Listing> {
    let store = Store::open(spec).await?;
    let mut out = Vec::new();
    let mut refused = Vec::new();
    for key in store.list(spec.prefix()).await? {
        if !key.ends_with(&format!("/{MANIFEST_NAME}")) {
            continue;
        }
        let m = match store.read_manifest(&key).await {
            Ok(m) => m,
            Err(e) => {
                refused.push(e.to_string());
                continue;
            }
        };
        out.push(Listed {
            cluster: m.cluster.to_string(),
            backup_id: m.backup_id.to_string(),
            shards: m.shards.iter().map(|s| s.shard.to_string()).collect(),
            stored_bytes: m.stored_bytes(),
            raw_bytes: m
                .shards
                .iter()
                .flat_map(|s| &s.objects)
                .map(|o| o.raw_bytes)
                .sum(),
            finished_at: m
                .finished_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        });
    }
    out.sort_by(|a, b| a.backup_id.cmp(&b.backup_id));
    Ok(Listing { sets: out, refused })
}

/// Finds a backup's manifest in a destination; returns it and its directory key. A window's id is
/// shared by every cluster it covered: `cluster` names one, else `shard` picks the cluster that
/// has that shard, else the id must be in one cluster only.
pub async fn find_manifest(
    store: &Store,
    id: &BackupId,
    cluster: Option<&ClusterId>,
    shard: Option<&ShardId>,
) -> Result<(Manifest, String)> {
    if let Some(c) = cluster {
        let dir = manifest::backup_dir(store.spec().prefix(), c, id);
        let key = format!("{dir}/{MANIFEST_NAME}");
        let bytes = store.get_all(&key).await.map_err(|e| {
            Error::storage(
                store,
                format!("backup {id} of cluster {c} has no readable manifest here ({e}): it is not complete in this destination"),
            )
        })?;
        let m = store.manifest_at(&key, &bytes)?;
        return Ok((m, dir));
    }
    let suffix = format!("/{id}/{MANIFEST_NAME}");
    let keys: Vec<String> = store
        .list(store.spec().prefix())
        .await?
        .into_iter()
        .filter(|k| k.ends_with(&suffix))
        .collect();
    if keys.is_empty() {
        return Err(Error::storage(
            store,
            format!(
                "backup {id} has no manifest here: it is not complete in this destination (check the id with `fleetsnap-agent ls --from {}`)",
                store.spec()
            ),
        ));
    }
    let mut found = Vec::new();
    for key in &keys {
        let m = store.read_manifest(key).await?;
        if m.backup_id != *id {
            return Err(Error::storage(
                store,
                format!(
                    "manifest {key} names backup {} instead of {id}",
                    m.backup_id
                ),
            ));
        }
        found.push(m);
    }
    let m = match (found.len(), shard) {
        (1, _) => found.remove(0),
        (_, Some(s)) => {
            let i = found
                .iter()
                .position(|m| m.shard(s).is_some())
                .ok_or_else(|| {
                    Error::Input(format!(
                        "backup {id} has no shard {s} in any of its clusters ({})",
                        found
                            .iter()
                            .map(|m| format!("{}: {}", m.cluster, names(m)))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ))
                })?;
            found.remove(i)
        }
        (_, None) => {
            return Err(Error::Input(format!(
                "backup {id} covers {} clusters ({}): choose one with --cluster",
                found.len(),
                found
                    .iter()
                    .map(|m| format!("{}: {}", m.cluster, names(m)))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
    };
    let dir = manifest::backup_dir(store.spec().prefix(), &m.cluster, id);
    Ok((m, dir))
}

/// Loads age identities from a file (as written by `age-keygen`).
pub fn load_identities(path: &Path) -> Result<Vec<Box<dyn age::Identity>>> {
    let file = age::IdentityFile::from_file(path.display().to_string())
        .map_err(|e| Error::file("cannot read the age identity file", path, e))?;
    let ids = file.into_identities().map_err(|e| {
        Error::Input(format!(
            "{} holds no usable age identity: {e}",
            path.display()
        ))
    })?;
    if ids.is_empty() {
        return Err(Error::Input(format!(
            "{} holds no age identity (AGE-SECRET-KEY-1…)",
            path.display()
        )));
    }
    Ok(ids)
}

/// What decoding an object found.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    /// Object name.
    pub name: String,
    /// Stored bytes read.
    pub stored_bytes: u64,
    /// Decoded bytes, when decoded.
    pub raw_bytes: Option<u64>,
    /// The RDB checksum, when decoded and present.
    pub crc64: Option<String>,
}

/// A file that decoded bytes are written to.
#[derive(Clone, Debug)]
pub struct Output {
    /// Where: created exclusively, never through a link.
    pub path: PathBuf,
    /// fsynced at the end.
    pub sync: bool,
    /// A file already there (left by a run that stopped) is removed first; otherwise it is an
    /// error.
    pub replace: bool,
}

/// Reads one object, checks size and sha256 against the manifest, decodes it (unless encrypted
/// and no identity is given) and verifies the RDB; writes the decoded bytes to `out` if given.
pub async fn check_object(
    store: &Store,
    dir: &str,
    entry: &ObjectEntry,
    identity: Option<&Path>,
    out: Option<Output>,
) -> Result<Checked> {
    check_object_piped(store, dir, entry, identity, out, None)
        .await
        .map(|(c, _)| c)
}

/// The decoded bytes that `check_object_piped` keeps back from its pipe until the object has
/// verified: a reader of the pipe cannot take the stream for whole before they are written.
pub struct HeldBack {
    /// The pipe, still open.
    pub pipe: std::fs::File,
    /// The last decoded bytes.
    pub last: Vec<u8>,
}

impl HeldBack {
    /// Writes the held bytes and closes the pipe.
    pub fn release(mut self) -> std::io::Result<()> {
        write_paced(&mut self.pipe, &self.last)
    }
}

/// Writes all of `buf` to a non-blocking pipe, waiting while it is full. Blocking writes would
/// wake at every page the reader frees and write that page alone: a reader taking 4 KiB at a
/// time (stdio, as Redis loads) would then switch with the writer at every read. Waiting a
/// moment instead lets the reader drain a stretch, which one write then fills.
pub fn write_paced(pipe: &mut std::fs::File, mut buf: &[u8]) -> std::io::Result<()> {
    while !buf.is_empty() {
        match pipe.write(buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_micros(500))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `check_object`, also writing the decoded bytes to `pipe` as they come, all but the last ones,
/// which are handed back once size, sha256 and RDB checksum have matched the manifest.
async fn check_object_piped(
    store: &Store,
    dir: &str,
    entry: &ObjectEntry,
    identity: Option<&Path>,
    out: Option<Output>,
    pipe: Option<std::fs::File>,
) -> Result<(Checked, Option<HeldBack>)> {
    let key = format!("{dir}/{}", entry.name);
    let mut download = store.get(&key, entry.stored_bytes).await?;
    let decode = !entry.codecs.encrypted() || identity.is_some();
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    let worker = decode.then(|| {
        let (codecs, kind) = (entry.codecs.clone(), entry.kind);
        let identity = identity.map(Path::to_path_buf);
        let piped = pipe.is_some();
        let work = move || {
            let ids = identity.as_deref().map(load_identities).transpose()?;
            decode_stream(
                ChannelReader::new(rx),
                &codecs.0,
                kind,
                ids.as_deref(),
                Outputs { file: out, pipe },
            )
        };
        // Feeding a process that loads from the pipe, the decoder yields the CPU to it: on a
        // thread of its own, whose lowered priority ends with it.
        let (done, result) = tokio::sync::oneshot::channel();
        if piped {
            std::thread::spawn(move || {
                yield_cpu();
                let _ = done.send(work());
            });
        } else {
            tokio::task::spawn_blocking(move || {
                let _ = done.send(work());
            });
        }
        result
    });
    let mut sha = Sha256::new();
    let mut stored = 0u64;
    // Keeps hashing after a decoder failure so a damaged copy is reported as damaged.
    let mut sending = worker.is_some();
    let read = async {
        while let Some(chunk) = download.next().await? {
            sha.update(&chunk);
            stored += chunk.len() as u64;
            if sending && tx.send(chunk).await.is_err() {
                sending = false;
            }
        }
        Ok::<(), Error>(())
    }
    .await;
    drop(tx);
    let decoded = match worker {
        Some(w) => Some(
            w.await
                .map_err(|e| Error::Decode(format!("the decoder task failed: {e}")))?,
        ),
        None => None,
    };
    read?;
    let sha = hex::encode(sha.finalize());
    if stored != entry.stored_bytes || sha != entry.sha256 {
        return Err(Error::storage(
            store,
            format!(
                "{key} does not match its manifest ({stored} bytes, sha256 {sha}; the manifest says {} bytes, sha256 {}): the stored copy is damaged",
                entry.stored_bytes, entry.sha256
            ),
        ));
    }
    let (raw_bytes, crc, held) = match decoded.transpose()? {
        Some((raw, crc, held)) => (Some(raw), crc, held),
        None => (None, None, None),
    };
    if let Some(raw) = raw_bytes
        && raw != entry.raw_bytes
    {
        return Err(Error::storage(
            store,
            format!(
                "{key} decodes to {raw} bytes but the manifest says {}",
                entry.raw_bytes
            ),
        ));
    }
    let crc64 = crc.map(|c| format!("{c:016x}"));
    if entry.kind == ObjectKind::Rdb && raw_bytes.is_some() && crc64 != entry.crc64 {
        return Err(Error::storage(
            store,
            format!(
                "{key}: RDB checksum {crc64:?} differs from the manifest's {:?}",
                entry.crc64
            ),
        ));
    }
    Ok((
        Checked {
            name: entry.name.clone(),
            stored_bytes: stored,
            raw_bytes,
            crc64,
        },
        held,
    ))
}

/// Lowers the calling thread's priority (nice 10): when the cores are short, a process loading
/// what this thread produces runs first.
fn yield_cpu() {
    // SAFETY: gettid and setpriority on the calling thread only.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// The stored bytes of `input` decoded through `codecs` (the write order, undone last first).
fn decoder(
    input: impl BufRead + Send + 'static,
    codecs: &[Codec],
    identities: Option<&[Box<dyn age::Identity>]>,
) -> Result<Box<dyn BufRead + Send>> {
    let mut reader: Box<dyn BufRead + Send> = Box::new(input);
    for codec in codecs.iter().rev() {
        reader = match codec {
            Codec::Age => {
                let ids = identities.ok_or_else(|| {
                    Error::Decode("the backup is encrypted: pass --identity AGE_KEY_FILE".into())
                })?;
                let d = age::Decryptor::new_buffered(reader)
                    .map_err(|e| Error::Decode(format!("not an age file: {e}")))?;
                Box::new(std::io::BufReader::new(d.decrypt(ids.iter().map(|i| i.as_ref())).map_err(|e| Error::Decode(format!("cannot decrypt: {e}; is --identity the key of one of the backup's recipients?")))?))
            }
            Codec::Zstd { .. } => Box::new(std::io::BufReader::new(
                zstd::stream::read::Decoder::with_buffer(reader)
                    .map_err(|e| Error::Decode(format!("zstd: {e}")))?,
            )),
        };
    }
    Ok(reader)
}

/// Where decoded bytes go.
struct Outputs {
    /// A file, written on a thread of its own.
    file: Option<Output>,
    /// A pipe opened non-blocking, which is kept the last bytes (see `HeldBack`).
    pipe: Option<std::fs::File>,
}

fn decode_stream(
    input: ChannelReader,
    codecs: &[Codec],
    kind: ObjectKind,
    identities: Option<&[Box<dyn age::Identity>]>,
    outputs: Outputs,
) -> Result<(u64, Option<u64>, Option<HeldBack>)> {
    let mut reader = decoder(input, codecs, identities)?;
    // A copy written beside a pipe is not read back soon: it bypasses the page cache, whose
    // filling costs the CPU the pipe's reader needs.
    let direct = outputs.pipe.is_some();
    let sync = outputs.file.as_ref().is_some_and(|o| o.sync);
    let mut file = outputs
        .file
        .map(|o| FileWriter::create(&o.path, o.replace, direct))
        .transpose()?;
    let mut pipe = outputs.pipe;
    // What has been decoded but not yet written to the pipe.
    let mut pending: Vec<u8> = Vec::new();
    let mut verifier = (kind == ObjectKind::Rdb).then(RdbVerifier::new);
    let mut total = 0u64;
    loop {
        let mut buf = match file.as_mut() {
            Some(f) => f.buffer(),
            None => vec![0; WRITE_CHUNK],
        };
        let n = read_full(&mut reader, &mut buf)
            .map_err(|e| Error::Decode(format!("decoding failed: {e}")))?;
        if n == 0 {
            break;
        }
        buf.truncate(n);
        total += n as u64;
        if let Some(v) = verifier.as_mut() {
            v.update(&buf)
                .map_err(|e| Error::Decode(format!("the restored RDB is invalid: {e}")))?;
        }
        if let Some(p) = pipe.as_mut() {
            let stopped = |e| {
                Error::Failed(format!(
                    "the process reading the restored copy stopped reading it ({e}): see its log"
                ))
            };
            if buf.len() >= HELD_BACK {
                let (now, later) = buf.split_at(buf.len() - HELD_BACK);
                write_paced(p, &pending).map_err(stopped)?;
                write_paced(p, now).map_err(stopped)?;
                pending.clear();
                pending.extend_from_slice(later);
            } else {
                pending.extend_from_slice(&buf);
                let over = pending.len().saturating_sub(HELD_BACK);
                write_paced(p, &pending[..over]).map_err(stopped)?;
                pending.drain(..over);
            }
        }
        if let Some(f) = file.as_mut() {
            f.write(buf)?;
        }
    }
    if let Some(f) = file {
        f.finish(sync)?;
    }
    let crc = match verifier {
        Some(v) => Some(
            v.finish()
                .map_err(|e| Error::Decode(format!("the restored RDB is invalid: {e}")))?
                .checksum
                .unwrap_or(0),
        ),
        None => None,
    };
    let held = pipe.map(|pipe| HeldBack {
        pipe,
        last: pending,
    });
    Ok((total, crc, held))
}

/// How many of the last decoded bytes a pipe waits for until the object has verified. An RDB ends
/// with its 8-byte checksum, without which no reader takes it for whole.
const HELD_BACK: usize = 64;

/// The size of the pieces a decoded copy is written in.
const WRITE_CHUNK: usize = 1 << 20;

/// Reads until `buf` is full or the stream ends.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes a file on a thread of its own, so decoding and the kernel's copy into the page cache
/// run side by side. Buffers go back to the decoder once written.
struct FileWriter {
    path: PathBuf,
    full: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<std::fs::File>>>,
}

impl FileWriter {
    /// `direct`: written with `O_DIRECT` where the filesystem allows it. `replace`: see
    /// `Output`.
    fn create(path: &Path, replace: bool, direct: bool) -> Result<Self> {
        let f = create_new(path, replace)?;
        let mut direct = direct.then(|| DirectWriter::new(&f)).flatten();
        let mut f = f;
        let (full, filled) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
        let (give_back, empty) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let low = direct.is_some();
        let thread = std::thread::spawn(move || {
            if low {
                yield_cpu();
            }
            for buf in filled {
                match direct.as_mut() {
                    Some(d) => d.write(&mut f, &buf)?,
                    None => f.write_all(&buf)?,
                }
                let _ = give_back.try_send(buf);
            }
            if let Some(d) = direct {
                d.finish(&mut f)?;
            }
            Ok(f)
        });
        Ok(Self {
            path: path.to_path_buf(),
            full: Some(full),
            empty,
            thread: Some(thread),
        })
    }

    /// A buffer to decode into, `WRITE_CHUNK` long.
    fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.empty.try_recv().unwrap_or_default();
        b.resize(WRITE_CHUNK, 0);
        b
    }

    fn write(&mut self, buf: Vec<u8>) -> Result<()> {
        match &self.full {
            Some(f) if f.send(buf).is_ok() => Ok(()),
            // The thread stopped on an error, which joining it gives.
            _ => self.join().map(|_| ()),
        }
    }

    fn join(&mut self) -> Result<std::fs::File> {
        self.full = None;
        let gone = || std::io::Error::other("the writer thread is gone");
        let f = self
            .thread
            .take()
            .ok_or_else(gone)
            .and_then(|t| t.join().map_err(|_| gone())?)
            .map_err(|e| Error::file("cannot write", &self.path, e))?;
        Ok(f)
    }

    fn finish(mut self, sync: bool) -> Result<()> {
        let f = self.join()?;
        if sync {
            f.sync_all()
                .map_err(|e| Error::file("cannot sync", &self.path, e))?;
        }
        Ok(())
    }
}

/// Writes through `O_DIRECT`: whole aligned blocks from an aligned buffer, and the last partial
/// block with `O_DIRECT` cleared.
struct DirectWriter {
    /// Backing store; `start` is its first 4 KiB-aligned byte.
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

/// The alignment `O_DIRECT` asks for, and the size of the aligned buffer.
const DIRECT_ALIGN: usize = 4096;
const DIRECT_BUF: usize = 4 << 20;

impl DirectWriter {
    /// Sets `O_DIRECT` on `f`; `None` where the filesystem refuses it (tmpfs).
    fn new(f: &std::fs::File) -> Option<Self> {
        use std::os::unix::io::AsRawFd;
        let fd = f.as_raw_fd();
        // SAFETY: fcntl on a descriptor `f` keeps open.
        let ok = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) == 0
        };
        if !ok {
            return None;
        }
        let mem = vec![0u8; DIRECT_BUF + DIRECT_ALIGN];
        let start = mem.as_ptr().align_offset(DIRECT_ALIGN);
        Some(Self { mem, start, len: 0 })
    }

    fn write(&mut self, f: &mut std::fs::File, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let room = DIRECT_BUF - self.len;
            let n = room.min(data.len());
            let at = self.start + self.len;
            self.mem[at..at + n].copy_from_slice(&data[..n]);
            self.len += n;
            data = &data[n..];
            if self.len == DIRECT_BUF {
                f.write_all(&self.mem[self.start..self.start + DIRECT_BUF])?;
                self.len = 0;
            }
        }
        Ok(())
    }

    fn finish(self, f: &mut std::fs::File) -> std::io::Result<()> {
        use std::os::unix::io::AsRawFd;
        let whole = self.len / DIRECT_ALIGN * DIRECT_ALIGN;
        f.write_all(&self.mem[self.start..self.start + whole])?;
        let fd = f.as_raw_fd();
        // SAFETY: fcntl on a descriptor `f` keeps open.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        f.write_all(&self.mem[self.start + whole..self.start + self.len])
    }
}

/// The outcome of verifying one backup in one destination.
#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    /// The destination.
    pub destination: String,
    /// The backup.
    pub backup_id: String,
    /// Objects checked.
    pub objects: Vec<Checked>,
    /// Objects whose RDB checksum could not be checked (encrypted, no identity given).
    pub not_decoded: Vec<String>,
}

/// Re-reads every object of a backup: size, sha256, decode and RDB checksum.
pub async fn verify(
    spec: &DestSpec,
    id: &BackupId,
    cluster: Option<&ClusterId>,
    identity: Option<&Path>,
) -> Result<VerifyReport> {
    let store = Store::open(spec).await?;
    let (m, dir) = find_manifest(&store, id, cluster, None).await?;
    if let Some(p) = identity {
        load_identities(p)?;
    }
    let mut objects = Vec::new();
    let mut not_decoded = Vec::new();
    for s in &m.shards {
        for o in &s.objects {
            let c = check_object(&store, &dir, o, identity, None).await?;
            if c.raw_bytes.is_none() {
                not_decoded.push(o.name.clone());
            }
            objects.push(c);
        }
    }
    Ok(VerifyReport {
        destination: spec.to_string(),
        backup_id: id.to_string(),
        objects,
        not_decoded,
    })
}

/// What to restore.
pub struct RestoreRequest {
    /// Destinations in order of preference.
    pub from: Vec<DestSpec>,
    /// The backup.
    pub backup: BackupId,
    /// The cluster; may be omitted when the id is in one cluster, or the shard names it.
    pub cluster: Option<ClusterId>,
    /// The shard; may be omitted when the backup has one.
    pub shard: Option<ShardId>,
    /// Where the RDB goes; a tail goes next to it as `<PATH>.tail`. With `aof_dir`, the directory.
    pub to_file: PathBuf,
    /// Write a Redis 7 AOF directory instead (`appendonly.aof.1.base.rdb`, the tail as
    /// `appendonly.aof.1.incr.aof`, and the manifest): redis-server started on it with
    /// `appendonly yes` loads the RDB and replays the tail by itself.
    pub aof_dir: bool,
    /// age identity file for encrypted backups.
    pub identity: Option<PathBuf>,
    /// fsync what is written before returning. Off for scratch copies, and for `replace`, which
    /// syncs the file while the node loads it.
    pub sync: bool,
    /// Replace files already at the output paths (regular files only: a link, a device or a
    /// FIFO there is always refused). Without it, an output that exists is an error.
    pub force: bool,
}

/// The outcome of a restore.
#[derive(Clone, Debug, Serialize)]
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
    pub dbs: Option<Vec<fleetsnap_core::rdbread::DbDigest>>,
}

/// Restores one shard to a file, reading the first destination that yields a verified copy.
pub async fn restore(req: &RestoreRequest) -> Result<RestoreReport> {
    if req.from.is_empty() {
        return Err(Error::Input(
            "no source: give at least one --from DEST".into(),
        ));
    }
    if let Some(p) = &req.identity {
        load_identities(p)?;
    }
    check_outputs(req)?;
    let dir = if req.aof_dir {
        Some(req.to_file.as_path())
    } else {
        req.to_file.parent().filter(|d| !d.as_os_str().is_empty())
    };
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::file("cannot create the directory to restore to", dir, e))?;
    }
    let mut skipped = Vec::new();
    for spec in &req.from {
        match restore_from(spec, req).await {
            Ok(mut r) => {
                r.skipped = skipped;
                return Ok(r);
            }
            // A problem on this side (bad arguments, the local disk) is the same for every region.
            Err(e @ (Error::Input(_) | Error::File { .. })) => return Err(e),
            Err(e) => skipped.push((spec.to_string(), e.to_string())),
        }
    }
    let why: Vec<String> = skipped.iter().map(|(d, e)| format!("{d}: {e}")).collect();
    Err(Error::Failed(format!(
        "backup {} could not be restored from any destination:\n  {}",
        req.backup,
        why.join("\n  ")
    )))
}

fn pick_shard<'a>(m: &'a Manifest, shard: Option<&ShardId>) -> Result<&'a ShardEntry> {
    match shard {
        Some(s) => m.shard(s).ok_or_else(|| {
            Error::Input(format!(
                "backup {} has no shard {s}; its shards: {}",
                m.backup_id,
                names(m)
            ))
        }),
        None if m.shards.len() == 1 => Ok(&m.shards[0]),
        None => Err(Error::Input(format!(
            "backup {} has {} shards: choose one with --shard ({})",
            m.backup_id,
            m.shards.len(),
            names(m)
        ))),
    }
}

fn names(m: &Manifest) -> String {
    m.shards
        .iter()
        .map(|s| s.shard.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The AOF base name redis-server looks for (`appendfilename`'s default).
const AOF_NAME: &str = "appendonly.aof";

/// Where the RDB and the tail go.
fn paths(req: &RestoreRequest) -> (PathBuf, PathBuf) {
    if req.aof_dir {
        (
            req.to_file.join(format!("{AOF_NAME}.1.base.rdb")),
            req.to_file.join(format!("{AOF_NAME}.1.incr.aof")),
        )
    } else {
        (req.to_file.clone(), with_suffix(&req.to_file, ".tail"))
    }
}

/// `p` with `suffix` added to its file name (`dump.rdb` → `dump.rdb.partial`).
pub(crate) fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether `p` is a regular file (not following a link).
fn is_regular(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_file())
}

/// Creates a new file exclusively, never through a link. One already there is removed first
/// when `replace` (a file left by a run that stopped), else refused.
fn create_new(path: &Path, replace: bool) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && replace => {
            std::fs::remove_file(path).map_err(|e| Error::file("cannot replace", path, e))?;
            open().map_err(|e| Error::file("cannot create", path, e))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::Input(format!(
            "{} already exists (left by a restore that stopped, or one running now): remove it, or pass --force",
            path.display()
        ))),
        r => r.map_err(|e| Error::file("cannot create", path, e)),
    }
}

/// Writes a small file of a restore (an AOF directory's manifest) exclusively.
fn write_new(path: &Path, bytes: &[u8], req: &RestoreRequest) -> Result<()> {
    let partial = with_suffix(path, ".partial");
    let mut f = create_new(&partial, req.force)?;
    let written = f
        .write_all(bytes)
        .and_then(|()| if req.sync { f.sync_all() } else { Ok(()) });
    if let Err(e) = written {
        std::fs::remove_file(&partial).ok();
        return Err(Error::file("cannot write", &partial, e));
    }
    std::fs::rename(&partial, path)
        .map_err(|e| Error::file("cannot move the restored file into place", path, e))
}

/// `p` made absolute with every link in its existing part resolved; the part that does not
/// exist yet is appended as written.
fn resolved(p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(p)
    };
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            return rest.iter().rev().fold(real, |mut out, part| {
                out.push(part);
                out
            });
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return abs,
        }
    }
}

/// Refuses outputs a restore must not touch, before anything is fetched: a link, a device, a
/// FIFO or a directory at an output path (always), a file there (unless `force`), a path inside
/// a file region the restore reads (it could be a stored copy), and an AOF directory that is a
/// link.
fn check_outputs(req: &RestoreRequest) -> Result<()> {
    let (rdb, tail) = paths(req);
    let mut outputs = vec![rdb, tail];
    if req.aof_dir {
        outputs.push(req.to_file.join(format!("{AOF_NAME}.manifest")));
        if std::fs::symlink_metadata(&req.to_file).is_ok_and(|m| !m.file_type().is_dir()) {
            return Err(Error::Input(format!(
                "--aof-dir {} is a link or not a directory: give a directory (the one a link points to, if that is meant)",
                req.to_file.display()
            )));
        }
    }
    for out in &outputs {
        for p in [out.clone(), with_suffix(out, ".partial")] {
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let t = m.file_type();
            let what = if t.is_symlink() {
                Some("a symbolic link: a restore does not write through links")
            } else if t.is_dir() {
                Some("a directory")
            } else if !t.is_file() {
                Some("a device, FIFO or socket, not a file")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(Error::Input(format!(
                    "{} is {what}: remove it or choose another path",
                    p.display()
                )));
            }
            if !req.force && p == *out {
                return Err(Error::Input(format!(
                    "{} already exists: pass --force to replace it, or choose another path",
                    p.display()
                )));
            }
        }
        let at = resolved(out);
        for spec in &req.from {
            if let DestSpec::File { root } = spec
                && at.starts_with(resolved(root))
            {
                return Err(Error::Input(format!(
                    "{} is inside region {spec}: a restore never writes into a region it could overwrite a stored copy of; choose a path outside it",
                    out.display()
                )));
            }
        }
    }
    Ok(())
}

/// The shard's entry in the set's manifest in one destination, and the prefix of its objects.
async fn find_shard(spec: &DestSpec, req: &RestoreRequest) -> Result<(Store, String, ShardEntry)> {
    let store = Store::open(spec).await?;
    let (m, dir) = find_manifest(
        &store,
        &req.backup,
        req.cluster.as_ref(),
        req.shard.as_ref(),
    )
    .await?;
    let shard = pick_shard(&m, req.shard.as_ref())?.clone();
    if shard.objects.iter().any(|o| o.codecs.encrypted()) && req.identity.is_none() {
        return Err(Error::Input(format!(
            "backup {} is encrypted with age: pass --identity AGE_KEY_FILE",
            req.backup
        )));
    }
    Ok((store, dir, shard))
}

/// A shard's copy in one destination, made ready to stream: its manifest read and its tail, if
/// it has one, fetched and verified to `….tail` beside `to_file`.
pub struct Prepared {
    store: Store,
    dir: String,
    rdb: ObjectEntry,
    /// What the restore reports once the RDB has streamed to `to_file`.
    pub report: RestoreReport,
}

/// Readies a streamed restore of an RDB (not an AOF directory) from one destination.
pub async fn prepare_stream(spec: &DestSpec, req: &RestoreRequest) -> Result<Prepared> {
    if req.aof_dir {
        return Err(Error::Input(
            "an AOF directory cannot be streamed: restore it to a directory".into(),
        ));
    }
    let (store, dir, shard) = find_shard(spec, req).await?;
    let (rdb_path, tail_path) = paths(req);
    let rdb = shard
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Rdb)
        .cloned()
        .ok_or_else(|| {
            Error::storage(&store, format!("{dir}: shard {} has no RDB", shard.shard))
        })?;
    let mut tail_file = None;
    if let Some(t) = shard.objects.iter().find(|o| o.kind == ObjectKind::Tail) {
        let partial = with_suffix(&tail_path, ".partial");
        let out = Output {
            path: partial.clone(),
            sync: true,
            replace: req.force,
        };
        if let Err(e) = check_object(&store, &dir, t, req.identity.as_deref(), Some(out)).await {
            if !matches!(e, Error::Input(_)) {
                std::fs::remove_file(&partial).ok();
            }
            return Err(e);
        }
        std::fs::rename(&partial, &tail_path)
            .map_err(|e| Error::file("cannot move the restored file into place", &tail_path, e))?;
        tail_file = Some(tail_path.display().to_string());
    }
    let report = RestoreReport {
        destination: spec.to_string(),
        skipped: Vec::new(),
        shard: shard.shard.to_string(),
        rdb_file: rdb_path.display().to_string(),
        tail_file,
        raw_bytes: rdb.raw_bytes,
        aof_dir: false,
        slot_ranges: shard.slot_ranges.clone(),
        dbs: shard.dbs.clone(),
    };
    Ok(Prepared {
        store,
        dir,
        rdb,
        report,
    })
}

/// Streams a prepared RDB into `pipe` and to `to_file` at once, verifying it as it goes; the last
/// bytes for the pipe come back once the object has matched its manifest.
pub async fn stream_rdb(
    p: &Prepared,
    req: &RestoreRequest,
    pipe: std::fs::File,
) -> Result<HeldBack> {
    let (checked, held) = check_object_piped(
        &p.store,
        &p.dir,
        &p.rdb,
        req.identity.as_deref(),
        Some(Output {
            path: req.to_file.clone(),
            sync: false,
            replace: req.force,
        }),
        Some(pipe),
    )
    .await?;
    if checked.raw_bytes.is_none() {
        return Err(Error::Input(
            "the backup is encrypted: pass --identity AGE_KEY_FILE".into(),
        ));
    }
    held.ok_or_else(|| Error::Failed("the decoder gave no pipe back".into()))
}

async fn restore_from(spec: &DestSpec, req: &RestoreRequest) -> Result<RestoreReport> {
    let (store, dir, shard) = find_shard(spec, req).await?;
    let shard = &shard;
    let (rdb_path, tail_path) = paths(req);
    let mut written = Vec::new();
    let mut raw_bytes = 0;
    let mut has_tail = false;
    for o in &shard.objects {
        let final_path = match o.kind {
            ObjectKind::Rdb => rdb_path.clone(),
            ObjectKind::Tail => {
                has_tail = true;
                tail_path.clone()
            }
        };
        let partial = with_suffix(&final_path, ".partial");
        let out = Output {
            path: partial.clone(),
            sync: req.sync,
            replace: req.force,
        };
        match check_object(&store, &dir, o, req.identity.as_deref(), Some(out)).await {
            Ok(c) => {
                if o.kind == ObjectKind::Rdb {
                    raw_bytes = c.raw_bytes.unwrap_or(0);
                }
                written.push((partial, final_path));
            }
            Err(e) => {
                // A file that was there already (Input) is not this restore's to remove.
                if !matches!(e, Error::Input(_)) {
                    std::fs::remove_file(&partial).ok();
                }
                for (p, _) in &written {
                    std::fs::remove_file(p).ok();
                }
                return Err(e);
            }
        }
    }
    for (partial, final_path) in &written {
        std::fs::rename(partial, final_path)
            .map_err(|e| Error::file("cannot move the restored file into place", final_path, e))?;
    }
    if req.aof_dir {
        if !has_tail {
            write_new(&tail_path, b"", req)?;
        }
        let manifest = req.to_file.join(format!("{AOF_NAME}.manifest"));
        let text = format!(
            "file {AOF_NAME}.1.base.rdb seq 1 type b\nfile {AOF_NAME}.1.incr.aof seq 1 type i\n"
        );
        write_new(&manifest, text.as_bytes(), req)?;
    } else if !has_tail && is_regular(&tail_path) {
        // A tail left by an earlier restore to the same path (refused above unless --force)
        // does not belong to this backup: replaying it would be wrong.
        std::fs::remove_file(&tail_path)
            .map_err(|e| Error::file("cannot remove the earlier restore's tail", &tail_path, e))?;
    }
    Ok(RestoreReport {
        destination: spec.to_string(),
        skipped: Vec::new(),
        shard: shard.shard.to_string(),
        rdb_file: rdb_path.display().to_string(),
        tail_file: (has_tail || req.aof_dir).then(|| tail_path.display().to_string()),
        raw_bytes,
        aof_dir: req.aof_dir,
        slot_ranges: shard.slot_ranges.clone(),
        dbs: shard.dbs.clone(),
    })
}

/// An online restore of one shard: which copy was read, and what applying it did.
#[derive(Clone, Debug, Serialize)]
pub struct OnlineShard {
    /// The verified copy read.
    pub read: RestoreReport,
    /// What RESTORE and the tail replay did.
    pub applied: OnlineReport,
}

/// An online restore of one shard or of every shard of a set.
#[derive(Clone, Debug, Serialize)]
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

/// The shards of a backup, from the first destination whose manifest can be read.
async fn shards_of(req: &RestoreRequest) -> Result<Vec<ShardEntry>> {
    let mut why = Vec::new();
    for spec in &req.from {
        let found = async {
            let store = Store::open(spec).await?;
            find_manifest(
                &store,
                &req.backup,
                req.cluster.as_ref(),
                req.shard.as_ref(),
            )
            .await
        }
        .await;
        match found {
            Ok((m, _)) => {
                return match &req.shard {
                    Some(s) => Ok(vec![pick_shard(&m, Some(s))?.clone()]),
                    None => Ok(m.shards),
                };
            }
            Err(e @ Error::Input(_)) => return Err(e),
            Err(e) => why.push(format!("{spec}: {e}")),
        }
    }
    Err(Error::Failed(format!(
        "backup {} has no readable manifest in any destination:\n  {}",
        req.backup,
        why.join("\n  ")
    )))
}

/// A shard's verified copy in a scratch directory of its own, removed when dropped.
struct Fetched {
    read: RestoreReport,
    scratch: PathBuf,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.scratch).ok();
    }
}

/// Fetches one shard's verified copy (with fallback across destinations) into a new scratch
/// directory under `work_dir`.
async fn fetch_shard(
    req: &RestoreRequest,
    shard: &ShardId,
    work_dir: Option<&Path>,
) -> Result<Fetched> {
    let base = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let scratch = base.join(format!(
        "fleetsnap-restore-{}-{}",
        std::process::id(),
        time::OffsetDateTime::now_utc().unix_timestamp_nanos()
    ));
    std::fs::create_dir_all(&scratch)
        .map_err(|e| Error::file("cannot create the scratch directory", &scratch, e))?;
    let one = RestoreRequest {
        from: req.from.clone(),
        backup: req.backup.clone(),
        cluster: req.cluster.clone(),
        shard: Some(shard.clone()),
        to_file: scratch.join("shard.rdb"),
        aof_dir: false,
        identity: req.identity.clone(),
        sync: false,
        force: true,
    };
    match restore(&one).await {
        Ok(read) => Ok(Fetched { read, scratch }),
        Err(e) => {
            std::fs::remove_dir_all(&scratch).ok();
            Err(e)
        }
    }
}

/// Restores into a running server: one shard, or every shard of the set when none is named (a
/// cluster's set into a cluster of any shape).
///
/// Nothing is written until every database the set's keys live in is known to exist on the
/// target: from the manifest's counts, or, for shards without them or with a tail, from the
/// fetched copies themselves (those are fetched first and kept). Then each shard's verified copy
/// is fetched (falling back across destinations like `restore`) into a scratch directory under
/// `work_dir`, applied key by key, its tail replayed, and the scratch directory removed. Keys
/// that already exist are left alone and counted; every shard is still restored.
pub async fn restore_online(
    req: RestoreRequest,
    work_dir: Option<&Path>,
    target: &RedisTarget,
    opts: &OnlineOptions,
) -> Result<OnlineRestoreReport> {
    let started = std::time::Instant::now();
    let shards = shards_of(&req).await?;
    let mut needed: std::collections::BTreeMap<u64, String> = Default::default();
    let mut early: std::collections::HashMap<ShardId, Fetched> = Default::default();
    for entry in &shards {
        let has_tail = entry.objects.iter().any(|o| o.kind == ObjectKind::Tail);
        match (&entry.dbs, has_tail) {
            (Some(dbs), false) => {
                for d in dbs.iter().filter(|d| d.keys > 0) {
                    needed
                        .entry(d.db)
                        .or_insert_with(|| format!("{} keys of shard {}", d.keys, entry.shard));
                }
            }
            _ => {
                let f = fetch_shard(&req, &entry.shard, work_dir).await?;
                let tail = f.read.tail_file.as_ref().map(PathBuf::from);
                let rdb = PathBuf::from(&f.read.rdb_file);
                let found = tokio::task::spawn_blocking(move || {
                    super::online::databases_in(&rdb, tail.as_deref())
                })
                .await
                .map_err(|e| {
                    Error::Failed(format!("reading the copy's databases failed: {e}"))
                })??;
                for (db, first) in found {
                    needed
                        .entry(db)
                        .or_insert_with(|| format!("{first} of shard {}", entry.shard));
                }
                early.insert(entry.shard.clone(), f);
            }
        }
    }
    super::online::check_databases(target, &needed, opts).await?;
    let mut out = OnlineRestoreReport {
        shards: Vec::new(),
        keys: 0,
        rdb_bytes: 0,
        conflicts: 0,
        seconds: 0.0,
    };
    for entry in &shards {
        let fetched = match early.remove(&entry.shard) {
            Some(f) => f,
            None => fetch_shard(&req, &entry.shard, work_dir).await?,
        };
        let tail = fetched.read.tail_file.as_ref().map(PathBuf::from);
        let rdb = PathBuf::from(&fetched.read.rdb_file);
        let applied = super::online::restore_online(&rdb, tail.as_deref(), target, opts).await?;
        out.keys += applied.keys;
        out.rdb_bytes += applied.rdb_bytes;
        out.conflicts += applied.conflicts;
        out.shards.push(OnlineShard {
            read: fetched.read.clone(),
            applied,
        });
    }
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

impl OnlineRestoreReport {
    /// Why the restore is not whole when keys already existed and were left alone: each
    /// shard's count and its first keys.
    pub fn conflict_problem(&self) -> Option<String> {
        let skipped: u64 = self.shards.iter().map(|s| s.applied.tail_skipped).sum();
        if self.conflicts == 0 && skipped == 0 {
            return None;
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
