//! Which server a node runs, Redis or Valkey, and its own version. Valkey reports Redis's
//! compatibility version (7.2.4) as `redis_version`; its own is `valkey_version`, and
//! `server_name:valkey` says which it is.

use serde::{Deserialize, Serialize};

/// Redis or Valkey.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    /// Redis (and servers that say nothing else).
    #[default]
    Redis,
    /// Valkey.
    Valkey,
}

/// A server: its flavour and its own version (`valkey 8.1.8`, `redis 7.0.15`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// Redis or Valkey.
    pub flavour: Flavour,
    /// Its own version (`valkey_version` for Valkey, `redis_version` for Redis).
    pub version: String,
}

impl Server {
    /// The server `INFO server` describes (`get` reads one of its fields); `None` without a
    /// version.
    pub fn from_info<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Server> {
        let (flavour, version) = match get("server_name") {
            Some("valkey") => (Flavour::Valkey, get("valkey_version")?),
            _ => (Flavour::Redis, get("redis_version")?),
        };
        Some(Server {
            flavour,
            version: version.to_string(),
        })
    }

    /// `(major, minor)` of its version.
    fn major_minor(&self) -> Option<(u32, u32)> {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().ok());
        Some((parts.next()??, parts.next()??))
    }

    /// The RDB version it writes, which is also the newest it loads: Redis 7.4 and 8 write 12,
    /// 7.2 11, 7.0 10; Valkey 7.2 and 8 write 11, Valkey 9 writes 80 (its own numbering).
    pub fn rdb_version(&self) -> Option<u16> {
        let (major, minor) = self.major_minor()?;
        Some(match (self.flavour, major, minor) {
            (Flavour::Valkey, 9.., _) => 80,
            (Flavour::Valkey, 8, _) => 11,
            (_, 8.., _) | (_, 7, 4..) => 12,
            (_, 7, 2..) => 11,
            (_, 7, _) => 10,
            (_, 5..=6, _) => 9,
            (_, 4, _) => 8,
            _ => 7,
        })
    }
}

impl Server {
    /// Whether it has hash fields' expiries (HPEXPIREAT): Redis 7.4 and later, Valkey 9 and
    /// later.
    pub fn has_hash_field_expiry(&self) -> bool {
        self.major_minor().is_some_and(|v| match self.flavour {
            Flavour::Redis => v >= (7, 4),
            Flavour::Valkey => v.0 >= 9,
        })
    }

    /// Whether it loads RDB version `v` (a file, or a `RESTORE` payload): up to its own within
    /// its numbering. Valkey 9 reads Redis's 11 and older and its own 80 but not 12 to 79, which
    /// Redis 7.4 and later write; Redis reads nothing of Valkey's 80.
    pub fn reads_rdb(&self, v: u16) -> bool {
        let Some(own) = self.rdb_version() else {
            return false;
        };
        if own >= 80 {
            v <= 11 || (80..=own).contains(&v)
        } else {
            v <= own
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.flavour {
            Flavour::Redis => "redis",
            Flavour::Valkey => "valkey",
        };
        write!(f, "{name} {}", self.version)
    }
}

impl std::str::FromStr for Server {
    type Err = String;

    /// `redis 7.0.15`, `valkey 8.1.8`; a bare version is Redis's (what the first manifests
    /// recorded as `redis_version`).
    fn from_str(s: &str) -> Result<Self, String> {
        let (flavour, version) = match s.split_once(' ') {
            Some(("redis", v)) => (Flavour::Redis, v),
            Some(("valkey", v)) => (Flavour::Valkey, v),
            Some(_) => return Err(format!("{s:?} is not `redis VERSION` or `valkey VERSION`")),
            None => (Flavour::Redis, s),
        };
        Ok(Server {
            flavour,
            version: version.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_field_expiry_is_known_by_version() {
        let s = |flavour, v: &str| Server {
            flavour,
            version: v.into(),
        };
        assert!(!s(Flavour::Redis, "7.0.15").has_hash_field_expiry());
        assert!(s(Flavour::Redis, "7.4.1").has_hash_field_expiry());
        assert!(s(Flavour::Redis, "8.0.2").has_hash_field_expiry());
        assert!(!s(Flavour::Valkey, "8.1.8").has_hash_field_expiry());
        assert!(s(Flavour::Valkey, "9.0.0").has_hash_field_expiry());
    }

    fn info(fields: &[(&'static str, &'static str)]) -> Option<Server> {
        Server::from_info(|k| fields.iter().find(|(f, _)| *f == k).map(|(_, v)| *v))
    }

    #[test]
    fn valkey_is_told_apart_from_its_compatibility_version() {
        let v = info(&[
            ("redis_version", "7.2.4"),
            ("server_name", "valkey"),
            ("valkey_version", "8.1.8"),
        ])
        .unwrap();
        assert_eq!(v.to_string(), "valkey 8.1.8");
        assert_eq!(v.rdb_version(), Some(11));
        let r = info(&[("redis_version", "7.0.15")]).unwrap();
        assert_eq!(r.to_string(), "redis 7.0.15");
        assert_eq!(r.rdb_version(), Some(10));
        assert_eq!(
            "valkey 9.0.0".parse::<Server>().unwrap().rdb_version(),
            Some(80)
        );
        assert_eq!(
            "redis 8.2.1".parse::<Server>().unwrap().rdb_version(),
            Some(12)
        );
        assert_eq!("7.2.4".parse::<Server>().unwrap().flavour, Flavour::Redis);
        for (v, rdb) in [("7.2.4", 11), ("7.4.0", 12), ("6.2.14", 9)] {
            assert_eq!(v.parse::<Server>().unwrap().rdb_version(), Some(rdb), "{v}");
        }
        assert_eq!("x".parse::<Server>().unwrap().rdb_version(), None);
        assert!("keydb 6".parse::<Server>().is_err());
        assert!(info(&[("server_name", "valkey")]).is_none());
    }
}
