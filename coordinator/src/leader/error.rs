//! What the leader's operations fail with. The gRPC edge (`api/`) turns each into a status;
//! nothing below it speaks tonic.

/// A refused or failed operation, with the message an operator reads.
#[derive(Clone, Debug, thiserror::Error)]
pub enum LeaderError {
    /// This coordinator does not lead; `leader` is the leader's address when one is known.
    #[error("{message}")]
    NotLeader {
        message: String,
        leader: Option<String>,
    },
    /// The request is malformed or names something invalid.
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is valid but the fleet's state refuses it now.
    #[error("{0}")]
    Refused(String),
    /// The caller may not do this.
    #[error("{0}")]
    Denied(String),
    /// A part needed is unreachable or not ready: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Something broke inside the coordinator.
    #[error("{0}")]
    Internal(String),
}

impl LeaderError {
    /// The message alone, as an operator reads it.
    pub fn message(&self) -> &str {
        match self {
            Self::NotLeader { message, .. } => message,
            Self::Invalid(m)
            | Self::NotFound(m)
            | Self::Refused(m)
            | Self::Denied(m)
            | Self::Unavailable(m)
            | Self::Internal(m) => m,
        }
    }

    pub(crate) fn invalid(m: impl Into<String>) -> Self {
        Self::Invalid(m.into())
    }
    pub(crate) fn not_found(m: impl Into<String>) -> Self {
        Self::NotFound(m.into())
    }
    pub(crate) fn refused(m: impl Into<String>) -> Self {
        Self::Refused(m.into())
    }
    pub(crate) fn denied(m: impl Into<String>) -> Self {
        Self::Denied(m.into())
    }
    pub(crate) fn unavailable(m: impl Into<String>) -> Self {
        Self::Unavailable(m.into())
    }
    pub(crate) fn internal(m: impl Into<String>) -> Self {
        Self::Internal(m.into())
    }
}
