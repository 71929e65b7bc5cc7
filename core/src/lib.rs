//! Pure domain types and algorithms of fleetsnap.
//!
//! Nothing here does I/O or knows about tokio, gRPC, Redis connections or S3: the agent and, later,
//! the coordinator build on these types and feed bytes to these algorithms.

pub mod archive;
pub mod codec;
pub mod digest;
pub mod ids;
pub mod keys;
pub mod manifest;
pub mod outcomes;
pub mod planner;
pub mod policy;
pub mod rdb;
pub mod rdbread;
pub mod rdbwrite;
pub mod records;
pub mod report;
pub mod resp;
pub mod retention;
pub mod schedule;
pub mod server;
pub mod topology;
pub mod window;

pub use codec::{Codec, CodecChain};
pub use ids::{BackupId, ClusterId, IdError, ShardId};
pub use manifest::{Manifest, ManifestError, ObjectEntry, ObjectKind, ShardEntry};
pub use rdb::{RdbError, RdbSummary, RdbVerifier, empty_rdb};
pub use report::{ConnectedReplica, InstanceReport, Role};
