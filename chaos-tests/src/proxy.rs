//! A fault-injecting TCP proxy, for the faults the kernel here cannot make (it has no `netem`):
//! latency with jitter, loss (a lost segment costs a retransmission timeout), a bandwidth cap,
//! stalls, and a link that is down. It listens inside a host's namespace and forwards to an
//! address reachable from there; the faults change while connections are open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::net::{Host, in_ns};

/// What the proxy does to the traffic it carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Faults {
    /// Added to every chunk, each way.
    pub latency: Duration,
    /// Up to this much more, at random.
    pub jitter: Duration,
    /// The chance that a chunk is "lost": it arrives a retransmission timeout (200 ms) late.
    pub loss: f64,
    /// Bytes per second each way (0: no cap).
    pub rate: u64,
    /// Nothing passes until then.
    pub stalled_until: Option<Instant>,
    /// Connections are cut and new ones closed at once.
    pub down: bool,
}

/// A running proxy. Stops when dropped.
pub struct Proxy {
    /// Where clients connect (`HOST-IP:PORT`).
    pub listen: String,
    faults: watch::Sender<Faults>,
    accept: JoinHandle<()>,
    /// Bytes carried, both ways.
    carried: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on `host`'s address at `port` and forwards to `upstream`; `seed` drives the jitter
    /// and loss.
    pub async fn start(
        host: &Host,
        port: u16,
        upstream: SocketAddr,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let bind: SocketAddr = host.addr(port).parse()?;
        let std_listener = in_ns(&host.ns, || std::net::TcpListener::bind(bind))??;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let (faults, rx) = watch::channel(Faults::default());
        let carried = Arc::new(AtomicU64::new(0));
        let ns = host.ns.clone();
        let total = carried.clone();
        let accept = tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((client, _)) = listener.accept().await {
                n += 1;
                if rx.borrow().down {
                    drop(client);
                    continue;
                }
                let ns = ns.clone();
                let Ok(Ok(Ok(server))) = tokio::task::spawn_blocking(move || {
                    in_ns(&ns, || {
                        std::net::TcpStream::connect_timeout(&upstream, Duration::from_secs(5))
                    })
                })
                .await
                else {
                    continue;
                };
                if server.set_nonblocking(true).is_err() {
                    continue;
                }
                let Ok(server) = TcpStream::from_std(server) else {
                    continue;
                };
                client.set_nodelay(true).ok();
                server.set_nodelay(true).ok();
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let s = seed.wrapping_add(n * 2);
                tokio::spawn(pump(cr, sw, rx.clone(), s, total.clone()));
                tokio::spawn(pump(sr, cw, rx.clone(), s + 1, total.clone()));
            }
        });
        Ok(Self {
            listen: host.addr(port),
            faults,
            accept,
            carried,
        })
    }

    /// Sets the faults (replacing the ones before).
    pub fn set(&self, f: Faults) {
        self.faults.send_replace(f);
    }

    /// Changes the faults.
    pub fn update(&self, change: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(change);
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.set(Faults::default());
    }

    /// Holds every byte for `d` from now.
    pub fn stall(&self, d: Duration) {
        self.update(|f| f.stalled_until = Some(Instant::now() + d));
    }

    /// Bytes carried so far, both ways.
    pub fn carried(&self) -> u64 {
        self.carried.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.set(Faults {
            down: true,
            ..Faults::default()
        });
    }
}

/// One direction: a reader that stamps each chunk with when it may arrive, and a writer that
/// sends it then, so latency delays the stream without cutting its throughput.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: watch::Receiver<Faults>,
    seed: u64,
    carried: Arc<AtomicU64>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let mut down = faults.clone();
    let reader = {
        let faults = faults.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut last = Instant::now();
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.truncate(n);
                let f = faults.borrow().clone();
                let mut delay = f.latency;
                if !f.jitter.is_zero() {
                    delay += f.jitter.mul_f64(rng.random::<f64>());
                }
                if f.loss > 0.0 && rng.random::<f64>() < f.loss {
                    delay += Duration::from_millis(200);
                }
                // Never before the chunk ahead of it: the stream stays in order.
                last = last.max(Instant::now() + delay);
                if tx.send((last, buf)).await.is_err() {
                    return;
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, buf)) = rx.recv().await {
            tokio::time::sleep_until(at.into()).await;
            loop {
                let until = faults.borrow().stalled_until;
                match until {
                    Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                    _ => break,
                }
            }
            if to.write_all(&buf).await.is_err() {
                return;
            }
            carried.fetch_add(buf.len() as u64, Ordering::Relaxed);
            let rate = faults.borrow().rate;
            if rate > 0 {
                tokio::time::sleep(Duration::from_secs_f64(buf.len() as f64 / rate as f64)).await;
            }
        }
        to.shutdown().await.ok();
    };
    let cut = async move {
        loop {
            if down.borrow_and_update().down {
                return;
            }
            if down.changed().await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = async { tokio::join!(reader, writer) } => {}
        _ = cut => {}
    }
}
