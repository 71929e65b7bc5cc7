//! The Prometheus text format (version 0.0.4) and a registry of counters and gauges.
//!
//! Names follow `fleetsnap_<name>_<unit>[_total]`; labels carry only bounded values (cluster,
//! shard, region, policy, agent, a job kind, a failure reason from a fixed list), never ids
//! that grow without end.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// A metric's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (or back to 0 when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// A scrape's text, written family by family.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

/// One family being written: its samples follow its `# HELP` and `# TYPE` lines.
pub struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    /// One sample.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: f64) -> &mut Self {
        let out = &mut *self.out;
        out.push_str(self.name);
        if !labels.is_empty() {
            out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(out, "{k}=\"{v}\"");
            }
            out.push('}');
        }
        let _ = writeln!(out, " {}", format_value(value));
        self
    }
}

impl Exposition {
    /// Starts a family with its `# HELP` and `# TYPE` lines; its samples go through the
    /// returned writer.
    pub fn family<'a>(&'a mut self, name: &'a str, kind: Kind, help: &str) -> Family<'a> {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {}", kind.as_str());
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help).sample(&[], value);
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

type Labels = Vec<(&'static str, String)>;

struct Described {
    kind: Kind,
    help: &'static str,
    samples: BTreeMap<Labels, f64>,
}

/// Counters and gauges a process updates as things happen.
#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Described>>,
}

impl Registry {
    /// Makes a family known, so a scrape lists it before its first sample.
    pub fn describe(&self, name: &'static str, kind: Kind, help: &'static str) {
        self.families
            .lock()
            .expect("metrics lock")
            .entry(name)
            .or_insert_with(|| Described {
                kind,
                help,
                samples: BTreeMap::new(),
            });
    }

    fn with(
        &self,
        name: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
        f: impl FnOnce(&mut f64),
    ) {
        let mut families = self.families.lock().expect("metrics lock");
        let family = families.entry(name).or_insert_with(|| Described {
            kind,
            help: "",
            samples: BTreeMap::new(),
        });
        let key = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        f(family.samples.entry(key).or_insert(0.0));
    }

    /// Adds `by` to a counter (described first with [`Registry::describe`]).
    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], by: f64) {
        self.with(name, Kind::Counter, labels, |v| *v += by);
    }

    /// Sets a gauge (described first with [`Registry::describe`]).
    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.with(name, Kind::Gauge, labels, |v| *v = value);
    }

    /// Writes every family.
    pub fn render(&self, out: &mut Exposition) {
        let families = self.families.lock().expect("metrics lock");
        for (name, f) in families.iter() {
            let mut family = out.family(name, f.kind, f.help);
            for (labels, value) in &f.samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                family.sample(&labels, *value);
            }
        }
    }
}

/// Seconds since the Unix epoch, as scrapes want timestamps.
pub fn unix_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_escapes_labels_and_writes_whole_numbers_plainly() {
        let r = Registry::default();
        r.describe("fleetsnap_x_total", Kind::Counter, "X.");
        r.describe("fleetsnap_y_seconds", Kind::Gauge, "Y.");
        r.add("fleetsnap_x_total", &[("shard", "a\"b")], 2.0);
        r.add("fleetsnap_x_total", &[("shard", "a\"b")], 1.0);
        r.set("fleetsnap_y_seconds", &[], 0.25);
        let mut e = Exposition::default();
        r.render(&mut e);
        assert_eq!(
            e.finish(),
            "# HELP fleetsnap_x_total X.\n# TYPE fleetsnap_x_total counter\n\
             fleetsnap_x_total{shard=\"a\\\"b\"} 3\n\
             # HELP fleetsnap_y_seconds Y.\n# TYPE fleetsnap_y_seconds gauge\n\
             fleetsnap_y_seconds 0.25\n"
        );
    }
}
