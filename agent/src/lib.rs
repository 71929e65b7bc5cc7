//! The fleetsnap agent library: Redis sources, the snapshot pipeline, storage destinations,
//! verification and restores. The `fleetsnap-agent` binary is a thin shell over it.
//!
//! Folders by role: [`redis`] (connections, targets, the INFO watch), [`storage`] (regions and
//! the spool), [`snapshot`] (sources, the pipeline, instants and cuts), [`restore`] (fetch,
//! online, replace, drills), [`runbook`] (failover), [`catalog`] (tasks on stored sets),
//! [`daemon`] (the session with the coordinator and its jobs), [`cli`]; [`config`] is the
//! agent's config file.

pub mod archive;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod error;
pub mod redis;
pub mod restore;
pub mod runbook;
pub mod snapshot;
pub mod storage;
mod threads;

pub use error::{Error, Result};

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Call first thing in `main`.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
