//! `/metrics`, `/healthz` and `/readyz` over plain HTTP/1.1 (hyper), one request per connection.
//!
//! Three read-only paths, answered from closures the process gives.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
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

/// Serves until the task is dropped: HTTP/1.1 by hyper, one request per connection, each
/// connection in a task of its own and given 10 s in all, so slow or half-open clients never keep
/// a scrape out.
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
            let service = service_fn(move |req| {
                let probes = probes.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&req, &probes)) }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(Duration::from_secs(10), conn).await;
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

/// The most a request's head may take (hyper answers 431 past it).
const MAX_HEAD: usize = 16 * 1024;

fn answer<B>(req: &Request<B>, probes: &Probes) -> Response<Full<Bytes>> {
    let text = |status: u16, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = StatusCode::from_u16(status).expect("a valid status");
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_str(content_type).expect("a valid content type"),
        );
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(405, "text/plain", "only GET and HEAD\n".into());
    }
    match req.uri().path() {
        "/metrics" => text(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            (probes.metrics)(),
        ),
        "/healthz" => match (probes.healthy)() {
            Ok(()) => text(200, "text/plain", "ok\n".into()),
            Err(why) => text(503, "text/plain", format!("unhealthy: {why}\n")),
        },
        "/readyz" => match (probes.ready)() {
            Ok(()) => text(200, "text/plain", "ready\n".into()),
            Err(why) => text(503, "text/plain", format!("not ready: {why}\n")),
        },
        _ => text(
            404,
            "text/plain",
            "not found: this endpoint serves /metrics, /healthz and /readyz\n".into(),
        ),
    }
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
        let raw = |request: String| async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            c.write_all(request.as_bytes()).await.unwrap();
            let mut text = String::new();
            c.read_to_string(&mut text).await.unwrap();
            text
        };
        let post = raw("POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n".into()).await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let head = raw("HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n".into()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.ends_with("\r\n\r\n"),
            "a HEAD answer has no body: {head}"
        );
        let big = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let refused = raw(big).await;
        assert!(refused.starts_with("HTTP/1.1 431"), "{refused}");
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
