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
    print!("{}", r.text());
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
        "{}  {role}  {}  offset {}",
        r.address,
        if r.server.is_empty() {
            format!("redis {}", r.redis_version)
        } else {
            r.server.clone()
        },
        r.master_repl_offset
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
pub use fleetsnap_core::outcomes::human_bytes as human;

/// What a restore's `--at` or `--before` resolved to.
pub(super) fn print_point(p: &crate::archive::PointInTime) {
    let when = |ms: i64| {
        fleetsnap_core::window::from_unix_ms(ms)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    println!(
        "point in time: base {} (taken {}), then {} commands from {} archive segments up to offset {} of {}; the last command restored was received at {}",
        p.base.backup_id,
        when(p.base.at_ms),
        p.tail_commands,
        p.segments,
        p.offset,
        p.replid,
        when(p.stamp_ms)
    );
    for f in &p.fallbacks {
        println!("  {f}");
    }
    if !p.moving_slots.is_empty() {
        let slots = fleetsnap_core::topology::slot_ranges(&p.moving_slots);
        println!(
            "  slots {} were moving into this shard around the point (keys arrived by migration within {} s of it): restored beside other shards at their own points, such a key may be on two shards or none",
            fleetsnap_core::topology::format_slots(&slots),
            crate::archive::MOVING_WINDOW_MS / 1000
        );
    }
}

/// A restore's report as JSON, with its point in time when it has one.
pub(super) fn print_restore_json<T: serde::Serialize>(
    report: &T,
    point: Option<&crate::archive::PointInTime>,
) {
    match point {
        None => print_json(report),
        Some(p) => print_json(&serde_json::json!({ "point_in_time": p, "restore": report })),
    }
}
