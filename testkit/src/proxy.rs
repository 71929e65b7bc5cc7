//! A TCP relay on loopback whose downstream direction can be held: a replica that reaches its
//! primary through it keeps a link that Redis reports as up while the replica falls behind.
//! That is replication lag without a slow network: the primary's writes wait in the relay
//! (and, once its buffer is full, in the kernel's) until [`Relay::release`].

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// See the module documentation. Stops relaying when dropped.
pub struct Relay {
    /// Where clients connect.
    pub addr: SocketAddr,
    hold: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Relay {
    /// Relays connections on a free loopback port to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (hold, held) = watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_r, client_w) = client.into_split();
                let (server_r, server_w) = server.into_split();
                tokio::spawn(pump(client_r, server_w, None));
                tokio::spawn(pump(server_r, client_w, Some(held.clone())));
            }
        });
        Ok(Self { addr, hold, accept })
    }

    /// Holds every byte from upstream to the clients until [`Relay::release`].
    pub fn hold(&self) {
        self.hold.send_replace(true);
    }

    /// Lets the held bytes and everything after them through.
    pub fn release(&self) {
        self.hold.send_replace(false);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn pump<R, W>(mut from: R, mut to: W, held: Option<watch::Receiver<bool>>)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some(held) = &held {
            let mut held = held.clone();
            if held.wait_for(|h| !*h).await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
