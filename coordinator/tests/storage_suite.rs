//! openraft's storage test suite against the redb-backed log and state machine.

use fleetsnap_coordinator::TypeConfig;
use fleetsnap_coordinator::raft::{LogStore, StateMachine, open};
use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (log, sm) = open(&dir.path().join("coordinator.redb")).expect("database opens");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}
