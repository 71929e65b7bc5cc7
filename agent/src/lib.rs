//! The fleetsnap agent library: Redis sources, the snapshot pipeline, storage destinations,
//! verification and restores. The `fleetsnap-agent` binary is a thin shell over it.

pub mod catalog;
pub mod cli;
pub mod confined;
pub mod cut;
pub mod daemon;
pub mod dest;
pub mod drill;
pub mod error;
pub mod failover;
pub mod instant;
pub mod online;
pub mod pipeline;
pub mod replace;
pub mod resp;
pub mod restore;
pub mod restore_job;
pub mod snapshot;
pub mod source;
pub mod spool;
pub mod target;
pub mod watch;

pub use error::{Error, Result};

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call first thing in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
