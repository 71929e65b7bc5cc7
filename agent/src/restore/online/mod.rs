//! Online restore: a verified RDB read key by key and sent with `RESTORE … ABSTTL` (or as
//! commands, into a server that cannot read the backup's RDB version) into a running
//! server (standalone, or a Redis Cluster of any shape, routed by slot), pipelined, then the tail
//! of a consistent cut replayed.

mod apply;
mod commands;
mod report;
mod tail;
mod target;

pub use apply::{check_databases, databases_in, restore_online};
pub use report::{KeepKey, OnlineOptions};
pub use tail::{count_commands, replay_tail_into};
pub(crate) use target::Target;
