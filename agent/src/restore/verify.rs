//! Reading an object back: decrypted, decompressed, checked against its sha256 and size and, for
//! an RDB, structurally verified as it streams; `verify` does this for every object of a set.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use fleetsnap_core::{BackupId, ClusterId, Codec, ObjectEntry, ObjectKind, RdbVerifier};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::list::find_manifest;
use crate::error::{Error, Result};
use crate::snapshot::ChannelReader;
use crate::storage::{DestSpec, Store};

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
pub(super) async fn check_object_piped(
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
                crate::threads::yield_cpu();
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

/// Stored bytes decoded in memory through `codecs`, at most `limit` bytes of output: for small
/// objects such as archive segments.
pub fn decode_bytes(
    stored: Vec<u8>,
    codecs: &[Codec],
    identities: Option<&[Box<dyn age::Identity>]>,
    limit: u64,
) -> Result<Vec<u8>> {
    let reader = decoder(std::io::Cursor::new(stored), codecs, identities)?;
    let mut out = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::Decode(format!("decoding failed: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::Decode(format!(
            "decodes to more than {limit} bytes, more than such an object may hold"
        )));
    }
    Ok(out)
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
                crate::threads::yield_cpu();
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

/// Creates a new file exclusively, never through a link. One already there is removed first
/// when `replace` (a file left by a run that stopped), else refused.
pub(super) fn create_new(path: &Path, replace: bool) -> Result<std::fs::File> {
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
