//! A coordinator restarted on its data keeps its vote and applied state; a damaged database is a
//! clear error, not a panic and not a silent reset.

use fleetsnap_coordinator::raft::open;
use fleetsnap_coordinator::state::{Command, JobKind, JobState, SnapshotSpec};
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

fn entry(term: u64, index: u64, cmd: Command) -> Entry<fleetsnap_coordinator::TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

#[tokio::test]
async fn vote_and_applied_state_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.redb");
    {
        let (mut log, mut sm) = open(&path).unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        let r = sm
            .apply([
                entry(
                    4,
                    1,
                    Command::RegisterAgents {
                        agents: vec!["agent-1".into()],
                    },
                ),
                entry(
                    4,
                    2,
                    Command::CreateJob {
                        agent: "agent-1".into(),
                        job: JobKind::Snapshot(SnapshotSpec {
                            instance: "r1".into(),
                            ..Default::default()
                        }),
                    },
                ),
            ])
            .await
            .unwrap();
        assert_eq!(r[1].job, Some(1));
        // The running coordinator writes the applied state with each snapshot (and every few
        // hundred entries); entries past it are applied again from the log after a restart.
        use openraft::storage::RaftSnapshotBuilder;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
    }
    let (mut log, mut sm) = open(&path).unwrap();
    assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(4, 2)));
    let (last, _) = sm.applied_state().await.unwrap();
    assert_eq!(last.map(|l| l.index), Some(2));
    let state = sm.shared();
    let state = state.read().unwrap();
    let job = &state.state.jobs[&1];
    assert_eq!(
        (job.term, job.index, &job.state),
        (4, 2, &JobState::Pending)
    );
}

#[test]
fn a_damaged_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coordinator.redb");
    std::fs::write(&path, vec![0x5a; 8192]).unwrap();
    let e = open(&path)
        .err()
        .expect("a damaged file must not open")
        .to_string();
    assert!(
        e.contains(&path.display().to_string()) && e.contains("move it aside"),
        "{e}"
    );
}
