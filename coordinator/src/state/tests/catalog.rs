//! Catalog jobs through `apply`: each task and outcome, and what the set is after it.

use super::*;

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

/// A read of an archive's chains lands in the state; one read earlier than the one applied
/// (a slower job that finished later) changes nothing.
#[test]
fn archive_chains_land_in_the_state_newest_read_first() {
    let mut s = FleetState::default();
    s.apply(
        1,
        1,
        &Command::RegisterAgents {
            agents: vec!["a1".into()],
        },
    );
    let chain = |end_ms| fleetsnap_core::archive::ArchiveChain {
        base: "20261206T000000Z-aaaaaa".into(),
        base_at_ms: 1,
        base_offset: 0,
        replids: vec!["r".repeat(40)],
        end_offset: 100,
        end_ms,
    };
    let mut index = 2;
    let mut read = |s: &mut FleetState, scanned_at_ms: i64, end_ms: i64| {
        let spec = CatalogSpec {
            task: CatalogTask::Chains {
                cluster: cluster("c"),
                regions: vec![url("a")],
            },
            set: None,
            reason: "the archive catalog".into(),
            drill_of: None,
            trace: None,
        };
        let job = s
            .apply(
                1,
                index,
                &Command::CreateCatalogJob {
                    agent: "a1".into(),
                    spec,
                },
            )
            .job
            .unwrap();
        s.apply(
            1,
            index + 1,
            &Command::DispatchJob {
                job,
                incarnation: 1,
            },
        );
        let outcome = JobOutcome::Succeeded {
            result: Some(JobResult::Chains {
                scanned_at_ms,
                shards: [("s0".to_string(), vec![chain(end_ms)])].into(),
            }),
            backup_id: None,
        };
        s.apply(1, index + 2, &Command::FinishJob { job, outcome });
        index += 3;
    };
    read(&mut s, 50, 40);
    assert_eq!(s.archive["c"].scanned_at_ms, 50);
    assert_eq!(s.archive["c"].shards["s0"], vec![chain(40)]);
    read(&mut s, 30, 20);
    assert_eq!(
        s.archive["c"].shards["s0"],
        vec![chain(40)],
        "an older read"
    );
    read(&mut s, 70, 60);
    assert_eq!(s.archive["c"].shards["s0"], vec![chain(60)]);
}
