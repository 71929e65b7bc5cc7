//! Runbooks through `apply`: a restore's probe bounds and a promotion's findings.

use super::*;

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

/// A state with agent `a1` registered and runbook `rb` started; the runbook's id.
fn started(rb: Runbook) -> (FleetState, u64) {
    let mut s = FleetState::default();
    s.apply(
        1,
        1,
        &Command::RegisterAgents {
            agents: vec!["a1".into()],
        },
    );
    let id = s
        .apply(1, 2, &Command::StartRunbook { runbook: rb })
        .runbook
        .unwrap();
    (s, id)
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
    use fleetsnap_core::digest::DbDigest;
    use fleetsnap_core::outcomes::{OnlineReport, OnlineRestoreReport, OnlineShard, RestoreReport};
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
        let (mut s, id) = started(rb);
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
        let (mut s, id) = started(rb);
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
    // A step's report that is no promotion (a probe's) records nothing of one.
    let probe = CatalogTask::Probe(fleetsnap_core::window::ProbeTask {
        target: "redis://127.0.0.1:1".into(),
        want: fleetsnap_core::window::ProbeWant::Empty,
    });
    let rb = runbook("restore-cluster", vec![agent_step("probe", probe)]);
    let (mut s, id) = started(rb);
    let report_json = r#"{"target":"redis://127.0.0.1:1","cluster":false,"primaries":[],"keys":0,"min":0,"max":0}"#;
    run_step(
        &mut s,
        &mut 2,
        id,
        0,
        JobOutcome::Succeeded {
            backup_id: None,
            result: Some(JobResult::Step {
                report_json: report_json.into(),
            }),
        },
    );
    assert_eq!(s.runbooks[&id].state, RunbookState::Succeeded);
    assert!(
        s.runbooks[&id].findings.is_empty(),
        "{:?}",
        s.runbooks[&id].findings
    );
}
