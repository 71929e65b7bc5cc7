//! The archiver: one shard's replication stream held open, cut at command boundaries into
//! segments, each made durable in the local spool before its offset is acknowledged, then sent
//! to every region. A chain starts with a base (the RDB of `PSYNC ? -1`, stored as a backup);
//! a reconnect continues it with `PSYNC <replid> <offset + 1>`; `+FULLRESYNC` is a gap.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fleetsnap_core::archive::{SEGMENT_FORMAT, Scanner, SegmentHeader, encode_segment};
use fleetsnap_core::window::unix_ms;
use fleetsnap_core::{ClusterId, ShardId};
use serde::Serialize;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::live::{Live, LiveParts, Stats, render_metrics};
use super::local::{Local, Position, Uploaded, upload_loop};
use crate::error::{Error, Result};
use crate::redis::{Connection, RedisTarget};
use crate::snapshot::{
    ArchiveHandoff, EncodeOptions, Progress, Resumed, SnapshotRequest, SourceKind, SourceOptions,
    psync_from, snapshot,
};
use crate::storage::{DestSpec, SpoolLimits, Store};

/// What to archive and where.
#[derive(Clone)]
pub struct ArchiveRequest {
    /// The node whose stream is archived (a replica by default: nothing touches the primary).
    pub target: RedisTarget,
    /// Every region.
    pub destinations: Vec<DestSpec>,
    /// Compression and encryption of bases and segments.
    pub encode: EncodeOptions,
    /// Cluster name for the storage layout.
    pub cluster: ClusterId,
    /// Shard name for the storage layout.
    pub shard: ShardId,
    /// The local spool's root; the archive keeps `archive/<cluster>/<shard>/` in it.
    pub spool_dir: PathBuf,
    /// Spool limits for a base's upload.
    pub spool: SpoolLimits,
    /// A segment is cut this long after its first byte.
    pub segment: Duration,
    /// … or at this many stream bytes, whichever comes first.
    pub segment_max_bytes: u64,
    /// The most bytes of segments that may wait for a region locally; past it the archiver
    /// stops reading (and acknowledging) until the regions catch up.
    pub spool_max_bytes: u64,
    /// Source timeouts.
    pub source_options: SourceOptions,
    /// Serve `/metrics`, `/healthz` and `/readyz` here.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Where a daemon reads the archiver's state while it runs.
    pub live: Option<Arc<Live>>,
}

/// A gap in the archive: the chain that ended, and the base that started the next one.
#[derive(Clone, Debug, Serialize)]
pub struct Gap {
    /// The replication id the ended chain was on.
    pub replid: String,
    /// The offset it reached.
    pub offset: u64,
    /// When the gap was found (Unix ms).
    pub at_ms: i64,
    /// The backup id of the new base.
    pub new_base: Option<String>,
}

/// What an archiver did before it stopped.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ArchiveSummary {
    /// Segments made durable.
    pub segments: u64,
    /// Stream bytes archived.
    pub stream_bytes: u64,
    /// Bases stored (backup ids).
    pub bases: Vec<String>,
    /// Gaps found.
    pub gaps: Vec<Gap>,
    /// Where the chain stood at the end.
    pub position: Option<Position>,
    /// Replication-id switches followed (`old → new at offset`).
    pub switches: Vec<String>,
}

/// Runs the archiver until `stop` turns true; then cuts what it holds at the last command
/// boundary, and waits (up to a minute) for every region to have every segment.
pub async fn archive(
    req: ArchiveRequest,
    mut stop: watch::Receiver<bool>,
) -> Result<ArchiveSummary> {
    if req.destinations.is_empty() {
        return Err(Error::Input(
            "no destination: give at least one --to DEST".into(),
        ));
    }
    let dir = req
        .spool_dir
        .join("archive")
        .join(req.cluster.as_str())
        .join(req.shard.as_str());
    let local = Arc::new(Local::open(dir, req.spool_max_bytes)?);
    if local.position()?.is_none() {
        // A new spool (another agent taking over, or one whose spool was lost): the chain goes
        // on from where the regions hold it.
        match super::upkeep::chain_end(&req.destinations, &req.cluster, &req.shard, None).await {
            Ok(Some(p)) => {
                tracing::info!(replid = %p.replid, offset = p.offset, "continuing the archive's chain from where the regions hold it");
                local.set_position(&p)?;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the regions' archive could not be read; a new chain starts")
            }
        }
    }
    let mut stores = Vec::new();
    for d in &req.destinations {
        stores.push(Store::open(d).await?);
    }
    let stores = Arc::new(stores);
    let (stop_uploads, uploads_stop) = watch::channel(false);
    let uploaded: Vec<Arc<Uploaded>> = (0..stores.len()).map(|_| Arc::default()).collect();
    let uploaders: Vec<_> = (0..stores.len())
        .map(|i| {
            tokio::spawn(upload_loop(
                local.clone(),
                stores.clone(),
                i,
                req.encode.clone(),
                uploaded[i].clone(),
                uploads_stop.clone(),
            ))
        })
        .collect();
    let stats = Arc::new(Stats::default());
    stats
        .lost_since_ms
        .store(unix_ms(OffsetDateTime::now_utc()), Ordering::Relaxed);
    // What the metrics and a daemon's reports read.
    let live = req.live.clone().unwrap_or_default();
    let _ = live.parts.set(LiveParts {
        cluster: req.cluster.to_string(),
        shard: req.shard.to_string(),
        stats: stats.clone(),
        local: local.clone(),
        regions: stores
            .iter()
            .enumerate()
            .map(|(i, s)| {
                live.region_names
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| s.spec().region_name())
            })
            .zip(uploaded.iter().cloned())
            .collect(),
    });
    if let Some(address) = req.metrics_listen {
        let shown = live.clone();
        let ready = stats.clone();
        fleetsnap_telemetry::http::start(
            address,
            fleetsnap_telemetry::http::Probes {
                metrics: Arc::new(move || {
                    let mut out = fleetsnap_telemetry::metrics::Exposition::default();
                    render_metrics(&mut out, &[&shown]);
                    out.finish()
                }),
                healthy: Arc::new(|| Ok(())),
                ready: Arc::new(move || {
                    if ready.connected.load(Ordering::Relaxed) {
                        Ok(())
                    } else {
                        Err("the archiver holds no replication stream".into())
                    }
                }),
            },
        )
        .await
        .map_err(|e| Error::Input(e.to_string()))?;
    }
    let mut summary = ArchiveSummary::default();
    // The first retry is at once (a promotion drops its replicas so they learn the new
    // history; the stream's stamps lag by as long as the archiver waits), later ones back off.
    let mut pause = Duration::ZERO;
    while !*stop.borrow() {
        let began = Instant::now();
        let followed = follow(&req, &local, &stats, &mut summary, &mut stop).await;
        if stats.connected.swap(false, Ordering::Relaxed) {
            stats
                .lost_since_ms
                .store(unix_ms(OffsetDateTime::now_utc()), Ordering::Relaxed);
        }
        stats.open_since_ms.store(0, Ordering::Relaxed);
        if began.elapsed() > Duration::from_secs(30) {
            pause = Duration::ZERO;
        }
        match followed {
            Ok(()) => break,
            Err(e @ Error::Input(_)) => {
                let _ = stop_uploads.send(true);
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(node = %req.target, error = %e, "the archive's stream stopped; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.changed() => {}
                }
                pause = (pause * 2).clamp(Duration::from_millis(250), Duration::from_secs(5));
            }
        }
    }
    let _ = stop_uploads.send(true);
    let drained = async {
        for u in uploaders {
            let _ = u.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(60), drained)
        .await
        .is_err()
    {
        tracing::warn!(
            waiting_bytes = local.waiting.load(Ordering::Relaxed),
            "some segments are not in every region yet; they stay in the spool and go when the archiver runs again"
        );
    }
    summary.position = local.position()?;
    summary.segments = stats.segments.load(Ordering::Relaxed);
    summary.stream_bytes = stats.stream_bytes.load(Ordering::Relaxed);
    Ok(summary)
}

/// One connection's worth of archiving: resume or start a chain, then follow the stream until
/// it fails (an error) or `stop` (Ok).
async fn follow(
    req: &ArchiveRequest,
    local: &Local,
    stats: &Stats,
    summary: &mut ArchiveSummary,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let pos = local.position()?;
    let from = pos.as_ref().map(|p| (p.replid.as_str(), p.offset));
    let (conn, pending, at, switched_from) = match psync_from(
        &req.target,
        from,
        &req.source_options,
    )
    .await?
    {
        Resumed::Continue { conn, replid, .. } => {
            let mut at = pos.expect("a chain was asked to continue");
            let mut switched = None;
            if let Some(new) = replid.filter(|r| *r != at.replid) {
                tracing::info!(from = %at.replid, to = %new, offset = at.offset, "the shard's replication id switched (a promotion); the chain continues");
                summary
                    .switches
                    .push(format!("{} → {new} at {}", at.replid, at.offset));
                switched = Some(std::mem::replace(&mut at.replid, new));
            }
            (*conn, BytesMut::new(), at, switched)
        }
        Resumed::Full(opened) => {
            let info = opened.info.clone();
            let (Some(replid), Some(offset)) = (info.replid.clone(), info.offset) else {
                return Err(Error::redis(
                    &req.target,
                    "the node announced no replication id and offset with its snapshot",
                ));
            };
            let handoff = ArchiveHandoff::default();
            *handoff.opened.lock().expect("handoff lock") = Some(*opened);
            let base_req = base_request(req, handoff.clone());
            let base = snapshot(&base_req, Arc::new(Progress::default()));
            // Stopped while the base streams: nothing of this chain is durable yet.
            let report = tokio::select! {
                r = base => r?,
                _ = stop.changed() => return Ok(()),
            };
            if report.complete() == 0 {
                return Err(Error::Failed(format!(
                    "the chain's base could not be stored in any region: {}",
                    report
                        .destinations
                        .iter()
                        .filter_map(|d| d.error.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                )));
            }
            if let Some(p) = &pos {
                tracing::warn!(replid = %p.replid, offset = p.offset, base = %report.backup_id, "a gap in the archive: the node could not continue the chain; a new chain starts with a new base");
                stats.gaps.fetch_add(1, Ordering::Relaxed);
                summary.gaps.push(Gap {
                    replid: p.replid.clone(),
                    offset: p.offset,
                    at_ms: unix_ms(OffsetDateTime::now_utc()),
                    new_base: Some(report.backup_id.clone()),
                });
            }
            tracing::info!(base = %report.backup_id, %replid, offset, "a chain started");
            summary.bases.push(report.backup_id.clone());
            let (conn, extra, head) = handoff
                .stream
                .lock()
                .expect("handoff lock")
                .take()
                .ok_or_else(|| Error::redis(&req.target, "the stream ended with the RDB"))?;
            let db = fleetsnap_core::rdb::leading_aux(&head)
                .into_iter()
                .find(|(k, _)| k == "repl-stream-db")
                .and_then(|(_, d)| d.parse().ok())
                .unwrap_or(0);
            let at = Position {
                replid,
                offset,
                db,
                at_ms: report.started_at_ms,
            };
            local.set_position(&at)?;
            (conn, extra, at, None)
        }
    };
    stats.connected.store(true, Ordering::Relaxed);
    Follower::new(req, local, stats, conn, pending, at, switched_from)
        .run(stop)
        .await
}

fn base_request(req: &ArchiveRequest, handoff: ArchiveHandoff) -> SnapshotRequest {
    SnapshotRequest {
        target: Some(req.target.clone()),
        source: SourceKind::Replication,
        destinations: req.destinations.clone(),
        encode: req.encode.clone(),
        cluster: req.cluster.clone(),
        shard: req.shard.clone(),
        spool: req.spool.clone(),
        source_options: req.source_options.clone(),
        backup_id: None,
        write_manifest: true,
        start_at_ms: None,
        cut: None,
        archive: Some(handoff),
    }
}

/// Samples closer than this are merged: a command's stamp is at most this late.
const SAMPLE_MS: i64 = 10;

/// The stream of one connection and the segment being filled.
struct Follower<'a> {
    req: &'a ArchiveRequest,
    local: &'a Local,
    stats: &'a Stats,
    conn: Connection,
    /// Stream bytes after `start`, not yet in a segment.
    body: Vec<u8>,
    /// Bytes of `body` the scanner has read.
    scanned: usize,
    scanner: Scanner,
    /// The offset the open segment starts at (acknowledged: durable).
    start: u64,
    replid: String,
    /// The database selected at `start`.
    db: u64,
    switched_from: Option<String>,
    samples: Vec<(u64, i64)>,
    /// When the last sample was first taken.
    sample_opened: i64,
    /// When the open segment's first byte came.
    first: Option<(Instant, i64)>,
    /// When the last durable byte had come.
    durable_ms: i64,
    since: Instant,
}

impl<'a> Follower<'a> {
    fn new(
        req: &'a ArchiveRequest,
        local: &'a Local,
        stats: &'a Stats,
        conn: Connection,
        pending: BytesMut,
        at: Position,
        switched_from: Option<String>,
    ) -> Self {
        Follower {
            req,
            local,
            stats,
            conn,
            body: pending.to_vec(),
            scanned: 0,
            scanner: Scanner::new(at.offset, at.db),
            start: at.offset,
            replid: at.replid,
            db: at.db,
            switched_from,
            samples: Vec::new(),
            sample_opened: 0,
            first: None,
            durable_ms: at.at_ms,
            since: Instant::now(),
        }
    }

    async fn ack(&mut self) -> Result<()> {
        let offset = self.start.to_string();
        self.conn
            .send(&[b"REPLCONF", b"ACK", offset.as_bytes()])
            .await
    }

    async fn run(mut self, stop: &mut watch::Receiver<bool>) -> Result<()> {
        self.ack().await?;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let mut last_ack = Instant::now();
        let mut silent = Duration::ZERO;
        loop {
            // A node streams nothing after a diskless RDB until it hears an ACK, and may ignore
            // the first: acknowledged every 10 ms for two seconds, then every second.
            let tick = if self.since.elapsed() < Duration::from_secs(2) {
                Duration::from_millis(10)
            } else {
                Duration::from_secs(1)
            };
            if self.first.is_some() {
                let waited = self.first.map(|(t, _)| t.elapsed()).unwrap_or_default();
                if waited >= self.req.segment && self.cut().await? {
                    last_ack = Instant::now();
                }
            }
            let until_cut = self
                .first
                .map(|(t, _)| self.req.segment.saturating_sub(t.elapsed()))
                .unwrap_or(tick)
                .max(Duration::from_millis(5));
            tokio::select! {
                _ = stop.changed() => {
                    self.cut().await?;
                    return Ok(());
                }
                read = tokio::time::timeout(tick.min(until_cut), self.conn.read_some(&mut buf)) => match read {
                    Ok(Ok(0)) => {
                        // What came before the close is as good as any: kept, with its stamps.
                        self.cut().await.ok();
                        return Err(Error::redis(self.conn.target(), "the node closed the replication stream: check its log (restart, failover, output-buffer limit for replicas)"));
                    }
                    Ok(Ok(_)) => {
                        silent = Duration::ZERO;
                        self.take(&mut buf)?;
                        if self.body.len() as u64 >= self.req.segment_max_bytes {
                            self.cut().await?;
                        }
                    }
                    Ok(Err(e)) => {
                        self.cut().await.ok();
                        return Err(e);
                    }
                    Err(_) => {
                        silent += tick.min(until_cut);
                        if silent >= self.req.source_options.idle_timeout {
                            return Err(Error::redis(self.conn.target(), format!("the replication stream stayed silent for {}s (a node pings its replicas every 10 s by default)", silent.as_secs())));
                        }
                    }
                },
            }
            if last_ack.elapsed() >= tick {
                self.ack().await?;
                last_ack = Instant::now();
            }
        }
    }

    /// Takes what was read into the open segment and samples the time.
    fn take(&mut self, buf: &mut BytesMut) -> Result<()> {
        let now = unix_ms(OffsetDateTime::now_utc());
        if self.first.is_none() {
            self.first = Some((Instant::now(), now.max(self.durable_ms)));
            self.stats.open_since_ms.store(now, Ordering::Relaxed);
        }
        self.body.extend_from_slice(buf);
        buf.clear();
        while let Some(c) = self
            .scanner
            .next(&self.body[self.scanned..])
            .map_err(|e| Error::redis(self.conn.target(), e.to_string()))?
        {
            self.scanned += (c.end - c.start) as usize;
        }
        let cut = self.scanner.cuttable();
        let now = now.max(self.durable_ms);
        // Samples opened less than SAMPLE_MS ago move forward instead of adding one: a command
        // is stamped at most that much later than it came.
        match self.samples.last_mut() {
            Some(last) if last.0 == cut => {}
            Some(last) if now - self.sample_opened < SAMPLE_MS => *last = (cut, now),
            _ if cut > self.start => {
                self.samples.push((cut, now));
                self.sample_opened = now;
            }
            _ => {}
        }
        Ok(())
    }

    /// Makes a segment of everything up to the last command boundary outside a transaction,
    /// durable here, then acknowledges it. False when there is nothing to cut yet.
    async fn cut(&mut self) -> Result<bool> {
        let end = self.scanner.cuttable();
        if end <= self.start {
            return Ok(false);
        }
        let n = (end - self.start) as usize;
        let (_, first_ms) = self.first.expect("bytes came");
        let last = *self
            .samples
            .last()
            .expect("a sample at every cuttable offset");
        debug_assert_eq!(last.0, end);
        let stream = &self.body[..n];
        let header = SegmentHeader {
            format: SEGMENT_FORMAT,
            cluster: self.req.cluster.clone(),
            shard: self.req.shard.clone(),
            replid: self.replid.clone(),
            start: self.start,
            end,
            first_ms,
            last_ms: last.1,
            db: self.db,
            index: std::mem::take(&mut self.samples),
            sha256: hex::encode(Sha256::digest(stream)),
            switched_from: self.switched_from.take(),
        };
        let plain = encode_segment(&header, stream);
        // A full spool stops the reading (and the acknowledging) until the regions catch up:
        // the node buffers, and past its limit drops the connection, which resumes later.
        while !self.local.has_room(plain.len() as u64) {
            tracing::warn!(
                waiting = self.local.waiting.load(Ordering::Relaxed),
                limit = self.local.max_bytes,
                "the archive spool is full: waiting for the regions"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.ack().await?;
        }
        self.local
            .add(&plain, &header, self.scanner.cuttable_db())?;
        self.stats.segments.fetch_add(1, Ordering::Relaxed);
        self.stats
            .stream_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        self.body.drain(..n);
        self.scanned -= n;
        self.start = end;
        self.db = self.scanner.cuttable_db();
        self.durable_ms = last.1;
        self.first = (!self.body.is_empty()).then(|| {
            (
                Instant::now(),
                unix_ms(OffsetDateTime::now_utc()).max(last.1),
            )
        });
        self.stats
            .open_since_ms
            .store(self.first.map_or(0, |(_, ms)| ms), Ordering::Relaxed);
        self.ack().await?;
        Ok(true)
    }
}
