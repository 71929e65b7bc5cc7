//! `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1, one request per connection.
//!
//! Small on purpose: three read-only paths, answered from closures the process gives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::Error;

/// What the endpoint answers from.
#[derive(Clone)]
pub struct Probes {
    /// The scrape's text.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `Ok` while the process works; `Err(why)` makes `/healthz` answer 503.
    pub healthy: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
    /// `Ok` once the process does its job (a coordinator knows its leader, an agent is
    /// connected); `Err(why)` makes `/readyz` answer 503.
    pub ready: Arc<dyn Fn() -> Result<(), String> + Send + Sync>,
}

/// Binds `address` (a clear error when it cannot).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(address)
        .await
        .map_err(|source| Error::Listen { address, source })
}

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, probes: Probes) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let probes = probes.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &probes)).await;
        });
    }
}

/// Binds and serves in a task of its own; returns the bound address (for port 0).
pub async fn start(address: SocketAddr, probes: Probes) -> Result<SocketAddr, Error> {
    let listener = bind(address).await?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Listen { address, source })?;
    tokio::spawn(serve(listener, probes));
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn answer(mut stream: TcpStream, probes: &Probes) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 16 * 1024 {
            return respond(
                &mut stream,
                431,
                "text/plain",
                "request headers too large\n",
                true,
            )
            .await;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let body_wanted = method != "HEAD";
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET and HEAD\n", true).await;
    }
    let (status, content_type, body) = match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            (probes.metrics)(),
        ),
        "/healthz" => match (probes.healthy)() {
            Ok(()) => (200, "text/plain", "ok\n".to_string()),
            Err(why) => (503, "text/plain", format!("unhealthy: {why}\n")),
        },
        "/readyz" => match (probes.ready)() {
            Ok(()) => (200, "text/plain", "ready\n".to_string()),
            Err(why) => (503, "text/plain", format!("not ready: {why}\n")),
        },
        _ => (
            404,
            "text/plain",
            "not found: this endpoint serves /metrics, /healthz and /readyz\n".to_string(),
        ),
    };
    respond(&mut stream, status, content_type, &body, body_wanted).await
}

async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    with_body: bool,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

/// A plain `GET` of `path` from `address`: the status and the body. For tests and `check`
/// commands.
pub async fn get(address: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_three_paths_answer_and_others_are_not_found() {
        let probes = Probes {
            metrics: Arc::new(|| "fleetsnap_up 1\n".to_string()),
            healthy: Arc::new(|| Ok(())),
            ready: Arc::new(|| Err("no leader yet".to_string())),
        };
        let addr = start("127.0.0.1:0".parse().unwrap(), probes).await.unwrap();
        assert_eq!(
            get(addr, "/metrics").await.unwrap(),
            (200, "fleetsnap_up 1\n".to_string())
        );
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
        assert_eq!(
            get(addr, "/readyz").await.unwrap(),
            (503, "not ready: no leader yet\n".to_string())
        );
        assert_eq!(get(addr, "/other").await.unwrap().0, 404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn half_open_requests_do_not_keep_a_scrape_out() {
        let probes = Probes {
            metrics: Arc::new(|| "fleetsnap_up 1\n".to_string()),
            healthy: Arc::new(|| Ok(())),
            ready: Arc::new(|| Ok(())),
        };
        let addr = start("127.0.0.1:0".parse().unwrap(), probes).await.unwrap();
        // 450 connections (900 descriptors in this one process, within any default limit),
        // each with a request that never ends.
        let mut held = Vec::new();
        for _ in 0..450 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            held.push(c);
        }
        assert_eq!(get(addr, "/metrics").await.unwrap().0, 200);
        assert_eq!(get(addr, "/healthz").await.unwrap().0, 200);
    }
}
