//! Identifier newtypes. Names travel into object keys, so they are restricted to a safe alphabet.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// A name or id that failed validation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error(
        "{kind} {value:?} is not valid: use 1 to 64 characters from A-Z a-z 0-9 . _ - (not starting with . or -)"
    )]
    BadName { kind: &'static str, value: String },
    #[error(
        "backup id {0:?} is not valid: expected the form 20261121T053729Z-1a2b3c, as printed by `snapshot` and `ls`"
    )]
    BadBackupId(String),
}

/// Checks a name that travels into object keys or tables: 1 to 64 characters from
/// `A-Z a-z 0-9 . _ -`, not starting with `.` or `-`. `kind` names it in the error.
pub fn check_name(kind: &'static str, value: &str) -> Result<(), IdError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with(['.', '-'])
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(IdError::BadName {
            kind,
            value: value.to_string(),
        })
    }
}

macro_rules! name_newtype {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps a name.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_name($kind, &value)?;
                Ok(Self(value))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_newtype!(
    /// The name of a cluster: a standalone server, a primary/replica set or a Redis Cluster.
    ClusterId,
    "cluster name"
);
name_newtype!(
    /// The name of a shard within a cluster (one primary and its replicas).
    ShardId,
    "shard name"
);

/// A backup id. Its text sorts by creation time: `YYYYMMDDTHHMMSSZ-xxxxxx`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// Builds an id from the creation instant and 24 random bits supplied by the caller.
    pub fn from_parts(at: OffsetDateTime, random: u32) -> Self {
        let at = at.to_offset(time::UtcOffset::UTC);
        Self(format!(
            "{:04}{:02}{:02}T{:02}{:02}{:02}Z-{:06x}",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            random & 0xff_ffff
        ))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for BackupId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let b = s.as_bytes();
        let ok = b.len() == 23
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[8] == b'T'
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[15] == b'Z'
            && b[16] == b'-'
            && b[17..]
                .iter()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase());
        if ok {
            Ok(Self(s.to_string()))
        } else {
            Err(IdError::BadBackupId(s.to_string()))
        }
    }
}

impl TryFrom<String> for BackupId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        s.parse()
    }
}

impl From<BackupId> for String {
    fn from(v: BackupId) -> String {
        v.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn backup_ids_sort_by_time_and_round_trip() {
        let a = BackupId::from_parts(datetime!(2026-11-21 05:37:29 UTC), 0xabc);
        let b = BackupId::from_parts(datetime!(2026-11-21 05:37:30 UTC), 0x1);
        assert_eq!(a.as_str(), "20261121T053729Z-000abc");
        assert!(a < b);
        assert_eq!(a.as_str().parse::<BackupId>().unwrap(), a);
        assert!("20261121T053729Z-000ABC".parse::<BackupId>().is_err());
        assert!("latest".parse::<BackupId>().is_err());
    }

    #[test]
    fn names_refuse_path_characters() {
        for bad in ["", "a/b", "..", "-x", "a b", &"x".repeat(65)] {
            assert!(ClusterId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["orders", "shard-0", "127.0.0.1-6379", "a_b.c"] {
            assert!(ShardId::new(good).is_ok(), "{good:?} refused");
        }
    }
}
