//! Calling the admin service: try the coordinators given, follow a follower's pointer to the
//! leader, and say plainly which coordinator failed how.

use clap::Args;
use std::future::Future;
use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use fleetsnap_proto::tls::{Role, TlsFiles, Transport};
use fleetsnap_proto::v1::admin_service_client::AdminServiceClient;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

/// How to reach the coordinators.
#[derive(Args, Clone)]
pub struct Conn {
    /// A coordinator address (repeat, or comma-separate); any one leads to the leader.
    #[arg(
        long = "coordinator",
        global = true,
        env = "FLEETSNAP_COORDINATORS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7100"
    )]
    pub coordinators: Vec<String>,
    /// The fleet's CA certificate.
    #[arg(long, global = true, env = "FLEETSNAP_CA", value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// An admin certificate.
    #[arg(long, global = true, env = "FLEETSNAP_CERT", value_name = "PEM")]
    pub cert: Option<PathBuf>,
    /// Its private key.
    #[arg(long, global = true, env = "FLEETSNAP_KEY", value_name = "PEM")]
    pub key: Option<PathBuf>,
    /// Talk to coordinators in plain text (they must run with --insecure too).
    #[arg(long, global = true)]
    pub insecure: bool,
}

/// The metadata key naming the leader in a follower's refusal.
const LEADER_KEY: &str = "fleetsnap-leader";

/// An admin connection factory.
pub struct Admin {
    coordinators: Vec<String>,
    transport: Transport,
}

impl Admin {
    /// From the command line's connection flags.
    pub fn new(conn: &Conn) -> Result<Self> {
        let transport = if conn.insecure {
            eprintln!("warning: --insecure: plain text, no certificates");
            Transport::Insecure
        } else {
            let (Some(ca), Some(cert), Some(key)) = (&conn.ca, &conn.cert, &conn.key) else {
                bail!(
                    "give the fleet's CA and an admin certificate: --ca, --cert, --key (or \
                     FLEETSNAP_CA, FLEETSNAP_CERT, FLEETSNAP_KEY); `fleetsnap certs init` makes \
                     them for a test fleet"
                );
            };
            let files = TlsFiles {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            };
            let loaded = files.load().map_err(|e| anyhow!(e))?;
            if loaded.identity.role != Role::Admin {
                bail!(
                    "{} names {}: the admin service takes an admin certificate \
                     (`fleetsnap certs init --admins NAME`)",
                    cert.display(),
                    loaded.identity
                );
            }
            Transport::Tls(loaded)
        };
        let coordinators: Vec<String> = conn
            .coordinators
            .iter()
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect();
        if coordinators.is_empty() {
            bail!("no coordinator address: give --coordinator HOST:PORT");
        }
        Ok(Self {
            coordinators,
            transport,
        })
    }

    async fn client(&self, address: &str) -> Result<AdminServiceClient<Channel>, String> {
        self.transport
            .connect(address)
            .await
            // A catalog of tens of thousands of sets is one reply of many megabytes.
            .map(|c| AdminServiceClient::new(c).max_decoding_message_size(512 << 20))
    }

    /// Calls the leader: each given coordinator in turn until one answers, following redirects.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(AdminServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut failures = Vec::new();
        for start in &self.coordinators {
            let mut address = start.clone();
            for _hop in 0..4 {
                let client = match self.client(&address).await {
                    Ok(c) => c,
                    Err(e) => {
                        failures.push(e);
                        break;
                    }
                };
                match f(client).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if s.code() == Code::FailedPrecondition => {
                        match s.metadata().get(LEADER_KEY).and_then(|v| v.to_str().ok()) {
                            Some(leader) if leader != address => {
                                eprintln!(
                                    "note: {address} is a follower; asking the leader at {leader}"
                                );
                                address = leader.to_string();
                            }
                            _ => bail!("coordinator {address}: {}", s.message()),
                        }
                    }
                    Err(s) if matches!(s.code(), Code::Unavailable | Code::Unknown) => {
                        failures.push(format!("coordinator {address}: {}", s.message()));
                        break;
                    }
                    Err(s) if s.code() == Code::Unimplemented => bail!(
                        "coordinator {address} does not know this call: it runs an older \
                         fleetsnap-coordinator than this CLI; upgrade the coordinators"
                    ),
                    Err(s) => bail!("coordinator {address}: {}", s.message()),
                }
            }
        }
        bail!(
            "no coordinator answered as the leader:\n  {}\ngive a live coordinator with \
             --coordinator HOST:PORT",
            failures.join("\n  ")
        )
    }

    /// Calls the first coordinator that answers, leader or not.
    pub async fn call_first<T, F, Fut>(&self, f: F) -> Result<T>
    where
        F: Fn(AdminServiceClient<Channel>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        let mut failures = Vec::new();
        for address in &self.coordinators {
            match self.client(address).await {
                Ok(c) => match f(c).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) => failures.push(format!("coordinator {address}: {}", s.message())),
                },
                Err(e) => failures.push(e),
            }
        }
        bail!("no coordinator answered:\n  {}", failures.join("\n  "))
    }
}
