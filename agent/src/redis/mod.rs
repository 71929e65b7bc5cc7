//! Talking to Redis and Valkey nodes: where a node is and how to log in (`redis://` and
//! `rediss://` URLs), one RESP connection type for commands and the replication stream, and the
//! INFO watch that makes an instance report.

mod resp;
mod target;
mod watch;

pub use resp::{Connection, Stream, Value, info_field, keyspace_keys, parse_info};
pub(crate) use resp::{decimal, encode, header, refusal_hint};
pub use target::{RedisTarget, TlsSettings, redacted};
pub use watch::collect;
