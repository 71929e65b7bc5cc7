//! What every scenario works with: the fleet, the seeded RNG, the outcome it reports, and small
//! facts of the fleet several scenarios ask for.

use std::time::{Duration, Instant};

use rand::{Rng, rngs::StdRng};

use crate::checker::Verdict;
use crate::fleet::{Fleet, REDIS_PORT};
use crate::workload::Writer;

/// What a scenario run gives the report.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The faults, in order, with seconds since the scenario began.
    pub faults: Vec<String>,
    /// Figures: name and value.
    pub figures: Vec<(String, String)>,
    /// The invariants checked.
    pub verdict: Verdict,
    /// Why the scenario could not run to its end (a step that timed out), if it could not.
    pub error: Option<String>,
}

impl Outcome {
    /// Whether it ran to its end and every invariant held.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.verdict.ok()
    }
}

/// A scenario's state while it runs.
pub struct Ctx {
    pub fleet: Fleet,
    pub rng: StdRng,
    pub started: Instant,
    pub out: Outcome,
}

impl Ctx {
    /// Records a fault as it is injected.
    pub fn fault(&mut self, what: impl Into<String>) {
        let line = format!(
            "{:.1}s {}",
            self.started.elapsed().as_secs_f64(),
            what.into()
        );
        eprintln!("    fault: {line}");
        self.out.faults.push(line);
    }

    /// Records a figure.
    pub fn figure(&mut self, name: &str, value: impl Into<String>) {
        self.out.figures.push((name.into(), value.into()));
    }

    /// Records the seconds since `at` as a figure.
    pub fn figure_since(&mut self, name: &str, at: Instant) {
        self.figure(name, format!("{:.1}", at.elapsed().as_secs_f64()));
    }

    /// A duration between `lo` and `hi` seconds, drawn from the seed.
    pub fn between(&mut self, lo: f64, hi: f64) -> Duration {
        Duration::from_secs_f64(self.rng.random_range(lo..hi))
    }

    /// The writer, on the cluster's nodes.
    pub fn writer(&self) -> Writer {
        Writer::start(
            self.fleet
                .nodes
                .iter()
                .map(|n| n.host.addr(REDIS_PORT))
                .collect(),
        )
    }
}

/// The nodes that are primaries now.
pub async fn primaries(fleet: &Fleet) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, n) in fleet.nodes.iter().enumerate() {
        if n.info("replication", "role")
            .await
            .ok()
            .flatten()
            .as_deref()
            == Some("master")
        {
            out.push(i);
        }
    }
    out
}
