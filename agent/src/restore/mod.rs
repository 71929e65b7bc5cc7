//! Reading backups back: listing and verifying sets, restoring a shard to a file, into a running
//! server key by key (`online`, one shard; `set`, a whole set), by replacing a stopped node's
//! data file (`replace`), and drills in scratch servers.

mod drill;
mod feed;
mod list;
mod online;
mod replace;
mod set;
mod to_file;
mod verify;

pub use drill::{DrillSettings, drill};
pub use fleetsnap_core::outcomes::{
    DbCheck, DrillReport, OnlineReport, OnlineRestoreReport, OnlineShard, ReplaceReport,
    RestoreReport,
};
pub use list::{Listed, Listing, find_manifest, list};
pub(crate) use online::Target;
pub use online::{KeepKey, OnlineOptions, replay_tail_into};
pub use replace::{ReplaceRequest, replace};
pub use set::restore_online;
pub(crate) use to_file::with_suffix;
pub use to_file::{Prepared, RestoreRequest, prepare_stream, restore, stream_rdb};
pub use verify::{
    Checked, HeldBack, Output, VerifyReport, check_object, decode_bytes, load_identities, verify,
    write_paced,
};
