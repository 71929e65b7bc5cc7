//! The chain of encodings applied to a snapshot between the source and storage.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One encoding step, in the order it is applied when writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "codec")]
pub enum Codec {
    /// zstd compression at the given level.
    Zstd { level: i32 },
    /// age encryption to one or more X25519 recipients.
    Age,
}

/// The encodings applied to an object, in write order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CodecChain(pub Vec<Codec>);

impl CodecChain {
    /// The file-name suffix for this chain, e.g. `.zst.age`.
    pub fn suffix(&self) -> String {
        self.0
            .iter()
            .map(|c| match c {
                Codec::Zstd { .. } => ".zst",
                Codec::Age => ".age",
            })
            .collect()
    }

    /// Whether the chain includes age encryption.
    pub fn encrypted(&self) -> bool {
        self.0.contains(&Codec::Age)
    }

    /// The zstd level, if compressed.
    pub fn zstd_level(&self) -> Option<i32> {
        self.0.iter().find_map(|c| match c {
            Codec::Zstd { level } => Some(*level),
            Codec::Age => None,
        })
    }
}

/// The `--compress` choice: `zstd:LEVEL`, `zstd` or `none`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// zstd at a level from 1 to 19.
    Zstd(i32),
}

/// A `--compress` value that is not understood.
#[derive(Debug, thiserror::Error)]
#[error(
    "compression {0:?} is not valid: use `zstd:LEVEL` with LEVEL from 1 to 19, `zstd` (level 3) or `none`"
)]
pub struct BadCompression(String);

impl FromStr for Compression {
    type Err = BadCompression;
    fn from_str(s: &str) -> Result<Self, BadCompression> {
        let bad = || BadCompression(s.to_string());
        match s {
            "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd(3)),
            _ => {
                let level = s.strip_prefix("zstd:").ok_or_else(bad)?;
                let level: i32 = level.parse().map_err(|_| bad())?;
                if (1..=19).contains(&level) {
                    Ok(Self::Zstd(level))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_parses_and_refuses() {
        assert_eq!(
            "zstd:7".parse::<Compression>().unwrap(),
            Compression::Zstd(7)
        );
        assert_eq!("zstd".parse::<Compression>().unwrap(), Compression::Zstd(3));
        assert_eq!("none".parse::<Compression>().unwrap(), Compression::None);
        for bad in ["gzip", "zstd:0", "zstd:20", "zstd:x"] {
            let e = bad.parse::<Compression>().unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("zstd:LEVEL"), "{e}");
        }
    }

    #[test]
    fn suffix_follows_the_chain() {
        let c = CodecChain(vec![Codec::Zstd { level: 3 }, Codec::Age]);
        assert_eq!(c.suffix(), ".zst.age");
        assert!(c.encrypted());
        assert_eq!(CodecChain::default().suffix(), "");
    }
}
