//! Where a Redis node is and how to log in: `redis://` and `rediss://` URLs.

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::error::Error;

/// TLS settings for `rediss://`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// CA bundle to verify the server with.
    pub ca: PathBuf,
    /// Client certificate and key, when the server asks for one (`tls-auth-clients`).
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name to verify the server certificate against; the host by default.
    pub server_name: String,
}

/// A parsed Redis URL. Its `Display` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user; `None` means the `default` user.
    pub user: Option<String>,
    /// Password, from the URL, `password_file=` or `FLEETSNAP_REDIS_PASSWORD`.
    pub password: Option<String>,
    /// TLS, for `rediss://`.
    pub tls: Option<TlsSettings>,
    /// The name `PSYNC` goes by on this node (`psync_command=`: some managed services grant a
    /// renamed one on request).
    pub psync_command: Option<String>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

impl fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        match &self.user {
            Some(u) => write!(f, "{scheme}://{u}@{}:{}", self.host, self.port),
            None => write!(f, "{scheme}://{}:{}", self.host, self.port),
        }
    }
}

impl RedisTarget {
    /// `host:port`, as recorded in manifests.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Parses a URL such as `redis://user:pass@10.0.0.5:6379` or
    /// `rediss://host:6380?ca=/etc/redis/ca.pem&cert=c.pem&key=k.pem`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let shown = redacted(text);
        let bad = |why: &str| {
            Error::Input(format!(
                "Redis URL {shown:?} is not valid: {why}; expected redis://[USER[:PASSWORD]@]HOST[:PORT] or rediss://…?ca=PATH"
            ))
        };
        let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => {
                return Err(bad(&format!(
                    "scheme {other:?} is neither redis nor rediss"
                )));
            }
        };
        let host = url
            .host_str()
            .ok_or_else(|| bad("it has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port().unwrap_or(6379);
        let user = match url.username() {
            "" => None,
            u => Some(decode(u)),
        };
        let mut password = url.password().map(decode);
        let (mut ca, mut cert, mut key, mut server_name) = (None, None, None, None);
        let mut psync_command = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "password_file" => {
                    let p = std::fs::read_to_string(v.as_ref()).map_err(|e| {
                        Error::Input(format!(
                            "cannot read the Redis password file {v}: {e}; check the path and its permissions"
                        ))
                    })?;
                    password = Some(p.trim_end_matches(['\n', '\r']).to_string());
                }
                "ca" => ca = Some(PathBuf::from(v.as_ref())),
                "cert" => cert = Some(PathBuf::from(v.as_ref())),
                "key" => key = Some(PathBuf::from(v.as_ref())),
                "sni" => server_name = Some(v.to_string()),
                "psync_command" => {
                    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic()) {
                        return Err(bad("psync_command= names a command: printable, no spaces"));
                    }
                    psync_command = Some(v.to_string());
                }
                other => {
                    return Err(bad(&format!(
                        "unknown parameter {other:?} (known: password_file, ca, cert, key, sni, psync_command)"
                    )));
                }
            }
        }
        if password.is_none()
            && let Ok(p) = std::env::var("FLEETSNAP_REDIS_PASSWORD")
            && !p.is_empty()
        {
            password = Some(p);
        }
        let tls = if tls {
            let ca = ca.unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
            let client_cert = match (cert, key) {
                (Some(c), Some(k)) => Some((c, k)),
                (None, None) => None,
                _ => return Err(bad("cert= and key= must be given together")),
            };
            Some(TlsSettings {
                ca,
                client_cert,
                server_name: server_name.unwrap_or_else(|| host.clone()),
            })
        } else {
            if ca.is_some() || cert.is_some() || key.is_some() {
                return Err(bad("ca=, cert= and key= need the rediss:// scheme"));
            }
            None
        };
        Ok(Self {
            host,
            port,
            user,
            password,
            tls,
            psync_command,
        })
    }

    /// The name `PSYNC` goes by on this node.
    pub fn psync(&self) -> &[u8] {
        self.psync_command.as_deref().unwrap_or("PSYNC").as_bytes()
    }
}

/// A URL as it may be shown: the password in its user part and every parameter's value
/// replaced by `***`, whether or not the URL parses.
pub fn redacted(text: &str) -> String {
    let (base, query) = match text.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (text, None),
    };
    let mut out = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find(['/', '#']) {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let authority = match authority.rsplit_once('@') {
                Some((user, host)) => match user.split_once(':') {
                    Some((name, _)) => format!("{name}:***@{host}"),
                    None if !user.is_empty() => format!("***@{host}"),
                    None => format!("@{host}"),
                },
                None => authority.to_string(),
            };
            format!("{scheme}://{authority}{path}")
        }
        None if base.contains('@') => "***".to_string(),
        None => base.to_string(),
    };
    if let Some(q) = query {
        let keys: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&keys.join("&"));
    }
    out
}

fn decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_users_passwords_and_tls() {
        let t = RedisTarget::parse("redis://backup:s%40cret@10.0.0.5:6380").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_deref(),
                t.password.as_deref()
            ),
            ("10.0.0.5", 6380, Some("backup"), Some("s@cret"))
        );
        assert_eq!(t.to_string(), "redis://backup@10.0.0.5:6380");
        assert!(!format!("{t:?}").contains("cret"));
        let t = RedisTarget::parse("rediss://h?ca=/ca.pem").unwrap();
        assert_eq!(t.port, 6379);
        assert_eq!(t.tls.unwrap().ca, PathBuf::from("/ca.pem"));
    }

    #[test]
    fn a_url_that_does_not_parse_never_shows_its_password() {
        for (url, secret) in [
            ("redis://:PW-1@host?passwordfile=/x", "PW-1"),
            ("redis://user:PW-2@ho st:6379", "PW-2"),
            ("redis://user:PW-3@host:99999", "PW-3"),
            ("rediss://u:PW-4@h?ca=/x&cert=/y", "PW-4"),
            ("redis:/user:PW-5@h", "PW-5"),
            ("user:PW-6@h", "PW-6"),
        ] {
            let e = RedisTarget::parse(url).unwrap_err().to_string();
            assert!(!e.contains(secret), "{url}: {e}");
        }
        let e = crate::storage::DestSpec::parse("s3://AKIAX:SECRET-8@bucket/p?region=r")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("SECRET-8") && e.contains("profile"), "{e}");
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for bad in [
            "http://h",
            "redis://h?ca=x",
            "redis://h?bogus=1",
            "rediss://h?cert=a",
            "nonsense",
        ] {
            let e = RedisTarget::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected redis://"), "{bad}: {e}");
        }
    }
}
