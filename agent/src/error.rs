//! The agent library's error type. Every message names the input and says what to do.

use std::path::PathBuf;

/// An error of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user gave something unusable (a URL, a flag value, an id).
    #[error("{0}")]
    Input(String),
    /// Talking to a Redis node failed.
    #[error("Redis {target}: {message}")]
    Redis { target: String, message: String },
    /// The node refuses replication (the command renamed or disabled, or not granted).
    #[error("Redis {target}: {message}")]
    SyncRefused { target: String, message: String },
    /// A storage destination failed.
    #[error("destination {dest}: {message}")]
    Storage { dest: String, message: String },
    /// The snapshot bytes are not a valid RDB.
    #[error("snapshot from {source_name} refused: {error}")]
    Rdb {
        source_name: String,
        error: fleetsnap_core::RdbError,
    },
    /// A local file operation failed.
    #[error("{what} {path}: {source}{}", io_hint(.source))]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Decryption or decompression failed.
    #[error("{0}")]
    Decode(String),
    /// Every destination failed, or the backup could not be found anywhere.
    #[error("{0}")]
    Failed(String),
    /// A consistent cut was given up.
    #[error("consistent cut: {0}")]
    Cut(String),
}

fn io_hint(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(28) => " (the disk is full: free space on it)",
        Some(13) => " (permission denied: check the owner and mode)",
        _ => "",
    }
}

impl Error {
    pub(crate) fn redis(target: impl ToString, message: impl Into<String>) -> Self {
        Self::Redis {
            target: target.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn storage(dest: impl ToString, message: impl Into<String>) -> Self {
        Self::Storage {
            dest: dest.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn file(
        what: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Self::File {
            what,
            path: path.into(),
            source,
        }
    }
}

/// Result with the agent's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
