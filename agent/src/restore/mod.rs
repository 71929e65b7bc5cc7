//! Reading backups back: listing and verifying sets, restoring a shard to a file, into a running
//! server key by key (`online`), by replacing a stopped node's data file (`replace`), and drills
//! in scratch servers.

mod drill;
mod fetch;
mod online;
mod replace;

pub use drill::{DbCheck, DrillReport, DrillSettings, drill};
pub use fetch::{
    Checked, HeldBack, Listed, Listing, OnlineRestoreReport, OnlineShard, Output, Prepared,
    RestoreReport, RestoreRequest, VerifyReport, check_object, find_manifest, list,
    load_identities, prepare_stream, restore, restore_online, stream_rdb, verify, write_paced,
};
pub use online::{OnlineOptions, OnlineReport, ProbeReport, probe, replay_tail_into};
pub use replace::{ReplaceReport, ReplaceRequest, replace};
