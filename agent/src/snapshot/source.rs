//! Where snapshot bytes come from: one object's bytes, read in chunks from a replication
//! payload (with or without a length), a consistent cut's tail, files or memory.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::error::{Error, Result};
use crate::redis::Connection;

pub use super::tail::CHUNK;
use super::tail::TailStream;

/// Length of the end mark of a diskless (`$EOF:`) payload.
pub(super) const EOF_MARK_LEN: usize = 40;

/// Which source to snapshot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// The replication protocol (`PSYNC`), like a replica would.
    Replication,
    /// `BGSAVE`, then read the RDB file the node wrote (the agent must run on the node's host).
    BgsaveFile,
    /// An RDB file, or a Redis 7 multi-part AOF directory.
    File(PathBuf),
    /// Every key read with `SCAN`, `DUMP` and `PTTL`, written as an RDB (servers that refuse
    /// `SYNC`, `PSYNC` and `BGSAVE`): each key consistent, the set not one point in time.
    Scan,
    /// Replication, or a scan where the node refuses replication (a managed service), said so.
    Auto,
}

impl FromStr for SourceKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "replication" => Ok(Self::Replication),
            "bgsave-file" => Ok(Self::BgsaveFile),
            "scan" => Ok(Self::Scan),
            "auto" => Ok(Self::Auto),
            _ => match s.strip_prefix("file:") {
                Some(p) if !p.is_empty() => Ok(Self::File(PathBuf::from(p))),
                _ => Err(Error::Input(format!(
                    "source {s:?} is not valid: use replication, bgsave-file, scan, auto or file:PATH"
                ))),
            },
        }
    }
}

impl SourceKind {
    /// The name recorded in manifests.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Replication => "replication",
            Self::BgsaveFile => "bgsave-file",
            Self::File(_) => "file",
            Self::Scan => "scan",
            Self::Auto => "auto",
        }
    }
}

/// What is known about the node or file a snapshot came from.
#[derive(Clone, Debug, Default)]
pub struct SourceInfo {
    /// `host:port` or the file path.
    pub node: String,
    /// The node's run id.
    pub run_id: Option<String>,
    /// The replication id announced with `+FULLRESYNC`.
    pub replid: Option<String>,
    /// The offset announced with `+FULLRESYNC`.
    pub offset: Option<u64>,
    /// `redis_version` from `INFO server`.
    pub redis_version: Option<String>,
    /// The server and its own version (`valkey 8.1.8`), from `INFO server`.
    pub server: Option<String>,
    /// Notes worth telling the operator (e.g. a reused BGSAVE).
    pub notes: Vec<String>,
    /// The source read, where it is not the one asked for (`auto` that scanned).
    pub kind: Option<&'static str>,
}

/// One object's bytes, read in chunks.
pub enum ByteSource {
    /// A replication payload of known length.
    ReplicationLen {
        conn: Connection,
        remaining: u64,
        total: u64,
        idle: Duration,
        /// Stream bytes read past the payload (kept for the tail).
        extra: BytesMut,
        /// The payload's first bytes (its aux fields).
        head: Vec<u8>,
    },
    /// A diskless replication payload that ends with a 40-byte mark.
    ReplicationMark {
        conn: Connection,
        mark: Vec<u8>,
        hold: Vec<u8>,
        done: bool,
        idle: Duration,
        /// See `ReplicationLen`.
        head: Vec<u8>,
    },
    /// The replication stream after the RDB, up to the cut offset (consistent cuts).
    Tail(Box<TailStream>),
    /// Files read one after the other.
    Files {
        files: Vec<PathBuf>,
        current: Option<tokio::fs::File>,
    },
    /// Bytes in memory.
    Memory(Option<Bytes>),
    /// An RDB written from `SCAN`, `DUMP` and `PTTL` as it goes.
    Scan(Box<super::scan::ScanStream>),
}

impl ByteSource {
    /// The next chunk; `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self {
            ByteSource::ReplicationLen {
                conn,
                remaining,
                total,
                idle,
                extra,
                head,
            } => {
                if *remaining == 0 {
                    return Ok(None);
                }
                let mut buf = BytesMut::with_capacity(CHUNK.min(*remaining as usize));
                let mut n = read_with_idle(conn, &mut buf, *idle).await?;
                if n as u64 > *remaining {
                    *extra = buf.split_off(*remaining as usize);
                    n = *remaining as usize;
                }
                keep_head(head, &buf);
                if n == 0 {
                    return Err(Error::redis(
                        conn.target(),
                        format!(
                            "the node closed the connection after {} of {} snapshot bytes: check its log (restart, output-buffer limit for replicas, repl-timeout)",
                            *total - *remaining,
                            total
                        ),
                    ));
                }
                *remaining -= n as u64;
                Ok(Some(buf.freeze()))
            }
            ByteSource::ReplicationMark {
                conn,
                mark,
                hold,
                done,
                idle,
                head,
            } => {
                if *done {
                    return Ok(None);
                }
                loop {
                    // The last 40 bytes seen are held back: they may be the end mark.
                    let mut data = BytesMut::with_capacity(CHUNK + EOF_MARK_LEN);
                    data.extend_from_slice(hold);
                    hold.clear();
                    let n = read_with_idle(conn, &mut data, *idle).await?;
                    if n == 0 {
                        return Err(Error::redis(
                            conn.target(),
                            "the node closed the connection before the end of the snapshot: check its log (restart, output-buffer limit for replicas, repl-timeout)",
                        ));
                    }
                    if data.len() >= EOF_MARK_LEN && data[data.len() - EOF_MARK_LEN..] == mark[..] {
                        data.truncate(data.len() - EOF_MARK_LEN);
                        *done = true;
                        keep_head(head, &data);
                        return Ok(Some(data.freeze()));
                    }
                    if data.len() > EOF_MARK_LEN {
                        *hold = data.split_off(data.len() - EOF_MARK_LEN).to_vec();
                        keep_head(head, &data);
                        return Ok(Some(data.freeze()));
                    }
                    *hold = data.to_vec();
                }
            }
            ByteSource::Scan(s) => s.next_chunk().await,
            ByteSource::Files { files, current } => loop {
                if current.is_none() {
                    if files.is_empty() {
                        return Ok(None);
                    }
                    let path = files.remove(0);
                    let f = tokio::fs::File::open(&path)
                        .await
                        .map_err(|e| Error::file("cannot open", &path, e))?;
                    *current = Some(f);
                }
                let f = current.as_mut().expect("opened");
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = f
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| Error::file("cannot read", "source file", e))?;
                if n == 0 {
                    *current = None;
                    continue;
                }
                return Ok(Some(buf.freeze()));
            },
            ByteSource::Memory(b) => Ok(b.take()),
            ByteSource::Tail(t) => t.next_chunk().await,
        }
    }

    /// After a replication payload was read to its end: the connection, the stream bytes already
    /// read past the payload, and the payload's first bytes.
    pub fn into_stream(self) -> Option<(Connection, BytesMut, Vec<u8>)> {
        match self {
            ByteSource::ReplicationLen {
                conn,
                remaining: 0,
                extra,
                head,
                ..
            } => Some((conn, extra, head)),
            ByteSource::ReplicationMark {
                conn,
                done: true,
                head,
                ..
            } => Some((conn, BytesMut::new(), head)),
            _ => None,
        }
    }
}

/// How many of an RDB's first bytes are kept to read its aux fields.
const HEAD_LEN: usize = 4096;

fn keep_head(head: &mut Vec<u8>, data: &[u8]) {
    if head.len() < HEAD_LEN {
        let n = (HEAD_LEN - head.len()).min(data.len());
        head.extend_from_slice(&data[..n]);
    }
}

async fn read_with_idle(
    conn: &mut Connection,
    buf: &mut BytesMut,
    idle: Duration,
) -> Result<usize> {
    let want = buf.capacity();
    match tokio::time::timeout(idle, conn.read_some_more(buf, want)).await {
        Ok(r) => r,
        Err(_) => Err(Error::redis(
            conn.target(),
            format!(
                "no snapshot data for {}s: the node stalled; check its load and log",
                idle.as_secs()
            ),
        )),
    }
}

impl ByteSource {
    /// Total bytes, when known in advance.
    pub async fn total(&mut self) -> Option<u64> {
        match self {
            ByteSource::ReplicationLen { total, .. } => Some(*total),
            ByteSource::ReplicationMark { .. } => None,
            ByteSource::Files { files, current } => {
                let mut n = match current {
                    Some(f) => f.metadata().await.ok()?.len(),
                    None => 0,
                };
                for f in files {
                    n += tokio::fs::metadata(f).await.ok()?.len();
                }
                Some(n)
            }
            ByteSource::Memory(b) => b.as_ref().map(|b| b.len() as u64),
            ByteSource::Tail(_) | ByteSource::Scan(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_kinds_parse() {
        assert_eq!(
            "replication".parse::<SourceKind>().unwrap(),
            SourceKind::Replication
        );
        assert_eq!(
            "file:/x/dump.rdb".parse::<SourceKind>().unwrap(),
            SourceKind::File("/x/dump.rdb".into())
        );
        assert!("file:".parse::<SourceKind>().is_err());
        assert!("sync".parse::<SourceKind>().is_err());
    }
}
