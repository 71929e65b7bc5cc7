//! Wire types to domain types and back, at the boundary.

use fleetsnap_core::InstanceReport;
use fleetsnap_core::records::{JobKind, ManifestSpec, SnapshotSpec};
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
            server: r.server.clone(),
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
            server: r.server,
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

impl From<&SnapshotSpec> for v1::SnapshotJob {
    fn from(s: &SnapshotSpec) -> Self {
        Self {
            instance: s.instance.clone(),
            destinations: s.destinations.clone(),
            cluster: s.cluster.clone(),
            shard: s.shard.clone(),
            compress: s.compress.clone(),
            encrypt_to: s.encrypt_to.clone(),
            source: s.source.clone(),
            backup_id: s.backup_id.clone(),
            window: s.window.unwrap_or_default(),
            regions: s.regions.clone(),
            fire_at_unix_ms: s.fire_at_ms.unwrap_or_default(),
            consistent_cut: s.consistent_cut,
        }
    }
}

/// The wire's zeros are "not set": no window, no instant.
impl From<v1::SnapshotJob> for SnapshotSpec {
    fn from(s: v1::SnapshotJob) -> Self {
        Self {
            instance: s.instance,
            destinations: s.destinations,
            cluster: s.cluster,
            shard: s.shard,
            compress: s.compress,
            encrypt_to: s.encrypt_to,
            source: s.source,
            backup_id: s.backup_id,
            window: (s.window > 0).then_some(s.window),
            regions: s.regions,
            fire_at_ms: (s.fire_at_unix_ms > 0).then_some(s.fire_at_unix_ms),
            consistent_cut: s.consistent_cut,
        }
    }
}

impl From<&ManifestSpec> for v1::WriteManifestJob {
    fn from(m: &ManifestSpec) -> Self {
        Self {
            destinations: m.destinations.clone(),
            regions: m.regions.clone(),
            cluster: m.cluster.to_string(),
            backup_id: m.backup_id.to_string(),
            manifest_json: m.manifest_json.clone(),
        }
    }
}

impl From<&JobKind> for v1::job::Kind {
    fn from(kind: &JobKind) -> Self {
        match kind {
            JobKind::Snapshot(s) => v1::job::Kind::Snapshot(s.into()),
            JobKind::Catalog(c) => v1::job::Kind::Catalog(v1::CatalogJob {
                task_json: serde_json::to_string(&c.task).expect("tasks serialise"),
            }),
            JobKind::WriteManifest(m) => v1::job::Kind::Manifest(m.into()),
            JobKind::Archive(a) => v1::job::Kind::Archive(v1::ArchiveJob {
                spec_json: serde_json::to_string(a).expect("specs serialise"),
            }),
            JobKind::StorePoint(p) => v1::job::Kind::ExactPoint(v1::ExactPointJob {
                spec_json: serde_json::to_string(p).expect("specs serialise"),
            }),
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

    #[test]
    fn a_snapshot_spec_survives_the_wire() {
        let spec = SnapshotSpec {
            instance: "r1".into(),
            destinations: vec!["file:///a".into(), "file:///b".into()],
            cluster: "orders".into(),
            shard: "s0".into(),
            compress: "zstd:3".into(),
            encrypt_to: vec!["age1x".into()],
            source: "replication".into(),
            backup_id: "20261205T000000Z-0001".into(),
            window: Some(7),
            regions: vec!["a".into(), "b".into()],
            fire_at_ms: Some(1_764_892_800_000),
            consistent_cut: true,
        };
        assert_eq!(SnapshotSpec::from(v1::SnapshotJob::from(&spec)), spec);
        let one_shot = SnapshotSpec {
            window: None,
            fire_at_ms: None,
            ..spec
        };
        let wire = v1::SnapshotJob::from(&one_shot);
        assert_eq!((wire.window, wire.fire_at_unix_ms), (0, 0));
        assert_eq!(SnapshotSpec::from(wire), one_shot);
    }
}
