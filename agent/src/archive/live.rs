//! What a running archiver shows: the state a daemon's reports carry ([`Live`]) and the archive's
//! metric families, for one archiver (`archive run --metrics-listen`) or all of a daemon's.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use fleetsnap_core::window::unix_ms;
use time::OffsetDateTime;

use super::local::{Local, Position, Uploaded};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};

/// What a running archiver shows its daemon (for the reports the leader's `archive status`
/// reads).
#[derive(Default)]
pub struct Live {
    pub(super) parts: std::sync::OnceLock<LiveParts>,
    /// The regions' names in metrics, in the order of the destinations (the policy's); the
    /// destinations' own where none is given.
    pub(super) region_names: Vec<String>,
}

/// What [`Live`] reads: the shard, the counters, the spool, each region's name and uploader.
pub(super) struct LiveParts {
    pub(super) cluster: String,
    pub(super) shard: String,
    pub(super) stats: Arc<Stats>,
    pub(super) local: Arc<Local>,
    pub(super) regions: Vec<(String, Arc<Uploaded>)>,
}

/// An archiver's state at one moment.
#[derive(Clone, Debug, Default)]
pub struct LiveView {
    /// Whether the stream is open.
    pub connected: bool,
    /// The live recovery point.
    pub lag_seconds: f64,
    /// Where the chain stands in the spool.
    pub position: Option<Position>,
    /// Segments made durable.
    pub segments: u64,
    /// Gaps found.
    pub gaps: u64,
    /// The newest time every region holds (Unix ms; 0: none yet).
    pub restorable_until_ms: i64,
}

impl Live {
    /// A live view whose metrics name the regions `names` (in the order of the destinations).
    pub fn with_regions(names: Vec<String>) -> Self {
        Live {
            region_names: names,
            ..Default::default()
        }
    }

    /// The state now; `None` before the archiver has opened its spool.
    pub fn view(&self) -> Option<LiveView> {
        let LiveParts {
            stats,
            local,
            regions,
            ..
        } = self.parts.get()?;
        let now = unix_ms(OffsetDateTime::now_utc());
        Some(LiveView {
            connected: stats.connected.load(Ordering::Relaxed),
            lag_seconds: stats.lag_seconds(local, now),
            position: local.last_position(),
            segments: stats.segments.load(Ordering::Relaxed),
            gaps: stats.gaps.load(Ordering::Relaxed),
            restorable_until_ms: regions
                .iter()
                .map(|(_, u)| u.last_ms.load(Ordering::Relaxed) as i64)
                .min()
                .unwrap_or(0),
        })
    }
}

/// A per-region family: name, kind, help, and its value from a region's uploader.
type PerRegion = (
    &'static str,
    fleetsnap_telemetry::metrics::Kind,
    &'static str,
    fn(&Uploaded) -> f64,
);

/// The archive's families for every archiver in `lives` (one process may run several), read
/// at scrape time; an archiver that has not opened its spool yet shows nothing.
pub fn render_metrics(out: &mut fleetsnap_telemetry::metrics::Exposition, lives: &[&Live]) {
    use fleetsnap_telemetry::metrics::Kind;
    let now = unix_ms(OffsetDateTime::now_utc());
    let parts: Vec<&LiveParts> = lives.iter().filter_map(|l| l.parts.get()).collect();
    type ShardWide = (&'static str, Kind, &'static str, fn(&LiveParts, i64) -> f64);
    let shard_wide: [ShardWide; 6] = [
        (
            "fleetsnap_archive_lag_seconds",
            Kind::Gauge,
            "Seconds since the oldest stream byte received and not yet in every region came (0 while caught up): the live recovery point.",
            |p, now| p.stats.lag_seconds(&p.local, now),
        ),
        (
            "fleetsnap_archive_connected",
            Kind::Gauge,
            "1 while the archiver holds the node's replication stream.",
            |p, _| f64::from(u8::from(p.stats.connected.load(Ordering::Relaxed))),
        ),
        (
            "fleetsnap_archive_segments_total",
            Kind::Counter,
            "Segments made durable in the spool.",
            |p, _| p.stats.segments.load(Ordering::Relaxed) as f64,
        ),
        (
            "fleetsnap_archive_stream_bytes_total",
            Kind::Counter,
            "Replication stream bytes made durable in the spool.",
            |p, _| p.stats.stream_bytes.load(Ordering::Relaxed) as f64,
        ),
        (
            "fleetsnap_archive_gaps_total",
            Kind::Counter,
            "Times the node could not continue the chain (+FULLRESYNC): a gap, and a new base.",
            |p, _| p.stats.gaps.load(Ordering::Relaxed) as f64,
        ),
        (
            "fleetsnap_archive_spool_bytes",
            Kind::Gauge,
            "Bytes of segments waiting in the spool for a region.",
            |p, _| p.local.waiting.load(Ordering::Relaxed) as f64,
        ),
    ];
    if parts.is_empty() {
        return;
    }
    for (name, kind, help, value) in shard_wide {
        let mut family = out.family(name, kind, help);
        for p in &parts {
            family.sample(
                &[("cluster", p.cluster.as_str()), ("shard", p.shard.as_str())],
                value(p, now),
            );
        }
    }
    let per_region: [PerRegion; 2] = [
        (
            "fleetsnap_archive_restorable_until_seconds",
            Kind::Gauge,
            "Unix time of the newest command each region holds in the archive.",
            |u| u.last_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        ),
        (
            "fleetsnap_archive_upload_failures_total",
            Kind::Counter,
            "Segment uploads a region did not take (each is retried, in order).",
            |u| u.failures.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, kind, help, value) in per_region {
        let mut family = out.family(name, kind, help);
        for p in &parts {
            for (region, u) in &p.regions {
                family.sample(
                    &[
                        ("cluster", p.cluster.as_str()),
                        ("shard", p.shard.as_str()),
                        ("region", region.as_str()),
                    ],
                    value(u),
                );
            }
        }
    }
}

/// What the archiver's metrics read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Segments made durable here.
    pub segments: AtomicU64,
    /// Gaps found.
    pub gaps: AtomicU64,
    /// Stream bytes made durable here.
    pub stream_bytes: AtomicU64,
    /// Whether the stream is open.
    pub connected: AtomicBool,
    /// When the open segment's first byte came (Unix ms; 0: nothing open).
    pub open_since_ms: AtomicI64,
    /// When the stream was last lost, or the archiver started (Unix ms).
    pub lost_since_ms: AtomicI64,
}

impl Stats {
    /// The live recovery point: how long ago the oldest byte received and not yet in every region
    /// came; 0 while nothing waits and the stream is open; since the stream was lost while it
    /// is not.
    pub(super) fn lag_seconds(&self, local: &Local, now: i64) -> f64 {
        let open = Some(self.open_since_ms.load(Ordering::Relaxed)).filter(|t| *t > 0);
        let oldest = [open, local.oldest_pending_ms()]
            .into_iter()
            .flatten()
            .min();
        let since = match oldest {
            Some(t) => t,
            None if self.connected.load(Ordering::Relaxed) => now,
            None => self.lost_since_ms.load(Ordering::Relaxed),
        };
        (now - since).max(0) as f64 / 1000.0
    }
}
