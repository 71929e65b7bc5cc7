//! Domain errors as gRPC statuses: the only place the leader's errors meet tonic.

use tonic::Status;

use crate::leader::{LEADER_KEY, LeaderError};

impl From<LeaderError> for Status {
    fn from(e: LeaderError) -> Self {
        match e {
            LeaderError::NotLeader { message, leader } => {
                let mut status = match &leader {
                    Some(_) => Status::failed_precondition(message),
                    None => Status::unavailable(message),
                };
                if let Some(v) = leader.and_then(|a| a.parse().ok()) {
                    status.metadata_mut().insert(LEADER_KEY, v);
                }
                status
            }
            LeaderError::Invalid(m) => Status::invalid_argument(m),
            LeaderError::NotFound(m) => Status::not_found(m),
            LeaderError::Refused(m) => Status::failed_precondition(m),
            LeaderError::Denied(m) => Status::permission_denied(m),
            LeaderError::Unavailable(m) => Status::unavailable(m),
            LeaderError::Internal(m) => Status::internal(m),
        }
    }
}
