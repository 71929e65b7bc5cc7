//! The snapshot data path for one object: source → RDB verifier → zstd → age → sha256 → fan-out to
//! every destination through its spool queue. One read of the source feeds every destination.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fleetsnap_core::codec::Compression;
use fleetsnap_core::digest::{DatasetDigest, DbDigest};
use fleetsnap_core::rdbread::{Item as RdbItem, RdbReader};
use fleetsnap_core::{Codec, CodecChain, RdbSummary, RdbVerifier};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::source::ByteSource;
use crate::error::{Error, Result};
use crate::storage::Store;
use crate::storage::{Item, SpoolLimits, SpoolQueue};

/// Counters a progress display reads.
#[derive(Debug, Default)]
pub struct Progress {
    /// Source bytes read so far.
    pub read: AtomicU64,
    /// Total source bytes, when known (0 = unknown).
    pub total: AtomicU64,
}

/// How objects are encoded.
#[derive(Clone)]
pub struct EncodeOptions {
    /// zstd or nothing.
    pub compression: Compression,
    /// age recipients; empty means no encryption.
    pub recipients: Vec<age::x25519::Recipient>,
}

impl EncodeOptions {
    /// The codec chain these options produce.
    pub fn chain(&self) -> CodecChain {
        let mut c = Vec::new();
        if let Compression::Zstd(level) = self.compression {
            c.push(Codec::Zstd { level });
        }
        if !self.recipients.is_empty() {
            c.push(Codec::Age);
        }
        CodecChain(c)
    }
}

/// Parses an age recipient (`age1…`).
pub fn parse_recipient(text: &str) -> Result<age::x25519::Recipient> {
    text.parse().map_err(|e| Error::Input(format!("--encrypt-to {text:?} is not an age X25519 public key ({e}): it starts with age1, as printed by `age-keygen -y KEYFILE`")))
}

#[derive(Clone, Default)]
struct SharedSink(Arc<Mutex<Vec<u8>>>);

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

enum Chain {
    Plain(SharedSink),
    Zstd(zstd::stream::write::Encoder<'static, SharedSink>),
    Age(age::stream::StreamWriter<SharedSink>),
    ZstdAge(zstd::stream::write::Encoder<'static, age::stream::StreamWriter<SharedSink>>),
}

impl Chain {
    fn new(opts: &EncodeOptions, sink: SharedSink) -> Result<Self> {
        let encrypt = |w: SharedSink| -> Result<age::stream::StreamWriter<SharedSink>> {
            let recipients = opts.recipients.iter().map(|r| r as &dyn age::Recipient);
            age::Encryptor::with_recipients(recipients)
                .map_err(|e| Error::Input(format!("cannot encrypt to the given recipients: {e}")))?
                .wrap_output(w)
                .map_err(|e| Error::Decode(format!("age encryption failed: {e}")))
        };
        Ok(match (opts.compression, opts.recipients.is_empty()) {
            (Compression::None, true) => Chain::Plain(sink),
            (Compression::None, false) => Chain::Age(encrypt(sink)?),
            (Compression::Zstd(l), true) => Chain::Zstd(zstd_encoder(sink, l, zstd_workers())?),
            (Compression::Zstd(l), false) => {
                Chain::ZstdAge(zstd_encoder(encrypt(sink)?, l, zstd_workers())?)
            }
        })
    }

    fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Chain::Plain(w) => w.write_all(data),
            Chain::Zstd(w) => w.write_all(data),
            Chain::Age(w) => w.write_all(data),
            Chain::ZstdAge(w) => w.write_all(data),
        }
    }

    fn finish(self) -> std::io::Result<()> {
        match self {
            Chain::Plain(_) => Ok(()),
            Chain::Zstd(w) => w.finish().map(drop),
            Chain::Age(w) => w.finish().map(drop),
            Chain::ZstdAge(w) => w.finish()?.finish().map(drop),
        }
    }
}

/// `data` encoded in memory the way `opts` encodes an object (zstd, then age): for small
/// objects such as archive segments.
pub fn encode_bytes(opts: &EncodeOptions, data: &[u8]) -> Result<Vec<u8>> {
    let sink = SharedSink::default();
    let mut chain = Chain::new(opts, sink.clone())?;
    chain
        .write_all(data)
        .and_then(|()| chain.finish())
        .map_err(|e| Error::Decode(format!("encoding failed: {e}")))?;
    let out = std::mem::take(&mut *sink.0.lock().expect("sink lock"));
    Ok(out)
}

/// Bytes of input per zstd job: small enough that every worker's job and its output stay a few
/// MiB, large enough that the jobs' seams cost next to nothing in ratio.
const ZSTD_JOB_BYTES: u32 = 8 << 20;

/// zstd's worker threads for a snapshot: on a host with the node beside it, one core is the
/// fork's and one this thread's (it verifies, hashes and hands out what the workers compress),
/// so the workers get the rest, at most four; with two cores or fewer, none, and this thread
/// compresses too (measured: 1.14× the floor pinned to one core, 1.19× with one worker on two).
fn zstd_workers() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    cores.saturating_sub(2).min(4)
}

/// A zstd encoder at `level` whose compression runs on `workers` threads (none: on the calling
/// thread), so it overlaps the verification, hashing and census on this one.
fn zstd_encoder<W: Write>(
    w: W,
    level: i32,
    workers: u32,
) -> Result<zstd::stream::write::Encoder<'static, W>> {
    let failed =
        |e: std::io::Error| Error::Decode(format!("zstd level {level} failed to start: {e}"));
    let mut enc = zstd::stream::write::Encoder::new(w, level).map_err(failed)?;
    if workers > 0 {
        enc.multithread(workers).map_err(failed)?;
        enc.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_BYTES))
            .map_err(failed)?;
    }
    Ok(enc)
}

/// What the encoder learned about an object.
#[derive(Clone, Debug)]
pub struct Encoded {
    /// Bytes read from the source.
    pub raw_bytes: u64,
    /// Bytes stored.
    pub stored_bytes: u64,
    /// sha256 of the stored bytes.
    pub sha256: String,
    /// The RDB verdict, for RDB objects.
    pub rdb: Option<RdbSummary>,
    /// Keys and digest per database, for RDB objects the reader could read key by key.
    pub dbs: Option<Vec<DbDigest>>,
}

/// A blocking reader over chunks sent through a channel (from async code, or from the encoder
/// thread).
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        Self {
            rx,
            current: Bytes::new(),
        }
    }
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let have = std::io::BufRead::fill_buf(self)?;
            let n = buf.len().min(have.len());
            buf[..n].copy_from_slice(&have[..n]);
            n
        };
        std::io::BufRead::consume(self, n);
        Ok(n)
    }
}

/// The chunks themselves serve as the buffer, so a decoder reading through `BufRead` copies
/// nothing on the way in.
impl std::io::BufRead for ChannelReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.current = b,
                None => break,
            }
        }
        Ok(&self.current)
    }

    fn consume(&mut self, n: usize) {
        let _ = self.current.split_to(n);
    }
}

/// Reads the RDB key by key on a thread of its own as it streams, counting keys and digesting
/// values per database (what a restore drill checks later). It is also the structural check:
/// a value that does not parse, a database no server has, bytes after the end marker fail the
/// snapshot, since Redis would refuse the file. Only a module type stays a warning: its keys are
/// named and the rest is still read.
struct Census {
    tx: Option<mpsc::Sender<Bytes>>,
    thread: Option<std::thread::JoinHandle<CensusOutcome>>,
    /// What the thread gave, once it has ended.
    ended: Option<CensusOutcome>,
}

/// What the census thread found.
enum CensusOutcome {
    /// Every key read: counts and digests per database.
    Counted(Vec<DbDigest>),
    /// Sound as far as it could read, but with module values, which it cannot digest.
    Modules(Vec<String>),
    /// A module value of the old, not self-describing format, or a type of a newer format
    /// this reader does not decode: the rest cannot be read.
    Stopped(String),
    /// Redis would not load it.
    Broken(String),
}

/// Module keys named in a warning.
const MODULE_KEYS_NAMED: usize = 5;

impl Census {
    fn start() -> Self {
        let (tx, rx) = mpsc::channel(64);
        let thread = std::thread::spawn(move || {
            crate::threads::yield_cpu();
            use fleetsnap_core::rdbread::ReadError;
            let classify = |e: ReadError| match e {
                ReadError::Module { .. } | ReadError::Unsupported { .. } => {
                    CensusOutcome::Stopped(e.to_string())
                }
                e => CensusOutcome::Broken(e.to_string()),
            };
            // The encoder's verifier checks the trailer; this reader reads the keys.
            let mut r = match RdbReader::checked_elsewhere(ChannelReader::new(rx)) {
                Ok(r) => r.decoding().skipping_modules(),
                Err(e) => return classify(e),
            };
            let mut d = DatasetDigest::default();
            let mut modules = Vec::new();
            loop {
                match r.next_item() {
                    Ok(Some(RdbItem::Entry(mut e))) => {
                        if let Some(v) = e.decoded.take() {
                            d.add(&e, &v);
                        }
                    }
                    Ok(Some(RdbItem::Module { db, key, module })) => {
                        modules.push(format!("{key:?} (db {db}, module {module})"));
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(e) => return classify(e),
                }
            }
            if let Err(e) = r.ensure_end() {
                return classify(e);
            }
            if modules.is_empty() {
                CensusOutcome::Counted(d.finish())
            } else {
                CensusOutcome::Modules(modules)
            }
        });
        Self {
            tx: Some(tx),
            thread: Some(thread),
            ended: None,
        }
    }

    fn join(&mut self) -> &CensusOutcome {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            self.ended = Some(t.join().unwrap_or_else(|_| {
                CensusOutcome::Broken("the key reader stopped unexpectedly".into())
            }));
        }
        self.ended.as_ref().expect("joined")
    }

    /// Passes bytes on; a reader that stopped takes no more, and one that found the RDB broken
    /// fails the snapshot at once rather than at its end.
    fn feed(&mut self, data: &Bytes, source_name: &str) -> Result<()> {
        if let Some(tx) = &self.tx
            && tx.blocking_send(data.clone()).is_err()
            && let CensusOutcome::Broken(e) = self.join()
        {
            return Err(Error::Rdb {
                source_name: source_name.to_string(),
                error: fleetsnap_core::RdbError::Structure(e.clone()),
            });
        }
        Ok(())
    }

    /// The counts, `None` where modules kept them from being taken, or the structural error.
    fn finish(mut self, source_name: &str) -> Result<Option<Vec<DbDigest>>> {
        self.join();
        match self.ended.take().expect("joined") {
            CensusOutcome::Counted(dbs) => Ok(Some(dbs)),
            CensusOutcome::Modules(keys) => {
                let n = keys.len();
                let named: Vec<&str> = keys
                    .iter()
                    .take(MODULE_KEYS_NAMED)
                    .map(String::as_str)
                    .collect();
                tracing::warn!(
                    source = source_name,
                    "no key counts or digest for this snapshot: {n} keys hold module values fleetsnap cannot read ({}{}); restore it with `replace` on a server that loads the modules",
                    named.join(", "),
                    if n > named.len() { ", …" } else { "" }
                );
                Ok(None)
            }
            CensusOutcome::Stopped(e) => {
                tracing::warn!(
                    source = source_name,
                    "no key counts or digest for this snapshot: {e}"
                );
                Ok(None)
            }
            CensusOutcome::Broken(e) => Err(Error::Rdb {
                source_name: source_name.to_string(),
                error: fleetsnap_core::RdbError::Structure(e),
            }),
        }
    }
}

struct Encoder {
    chain: Chain,
    sink: SharedSink,
    sha: Sha256,
    raw: u64,
    stored: u64,
    verifier: Option<RdbVerifier>,
    census: Option<Census>,
    queues: Vec<Arc<SpoolQueue>>,
    source_name: String,
}

impl Encoder {
    fn feed(&mut self, data: &Bytes) -> Result<()> {
        if let Some(v) = self.verifier.as_mut() {
            v.update(data).map_err(|error| Error::Rdb {
                source_name: self.source_name.clone(),
                error,
            })?;
        }
        if let Some(c) = self.census.as_mut() {
            c.feed(data, &self.source_name)?;
        }
        self.raw += data.len() as u64;
        self.chain
            .write_all(data)
            .map_err(|e| Error::Decode(format!("encoding failed: {e}")))?;
        self.drain();
        Ok(())
    }

    fn drain(&mut self) {
        let out = std::mem::take(&mut *self.sink.0.lock().expect("sink lock"));
        if out.is_empty() {
            return;
        }
        self.sha.update(&out);
        self.stored += out.len() as u64;
        let out = Bytes::from(out);
        for q in &self.queues {
            q.push(out.clone());
        }
    }

    fn finish(mut self) -> Result<Encoded> {
        let chain = std::mem::replace(&mut self.chain, Chain::Plain(SharedSink::default()));
        chain
            .finish()
            .map_err(|e| Error::Decode(format!("encoding failed: {e}")))?;
        self.drain();
        let rdb = match self.verifier.take() {
            Some(v) => Some(v.finish().map_err(|error| Error::Rdb {
                source_name: self.source_name.clone(),
                error,
            })?),
            None => None,
        };
        let dbs = match self.census.take() {
            Some(c) => c.finish(&self.source_name)?,
            None => None,
        };
        Ok(Encoded {
            raw_bytes: self.raw,
            stored_bytes: self.stored,
            sha256: hex::encode(self.sha.finalize()),
            rdb,
            dbs,
        })
    }
}

/// The outcome of one destination for one object.
#[derive(Debug)]
pub struct DestOutcome {
    /// Stored bytes, or why it failed.
    pub result: Result<u64>,
    /// Most bytes that waited on the spool disk.
    pub peak_spooled: u64,
}

/// Stores one object in every destination, verified. Fails as a whole only when the source or the
/// verification fails, in which case nothing is left under the key anywhere.
pub async fn store_object(
    source: &mut ByteSource,
    source_name: &str,
    verify_rdb: bool,
    targets: &[(Store, String)],
    encode: &EncodeOptions,
    spool: &SpoolLimits,
    progress: &Arc<Progress>,
) -> (Result<Encoded>, Vec<DestOutcome>) {
    let queues: Vec<Arc<SpoolQueue>> = targets
        .iter()
        .map(|(s, _)| Arc::new(SpoolQueue::new(s.to_string(), spool.clone())))
        .collect();
    let uploaders: Vec<_> = targets
        .iter()
        .zip(&queues)
        .map(|((store, key), q)| tokio::spawn(upload_loop(store.clone(), key.clone(), q.clone())))
        .collect();
    let sink = SharedSink::default();
    let encoder = Chain::new(encode, sink.clone()).map(|chain| Encoder {
        chain,
        sink,
        sha: Sha256::new(),
        raw: 0,
        stored: 0,
        verifier: verify_rdb.then(RdbVerifier::new),
        census: verify_rdb.then(Census::start),
        queues: queues.clone(),
        source_name: source_name.to_string(),
    });
    let verdict = match encoder {
        Err(e) => Err(e),
        Ok(encoder) => run_encoder(source, encoder, progress).await,
    };
    let end = verdict
        .as_ref()
        .map(|_| ())
        .map_err(|e| format!("not stored: {e}"));
    for q in &queues {
        q.end(end.clone());
    }
    let mut outcomes = Vec::new();
    for ((u, q), (store, _)) in uploaders.into_iter().zip(&queues).zip(targets) {
        // A destination that fell out (spool full) may still be stuck in a request: do not wait for it.
        let result = match q.failure() {
            Some(reason) if !u.is_finished() => {
                u.abort();
                Err(Error::storage(store, reason))
            }
            _ => match u.await {
                Ok(r) => r,
                Err(e) => Err(Error::Failed(format!("upload task failed: {e}"))),
            },
        };
        outcomes.push(DestOutcome {
            result,
            peak_spooled: q.peak_spooled(),
        });
    }
    (verdict, outcomes)
}

async fn run_encoder(
    source: &mut ByteSource,
    mut encoder: Encoder,
    progress: &Arc<Progress>,
) -> Result<Encoded> {
    // The encoder runs on its own thread so reading the socket never waits for compression work
    // beyond a few chunks.
    let (tx, mut rx) = mpsc::channel::<Option<Bytes>>(8);
    let worker = crate::threads::spawn_yielding("encoder", move || {
        while let Some(msg) = rx.blocking_recv() {
            match msg {
                Some(data) => encoder.feed(&data)?,
                None => return encoder.finish().map(Some),
            }
        }
        Ok(None)
    });
    let read = loop {
        match source.next_chunk().await {
            Ok(Some(b)) => {
                progress.read.fetch_add(b.len() as u64, Ordering::Relaxed);
                if tx.send(Some(b)).await.is_err() {
                    break Ok(());
                }
            }
            Ok(None) => {
                tx.send(None).await.ok();
                break Ok(());
            }
            Err(e) => break Err(e),
        }
    };
    drop(tx);
    let worked = worker
        .await
        .map_err(|e| Error::Failed(format!("encoder task failed: {e}")))?;
    read?;
    match worked? {
        Some(encoded) => Ok(encoded),
        None => Err(Error::Failed(
            "the source ended without its end marker".into(),
        )),
    }
}

async fn upload_loop(store: Store, key: String, queue: Arc<SpoolQueue>) -> Result<u64> {
    let mut upload = match store.begin(&key).await {
        Ok(u) => u,
        Err(e) => {
            queue.fail(e.to_string());
            return Err(e);
        }
    };
    loop {
        match queue.pop().await {
            Item::Data(b) => {
                if let Err(e) = upload.write(b).await {
                    queue.fail(e.to_string());
                    upload.abort().await;
                    return Err(e);
                }
            }
            Item::Commit => return upload.finish().await,
            Item::Abort(reason) => {
                upload.abort().await;
                return Err(Error::storage(&store, reason));
            }
        }
    }
}

/// Bytes per second as MB/s (10^6).
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 {
        0.0
    } else {
        bytes as f64 / 1e6 / s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the number of workers (none on a two-core machine, up to four on a large one),
    /// the frame decodes to the input, across several jobs.
    #[test]
    fn zstd_on_worker_threads_decodes_to_its_input() {
        let mut seed = 7u64;
        let input: Vec<u8> = (0..(ZSTD_JOB_BYTES as usize * 5 / 2))
            .map(|i| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                if i % 1024 < 512 {
                    (seed >> 56) as u8
                } else {
                    b'a' + (i % 7) as u8
                }
            })
            .collect();
        for workers in [0, 2] {
            let mut enc = zstd_encoder(Vec::new(), 3, workers).unwrap();
            for chunk in input.chunks(64 * 1024) {
                enc.write_all(chunk).unwrap();
            }
            let frame = enc.finish().unwrap();
            assert!(frame.len() < input.len(), "{workers} workers");
            assert_eq!(
                zstd::decode_all(&frame[..]).unwrap(),
                input,
                "{workers} workers"
            );
        }
    }
}
