//! Wire types to domain types and back, at the boundary.

use fleetsnap_core::InstanceReport;
use fleetsnap_core::report::{ConnectedReplica, Role};

use crate::v1;

/// Microseconds since the Unix epoch: `Report.sent_at_unix_us` on the agent, compared with the
/// same clock on the leader.
pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}

impl From<&InstanceReport> for v1::InstanceReport {
    fn from(r: &InstanceReport) -> Self {
        Self {
            name: r.name.clone(),
            address: r.address.clone(),
            reachable: r.reachable,
            error: r.error.clone(),
            role: match r.role {
                Role::Primary => "primary",
                Role::Replica => "replica",
                Role::Unknown => "unknown",
            }
            .to_string(),
            run_id: r.run_id.clone(),
            replid: r.replid.clone(),
            replid2: r.replid2.clone(),
            master_repl_offset: r.master_repl_offset,
            replica_offset: r.replica_offset,
            link_up: r.link_up,
            primary_address: r.primary_address.clone(),
            replicas: r
                .replicas
                .iter()
                .map(|c| v1::ConnectedReplica {
                    address: c.address.clone(),
                    offset: c.offset,
                    state: c.state.clone(),
                    lag_seconds: c.lag_seconds,
                })
                .collect(),
            loading: r.loading,
            rdb_bgsave_in_progress: r.rdb_bgsave_in_progress,
            rdb_last_bgsave_ok: r.rdb_last_bgsave_ok,
            rdb_changes_since_last_save: r.rdb_changes_since_last_save,
            rdb_last_save_time: r.rdb_last_save_time,
            aof_enabled: r.aof_enabled,
            aof_rewrite_in_progress: r.aof_rewrite_in_progress,
            aof_last_write_ok: r.aof_last_write_ok,
            used_memory_bytes: r.used_memory_bytes,
            maxmemory_bytes: r.maxmemory_bytes,
            total_system_memory_bytes: r.total_system_memory_bytes,
            cluster_myid: r.cluster_myid.clone(),
            slots: r
                .slots
                .iter()
                .map(|&(start, end)| v1::SlotRange {
                    start: start.into(),
                    end: end.into(),
                })
                .collect(),
            redis_version: r.redis_version.clone(),
            sync_allowed: r.sync_allowed,
            cluster: r.cluster.clone(),
            primary_last_io_seconds: r.primary_last_io_seconds,
            zone: r.zone.clone(),
            host_memory_available_bytes: r.host_memory_available_bytes,
            sentinel_master: r.sentinel_master.clone(),
        }
    }
}

impl From<v1::InstanceReport> for InstanceReport {
    fn from(r: v1::InstanceReport) -> Self {
        // Slot numbers outside 0..=16383 cannot come from a real node; clamp rather than wrap.
        let slot = |n: u32| n.min(16383) as u16;
        Self {
            name: r.name,
            address: r.address,
            cluster: r.cluster,
            zone: r.zone,
            sentinel_master: r.sentinel_master,
            host_memory_available_bytes: r.host_memory_available_bytes,
            reachable: r.reachable,
            error: r.error,
            role: match r.role.as_str() {
                "primary" => Role::Primary,
                "replica" => Role::Replica,
                _ => Role::Unknown,
            },
            run_id: r.run_id,
            replid: r.replid,
            replid2: r.replid2,
            master_repl_offset: r.master_repl_offset,
            replica_offset: r.replica_offset,
            link_up: r.link_up,
            primary_address: r.primary_address,
            primary_last_io_seconds: r.primary_last_io_seconds,
            replicas: r
                .replicas
                .into_iter()
                .map(|c| ConnectedReplica {
                    address: c.address,
                    offset: c.offset,
                    state: c.state,
                    lag_seconds: c.lag_seconds,
                })
                .collect(),
            loading: r.loading,
            rdb_bgsave_in_progress: r.rdb_bgsave_in_progress,
            rdb_last_bgsave_ok: r.rdb_last_bgsave_ok,
            rdb_changes_since_last_save: r.rdb_changes_since_last_save,
            rdb_last_save_time: r.rdb_last_save_time,
            aof_enabled: r.aof_enabled,
            aof_rewrite_in_progress: r.aof_rewrite_in_progress,
            aof_last_write_ok: r.aof_last_write_ok,
            used_memory_bytes: r.used_memory_bytes,
            maxmemory_bytes: r.maxmemory_bytes,
            total_system_memory_bytes: r.total_system_memory_bytes,
            redis_version: r.redis_version,
            cluster_myid: r.cluster_myid,
            slots: r
                .slots
                .into_iter()
                .map(|s| (slot(s.start), slot(s.end)))
                .collect(),
            sync_allowed: r.sync_allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_survives_the_wire() {
        let mut r = InstanceReport::from_info(
            "r1",
            "127.0.0.1:7000",
            &[
                ("role".into(), "master".into()),
                ("master_repl_offset".into(), "1234".into()),
                (
                    "slave0".into(),
                    "ip=127.0.0.1,port=7001,state=online,offset=1200,lag=1".into(),
                ),
            ],
        );
        r.cluster = "orders".into();
        r.zone = "eu-west-1b".into();
        r.host_memory_available_bytes = Some(3 << 30);
        r.slots = vec![(0, 5460), (10923, 10999)];
        r.cluster_myid = Some("abc".into());
        r.sync_allowed = Some(true);
        let wire = v1::InstanceReport::from(&r);
        assert_eq!(InstanceReport::from(wire), r);
    }
}
