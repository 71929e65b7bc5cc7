//! Destination URLs ("regions"): local directories (`file:///path`) and S3-compatible buckets
//! (`s3://bucket/prefix?region=R&endpoint=URL&profile=NAME`), parsed and checked; credentials
//! in a URL are refused.

use std::fmt;
use std::path::PathBuf;

use url::Url;

use crate::error::{Error, Result};
use fleetsnap_core::policy::ObjectLock;

/// A parsed destination URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DestSpec {
    /// A local directory.
    File { root: PathBuf },
    /// An S3-compatible bucket.
    S3 {
        bucket: String,
        prefix: String,
        region: String,
        endpoint: Option<String>,
        profile: Option<String>,
        path_style: bool,
        /// S3 Object Lock on every object written: mode and days.
        object_lock: Option<ObjectLock>,
    },
}

impl fmt::Display for DestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DestSpec::File { root } => write!(f, "file://{}", root.display()),
            DestSpec::S3 {
                bucket,
                prefix,
                region,
                ..
            } => {
                write!(f, "s3://{bucket}")?;
                if !prefix.is_empty() {
                    write!(f, "/{prefix}")?;
                }
                write!(f, " ({region})")
            }
        }
    }
}

impl DestSpec {
    /// Parses `file:///path` or
    /// `s3://bucket/prefix?region=…&endpoint=…&profile=…&path_style=…&object_lock=MODE:DAYS`.
    pub fn parse(text: &str) -> Result<Self> {
        let shown = crate::redis::redacted(text);
        let bad = |why: String| {
            Error::Input(format!(
                "destination {shown:?} is not valid: {why}; expected file:///PATH or s3://BUCKET[/PREFIX]?region=R[&endpoint=URL][&profile=NAME]"
            ))
        };
        let url = Url::parse(text).map_err(|e| bad(e.to_string()))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("credentials in a destination URL are refused, never stored or shown: put them in a profile of the AWS credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials) and name it with profile=NAME".into()));
        }
        match url.scheme() {
            "file" => {
                if url.query().is_some() || url.host_str().is_some_and(|h| !h.is_empty()) {
                    return Err(bad(
                        "a file destination takes an absolute path and no parameters".into(),
                    ));
                }
                Ok(DestSpec::File {
                    root: PathBuf::from(url.path()),
                })
            }
            "s3" => {
                let bucket = url
                    .host_str()
                    .filter(|b| b.len() >= 3)
                    .ok_or_else(|| bad("the bucket name needs 3 or more characters".into()))?
                    .to_string();
                let prefix = url.path().trim_matches('/').to_string();
                let (mut region, mut endpoint, mut profile, mut path_style, mut object_lock) =
                    (None, None, None, None, None);
                for (k, v) in url.query_pairs() {
                    match k.as_ref() {
                        "region" => region = Some(v.to_string()),
                        "endpoint" => endpoint = Some(v.to_string()),
                        "profile" => profile = Some(v.to_string()),
                        "path_style" => path_style = Some(v == "true"),
                        "object_lock" => object_lock = Some(v.parse::<ObjectLock>().map_err(bad)?),
                        other => {
                            return Err(bad(format!(
                                "unknown parameter {other:?} (known: region, endpoint, profile, path_style, object_lock)"
                            )));
                        }
                    }
                }
                let region = region
                    .or_else(|| std::env::var("AWS_REGION").ok())
                    .ok_or_else(|| bad("no region: add ?region=NAME".into()))?;
                let path_style = path_style.unwrap_or(endpoint.is_some());
                Ok(DestSpec::S3 {
                    bucket,
                    prefix,
                    region,
                    endpoint,
                    profile,
                    path_style,
                    object_lock,
                })
            }
            other => Err(bad(format!("scheme {other:?} is not supported"))),
        }
    }

    /// The name of the region this destination is, for reports.
    pub fn region_name(&self) -> String {
        match self {
            DestSpec::File { root } => format!("file:{}", root.display()),
            DestSpec::S3 { region, bucket, .. } => format!("{region}/{bucket}"),
        }
    }

    /// The key prefix inside the destination.
    pub fn prefix(&self) -> &str {
        match self {
            DestSpec::File { .. } => "",
            DestSpec::S3 { prefix, .. } => prefix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_parse() {
        assert_eq!(
            DestSpec::parse("file:///var/backups").unwrap(),
            DestSpec::File {
                root: "/var/backups".into()
            }
        );
        let s = DestSpec::parse(
            "s3://bkt/a/b?region=eu-west-1&endpoint=http://127.0.0.1:9000&profile=eu",
        )
        .unwrap();
        assert_eq!(
            s,
            DestSpec::S3 {
                bucket: "bkt".into(),
                prefix: "a/b".into(),
                region: "eu-west-1".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                profile: Some("eu".into()),
                path_style: true,
                object_lock: None,
            }
        );
        for bad in [
            "s3://ab?region=x",
            "s3://abc?region=x&color=red",
            "s3://abc?region=x&object_lock=forever:3",
            "s3://abc?region=x&object_lock=governance:0",
            "ftp://x/y",
            "file://host/x",
        ] {
            let e = DestSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("expected file:///PATH"), "{bad}: {e}");
        }
    }
}
