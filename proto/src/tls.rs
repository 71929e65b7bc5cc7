//! Mutual TLS between agents, coordinators and the CLI, and the identities certificates carry.
//!
//! Every certificate of a fleet is signed by the fleet's CA and names its holder in one URI
//! subject alternative name, `fleetsnap://<role>/<name>`: `agent/<agent-id>`, `peer/<node-id>`
//! (coordinators), `admin/<name>` (the CLI). Coordinators also carry the DNS name
//! [`SERVER_NAME`], which every client checks, so a coordinator's certificate does not depend on
//! the address it is reached at.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The DNS name in every coordinator certificate, checked by every client.
pub const SERVER_NAME: &str = "fleetsnap-coordinator";

/// Who may call what.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agent: the agent service only.
    Agent,
    /// A coordinator: the Raft service.
    Peer,
    /// An operator's CLI: the admin service.
    Admin,
}

impl Role {
    /// The role's word in certificates.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Peer => "peer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The holder of a certificate.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// Its role.
    pub role: Role,
    /// Agent id, coordinator node id or operator name.
    pub name: String,
}

impl PeerIdentity {
    /// The URI a certificate carries for this identity.
    pub fn uri(&self) -> String {
        format!("fleetsnap://{}/{}", self.role, self.name)
    }

    /// Reads `fleetsnap://<role>/<name>`.
    pub fn from_uri(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("fleetsnap://")?;
        let (role, name) = rest.split_once('/')?;
        let role = match role {
            "agent" => Role::Agent,
            "peer" => Role::Peer,
            "admin" => Role::Admin,
            _ => return None,
        };
        (!name.is_empty() && !name.contains('/')).then(|| Self {
            role,
            name: name.to_string(),
        })
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.role, self.name)
    }
}

/// The identity in a DER certificate (already verified against the CA by the TLS layer).
pub fn identity_of(der: &[u8]) -> Result<PeerIdentity, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the client certificate does not parse: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("the client certificate's names do not parse: {e}"))?;
    san.into_iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .find_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => PeerIdentity::from_uri(u),
            _ => None,
        })
        .ok_or_else(|| {
            "the client certificate names no fleetsnap identity (a URI SAN \
             fleetsnap://agent|peer|admin/NAME); issue it with `fleetsnap certs init`"
                .to_string()
        })
}

/// Certificate files, as every config and the CLI name them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The fleet's CA certificate (PEM).
    pub ca: PathBuf,
    /// This process's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

/// The name this host goes by: `$HOSTNAME` (a Kubernetes pod's name), else the kernel's.
pub fn host_name() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// How a process talks gRPC: mutual TLS, or plain text behind `--insecure`.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Mutual TLS with these files.
    Tls(Loaded),
    /// Plain text: no identities, anyone who reaches the port may call anything.
    Insecure,
}

/// Certificate files read into memory.
#[derive(Clone, Debug)]
pub struct Loaded {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
    /// The identity in this process's own certificate.
    pub identity: PeerIdentity,
}

fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the {what} {}: {e}; create a fleet's certificates with \
             `fleetsnap certs init --dir DIR`",
            path.display()
        )
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(format!("the {what} {} is not a PEM file", path.display()));
    }
    Ok(bytes)
}

impl TlsFiles {
    /// The same files with `placeholder` (`{node_id}`, `{agent_id}`) in their paths replaced
    /// by `value`: one Secret can then hold every peer's or agent's files.
    pub fn with(&self, placeholder: &str, value: &str) -> Self {
        let fill = |p: &Path| PathBuf::from(p.to_string_lossy().replace(placeholder, value));
        Self {
            ca: fill(&self.ca),
            cert: fill(&self.cert),
            key: fill(&self.key),
        }
    }

    /// The files of `role`/`name` in a directory made by `fleetsnap certs init`: `ca.pem`,
    /// `ROLE-NAME.pem`, `ROLE-NAME.key`.
    pub fn in_dir(dir: &Path, role: Role, name: &str) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{role}-{name}.pem")),
            key: dir.join(format!("{role}-{name}.key")),
        }
    }

    /// Reads the files and the identity of the certificate, with errors that name the file.
    pub fn load(&self) -> Result<Loaded, String> {
        let ca = read_pem(&self.ca, "CA certificate")?;
        let cert = read_pem(&self.cert, "certificate")?;
        let key = read_pem(&self.key, "private key")?;
        let der = first_der(&cert).ok_or_else(|| {
            format!(
                "the certificate {} holds no certificate",
                self.cert.display()
            )
        })?;
        let identity = identity_of(&der).map_err(|e| format!("{}: {e}", self.cert.display()))?;
        Ok(Loaded {
            ca,
            cert,
            key,
            identity,
        })
    }
}

/// The first certificate of a PEM bundle, as DER.
fn first_der(pem: &[u8]) -> Option<Vec<u8>> {
    rustls_pemfile::certs(&mut &pem[..])
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

impl Loaded {
    /// The server side: this certificate, and clients must present one signed by the CA.
    /// HTTP/2 only, as gRPC needs.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &self.ca[..]) {
            let cert = cert.map_err(|e| format!("the CA certificate does not parse: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("the CA certificate is not usable: {e}"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.into(),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("the CA certificate cannot verify clients: {e}"))?;
        let chain = rustls_pemfile::certs(&mut &self.cert[..])
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate does not parse: {e}"))?;
        let key = rustls_pemfile::private_key(&mut &self.key[..])
            .map_err(|e| format!("the private key does not parse: {e}"))?
            .ok_or("the private key file holds no private key")?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }

    /// The client side: trust only the fleet's CA, present this certificate.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(SERVER_NAME)
            .timeout(Duration::from_secs(10))
    }
}

impl Transport {
    /// An endpoint for `address` (`host:port`), not yet connected.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        let scheme = match self {
            Transport::Tls(_) => "https",
            Transport::Insecure => "http",
        };
        let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
            .map_err(|e| format!("{address:?} is not a host:port address: {e}"))?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(4))
            .keep_alive_while_idle(true);
        match self {
            Transport::Tls(files) => endpoint
                .tls_config(files.client())
                .map_err(|e| format!("TLS settings for {address}: {}", describe(&e))),
            Transport::Insecure => Ok(endpoint),
        }
    }

    /// Connects to `address`, with an error that says what went wrong and what to check.
    pub async fn connect(&self, address: &str) -> Result<Channel, String> {
        self.endpoint(address)?
            .connect()
            .await
            .map_err(|e| connect_error(address, &e))
    }
}

/// Every cause in an error chain, joined: tonic's top-level errors say little by themselves.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    parts.join(": ")
}

/// The certificate problem an error text shows, as a hint for whichever side reads it; `None`
/// when the error is not about certificates.
pub fn certificate_problem(text: &str) -> Option<&'static str> {
    let has = |keys: &[&str]| keys.iter().any(|k| text.contains(k));
    if has(&[
        "UnknownIssuer",
        "unknown issuer",
        "BadSignature",
        "UnknownCA",
        "DecryptError",
    ]) {
        Some(
            "the certificates do not verify against one CA: both sides need certificates from \
             the same `fleetsnap certs init` (or the same CA)",
        )
    } else if has(&[
        "CertificateRequired",
        "certificate required",
        "NoCertificatesPresented",
    ]) {
        Some("no client certificate was presented: the client needs cert and key")
    } else if has(&["Expired", "NotValidYet"]) {
        Some("a certificate is outside its validity dates: issue new ones")
    } else {
        None
    }
}

/// A connection error with the likely cause spelled out.
pub fn connect_error(address: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let text = describe(e);
    let hint = match certificate_problem(&text) {
        Some(h) => format!("; {h}"),
        None if text.contains("Connection refused") => {
            "; is a coordinator running there?".to_string()
        }
        None if text.contains("InvalidContentType") || text.contains("corrupt message") => {
            "; it does not speak TLS: is it running with --insecure?".to_string()
        }
        None => String::new(),
    };
    format!("cannot reach coordinator {address}: {text}{hint}")
}

/// The identity of the caller of a request, or `None` on a plain-text (`--insecure`) server.
pub fn caller<T>(req: &tonic::Request<T>) -> Result<Option<PeerIdentity>, tonic::Status> {
    match req.peer_certs() {
        None => Ok(None),
        Some(certs) => {
            let der = certs.first().ok_or_else(|| {
                tonic::Status::unauthenticated("no client certificate: mutual TLS is required")
            })?;
            identity_of(der)
                .map(Some)
                .map_err(tonic::Status::unauthenticated)
        }
    }
}

/// Checks that the caller holds `role`; plain-text servers let everyone through.
pub fn require<T>(
    req: &tonic::Request<T>,
    role: Role,
    service: &str,
) -> Result<Option<PeerIdentity>, tonic::Status> {
    match caller(req)? {
        Some(id) if id.role != role => Err(tonic::Status::permission_denied(format!(
            "{service} needs a certificate with the {role} role; this one names {id}"
        ))),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_through_their_uri() {
        for (role, name) in [
            (Role::Agent, "host-a"),
            (Role::Peer, "3"),
            (Role::Admin, "ops"),
        ] {
            let id = PeerIdentity {
                role,
                name: name.into(),
            };
            assert_eq!(PeerIdentity::from_uri(&id.uri()), Some(id));
        }
        assert_eq!(PeerIdentity::from_uri("fleetsnap://root/x"), None);
        assert_eq!(PeerIdentity::from_uri("fleetsnap://agent/"), None);
        assert_eq!(PeerIdentity::from_uri("spiffe://agent/x"), None);
    }
}
