//! `apply` alone: commands in, state out, one module per topic; the helpers they share are
//! here.

use fleetsnap_core::manifest::Manifest;
use fleetsnap_core::planner::{Rules, plan_shard};
use fleetsnap_core::policy::{Consistency, Policy};
use fleetsnap_core::report::Role;
use fleetsnap_core::retention::SetState;
use fleetsnap_core::topology::{NodeView, ShardView};
use fleetsnap_core::window::{CatalogTask, JobResult, RegionResult, RegionUrl, ShardResult};
use fleetsnap_core::{BackupId, ClusterId, ShardEntry, ShardId};

use super::*;

mod catalog;
mod runbooks;
mod windows;

fn cluster(name: &str) -> ClusterId {
    ClusterId::new(name).unwrap()
}

fn id() -> BackupId {
    "20261121T100000Z-abcdef".parse().unwrap()
}

fn policy() -> Policy {
    serde_json::from_value(serde_json::json!({
        "name": "p",
        "clusters": ["c"],
        "destinations": [
            {"region": "a", "url": "file:///a"},
            {"region": "b", "url": "file:///b"}
        ],
        "min_regions": 2
    }))
    .unwrap()
}

fn url(region: &str) -> RegionUrl {
    RegionUrl {
        region: region.into(),
        url: format!("file:///{region}"),
    }
}

// Jobs.

fn snapshot_job() -> JobKind {
    JobKind::Snapshot(SnapshotSpec {
        instance: "redis-1".into(),
        destinations: vec!["file:///b".into()],
        ..Default::default()
    })
}

#[test]
fn jobs_carry_their_fencing_token_and_run_once() {
    let mut s = FleetState::default();
    let r = s.apply(
        1,
        1,
        &Command::CreateJob {
            agent: "a1".into(),
            job: snapshot_job(),
        },
    );
    assert!(r.refused.unwrap().contains("not registered"));
    s.apply(
        1,
        2,
        &Command::RegisterAgents {
            agents: vec!["a1".into()],
        },
    );
    let id = s
        .apply(
            3,
            7,
            &Command::CreateJob {
                agent: "a1".into(),
                job: snapshot_job(),
            },
        )
        .job
        .unwrap();
    assert_eq!((s.jobs[&id].term, s.jobs[&id].index), (3, 7));
    let dispatch = |incarnation| Command::DispatchJob {
        job: id,
        incarnation,
    };
    assert_eq!(s.apply(3, 8, &dispatch(42)).refused, None);
    assert_eq!((s.jobs[&id].term, s.jobs[&id].index), (3, 8));
    // A new leader hands it again to the same agent process: the token moves on.
    assert_eq!(s.apply(4, 9, &dispatch(42)).refused, None);
    assert_eq!(
        (s.jobs[&id].term, s.jobs[&id].index, s.jobs[&id].dispatches),
        (4, 9, 2)
    );
    // Another run of the agent never gets it.
    assert!(
        s.apply(4, 10, &dispatch(43))
            .refused
            .unwrap()
            .contains("never runs twice")
    );
    let done = Command::FinishJob {
        job: id,
        outcome: JobOutcome::Succeeded {
            backup_id: None,
            result: None,
        },
    };
    assert_eq!(s.apply(3, 10, &done).refused, None);
    assert!(s.apply(3, 11, &done).refused.is_some());
}

#[test]
fn apply_is_deterministic() {
    let cmds = [
        Command::RegisterAgents {
            agents: vec!["a".into()],
        },
        Command::CreateJob {
            agent: "a".into(),
            job: snapshot_job(),
        },
        Command::DispatchJob {
            job: 1,
            incarnation: 9,
        },
    ];
    let (mut x, mut y) = (FleetState::default(), FleetState::default());
    for (i, c) in cmds.iter().enumerate() {
        assert_eq!(x.apply(2, i as u64, c), y.apply(2, i as u64, c));
    }
    assert_eq!(x, y);
}
