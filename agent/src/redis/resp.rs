//! A small RESP2 client over TCP or TLS: commands for INFO/CONFIG/BGSAVE, and raw reads for the
//! replication stream, on one connection type.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::target::{RedisTarget, TlsSettings};
use crate::error::{Error, Result};

/// How long to wait for a TCP connection before calling a node unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Anything a connection can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

pub use fleetsnap_core::resp::Value;
use fleetsnap_core::resp::{Header, MAX_DEPTH, MAX_LINE};

/// One connection to a Redis node, logged in.
pub struct Connection {
    io: BufReader<Box<dyn Stream>>,
    target: RedisTarget,
}

impl Connection {
    /// Connects, negotiates TLS when asked, and authenticates.
    pub async fn connect(target: &RedisTarget) -> Result<Self> {
        let addr = target.address();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((target.host.as_str(), target.port)))
            .await
            .map_err(|_| {
                Error::redis(target, format!("no answer from {addr} within {}s: check the host and port, and that a firewall lets the agent through", CONNECT_TIMEOUT.as_secs()))
            })?
            .map_err(|e| {
                Error::redis(target, format!("cannot connect to {addr}: {e}; check that redis-server is running there and the host and port are right"))
            })?;
        tcp.set_nodelay(true).ok();
        let stream: Box<dyn Stream> = match &target.tls {
            None => Box::new(tcp),
            Some(tls) => Box::new(tls_connect(target, tls, tcp).await?),
        };
        let mut conn = Self {
            io: BufReader::with_capacity(256 * 1024, stream),
            target: target.clone(),
        };
        if let Some(password) = target.password.clone() {
            let reply = match &target.user {
                Some(user) => {
                    conn.command(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                        .await?
                }
                None => conn.command(&[b"AUTH", password.as_bytes()]).await?,
            };
            if let Value::Error(e) = reply {
                let who = target.user.as_deref().unwrap_or("default");
                return Err(Error::redis(
                    target,
                    format!(
                        "login as user {who:?} refused ({e}): check the user name and password (URL, password_file= or FLEETSNAP_REDIS_PASSWORD)"
                    ),
                ));
            }
        }
        Ok(conn)
    }

    /// The node this connection talks to.
    pub fn target(&self) -> &RedisTarget {
        &self.target
    }

    /// Sends a command and reads its reply. An error reply is returned as `Value::Error`.
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<Value> {
        self.send(args).await?;
        self.read_value().await
    }

    /// Sends a command and fails on an error reply, naming the command.
    pub async fn checked(&mut self, args: &[&[u8]]) -> Result<Value> {
        match self.command(args).await? {
            Value::Error(e) => Err(Error::redis(
                &self.target,
                format!(
                    "{} refused: {e}{}",
                    String::from_utf8_lossy(args[0]),
                    refusal_hint(&e)
                ),
            )),
            v => Ok(v),
        }
    }

    /// Sends several commands in one write, without reading replies.
    pub async fn send_pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<()> {
        let mut out = Vec::new();
        for c in commands {
            let refs: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode(&mut out, &refs);
        }
        self.write_all(&out).await
    }

    /// Sends one command without reading the reply.
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<()> {
        let mut out = Vec::with_capacity(64);
        encode(&mut out, args);
        self.write_all(&out).await
    }

    /// Writes raw bytes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let s = self.io.get_mut();
        let r = match s.write_all(bytes).await {
            Ok(()) => s.flush().await,
            Err(e) => Err(e),
        };
        r.map_err(|e| self.io_error(e))
    }

    /// `INFO section` parsed into key/value pairs.
    pub async fn info(&mut self, section: &str) -> Result<Vec<(String, String)>> {
        let text = self
            .checked(&[b"INFO", section.as_bytes()])
            .await?
            .text()
            .unwrap_or_default();
        Ok(parse_info(&text))
    }

    /// `CONFIG GET name`, the value.
    pub async fn config_get(&mut self, name: &str) -> Result<String> {
        match self.checked(&[b"CONFIG", b"GET", name.as_bytes()]).await? {
            Value::Array(Some(items)) if items.len() >= 2 => {
                Ok(items[1].text().unwrap_or_default())
            }
            _ => Err(Error::redis(
                &self.target,
                format!(
                    "CONFIG GET {name} returned nothing: the parameter is unknown to this server"
                ),
            )),
        }
    }

    /// Reads one reply. Lengths and counts are checked against the protocol's limits
    /// (`fleetsnap_core::resp`) before anything is allocated for them, and nesting is bounded.
    pub async fn read_value(&mut self) -> Result<Value> {
        Box::pin(self.value_at(0)).await
    }

    async fn value_at(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.protocol(format!("arrays nested deeper than {MAX_DEPTH}")));
        }
        let line = self.read_line().await?;
        let head = fleetsnap_core::resp::header(&line).map_err(|e| self.protocol(e.0))?;
        let text = || String::from_utf8_lossy(&line[1..]).into_owned();
        match head {
            Header::Line => Ok(match line[0] {
                b'+' => Value::Simple(text()),
                b'-' => Value::Error(text()),
                _ => Value::Int(
                    fleetsnap_core::resp::parse_number(&line[1..])
                        .map_err(|e| self.protocol(e.0))?,
                ),
            }),
            Header::Bulk(None) => Ok(Value::Bulk(None)),
            Header::Bulk(Some(n)) => {
                // Grown as the bytes arrive: a length the node announces but does not send
                // costs nothing.
                let want = n as usize + 2;
                let mut buf = Vec::with_capacity(want.min(1 << 20));
                while buf.len() < want {
                    let start = buf.len();
                    buf.resize(start + (want - start).min(1 << 20), 0);
                    self.read_exact(&mut buf[start..]).await?;
                }
                if !buf.ends_with(b"\r\n") {
                    return Err(self.protocol("a bulk string not followed by CRLF".into()));
                }
                buf.truncate(n as usize);
                Ok(Value::Bulk(Some(buf)))
            }
            Header::Array(None) => Ok(Value::Array(None)),
            Header::Array(Some(n)) => {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    items.push(Box::pin(self.value_at(depth + 1)).await?);
                }
                Ok(Value::Array(Some(items)))
            }
        }
    }

    /// The next reply when it is a plain `+OK` (consumed, `None`), else the reply read whole. The
    /// common case, a pipeline of `OK`s, then costs no allocation.
    pub async fn read_ok_or_value(&mut self) -> Result<Option<Value>> {
        const OK: &[u8] = b"+OK\r\n";
        let ok = match self.io.fill_buf().await {
            Ok([]) => return Err(self.closed()),
            Ok(buf) => buf.starts_with(OK),
            Err(e) => return Err(self.io_error(e)),
        };
        if ok {
            self.io.consume(OK.len());
            return Ok(None);
        }
        self.read_value().await.map(Some)
    }

    /// Reads one `\r\n`-terminated line without its terminator; a bare `\n` gives an empty line.
    /// A line longer than `MAX_LINE` is a protocol error, not a growing buffer.
    pub async fn read_line(&mut self) -> Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            let (found, used) = {
                let buf = match self.io.fill_buf().await {
                    Ok([]) => return Err(self.closed()),
                    Ok(b) => b,
                    Err(e) => return Err(self.io_error(e)),
                };
                match buf.iter().position(|b| *b == b'\n') {
                    Some(i) => {
                        line.extend_from_slice(&buf[..i]);
                        (true, i + 1)
                    }
                    None => {
                        line.extend_from_slice(buf);
                        (false, buf.len())
                    }
                }
            };
            self.io.consume(used);
            if line.len() > MAX_LINE {
                return Err(self.protocol(format!("a line longer than {MAX_LINE} bytes")));
            }
            if found {
                break;
            }
        }
        while matches!(line.last(), Some(b'\n' | b'\r')) {
            line.pop();
        }
        Ok(line)
    }

    /// Reads exactly `buf.len()` bytes.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        match self.io.read_exact(buf).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(self.closed()),
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// Appends whatever is available to `buf` (without zeroing its spare capacity); 0 means the
    /// node closed the connection.
    pub async fn read_some(&mut self, buf: &mut bytes::BytesMut) -> Result<usize> {
        self.io.read_buf(buf).await.map_err(|e| self.io_error(e))
    }

    /// Like [`Connection::read_some`], then goes on reading what is already at hand, without
    /// waiting, until `buf` holds `want` bytes: fewer, larger chunks for a fast stream.
    pub async fn read_some_more(
        &mut self,
        buf: &mut bytes::BytesMut,
        want: usize,
    ) -> Result<usize> {
        let mut n = self.read_some(buf).await?;
        while n > 0 && buf.len() < want {
            let more = {
                let mut read = std::pin::pin!(self.io.read_buf(buf));
                std::future::poll_fn(|cx| match read.as_mut().poll(cx) {
                    std::task::Poll::Ready(r) => std::task::Poll::Ready(Some(r)),
                    std::task::Poll::Pending => std::task::Poll::Ready(None),
                })
                .await
            };
            match more {
                Some(Ok(0)) | None => break,
                Some(Ok(m)) => n += m,
                Some(Err(e)) => return Err(self.io_error(e)),
            }
        }
        Ok(n)
    }

    fn closed(&self) -> Error {
        Error::redis(
            &self.target,
            "the node closed the connection: check its log for the reason (a restart, a client-output-buffer limit, maxclients)",
        )
    }

    fn io_error(&self, e: std::io::Error) -> Error {
        Error::redis(&self.target, format!("connection failed: {e}"))
    }

    fn protocol(&self, what: String) -> Error {
        Error::redis(
            &self.target,
            format!("protocol error: {what}; is this a Redis server?"),
        )
    }
}

/// A hint for common refusals.
pub(crate) fn refusal_hint(e: &str) -> &'static str {
    if e.starts_with("NOPERM") {
        " (grant the agent's ACL user the commands it needs: see docs/security.md)"
    } else if e.starts_with("NOAUTH") {
        " (the node needs a password: put it in the URL, password_file= or FLEETSNAP_REDIS_PASSWORD)"
    } else if e.contains("unknown command") {
        " (the command is renamed or disabled on this node)"
    } else {
        ""
    }
}

/// Appends one command in RESP.
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len() as u64);
    for a in args {
        header(out, b'$', a.len() as u64);
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// `<kind><n>\r\n`, as every RESP array and bulk string starts.
pub(crate) fn header(out: &mut Vec<u8>, kind: u8, n: u64) {
    out.push(kind);
    out.extend_from_slice(decimal(n, &mut [0; 20]));
    out.extend_from_slice(b"\r\n");
}

/// `n` in decimal, written into `buf` without allocating.
pub(crate) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Parses `INFO` output into key/value pairs, skipping section headers.
pub fn parse_info(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim_end().to_string()))
        .collect()
}

/// Keys in every database, from `INFO keyspace` (`db0:keys=N,expires=…`).
pub fn keyspace_keys(info: &[(String, String)]) -> u64 {
    info.iter()
        .filter(|(k, _)| k.starts_with("db"))
        .filter_map(|(_, v)| {
            v.split(',')
                .next()?
                .strip_prefix("keys=")?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Looks up one `INFO` field.
pub fn info_field<'a>(info: &'a [(String, String)], key: &str) -> Option<&'a str> {
    info.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

async fn tls_connect(
    target: &RedisTarget,
    tls: &TlsSettings,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = read_pem_certs(&tls.ca)?;
    if ca.is_empty() {
        return Err(Error::Input(format!(
            "the CA file {} holds no certificate: pass the CA that signed the Redis server's certificate with ?ca=PATH",
            tls.ca.display()
        )));
    }
    for c in ca {
        roots.add(c).map_err(|e| {
            Error::Input(format!(
                "the CA file {} holds an unusable certificate: {e}",
                tls.ca.display()
            ))
        })?;
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match &tls.client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = read_pem_certs(cert)?;
            let key_bytes = std::fs::read(key)
                .map_err(|e| Error::file("cannot read the TLS client key", key, e))?;
            let key = rustls_pemfile::private_key(&mut key_bytes.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| {
                    Error::Input(format!(
                        "{} holds no private key in PEM form",
                        key.display()
                    ))
                })?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                Error::Input(format!(
                    "the TLS client certificate {} does not fit its key: {e}",
                    cert.display()
                ))
            })?
        }
    };
    let name = rustls::pki_types::ServerName::try_from(tls.server_name.clone()).map_err(|_| {
        Error::Input(format!(
            "{:?} is not a valid TLS server name: set ?sni=NAME",
            tls.server_name
        ))
    })?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| Error::redis(target, format!("TLS handshake failed: {e}; check that the port serves TLS (tls-port) and that ?ca= names the CA that signed its certificate")))
}

fn read_pem_certs(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::file("cannot read the TLS certificate file", path, e))?;
    rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| {
            Error::Input(format!(
                "{} is not a PEM certificate file: {e}",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The connection's reader over `bytes` (then the end of the stream).
    async fn read_from(bytes: Vec<u8>) -> Result<Value> {
        let (mut w, r) = tokio::io::duplex(bytes.len().max(1) + 64);
        w.write_all(&bytes).await.unwrap();
        drop(w);
        let mut c = Connection {
            io: BufReader::with_capacity(256, Box::new(r)),
            target: RedisTarget::parse("redis://127.0.0.1:1").unwrap(),
        };
        c.read_value().await
    }

    /// The async reader and the pure parser of `fleetsnap_core::resp` (which is fuzzed) agree
    /// on thousands of replies, well-formed, cut short, mutated and hostile: the same value,
    /// or both refuse. Nothing panics or allocates what a header claims.
    #[tokio::test]
    async fn the_reader_agrees_with_the_fuzzed_parser() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        let seeds: Vec<&[u8]> = vec![
            b"+OK\r\n",
            b"-ERR no\r\n",
            b":-42\r\n",
            b"$5\r\nhello\r\n",
            b"$-1\r\n",
            b"*2\r\n$3\r\nfoo\r\n*1\r\n:1\r\n",
            b"*-1\r\n",
            b"$99999999999\r\nx\r\n",
            b"*9999999999\r\n",
        ];
        for i in 0..3000 {
            let mut b = seeds[i % seeds.len()].to_vec();
            match i % 4 {
                0 => {}
                1 => b.truncate(rng.random_range(0..=b.len())),
                2 => {
                    for _ in 0..rng.random_range(1..4) {
                        let at = rng.random_range(0..b.len());
                        b[at] = rng.random();
                    }
                }
                _ => b = (0..rng.random_range(1..40)).map(|_| rng.random()).collect(),
            }
            let pure = fleetsnap_core::resp::parse(&b);
            let read = read_from(b.clone()).await;
            // The reader also ends a line at a bare newline (a node's keepalive in the
            // replication stream); the parser wants CRLF. Such inputs only must not panic.
            let bare_newline = b
                .iter()
                .enumerate()
                .any(|(i, c)| *c == b'\n' && (i == 0 || b[i - 1] != b'\r'));
            if bare_newline {
                continue;
            }
            match (&pure, &read) {
                (Ok(Some((v, _))), Ok(r)) => assert_eq!(v, r, "{b:?}"),
                (Ok(Some(_)), Err(e)) => panic!("{b:?}: the parser took it, the reader said {e}"),
                (Ok(None) | Err(_), Ok(r)) => {
                    panic!("{b:?}: the reader took {r:?}, the parser {pure:?}")
                }
                (Ok(None) | Err(_), Err(_)) => {}
            }
        }
        // A line without end is refused at its limit, not buffered for ever.
        let long = [
            b"+".as_slice(),
            &vec![b'a'; fleetsnap_core::resp::MAX_LINE + 10],
        ]
        .concat();
        assert!(read_from(long).await.is_err());
    }

    #[test]
    fn info_parses_fields() {
        let info = parse_info("# Replication\r\nrole:slave\r\nmaster_repl_offset:42\r\n\r\n");
        assert_eq!(info_field(&info, "role"), Some("slave"));
        assert_eq!(info_field(&info, "master_repl_offset"), Some("42"));
        assert_eq!(info_field(&info, "nope"), None);
    }

    #[test]
    fn commands_encode_as_resp_arrays() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }
}
