//! Tables an SRE reads at a glance.

use std::fmt::Write;

use fleetsnap_core::Role;
use fleetsnap_core::records::{ArchiveRow, BackupSet, PruneRow, ShardState, StatusDoc, WindowDoc};
use fleetsnap_core::retention;
use fleetsnap_proto::v1;

/// Tables fit this many columns.
const WIDTH: usize = 100;

/// A table whose columns are as wide as their contents; the last column takes what is left of
/// [`WIDTH`] and wraps at spaces onto lines of its own.
struct Grid {
    indent: usize,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Grid {
    /// `right[i]`: column `i` is right-aligned (numbers).
    fn new(indent: usize, headers: &[&str], right: &[bool]) -> Self {
        Grid {
            indent,
            right: right.to_vec(),
            rows: vec![headers.iter().map(|h| h.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn render(&self, out: &mut String) {
        let n = self.rows[0].len();
        let len = |s: &String| s.chars().count();
        let widths: Vec<usize> = (0..n - 1)
            .map(|i| self.rows.iter().map(|r| len(&r[i])).max().unwrap_or(0))
            .collect();
        let lead = self.indent + widths.iter().map(|w| w + 2).sum::<usize>();
        let room = WIDTH.saturating_sub(lead).max(24);
        for row in &self.rows {
            let mut line = " ".repeat(self.indent);
            for (i, w) in widths.iter().enumerate() {
                let pad = w - len(&row[i]);
                if self.right.get(i).copied().unwrap_or(false) {
                    line += &" ".repeat(pad);
                    line += &row[i];
                } else {
                    line += &row[i];
                    line += &" ".repeat(pad);
                }
                line += "  ";
            }
            for (k, part) in wrap(&row[n - 1], room).iter().enumerate() {
                if k > 0 {
                    line = " ".repeat(lead);
                }
                line += part;
                let _ = writeln!(out, "{}", line.trim_end());
            }
        }
    }
}

/// `text` in lines of at most `room` characters, broken at spaces where it can be.
fn wrap(text: &str, room: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split(' ') {
        let current = lines.last_mut().expect("one line");
        let used = current.chars().count();
        if used > 0 && used + 1 + word.chars().count() > room {
            lines.push(word.to_string());
        } else {
            if used > 0 {
                current.push(' ');
            }
            current.push_str(word);
        }
    }
    lines
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn age(ms: u64) -> String {
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}s", ms / 1000)
    } else {
        format!("{}h", ms / 3_600_000)
    }
}

/// The fleet status table.
pub fn status(doc: &StatusDoc) -> String {
    let mut out = String::new();
    let connected = doc.agents.iter().filter(|a| a.connected).count();
    let _ = writeln!(
        out,
        "leader: coordinator {} (term {}) · agents: {connected} connected of {} registered · open jobs: {}",
        doc.leader, doc.term, doc.registered_agents, doc.open_jobs
    );
    let stale: Vec<String> = doc
        .agents
        .iter()
        .filter(|a| !a.connected || a.last_report_age_ms.is_none_or(|ms| ms > 3000))
        .map(|a| {
            format!(
                "{} ({}, {} instances)",
                a.agent,
                match a.last_report_age_ms {
                    Some(ms) => format!("last report {} ago", age(ms)),
                    None => "no report yet".into(),
                },
                a.instances
            )
        })
        .collect();
    if !stale.is_empty() {
        let _ = writeln!(out, "NOT REPORTING: {}", stale.join(", "));
    }
    if doc.clusters.is_empty() {
        let _ = writeln!(out, "\nno Redis instance reported yet");
    }
    for c in &doc.clusters {
        let _ = writeln!(
            out,
            "\ncluster {} ({}, {} shard{})",
            c.name,
            c.mode,
            c.shards.len(),
            if c.shards.len() == 1 { "" } else { "s" }
        );
        for s in &c.shards {
            let _ = writeln!(out, "  shard {}", s.id);
            let mut grid = Grid::new(
                4,
                &[
                    "NODE",
                    "ADDRESS",
                    "AGENT",
                    "ROLE",
                    "SERVER",
                    "OFFSET",
                    "LAG",
                    "LINK",
                    "REPORT",
                    "PERSISTENCE",
                ],
                &[false, false, false, false, false, true, true, false, true],
            );
            for n in &s.nodes {
                let role = match n.role {
                    Role::Primary => "primary",
                    Role::Replica => "replica",
                    Role::Unknown => "?",
                };
                let lag = match (n.lag_bytes, n.lag_seconds) {
                    (Some(b), Some(s)) => format!("{} / {s}s", bytes(b)),
                    (Some(b), None) => bytes(b),
                    _ => "-".into(),
                };
                let persistence = if n.reachable {
                    format!("{} ({} changes)", n.persistence, n.changes_since_save)
                } else {
                    format!("UNREACHABLE: {}", n.error.clone().unwrap_or_default())
                };
                grid.row(vec![
                    n.name.clone(),
                    n.address.clone(),
                    n.agent.clone(),
                    role.to_string(),
                    if n.server.is_empty() {
                        "-".into()
                    } else {
                        n.server.clone()
                    },
                    n.offset.to_string(),
                    lag,
                    n.link.as_deref().unwrap_or("-").to_string(),
                    age(n.report_age_ms),
                    persistence,
                ]);
            }
            grid.render(&mut out);
        }
    }
    out
}

/// The coordinators' table.
pub fn cluster(r: &v1::ClusterStatusReply) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} sees leader {} · term {} · last log {} · applied {} · snapshot {}",
        r.node_id, r.leader_id, r.term, r.last_log_index, r.applied_index, r.snapshot_index
    );
    let _ = writeln!(
        out,
        "{} agents keep a spare connection to node {}",
        r.spare_agents, r.node_id
    );
    let _ = writeln!(
        out,
        "{:<6} {:<24} {:<8} {:>8}",
        "ID", "ADDRESS", "ROLE", "MATCHED"
    );
    for m in &r.members {
        let role = if m.id == r.leader_id {
            "leader"
        } else if m.voter {
            "voter"
        } else {
            "learner"
        };
        let _ = writeln!(
            out,
            "{:<6} {:<24} {:<8} {:>8}",
            m.id,
            m.address,
            role,
            m.matched_index.map_or("-".to_string(), |i| i.to_string())
        );
    }
    out
}

/// The coordinators as JSON.
pub fn cluster_json(r: &v1::ClusterStatusReply) -> serde_json::Value {
    serde_json::json!({
        "node_id": r.node_id,
        "leader_id": r.leader_id,
        "term": r.term,
        "last_log_index": r.last_log_index,
        "applied_index": r.applied_index,
        "snapshot_index": r.snapshot_index,
        "spare_agents": r.spare_agents,
        "members": r.members.iter().map(|m| serde_json::json!({
            "id": m.id,
            "address": m.address,
            "voter": m.voter,
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

/// Policies, a line each: name, clusters, schedule, consistency, regions, retention.
pub fn policies(list: &[fleetsnap_core::policy::Policy]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<16} {:<20} {:<14} {:<12} {:<18} {:<14}",
        "POLICY", "CLUSTERS", "SCHEDULE", "MODE", "REGIONS (MIN)", "RETENTION"
    );
    for p in list {
        let r = &p.retention;
        let retention = if r.keeps_everything() {
            "keep all".to_string()
        } else {
            [
                ("last", r.keep_last),
                ("h", r.keep_hourly),
                ("d", r.keep_daily),
                ("w", r.keep_weekly),
                ("m", r.keep_monthly),
            ]
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{n}{k}"))
            .collect::<Vec<_>>()
            .join(" ")
        };
        let regions: Vec<&str> = p.destinations.iter().map(|d| d.region.as_str()).collect();
        let _ = writeln!(
            out,
            "{:<16} {:<20} {:<14} {:<12} {:<18} {:<14}",
            p.name,
            p.clusters
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(","),
            p.schedule
                .as_ref()
                .map_or("on demand".to_string(), |s| s.to_string()),
            p.consistency.as_str(),
            format!("{} ({})", regions.join(","), p.min_regions),
            retention
        );
    }
    out
}

fn regions_cell(set: &BackupSet) -> String {
    set.regions
        .iter()
        .map(|(name, r)| format!("{name}:{}", r.state.as_str()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The catalog, a line per set.
pub fn sets(list: &[BackupSet]) -> String {
    let mut out = String::new();
    let mut grid = Grid::new(
        0,
        &[
            "BACKUP", "CLUSTER", "POLICY", "MODE", "STATE", "SHARDS", "REGIONS",
        ],
        &[false, false, false, false, false, true],
    );
    for s in list {
        grid.row(vec![
            s.backup_id.to_string(),
            s.cluster.to_string(),
            s.policy.clone(),
            s.consistency.as_str().to_string(),
            s.state.as_str().to_string(),
            s.shards.len().to_string(),
            regions_cell(s),
        ]);
    }
    grid.render(&mut out);
    out
}

/// `archive status`: one line per archived shard, then what holds shards up.
pub fn archives(rows: &[ArchiveRow]) -> String {
    let mut out = String::new();
    if rows.is_empty() {
        let _ = writeln!(
            out,
            "no shard is archived: give a policy an [archive] section (docs/archive.md)"
        );
        return out;
    }
    let now = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
    let mut grid = Grid::new(
        0,
        &[
            "CLUSTER",
            "SHARD",
            "JOB",
            "AGENT",
            "SOURCE",
            "STREAM",
            "LAG",
            "SEGMENTS",
            "GAPS",
            "RESTORABLE TO",
            "AT",
        ],
        &[
            false, false, true, false, false, false, true, true, true, false,
        ],
    );
    for r in rows {
        grid.row(vec![
            r.cluster.clone(),
            r.shard.clone(),
            r.job.map_or("-".into(), |j| j.to_string()),
            if r.agent.is_empty() {
                "-".into()
            } else {
                r.agent.clone()
            },
            if r.source.is_empty() {
                "-".into()
            } else {
                r.source.clone()
            },
            match (r.job, r.connected) {
                (None, _) => "-".into(),
                (Some(_), true) => "open".into(),
                (Some(_), false) => "LOST".into(),
            },
            r.lag_seconds.map_or("-".into(), |l| format!("{l:.1}s")),
            r.segments.to_string(),
            r.gaps.to_string(),
            r.restorable_until_ms.map_or("-".into(), |t| {
                format!("{} ago", age((now - t).max(0) as u64))
            }),
            if r.replid.is_empty() {
                "-".into()
            } else {
                format!("{}:{}", &r.replid[..r.replid.len().min(8)], r.offset)
            },
        ]);
    }
    grid.render(&mut out);
    // A cluster is restorable, every shard at once, up to its slowest shard's reach.
    let mut clusters: Vec<&str> = rows.iter().map(|r| r.cluster.as_str()).collect();
    clusters.dedup();
    for c in clusters {
        let shards: Vec<&ArchiveRow> = rows.iter().filter(|r| r.cluster == c).collect();
        let slowest = shards
            .iter()
            .min_by_key(|r| r.restorable_until_ms.unwrap_or(i64::MIN));
        let _ = match slowest {
            Some(r) if r.restorable_until_ms.is_some() => writeln!(
                out,
                "cluster {c}: every shard restorable to {} ago (the slowest: {})",
                age((now - r.restorable_until_ms.unwrap_or(now)).max(0) as u64),
                r.shard
            ),
            Some(r) => writeln!(
                out,
                "cluster {c}: not restorable as a whole yet ({} has no segment in every region)",
                r.shard
            ),
            None => Ok(()),
        };
    }
    catalog_lines(&mut out, rows, now);
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let _ = writeln!(out, "{}/{}: {}", r.cluster, r.shard, r.note);
    }
    out
}

/// What the replicated catalog says of each archived cluster: the stretches every shard can be
/// restored to at once, and the shards whose archive has gaps.
fn catalog_lines(out: &mut String, rows: &[ArchiveRow], now: i64) {
    use fleetsnap_core::archive;
    let when = |ms: i64| {
        fleetsnap_core::window::from_unix_ms(ms)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    let mut clusters: Vec<&str> = rows.iter().map(|r| r.cluster.as_str()).collect();
    clusters.dedup();
    for c in clusters {
        let shards: Vec<&ArchiveRow> = rows.iter().filter(|r| r.cluster == c).collect();
        let Some(read) = shards.iter().filter_map(|r| r.catalog_scanned_at_ms).max() else {
            continue;
        };
        // Each shard's stretches (its chains' spans merged); the cluster restores where all do.
        let stretches: Vec<Vec<(i64, i64)>> = shards
            .iter()
            .map(|r| {
                archive::merge_ranges(r.chains.iter().map(|c| (c.base_at_ms, c.end_ms)).collect())
            })
            .collect();
        let spans: Vec<String> = archive::intersect_ranges(&stretches)
            .iter()
            .map(|(a, b)| format!("{} … {}", when(*a), when(*b)))
            .collect();
        let _ = writeln!(
            out,
            "cluster {c}, in the catalog (the regions read {} ago): restorable as a whole in {}",
            age((now - read).max(0) as u64),
            if spans.is_empty() {
                "no stretch yet".to_string()
            } else {
                spans.join(", ")
            }
        );
        for (r, stretches) in shards.iter().zip(&stretches) {
            let gaps: Vec<String> = archive::gaps_between(stretches)
                .iter()
                .map(|(a, b)| format!("{} … {}", when(*a), when(*b)))
                .collect();
            if !gaps.is_empty() {
                let _ = writeln!(
                    out,
                    "  {}: {} chains; gaps (no restore inside): {}",
                    r.shard,
                    r.chains.len(),
                    gaps.join(", ")
                );
            }
        }
    }
}

/// One window: its shards with the chosen node and why, then its sets.
pub fn window(doc: &WindowDoc) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "window {} · backup {} · policy {} · {} · {}",
        doc.window,
        doc.backup_id,
        doc.policy,
        doc.consistency,
        if doc.done { "ended" } else { "running" }
    );
    if let Some(trace) = &doc.trace_id {
        let _ = writeln!(out, "trace {trace}");
    }
    let mut grid = Grid::new(0, &["CLUSTER", "SHARD", "STATE", "SOURCE", "WHY"], &[]);
    for s in &doc.shards {
        let (source, why) = match s.candidate() {
            Some(n) => (n.address.clone(), n.reason.clone()),
            None => (
                "-".into(),
                match &s.state {
                    ShardState::Failed { reason } => reason.clone(),
                    _ => s.plan.failure.clone().unwrap_or_default(),
                },
            ),
        };
        grid.row(vec![
            s.cluster.to_string(),
            s.plan.shard.clone(),
            s.state.as_str().to_string(),
            source,
            why,
        ]);
        let blank = || String::new();
        for f in &s.failures {
            grid.row(vec![
                blank(),
                blank(),
                blank(),
                blank(),
                format!("tried: {f}"),
            ]);
        }
        for n in s.plan.nodes.iter().filter(|n| n.rank.is_none()) {
            grid.row(vec![
                blank(),
                blank(),
                blank(),
                n.address.clone(),
                format!("passed over: {}", n.reason),
            ]);
        }
    }
    grid.render(&mut out);
    for (cluster, why) in &doc.missing {
        let _ = writeln!(
            out,
            "{:<12} {:<16} {:<9} {:<22} {}",
            cluster.as_str(),
            "-",
            "failed",
            "-",
            why
        );
    }
    if let Some(cut) = &doc.cut {
        let _ = writeln!(
            out,
            "\nconsistent cut: writes paused at most {:.2} ms on any primary ({:.2} ms from the first pause to the last release, at the leader)",
            cut.pause_us as f64 / 1000.0,
            cut.round_us as f64 / 1000.0
        );
        for (s, o) in doc.shards.iter().zip(&cut.offsets) {
            if let (Some((_, start)), Some((_, end))) = (&s.synced, o) {
                let _ = writeln!(
                    out,
                    "  {:<12} {:<16} RDB at offset {start}, tail to {end} ({} bytes of commands)",
                    s.cluster.as_str(),
                    s.plan.shard,
                    end.saturating_sub(*start)
                );
            }
        }
    }
    for f in &doc.cut_failures {
        let _ = writeln!(out, "cut attempt failed: {f}");
    }
    let _ = writeln!(out);
    out.push_str(&sets(&doc.sets));
    for s in &doc.sets {
        if let Some(r) = &s.reason {
            let _ = writeln!(out, "{}: {r}", s.cluster);
        }
        if let Some(skew) = s.skew_us {
            let _ = writeln!(
                out,
                "{}: start skew {:.2} ms",
                s.cluster,
                skew as f64 / 1000.0
            );
        }
        for (region, r) in &s.regions {
            if let Some(e) = &r.error {
                let _ = writeln!(out, "{} {region}: {e}", s.cluster);
            }
        }
    }
    out
}

/// Retention's decisions: one line per set.
pub fn prune(rows: &[PruneRow], dry_run: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:<24} {:<9} {:<8} WHY",
        "POLICY", "CLUSTER", "BACKUP", "STATE", "ACTION"
    );
    for d in rows {
        let (action, why) = match &d.decision {
            retention::Action::Keep { reasons } => ("keep", reasons.join(", ")),
            retention::Action::Locked { until } => {
                ("locked", format!("under Object Lock until {until}"))
            }
            retention::Action::Delete { reason } => ("delete", reason.clone()),
        };
        let note = match (d.job, &d.error) {
            (Some(j), _) => format!(" (deleting: job {j})"),
            (None, Some(e)) => format!(" (not started: {e})"),
            _ if action == "delete" && dry_run => " (dry run)".into(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:<24} {:<9} {:<8} {why}{note}",
            d.policy,
            d.cluster.as_str(),
            d.backup_id.as_str(),
            d.state.as_str(),
            action
        );
    }
    out
}

/// `fleetsnap archive find`: each command found, oldest first.
pub fn found(cluster: &str, found: &[serde_json::Value]) -> String {
    use std::fmt::Write;
    if found.is_empty() {
        return format!("no such command in the archive of {cluster} in that time\n");
    }
    let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or("-").to_string();
    let mut out = format!(
        "{:<29} {:<12} {:<64} command\n",
        "received", "shard", "before (for restore --before)"
    );
    for f in found {
        let _ = writeln!(
            out,
            "{:<29} {:<12} {:<64} {}",
            field(f, "time"),
            field(f, "shard"),
            field(f, "before"),
            field(f, "command")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_is_restorable_up_to_its_slowest_shard() {
        let now = fleetsnap_core::window::unix_ms(time::OffsetDateTime::now_utc());
        let row = |shard: &str, behind_ms: Option<i64>| ArchiveRow {
            cluster: "shop".into(),
            shard: shard.into(),
            job: Some(1),
            connected: true,
            restorable_until_ms: behind_ms.map(|b| now - b),
            ..Default::default()
        };
        let out = archives(&[
            row("a", Some(2_000)),
            row("b", Some(90_000)),
            row("c", Some(1_000)),
        ]);
        assert!(
            out.contains("cluster shop: every shard restorable to 90s ago")
                && out.contains("slowest: b"),
            "{out}"
        );
        let out = archives(&[row("a", Some(2_000)), row("b", None)]);
        assert!(out.contains("not restorable as a whole yet (b "), "{out}");
    }

    #[test]
    fn prune_says_why_each_set_stays_or_goes() {
        use fleetsnap_core::retention::{Action, SetState};
        let row = |id: &str, decision: Action, job: Option<u64>, error: Option<&str>| PruneRow {
            backup_id: id.parse().unwrap(),
            cluster: fleetsnap_core::ClusterId::new("orders").unwrap(),
            decision,
            error: error.map(str::to_string),
            job,
            policy: "hourly".into(),
            state: SetState::Complete,
        };
        let rows = [
            row(
                "20261205T010000Z-000001",
                Action::Keep {
                    reasons: vec!["newest".into(), "daily".into()],
                },
                None,
                None,
            ),
            row(
                "20261204T010000Z-000002",
                Action::Delete {
                    reason: "no rule keeps it".into(),
                },
                Some(42),
                None,
            ),
            row(
                "20261203T010000Z-000003",
                Action::Delete {
                    reason: "no rule keeps it".into(),
                },
                None,
                Some("no agent connected"),
            ),
            row(
                "20261202T010000Z-000004",
                Action::Locked {
                    until: "2026-12-09T00:00:00Z".into(),
                },
                None,
                None,
            ),
        ];
        let out = prune(&rows, false);
        let lines: Vec<&str> = out.lines().collect();
        assert!(
            lines[1].contains("keep") && lines[1].ends_with("newest, daily"),
            "{out}"
        );
        assert!(
            lines[2].ends_with("no rule keeps it (deleting: job 42)"),
            "{out}"
        );
        assert!(
            lines[3].ends_with("no rule keeps it (not started: no agent connected)"),
            "{out}"
        );
        assert!(
            lines[4].ends_with("under Object Lock until 2026-12-09T00:00:00Z"),
            "{out}"
        );
        let dry = prune(&rows[2..3], true);
        assert!(
            dry.lines().nth(1).unwrap().contains("(not started"),
            "{dry}"
        );
    }

    #[test]
    fn grids_fit_100_columns_and_wrap_the_last_column() {
        let mut g = Grid::new(2, &["NAME", "N", "NOTE"], &[false, true]);
        g.row(vec![
            "a".into(),
            "12345".into(),
            "word ".repeat(40).trim_end().into(),
        ]);
        let mut out = String::new();
        g.render(&mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "  NAME      N  NOTE");
        assert!(lines[1].starts_with("  a     12345  word word"), "{out}");
        assert!(lines.len() > 2, "{out}");
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH), "{out}");
        assert!(lines[2].starts_with(&" ".repeat(15)), "{out}");
    }
}
