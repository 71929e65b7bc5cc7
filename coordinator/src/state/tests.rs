//! `apply` alone: commands in, state out.

use fleetsnap_core::manifest::Manifest;
use fleetsnap_core::planner::{Rules, plan_shard};
use fleetsnap_core::policy::{Consistency, Policy};
use fleetsnap_core::report::Role;
use fleetsnap_core::retention::SetState;
use fleetsnap_core::topology::{NodeView, ShardView};
use fleetsnap_core::window::{CatalogTask, JobResult, RegionResult, RegionUrl, ShardResult};
use fleetsnap_core::{BackupId, ClusterId, ShardEntry, ShardId};

use super::*;

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

// Windows.

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

// Catalog jobs.

/// A set of cluster `c` held whole in region `a` and failed in `b`, `min_regions` 2: degraded.
fn degraded_set(s: &mut FleetState) -> String {
    let region = |state, error: Option<&str>| RegionStatus {
        state,
        error: error.map(str::to_string),
        stored_bytes: 10,
        url: String::new(),
    };
    let set = BackupSet {
        backup_id: id(),
        cluster: cluster("c"),
        policy: "p".into(),
        window: 1,
        consistency: Consistency::Independent,
        opened_at_ms: 0,
        skew_us: None,
        write_pause_us: None,
        completed_at_ms: Some(1),
        shards: Vec::new(),
        regions: [
            ("a".to_string(), region(RegionState::Complete, None)),
            ("b".to_string(), region(RegionState::Failed, Some("down"))),
        ]
        .into(),
        min_regions: 2,
        state: SetState::Degraded,
        reason: None,
        task: None,
        deleting: None,
        verified: None,
    };
    let key = set.key();
    s.sets.insert(key.clone(), set);
    key
}

fn url(region: &str) -> RegionUrl {
    RegionUrl {
        region: region.into(),
        url: format!("file:///{region}"),
    }
}

fn regions_result(results: &[(&str, bool)]) -> JobOutcome {
    JobOutcome::Succeeded {
        backup_id: None,
        result: Some(JobResult::Regions {
            regions: results
                .iter()
                .map(|(r, ok)| RegionResult {
                    region: r.to_string(),
                    ok: *ok,
                    error: (!ok).then(|| "broken".to_string()),
                    stored_bytes: 10,
                })
                .collect(),
        }),
    }
}

/// Catalog jobs through `apply` alone: each task and outcome, and what the set is after it
/// (`None`: the set left the catalog).
#[test]
fn catalog_jobs_fold_their_results_into_the_set() {
    let repair = CatalogTask::Repair {
        cluster: cluster("c"),
        backup_id: id(),
        from: url("a"),
        to: vec![url("b")],
    };
    let verify = CatalogTask::Verify {
        cluster: cluster("c"),
        backup_id: id(),
        regions: vec![url("a"), url("b")],
    };
    let delete = CatalogTask::Delete {
        cluster: cluster("c"),
        backup_id: id(),
        regions: vec![url("a"), url("b")],
    };
    let failed = || JobOutcome::Failed {
        reason: "agent lost".into(),
    };
    type Want = Option<(SetState, RegionState, RegionState)>;
    let rows: Vec<(&str, CatalogTask, JobOutcome, Want)> = vec![
        (
            "a repair that copied to b completes the set",
            repair.clone(),
            regions_result(&[("b", true)]),
            Some((
                SetState::Complete,
                RegionState::Complete,
                RegionState::Complete,
            )),
        ),
        (
            "a failed repair leaves it degraded",
            repair.clone(),
            failed(),
            Some((
                SetState::Degraded,
                RegionState::Complete,
                RegionState::Failed,
            )),
        ),
        (
            "a verification that finds a broken copy fails that region",
            verify.clone(),
            regions_result(&[("a", false), ("b", false)]),
            Some((SetState::Failed, RegionState::Failed, RegionState::Failed)),
        ),
        (
            "a verification that finds every copy whole changes nothing",
            verify,
            regions_result(&[("a", true)]),
            Some((
                SetState::Degraded,
                RegionState::Complete,
                RegionState::Failed,
            )),
        ),
        (
            "a deletion done everywhere removes the set",
            delete.clone(),
            regions_result(&[("a", true), ("b", true)]),
            None,
        ),
        (
            "a deletion left unfinished in b keeps the set with b only",
            delete,
            regions_result(&[("a", true), ("b", false)]),
            Some((SetState::Degraded, RegionState::Failed, RegionState::Failed)),
        ),
    ];
    for (what, task, outcome, want) in rows {
        let mut s = FleetState::default();
        s.apply(
            1,
            1,
            &Command::RegisterAgents {
                agents: vec!["a1".into()],
            },
        );
        let key = degraded_set(&mut s);
        let spec = CatalogSpec {
            task,
            set: Some(key.clone()),
            reason: what.into(),
            drill_of: None,
            trace: None,
        };
        let create = Command::CreateCatalogJob {
            agent: "a1".into(),
            spec: spec.clone(),
        };
        let job = s.apply(1, 2, &create).job.expect(what);
        assert_eq!(s.sets[&key].task, Some(job), "{what}");
        // One task at a time per set.
        let busy = s.apply(1, 3, &create).refused.unwrap_or_default();
        assert!(busy.contains("busy"), "{what}: {busy}");
        s.apply(
            1,
            4,
            &Command::DispatchJob {
                job,
                incarnation: 1,
            },
        );
        s.apply(1, 5, &Command::FinishJob { job, outcome });
        let got = s.sets.get(&key).map(|set| {
            let state = |r: &str| set.regions.get(r).map_or(RegionState::Failed, |r| r.state);
            (set.state, state("a"), state("b"))
        });
        assert_eq!(got, want, "{what}");
        if let Some(set) = s.sets.get(&key) {
            assert_eq!(set.task, None, "{what}: the set is free again");
        }
    }
    // A set that does not exist, or an agent that is not registered, is refused.
    let mut s = FleetState::default();
    let spec = CatalogSpec {
        task: CatalogTask::Scan {
            regions: vec![url("a")],
        },
        set: Some("c/none".into()),
        reason: String::new(),
        drill_of: None,
        trace: None,
    };
    let create = |agent: &str| Command::CreateCatalogJob {
        agent: agent.into(),
        spec: spec.clone(),
    };
    assert!(
        s.apply(1, 1, &create("a1"))
            .refused
            .unwrap()
            .contains("not registered")
    );
    s.apply(
        1,
        2,
        &Command::RegisterAgents {
            agents: vec!["a1".into()],
        },
    );
    assert!(
        s.apply(1, 3, &create("a1"))
            .refused
            .unwrap()
            .contains("no set")
    );
}

// Runbooks.

fn agent_step(title: &str, task: CatalogTask) -> Step {
    Step {
        title: title.into(),
        action: Action::Agent {
            agent: "a1".into(),
            task,
        },
        job: None,
        outcome: None,
        ok: None,
    }
}

fn runbook(name: &str, steps: Vec<Step>) -> Runbook {
    Runbook {
        id: 0,
        name: name.into(),
        args: String::new(),
        steps,
        next: 0,
        state: RunbookState::Running,
        started_at_ms: 0,
        findings: Default::default(),
        trace: None,
    }
}

/// Runs step `step` of runbook `id` as a job that ends with `outcome`; the job's id.
fn run_step(s: &mut FleetState, index: &mut u64, id: u64, step: usize, outcome: JobOutcome) -> u64 {
    *index += 1;
    let r = s.apply(1, *index, &Command::RunbookStep { runbook: id, step });
    let job = r
        .job
        .unwrap_or_else(|| panic!("step {step}: {:?}", r.refused));
    *index += 1;
    s.apply(1, *index, &Command::FinishJob { job, outcome });
    job
}

/// `restore-cluster` through `apply` alone: the probe after the restore takes its key bounds
/// from the restore's report (exactly the keys restored, less those with an expiry; anything
/// after a replayed tail), and a report it cannot read fails the step.
#[test]
fn a_probe_after_a_restore_checks_the_keys_the_report_names() {
    use fleetsnap_core::outcomes::{OnlineReport, OnlineRestoreReport, OnlineShard, RestoreReport};
    use fleetsnap_core::rdbread::DbDigest;
    use fleetsnap_core::window::{ProbeTask, ProbeWant, RestoreMode, RestoreTask};

    let report = |keys: u64, expires: u64, tail: u64| {
        let shard = OnlineShard {
            read: RestoreReport {
                destination: "a".into(),
                dbs: Some(vec![DbDigest {
                    db: 0,
                    keys,
                    expires,
                    digest: String::new(),
                }]),
                ..Default::default()
            },
            applied: OnlineReport {
                keys,
                tail_commands: tail,
                ..Default::default()
            },
        };
        serde_json::to_string(&OnlineRestoreReport {
            shards: vec![shard],
            keys,
            ..Default::default()
        })
        .unwrap()
    };
    let rows: Vec<(&str, String, Option<ProbeWant>)> = vec![
        (
            "keys with an expiry may lapse",
            report(100, 10, 0),
            Some(ProbeWant::Keys { min: 90, max: 100 }),
        ),
        (
            "no expiry: exactly",
            report(7, 0, 0),
            Some(ProbeWant::Keys { min: 7, max: 7 }),
        ),
        (
            "a replayed tail may add or delete any key",
            report(100, 0, 3),
            Some(ProbeWant::Keys {
                min: 0,
                max: u64::MAX,
            }),
        ),
        ("a report that is no restore's", "not json".into(), None),
    ];
    for (what, report_json, want) in rows {
        let mut s = FleetState::default();
        s.apply(
            1,
            1,
            &Command::RegisterAgents {
                agents: vec!["a1".into()],
            },
        );
        let restore = CatalogTask::Restore(Box::new(RestoreTask {
            cluster: cluster("c"),
            backup_id: id(),
            regions: vec![url("a")],
            shard: None,
            db: None,
            pattern: None,
            mode: RestoreMode::Online {
                target: "redis://127.0.0.1:1".into(),
                replace_existing: false,
            },
            taken_at_ms: None,
        }));
        let probe = CatalogTask::Probe(ProbeTask {
            target: "redis://127.0.0.1:1".into(),
            want: ProbeWant::Restored,
        });
        let rb = runbook(
            "restore-cluster",
            vec![agent_step("restore", restore), agent_step("probe", probe)],
        );
        let id = s
            .apply(1, 2, &Command::StartRunbook { runbook: rb })
            .runbook
            .unwrap();
        let mut index = 2;
        run_step(
            &mut s,
            &mut index,
            id,
            0,
            JobOutcome::Succeeded {
                backup_id: None,
                result: Some(JobResult::Restored {
                    ok: true,
                    problem: None,
                    report_json,
                }),
            },
        );
        assert_eq!(s.runbooks[&id].next, 1, "{what}");
        index += 1;
        let r = s.apply(
            1,
            index,
            &Command::RunbookStep {
                runbook: id,
                step: 1,
            },
        );
        match want {
            Some(want) => {
                let job = r.job.expect(what);
                let JobKind::Catalog(spec) = &s.jobs[&job].kind else {
                    panic!("{what}: not a catalog job")
                };
                let CatalogTask::Probe(p) = &spec.task else {
                    panic!("{what}: not a probe")
                };
                assert_eq!(p.want, want, "{what}");
            }
            None => {
                assert!(r.refused.is_some(), "{what}");
                assert!(
                    matches!(&s.runbooks[&id].state, RunbookState::Failed { reason } if reason.contains("no restore report")),
                    "{what}: {:?}",
                    s.runbooks[&id].state
                );
            }
        }
    }
}

/// A failover's promotion through `apply` alone: the offset promoted, and what was lost (none
/// when graceful; the dead primary's last offset less the promoted one when forced).
#[test]
fn a_promotion_records_its_offset_and_what_was_lost() {
    use fleetsnap_core::outcomes::PromoteReport;
    use fleetsnap_core::window::{NodeOp, NodeTask};

    let rows: Vec<(&str, bool, Option<&str>, &str)> = vec![
        ("graceful: nothing lost", true, Some("1000"), "0"),
        (
            "forced: the primary's last offset less the promoted one",
            false,
            Some("1000"),
            "100",
        ),
        (
            "forced, the primary's last offset unknown",
            false,
            None,
            "-",
        ),
    ];
    for (what, graceful, last, lost) in rows {
        let mut s = FleetState::default();
        s.apply(
            1,
            1,
            &Command::RegisterAgents {
                agents: vec!["a1".into()],
            },
        );
        let promote = CatalogTask::Node(NodeTask {
            instance: "r1".into(),
            op: NodeOp::Promote {
                primary: None,
                others: Vec::new(),
                cluster: false,
                pause_ms: 100,
            },
        });
        let mut rb = runbook("failover", vec![agent_step("promote", promote)]);
        if let Some(last) = last {
            rb.findings
                .insert("primary_last_offset".into(), last.into());
        }
        let id = s
            .apply(1, 2, &Command::StartRunbook { runbook: rb })
            .runbook
            .unwrap();
        let report_json = serde_json::to_string(&PromoteReport {
            promoted: "127.0.0.1:2".into(),
            graceful,
            offset: 900,
            ..Default::default()
        })
        .unwrap();
        let mut index = 2;
        run_step(
            &mut s,
            &mut index,
            id,
            0,
            JobOutcome::Succeeded {
                backup_id: None,
                result: Some(JobResult::Step { report_json }),
            },
        );
        let r = &s.runbooks[&id];
        assert_eq!(r.state, RunbookState::Succeeded, "{what}");
        assert_eq!(r.findings["promoted_offset"], "900", "{what}");
        assert_eq!(
            r.findings.get("lost_bytes").map_or("-", String::as_str),
            lost,
            "{what}"
        );
    }
}
