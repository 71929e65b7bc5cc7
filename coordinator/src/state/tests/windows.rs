//! Windows through `apply`: candidates, retries, cuts, manifests and sets.

use super::*;

fn node(addr: &str, agent: &str, role: Role, lag: u64) -> NodeView {
    NodeView {
        name: addr.into(),
        address: addr.into(),
        agent: agent.into(),
        role,
        reachable: true,
        lag_bytes: (role == Role::Replica).then_some(lag),
        link: (role == Role::Replica).then(|| "up".into()),
        persistence: "ok".into(),
        sync_allowed: Some(true),
        ..Default::default()
    }
}

fn stored(shard: &str, regions: &[(&str, bool)]) -> JobOutcome {
    JobOutcome::Succeeded {
        backup_id: None,
        result: Some(JobResult::Shard(Box::new(ShardResult {
            entry: ShardEntry {
                shard: ShardId::new(shard).unwrap(),
                source_node: "x".into(),
                source_kind: "replication".into(),
                run_id: None,
                replid: None,
                start_offset: Some(1),
                cut_offset: None,
                rdb_version: 10,
                redis_version: None,
                server: None,
                slot_ranges: Vec::new(),
                dbs: Default::default(),
                objects: vec![fleetsnap_core::ObjectEntry {
                    kind: fleetsnap_core::ObjectKind::Rdb,
                    name: format!("{shard}.rdb"),
                    codecs: Default::default(),
                    raw_bytes: 5,
                    stored_bytes: 5,
                    sha256: "0".repeat(64),
                    crc64: None,
                }],
            },
            regions: regions
                .iter()
                .map(|(r, ok)| RegionResult {
                    region: r.to_string(),
                    ok: *ok,
                    error: (!ok).then(|| "disk full".into()),
                    stored_bytes: 10,
                })
                .collect(),
            started_at_ms: 1000,
            finished_at_ms: 2000,
            started_at_us: None,
        }))),
    }
}

#[test]
fn a_window_retries_the_next_candidate_then_writes_manifests_and_counts_regions() {
    let mut s = FleetState::default();
    s.apply(
        1,
        1,
        &Command::RegisterAgents {
            agents: vec!["a1".into(), "a2".into(), "a3".into()],
        },
    );
    let shard = |id: &str, nodes| ShardView {
        id: id.into(),
        nodes,
        ..Default::default()
    };
    let plans = vec![
        (
            cluster("c"),
            plan_shard(
                &shard(
                    "s1",
                    vec![
                        node("p1:1", "a1", Role::Primary, 0),
                        node("r1:1", "a2", Role::Replica, 5),
                        node("r2:1", "a3", Role::Replica, 9),
                    ],
                ),
                &Rules::default(),
            ),
        ),
        (
            cluster("c"),
            plan_shard(
                &shard("s2", vec![node("p2:1", "a1", Role::Primary, 0)]),
                &Rules::default(),
            ),
        ),
    ];
    let plan = WindowPlan {
        policy: policy(),
        backup_id: id(),
        opened_at_ms: 1,
        fire_at_ms: None,
        shards: plans,
        missing: Vec::new(),
        trace: None,
    };
    let w = s.apply(2, 2, &Command::OpenWindow { plan }).window.unwrap();
    let job_of = |s: &FleetState, i: usize| s.windows[&w].shards[i].job.unwrap();
    // The freshest replica first; the primary-only shard uses its primary (fallback).
    let j1 = job_of(&s, 0);
    assert_eq!(s.jobs[&j1].agent, "a2");
    let j2 = job_of(&s, 1);
    assert_eq!(s.jobs[&j2].agent, "a1");
    // The first candidate fails: the next one gets a new job.
    s.apply(
        2,
        3,
        &Command::FinishJob {
            job: j1,
            outcome: JobOutcome::Failed {
                reason: "connection refused".into(),
            },
        },
    );
    let j1b = job_of(&s, 0);
    assert_ne!(j1b, j1);
    assert_eq!(s.jobs[&j1b].agent, "a3");
    assert_eq!(
        s.windows[&w].shards[0].failures,
        vec!["r1:1: connection refused"]
    );
    s.apply(
        2,
        4,
        &Command::FinishJob {
            job: j1b,
            outcome: stored("s1", &[("a", true), ("b", true)]),
        },
    );
    assert!(s.windows[&w].manifest_jobs.is_empty());
    // Region b lost shard s2: the manifest goes to region a only.
    s.apply(
        2,
        5,
        &Command::FinishJob {
            job: j2,
            outcome: stored("s2", &[("a", true), ("b", false)]),
        },
    );
    let m = s.windows[&w].manifest_jobs[&cluster("c")];
    let JobKind::WriteManifest(spec) = &s.jobs[&m].kind else {
        panic!("not a manifest job")
    };
    assert_eq!(spec.regions, vec!["a"]);
    let manifest = Manifest::from_json(spec.manifest_json.as_bytes(), "test").unwrap();
    assert_eq!(manifest.shards.len(), 2);
    assert_eq!(manifest.policy.as_deref(), Some("p"));
    assert!(!s.windows[&w].done);
    s.apply(
        2,
        6,
        &Command::FinishJob {
            job: m,
            outcome: JobOutcome::Succeeded {
                backup_id: None,
                result: Some(JobResult::Manifest {
                    regions: vec![RegionResult {
                        region: "a".into(),
                        ok: true,
                        error: None,
                        stored_bytes: 100,
                    }],
                    finished_at_ms: Some(3000),
                }),
            },
        },
    );
    let set = &s.sets["c/20261121T100000Z-abcdef"];
    // One region of the two it asks for: degraded, never complete.
    assert_eq!(set.state, SetState::Degraded);
    assert_eq!(set.regions["a"].state, RegionState::Complete);
    assert_eq!(set.regions["b"].state, RegionState::Failed);
    assert!(
        set.regions["b"]
            .error
            .as_ref()
            .unwrap()
            .contains("disk full")
    );
    assert!(s.windows[&w].done);
}

#[test]
fn a_stream_broken_before_the_cut_reads_the_same_node_once_more() {
    let mut s = FleetState::default();
    s.apply(
        1,
        1,
        &Command::RegisterAgents {
            agents: vec!["a1".into(), "a2".into()],
        },
    );
    let mut p = policy();
    p.consistency = Consistency::Consistent;
    let shard = |id: &str, agent: &str| {
        plan_shard(
            &ShardView {
                id: id.into(),
                nodes: vec![node(&format!("{id}:1"), agent, Role::Replica, 0)],
                ..Default::default()
            },
            &Rules::default(),
        )
    };
    let plan = WindowPlan {
        policy: p,
        backup_id: id(),
        opened_at_ms: 1,
        fire_at_ms: None,
        shards: vec![
            (cluster("c"), shard("s1", "a1")),
            (cluster("c"), shard("s2", "a2")),
        ],
        missing: Vec::new(),
        trace: None,
    };
    let w = s.apply(2, 2, &Command::OpenWindow { plan }).window.unwrap();
    let jobs: Vec<u64> = s.windows[&w]
        .shards
        .iter()
        .map(|x| x.job.unwrap())
        .collect();
    let synced = |s: &mut FleetState, index: u64, job: u64, replid: &str| {
        s.apply(
            2,
            index,
            &Command::ShardSynced {
                job,
                replid: replid.into(),
                offset: 10,
            },
        );
    };
    synced(&mut s, 3, jobs[0], "old");
    synced(&mut s, 4, jobs[1], "old");
    // Shard s2 failed over: its stream broke (or the leader aborted it on finding its
    // primary on another history). The same node gets a new job; s1 keeps its own.
    let broken = |s: &mut FleetState, index: u64, job: u64| {
        s.apply(
            2,
            index,
            &Command::FinishJob {
                job,
                outcome: JobOutcome::Failed {
                    reason: "the shard failed over before the cut".into(),
                },
            },
        );
    };
    broken(&mut s, 5, jobs[1]);
    let win = &s.windows[&w];
    assert_eq!(win.shards[0].job, Some(jobs[0]));
    assert!(win.shards[0].synced.is_some());
    let again = win.shards[1].job.unwrap();
    assert_ne!(again, jobs[1]);
    assert_eq!(
        s.jobs[&again].agent, "a2",
        "the same node, on its new history"
    );
    assert_eq!(win.shards[1].synced, None);
    assert_eq!(win.shards[1].state, ShardState::Running);
    assert!(win.shards[1].read_again);
    assert!(win.shards[1].failures[0].contains("the same node once more"));
    // The old job's end, reported again, changes nothing.
    broken(&mut s, 6, jobs[1]);
    assert_eq!(s.windows[&w].shards[1].job, Some(again));
    assert_eq!(s.windows[&w].shards[1].state, ShardState::Running);
    // Once only: the second break moves on, and with no other candidate the shard fails.
    synced(&mut s, 7, again, "new");
    broken(&mut s, 8, again);
    assert!(matches!(
        s.windows[&w].shards[1].state,
        ShardState::Failed { .. }
    ));
}

#[test]
fn a_shard_with_no_candidate_fails_its_set_and_writes_no_manifest() {
    let mut s = FleetState::default();
    let mut down = node("r1:1", "a2", Role::Replica, 0);
    down.link = Some("down".into());
    let mut p = policy();
    p.allow_primary = fleetsnap_core::planner::AllowPrimary::Never;
    let plan = WindowPlan {
        shards: vec![(
            cluster("c"),
            plan_shard(
                &ShardView {
                    id: "s1".into(),
                    nodes: vec![node("p1:1", "a1", Role::Primary, 0), down],
                    ..Default::default()
                },
                &p.rules(),
            ),
        )],
        policy: p,
        backup_id: id(),
        opened_at_ms: 1,
        fire_at_ms: None,
        missing: vec![(cluster("d"), "no agent reports cluster d".into())],
        trace: None,
    };
    let w = s.apply(1, 1, &Command::OpenWindow { plan }).window.unwrap();
    assert!(s.windows[&w].done);
    assert!(s.jobs.is_empty());
    let set = &s.sets["c/20261121T100000Z-abcdef"];
    assert_eq!(set.state, SetState::Failed);
    assert!(
        set.reason
            .as_ref()
            .unwrap()
            .contains("link to the primary is down")
    );
    assert_eq!(s.sets["d/20261121T100000Z-abcdef"].state, SetState::Failed);
}
