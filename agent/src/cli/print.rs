//! What the command line prints: reports as text or JSON, sizes for people, and exit codes.

/// Exit code for a partial success.
pub const EXIT_PARTIAL: u8 = 3;

pub(super) fn print_json<T: serde::Serialize>(v: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("report serialises")
    );
}

/// A drill's outcome, for people.
pub fn print_drill(r: &crate::restore::DrillReport) {
    for (d, e) in &r.skipped {
        println!("skipped {d}: {e}");
    }
    println!(
        "drill of shard {} of backup {} from {}: {}",
        r.shard,
        r.backup_id,
        r.destination,
        if r.ok { "PASSED" } else { "FAILED" }
    );
    println!(
        "{:<4} {:>10} {:>10} {:>8} {:<14} {:<14}",
        "DB", "RECORDED", "SERVED", "EXPIRED", "DIGEST", "RECORDED"
    );
    for d in &r.dbs {
        println!(
            "{:<4} {:>10} {:>10} {:>8} {:<14} {:<14}",
            d.db,
            d.keys_recorded.map_or("-".into(), |k| k.to_string()),
            d.keys_served,
            d.keys_expired,
            &d.digest_found[..12.min(d.digest_found.len())],
            d.digest_recorded
                .as_deref()
                .map_or("-", |x| &x[..12.min(x.len())])
        );
    }
    println!(
        "RTO {:.2}s (fetch {:.2}s, load {:.2}s, {} tail commands); check {:.2}s; {} of RDB{}",
        r.rto_seconds,
        r.fetch_seconds,
        r.load_seconds,
        r.tail_commands,
        r.check_seconds,
        human(r.rdb_bytes),
        r.rpo_seconds
            .map(|s| format!("; backup age (RPO) {s:.0}s"))
            .unwrap_or_default()
    );
    if !r.digest_checked {
        println!(
            "note: the manifest records no digests (written before fleetsnap recorded them): only the copy's checksums were checked"
        );
    }
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
}

pub(super) fn print_report(r: &fleetsnap_core::InstanceReport) {
    if let Some(e) = &r.error {
        println!("{}  unreachable: {e}", r.address);
        return;
    }
    let role = match r.role {
        fleetsnap_core::Role::Primary => "primary",
        fleetsnap_core::Role::Replica => "replica",
        fleetsnap_core::Role::Unknown => "unknown",
    };
    println!(
        "{}  {role}  redis {}  offset {}",
        r.address, r.redis_version, r.master_repl_offset
    );
    if let (Some(p), Some(up)) = (&r.primary_address, r.link_up) {
        println!(
            "  primary {p}  link {}  behind {} B",
            if up { "up" } else { "DOWN" },
            r.lag_bytes().unwrap_or(0)
        );
    }
    for s in &r.replicas {
        println!(
            "  replica {}  {}  offset {}  lag {}s",
            s.address, s.state, s.offset, s.lag_seconds
        );
    }
    println!(
        "  memory {} of {}  bgsave {}  last save {}  aof {}",
        human(r.used_memory_bytes),
        if r.maxmemory_bytes == 0 {
            "no limit".to_string()
        } else {
            human(r.maxmemory_bytes)
        },
        if r.rdb_bgsave_in_progress {
            "running"
        } else if r.rdb_last_bgsave_ok {
            "ok"
        } else {
            "FAILED"
        },
        r.rdb_last_save_time,
        if r.aof_enabled { "on" } else { "off" }
    );
    if let Some(id) = &r.cluster_myid {
        let slots: Vec<String> = r
            .slots
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        println!(
            "  cluster node {id}  slots {}",
            if slots.is_empty() {
                "none".to_string()
            } else {
                slots.join(",")
            }
        );
    }
    match r.sync_allowed {
        Some(true) => println!("  sync allowed"),
        Some(false) => println!(
            "  sync NOT allowed: PSYNC is renamed or the agent's user may not run it (use --source bgsave-file)"
        ),
        None => println!("  sync permission unknown: the agent's user may not run ACL DRYRUN"),
    }
}

pub(super) fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Human-readable bytes (decimal units, as `MB/s`).
pub fn human(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}
