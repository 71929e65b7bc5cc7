//! Replaying a tail into a node the way its replicas took those commands first: the node is
//! made a replica of the agent for the length of the tail, asks to continue from the offset it
//! loaded, and applies the tail as a replication stream — as fast as it loads an AOF, with no
//! reply per command, and without expiring keys on its own while it does (the tail carries the
//! deletions its primary made). Then it is made a primary again.
//!
//! Only the node itself is let in: the connection on the agent's loopback listener must ask to
//! continue the node's own replication id from its own offset, which only the node (or someone
//! who can read its `INFO`) knows. Where the node cannot be made a replica of the agent — a
//! Redis Cluster node, replication over TLS, `REPLICAOF` refused, or no connection back within
//! the time allowed — the caller replays the tail as commands instead, and says why.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::error::{Error, Result};
use crate::redis::{Connection, RedisTarget, Value, info_field};

/// How a tail went into the node.
pub(super) enum Fed {
    /// As a replication stream, acknowledged to its end.
    Streamed,
    /// Not possible, for this reason: the caller replays commands.
    NotPossible(String),
}

/// How long the node has to connect back and ask to continue.
const CONNECT_BACK: Duration = Duration::from_secs(10);

/// Feeds the tail at `tail` into `node` as its primary would (see the module's documentation).
/// `stall` bounds how long the node may go without acknowledging more of it.
pub(super) async fn feed_tail(node: &RedisTarget, tail: &Path, stall: Duration) -> Result<Fed> {
    let mut conn = Connection::connect(node).await?;
    let replication = conn.info("replication").await?;
    if info_field(&replication, "role") != Some("master") {
        return Ok(Fed::NotPossible(
            "the node is a replica after its restart".into(),
        ));
    }
    if info_field(&conn.info("cluster").await?, "cluster_enabled") == Some("1") {
        return Ok(Fed::NotPossible(
            "a Redis Cluster node cannot be made a replica of the agent".into(),
        ));
    }
    if matches!(
        conn.config_get("tls-replication").await.as_deref(),
        Ok("yes")
    ) {
        return Ok(Fed::NotPossible(
            "the node replicates over TLS (tls-replication yes)".into(),
        ));
    }
    let (Some(replid), Some(offset)) = (
        info_field(&replication, "master_replid").map(str::to_string),
        info_field(&replication, "master_repl_offset").and_then(|o| o.parse::<u64>().ok()),
    ) else {
        return Ok(Fed::NotPossible(
            "the node's INFO gives no replication id and offset".into(),
        ));
    };
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| Error::Failed(format!("cannot listen on the loopback address: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Failed(format!("the loopback listener has no address: {e}")))?
        .port()
        .to_string();
    if let Value::Error(e) = conn
        .command(&[b"REPLICAOF", b"127.0.0.1", port.as_bytes()])
        .await?
    {
        return Ok(Fed::NotPossible(format!("REPLICAOF refused: {e}")));
    }
    let fed = async {
        let Some(stream) = accept_node(&listener, &replid, offset).await? else {
            return Ok(Fed::NotPossible(format!(
                "the node did not connect back to 127.0.0.1:{port} within {}s",
                CONNECT_BACK.as_secs()
            )));
        };
        stream_tail(stream, tail, offset, stall, node).await
    }
    .await;
    // A primary again, whatever happened: the caller replays commands or reports the failure.
    let back = conn.command(&[b"REPLICAOF", b"NO", b"ONE"]).await;
    let fed = fed?;
    match back? {
        Value::Error(e) => Err(Error::redis(
            node,
            format!(
                "REPLICAOF NO ONE, sent after the tail, was refused ({e}): the node is still a replica of 127.0.0.1:{port}; run REPLICAOF NO ONE on it"
            ),
        )),
        _ => Ok(fed),
    }
}

/// The node's connection: the first on the listener that asks to continue `replid` from just
/// after `offset`. Others are answered with an error and closed.
async fn accept_node(
    listener: &TcpListener,
    replid: &str,
    offset: u64,
) -> Result<Option<TcpStream>> {
    let deadline = Instant::now() + CONNECT_BACK;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(accepted) = tokio::time::timeout(left, listener.accept()).await else {
            return Ok(None);
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        if !peer.ip().is_loopback() {
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if let Ok(Ok(Some(s))) = tokio::time::timeout(left, handshake(stream, replid, offset)).await
        {
            return Ok(Some(s));
        }
    }
}

/// What the connecting side sends, a command at a time, parsed by core's RESP parser. A peer
/// that sends `MAX_PEER_BYTES` without a whole command, or anything but a command, is done
/// with (`None`).
struct PeerCommands<R> {
    r: R,
    buf: bytes::BytesMut,
}

/// The most bytes held from the connecting side without a whole command: a replica sends
/// short handshake commands and `REPLCONF ACK`s.
const MAX_PEER_BYTES: usize = 4096;

impl<R: tokio::io::AsyncRead + Unpin> PeerCommands<R> {
    fn new(r: R) -> Self {
        Self {
            r,
            buf: bytes::BytesMut::new(),
        }
    }

    async fn next(&mut self) -> std::io::Result<Option<Vec<Vec<u8>>>> {
        loop {
            match fleetsnap_core::resp::parse(&self.buf) {
                Ok(Some((v, used))) => {
                    let _ = self.buf.split_to(used);
                    return Ok(command(v));
                }
                Ok(None) if self.buf.len() < MAX_PEER_BYTES => {}
                _ => return Ok(None),
            }
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// A command's arguments: an array of bulk strings, else `None`.
fn command(v: Value) -> Option<Vec<Vec<u8>>> {
    let Value::Array(Some(items)) = v else {
        return None;
    };
    items
        .into_iter()
        .map(|i| match i {
            Value::Bulk(Some(b)) => Some(b),
            _ => None,
        })
        .collect::<Option<Vec<_>>>()
        .filter(|a| !a.is_empty())
}

/// Answers a replica's handshake; gives the stream back once it has asked for `PSYNC replid
/// offset+1` and been told to continue.
async fn handshake(
    stream: TcpStream,
    replid: &str,
    offset: u64,
) -> std::io::Result<Option<TcpStream>> {
    let mut peer = PeerCommands::new(stream);
    loop {
        let Some(args) = peer.next().await? else {
            return Ok(None);
        };
        let name = args[0].to_ascii_uppercase();
        let answer: &[u8] = match name.as_slice() {
            b"PING" => b"+PONG\r\n",
            b"AUTH" | b"REPLCONF" => b"+OK\r\n",
            b"PSYNC" if args.len() == 3 => {
                let asks = args[1] == replid.as_bytes()
                    && std::str::from_utf8(&args[2])
                        .ok()
                        .and_then(|o| o.parse::<u64>().ok())
                        == Some(offset + 1);
                if !asks {
                    peer.r
                        .write_all(b"-ERR not the node being restored\r\n")
                        .await?;
                    return Ok(None);
                }
                let line = format!("+CONTINUE {replid}\r\n");
                peer.r.write_all(line.as_bytes()).await?;
                // The node sends nothing more until it has read the answer: nothing is
                // buffered.
                return Ok(Some(peer.r));
            }
            _ => b"-ERR unexpected command\r\n",
        };
        peer.r.write_all(answer).await?;
    }
}

/// Sends the tail (after a `SELECT 0`, the database a stream starts in) and waits until the
/// node has acknowledged all of it.
async fn stream_tail(
    stream: TcpStream,
    tail: &Path,
    offset: u64,
    stall: Duration,
    node: &RedisTarget,
) -> Result<Fed> {
    let (rd, mut wr) = stream.into_split();
    let (acked_tx, mut acked) = tokio::sync::watch::channel(offset);
    // The node acknowledges what it has applied, once a second and when asked.
    let acks = tokio::spawn(async move {
        let mut peer = PeerCommands::new(rd);
        while let Ok(Some(args)) = peer.next().await {
            if args.len() >= 3
                && args[0].eq_ignore_ascii_case(b"REPLCONF")
                && args[1].eq_ignore_ascii_case(b"ACK")
                && let Some(n) = std::str::from_utf8(&args[2])
                    .ok()
                    .and_then(|o| o.parse().ok())
            {
                acked_tx.send_if_modified(|a| {
                    let more = n > *a;
                    *a = (*a).max(n);
                    more
                });
            }
        }
    });
    let lost = |e: std::io::Error| {
        Error::redis(
            node,
            format!("the node closed the replication stream of the tail ({e}): see its log"),
        )
    };
    let mut sent = 0u64;
    let select = b"*2\r\n$6\r\nSELECT\r\n$1\r\n0\r\n";
    wr.write_all(select).await.map_err(lost)?;
    sent += select.len() as u64;
    let mut file = tokio::fs::File::open(tail)
        .await
        .map_err(|e| Error::file("cannot open", tail, e))?;
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| Error::file("cannot read", tail, e))?;
        if n == 0 {
            break;
        }
        wr.write_all(&buf[..n]).await.map_err(lost)?;
        sent += n as u64;
    }
    let want = offset + sent;
    let getack = b"*3\r\n$8\r\nREPLCONF\r\n$6\r\nGETACK\r\n$1\r\n*\r\n";
    wr.write_all(getack).await.map_err(lost)?;
    let mut last_progress = Instant::now();
    let mut seen = offset;
    loop {
        let now = *acked.borrow_and_update();
        if now >= want {
            break;
        }
        if now > seen {
            (seen, last_progress) = (now, Instant::now());
        }
        let left = stall.saturating_sub(last_progress.elapsed());
        if left.is_zero() {
            acks.abort();
            return Err(Error::redis(
                node,
                format!(
                    "the node acknowledged {} of the tail's {sent} bytes and no more for {}s: see its log",
                    seen - offset,
                    stall.as_secs()
                ),
            ));
        }
        match tokio::time::timeout(left.min(Duration::from_millis(500)), acked.changed()).await {
            Ok(Err(_)) => {
                return Err(Error::redis(
                    node,
                    format!(
                        "the node closed the replication stream after acknowledging {} of the tail's {sent} bytes: see its log",
                        seen - offset
                    ),
                ));
            }
            // Asked again: an acknowledgement may have crossed the last request.
            Err(_) => wr.write_all(getack).await.map_err(lost)?,
            Ok(Ok(())) => {}
        }
    }
    acks.abort();
    Ok(Fed::Streamed)
}
