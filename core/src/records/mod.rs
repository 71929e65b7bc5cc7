//! The coordinator's records: jobs, windows, backup sets, catalog tasks and runbooks as the
//! replicated state machine holds them, and the documents the admin API builds from them.
//!
//! One type on both sides: the coordinator stores and serves these, the CLI reads them back
//! into the same types, so a field renamed here is renamed for both at compile time.

mod catalog;
mod docs;
mod job;
mod runbook;
mod set;
mod window;

pub use catalog::{CatalogSpec, Verified};
pub use docs::{AgentRow, ArchiveRow, DrillRow, PruneRow, StatusDoc, WindowDoc};
pub use job::{
    ArchiveSpec, Job, JobKind, JobOutcome, JobState, ManifestSpec, PointSpec, SnapshotSpec,
};
pub use runbook::{Action, Runbook, RunbookState, Step};
pub use set::{BackupSet, RegionState, RegionStatus, SetShard, set_key};
pub use window::{Cut, CutOutcome, ShardState, Window, WindowPlan, WindowShard};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::retention::SetState;

    /// The words tables print are the words the documents carry.
    #[test]
    fn state_words_are_their_serialised_names() {
        fn tag(v: serde_json::Value, key: &str) -> String {
            match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Object(m) => m[key].as_str().unwrap_or_default().to_string(),
                other => panic!("{other}"),
            }
        }
        fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
            serde_json::to_value(v).expect("serialises")
        }
        for s in [
            SetState::Running,
            SetState::Complete,
            SetState::Degraded,
            SetState::Failed,
        ] {
            assert_eq!(tag(json(&s), ""), s.as_str());
        }
        for s in [
            RegionState::Pending,
            RegionState::Complete,
            RegionState::Failed,
        ] {
            assert_eq!(tag(json(&s), ""), s.as_str());
        }
        for s in [
            ShardState::Running,
            ShardState::Failed { reason: "x".into() },
        ] {
            assert_eq!(tag(json(&s), "state"), s.as_str());
        }
        for s in [
            RunbookState::Running,
            RunbookState::Succeeded,
            RunbookState::Failed { reason: "x".into() },
        ] {
            assert_eq!(tag(json(&s), "state"), s.as_str());
        }
        for s in [
            JobState::Pending,
            JobState::Running { incarnation: 1 },
            JobState::Done(JobOutcome::Failed { reason: "x".into() }),
        ] {
            assert_eq!(tag(json(&s), "state"), s.as_str());
        }
    }
}
