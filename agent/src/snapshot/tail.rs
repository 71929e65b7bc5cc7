//! A consistent cut's tail: the replication stream after the RDB, read up to exactly the offset
//! the coordinator decides, acknowledged so the node keeps streaming.

use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::{Error, Result};
use crate::redis::Connection;

/// The most bytes read from a node, or handed on, at once: for the RDB and its tail alike.
pub const CHUNK: usize = 256 * 1024;

/// What the coordinator decided for a consistent cut: the replication id and offset to read the
/// stream up to, or why to give up.
pub type CutVerdict = std::result::Result<(String, u64), String>;

/// The most stream bytes held in memory while waiting for the cut.
const MAX_PENDING: usize = 256 << 20;

/// How long a tail waits for the cut once the RDB is stored.
const CUT_WAIT: Duration = Duration::from_secs(300);

/// The replication stream after the RDB, read up to exactly the cut offset. Acknowledges its
/// offset at once and every second (a node streams nothing after a diskless RDB until it hears
/// `REPLCONF ACK`, and drops a replica that stays silent for `repl-timeout`).
pub struct TailStream {
    conn: Connection,
    /// Read from the node, not yet handed on.
    pending: BytesMut,
    /// Handed on before the stream (`SELECT` of the stream's database).
    prefix: Option<Bytes>,
    replid: String,
    /// The offset the RDB corresponds to.
    start: u64,
    /// Stream bytes handed on.
    passed: u64,
    /// Stream bytes to hand on, once the cut is known.
    wanted: Option<u64>,
    verdict: tokio::sync::watch::Receiver<Option<CutVerdict>>,
    idle: Duration,
    /// When the RDB ended.
    since: std::time::Instant,
    /// Whether any stream byte came yet.
    flowing: bool,
}

/// How soon to acknowledge again. A node whose RDB child wrote the payload's end mark may not
/// yet have marked the replica online when the first `REPLCONF ACK` arrives, and then ignores
/// it: until the stream flows, the first two seconds are acknowledged every 10 ms, not every
/// second.
fn ack_every(flowing: bool, since: std::time::Instant) -> Duration {
    if flowing || since.elapsed() > Duration::from_secs(2) {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(10)
    }
}

impl TailStream {
    /// The tail of a payload read by `into_stream`, starting at `start` of `replid`.
    pub fn new(
        (conn, pending, head): (Connection, BytesMut, Vec<u8>),
        replid: String,
        start: u64,
        verdict: tokio::sync::watch::Receiver<Option<CutVerdict>>,
        idle: Duration,
    ) -> Self {
        // A node serving a sync from its own primary's stream says in the RDB which database that
        // stream is in; replaying starts there.
        let prefix = fleetsnap_core::rdb::leading_aux(&head)
            .into_iter()
            .find(|(k, _)| k == "repl-stream-db")
            .map(|(_, db)| {
                let mut cmd = Vec::new();
                crate::redis::encode(&mut cmd, &[b"SELECT", db.as_bytes()]);
                Bytes::from(cmd)
            });
        Self {
            conn,
            pending,
            prefix,
            replid,
            start,
            passed: 0,
            wanted: None,
            verdict,
            idle,
            since: std::time::Instant::now(),
            flowing: false,
        }
    }

    async fn ack(&mut self) -> Result<()> {
        let offset = (self.start + self.passed + self.pending.len() as u64).to_string();
        self.conn
            .send(&[b"REPLCONF", b"ACK", offset.as_bytes()])
            .await
    }

    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        if self.wanted.is_none() {
            self.ack().await?;
            self.wanted = Some(self.wait_for_cut().await?);
        }
        if let Some(p) = self.prefix.take() {
            return Ok(Some(p));
        }
        let wanted = self.wanted.expect("known");
        let mut silent = Duration::ZERO;
        loop {
            let left = wanted - self.passed;
            if left == 0 {
                return Ok(None);
            }
            if !self.pending.is_empty() {
                let n = (left as usize).min(self.pending.len()).min(CHUNK);
                self.passed += n as u64;
                return Ok(Some(self.pending.split_to(n).freeze()));
            }
            let tick = ack_every(self.flowing, self.since);
            match tokio::time::timeout(tick, self.conn.read_some(&mut self.pending)).await {
                Ok(Ok(0)) => {
                    return Err(Error::redis(
                        self.conn.target(),
                        format!(
                            "the node closed the replication stream {} bytes short of the cut: check its log (restart, failover, output-buffer limit for replicas)",
                            left
                        ),
                    ));
                }
                Ok(Ok(_)) => {
                    silent = Duration::ZERO;
                    self.flowing = true;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    silent += tick;
                    if silent >= self.idle {
                        return Err(Error::redis(
                            self.conn.target(),
                            format!(
                                "the replication stream stayed {} bytes short of the cut for {}s: the node is not receiving its primary's writes",
                                left,
                                silent.as_secs()
                            ),
                        ));
                    }
                    self.ack().await?;
                }
            }
        }
    }

    /// Waits for the coordinator's cut, keeping the stream acknowledged; the number of stream
    /// bytes from the RDB to the cut.
    async fn wait_for_cut(&mut self) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + CUT_WAIT;
        loop {
            if let Some(v) = self.verdict.borrow().clone() {
                let (replid, offset) = v.map_err(Error::Cut)?;
                if replid != self.replid {
                    return Err(Error::Cut(format!(
                        "the cut is on replication history {replid} but this stream is on {}: the shard failed over",
                        self.replid
                    )));
                }
                return offset.checked_sub(self.start).ok_or_else(|| {
                    Error::Cut(format!(
                        "the node was already at offset {} when the cut was taken at {offset}",
                        self.start
                    ))
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Cut(format!(
                    "no cut from the coordinator within {}s of the RDB",
                    CUT_WAIT.as_secs()
                )));
            }
            // The stream is read while waiting, so the node's output buffer for this connection
            // stays empty whatever the write load.
            if self.pending.len() > MAX_PENDING {
                return Err(Error::Cut(format!(
                    "more than {} MiB of writes arrived while waiting for the cut; the agent gives up rather than hold more",
                    MAX_PENDING >> 20
                )));
            }
            tokio::select! {
                changed = self.verdict.changed() => if changed.is_err() {
                    return Err(Error::Cut("the job was dropped before the cut was taken".into()));
                },
                read = self.conn.read_some(&mut self.pending) => {
                    self.flowing = true;
                    if read? == 0 {
                        return Err(Error::redis(
                            self.conn.target(),
                            "the node closed the replication stream before the cut was taken: check its log (restart, failover, output-buffer limit for replicas)",
                        ));
                    }
                }
                _ = tokio::time::sleep(ack_every(self.flowing, self.since)) => self.ack().await?,
            }
        }
    }
}
