//! Taking a snapshot: the sources of RDB bytes (the replication protocol, BGSAVE, a file), acting
//! at an instant, the agent's part of a consistent cut, and the pipeline that verifies,
//! compresses, encrypts and fans one read of the source out to every region.

mod cut;
mod instant;
mod open;
mod pipeline;
mod scan;
mod source;
mod tail;
mod take;

pub use cut::CutBook;
pub use instant::at_instant;
pub use open::{
    OpenedSource, Prepared, PreparedReplication, Resumed, SourceOptions, prepare, psync_from,
};
pub(crate) use pipeline::ChannelReader;
pub use pipeline::{
    DestOutcome, EncodeOptions, Encoded, Progress, encode_bytes, mb_per_s, parse_recipient,
    store_object,
};
pub use scan::NOT_POINT_IN_TIME;
pub use source::{ByteSource, CHUNK, SourceInfo, SourceKind};
pub use tail::{CutVerdict, TailStream};
pub use take::{
    ArchiveHandoff, CutHooks, DestReport, SnapshotReport, SnapshotRequest, StreamAfter, snapshot,
};
