//! The continuous archive (DESIGN §13): the archiver that follows a shard's replication stream
//! into segments in every region, and the reading side that finds commands in the archive and
//! builds the tail that restores a shard to a time.

mod archiver;
mod live;
mod local;
mod owners;
mod points;
mod read;
mod restore;
mod tail;
mod upkeep;

pub use archiver::{ArchiveRequest, ArchiveSummary, Gap, archive};
pub use live::{Live, LiveView, render_metrics};
pub use local::Position;
pub use points::{latest_point, mark, store_point};
pub use read::{
    Base, Chain, Found, PointInTime, Status, Target as TimeTarget, base_id, find, shards, status,
};
pub use restore::{ClusterRestored, ClusterTarget, PointSource, ShardRestored, point_target};
pub use tail::{ArchiveTail, MOVING_WINDOW_MS, TailPlan, plan};
pub use upkeep::{PruneReport, chain_end, prune};
