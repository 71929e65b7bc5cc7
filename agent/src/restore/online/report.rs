//! What an online restore is asked to do and what it did, and its progress on standard error.

use fleetsnap_core::outcomes::OnlineReport;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// What to restore and how.
#[derive(Clone, Debug, Default)]
pub struct OnlineOptions {
    /// Overwrite keys (and function libraries) that already exist; otherwise they are left as
    /// they are and reported.
    pub replace_existing: bool,
    /// Only this logical database.
    pub db: Option<u64>,
    /// Only keys matching this glob.
    pub pattern: Option<String>,
    /// Print progress on standard error (a bar on a terminal).
    pub progress: bool,
    /// Which keys this shard's restore writes, where several shards go into one target and a
    /// key may have been in two of them (a slot migration between their bases and the point):
    /// the others are left to the shard that held them.
    pub keep: Option<KeepKey>,
}

/// See [`OnlineOptions::keep`].
#[derive(Clone)]
pub struct KeepKey(pub std::sync::Arc<KeyTest>);

/// A test of a key.
pub type KeyTest = dyn Fn(&[u8]) -> bool + Send + Sync;

impl std::fmt::Debug for KeepKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeepKey(..)")
    }
}

impl OnlineOptions {
    /// Whether this restore leaves `key` to another shard.
    pub(crate) fn elsewhere(&self, key: &[u8]) -> bool {
        self.keep.as_ref().is_some_and(|k| !(k.0)(key))
    }
}

/// Progress on standard error: a redrawn line on a terminal, a line every 10 s otherwise.
pub(super) struct Progress {
    pub(super) on: bool,
    pub(super) tty: bool,
    pub(super) total: u64,
    pub(super) started: Instant,
    pub(super) last: Instant,
}

impl Progress {
    pub(super) fn new(on: bool, total: u64) -> Self {
        let now = Instant::now();
        Self {
            on,
            tty: std::io::stderr().is_terminal(),
            total,
            started: now,
            last: now,
        }
    }

    pub(super) fn show(&mut self, at: u64, keys: u64) {
        let every = if self.tty {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(10)
        };
        if !self.on || self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = at as f64 / secs;
        let left = self.total.saturating_sub(at) as f64 / rate.max(1.0);
        let pct = if self.total > 0 {
            at as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let filled = (pct / 5.0) as usize;
        let line = format!(
            "[{}{}] {pct:5.1}%  {:.1}/{:.1} MB  {:.1} MB/s  {keys} keys  ETA {left:.0}s",
            "#".repeat(filled.min(20)),
            " ".repeat(20 - filled.min(20)),
            at as f64 / 1e6,
            self.total as f64 / 1e6,
            rate / 1e6,
        );
        if self.tty {
            eprint!("\r{line}");
        } else {
            eprintln!("{line}");
        }
    }

    pub(super) fn done(&self, r: &OnlineReport) {
        if !self.on {
            return;
        }
        if self.tty {
            eprintln!();
        }
        eprintln!(
            "{} keys restored from {:.1} MB of RDB in {:.1}s ({:.1} MB/s), {} tail commands replayed",
            r.keys,
            r.rdb_bytes as f64 / 1e6,
            r.seconds,
            r.rdb_bytes as f64 / 1e6 / r.seconds.max(1e-3),
            r.tail_commands
        );
    }
}
