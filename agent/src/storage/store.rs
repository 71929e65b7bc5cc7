//! An opened destination, whichever kind: every key is checked against the names fleetsnap
//! writes and resolved below the destination's prefix here, and only here, before a file region
//! or a bucket sees it; reads stop at the most bytes an object may have.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use fleetsnap_core::manifest::{MANIFEST_MAX_BYTES, check_key};

use super::dest::DestSpec;
use super::file::{self, FileUpload, Region};
use super::s3::{Bucket, S3Upload};
use crate::error::{Error, Result};

/// An opened destination.
#[derive(Clone)]
pub struct Store {
    spec: DestSpec,
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    File(Region),
    S3(Bucket),
}

impl fmt::Display for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.spec.fmt(f)
    }
}

impl Store {
    /// Opens a destination (builds the S3 client; checks nothing remote yet).
    pub async fn open(spec: &DestSpec) -> Result<Self> {
        let inner = match spec {
            DestSpec::File { root } => Inner::File(Region::open(spec, root)),
            DestSpec::S3 { .. } => Inner::S3(Bucket::open(spec).await),
        };
        Ok(Self {
            spec: spec.clone(),
            inner,
        })
    }

    /// The destination's spec.
    pub fn spec(&self) -> &DestSpec {
        &self.spec
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::storage(&self.spec, message)
    }

    /// The part of `key` below the destination's prefix, checked against the names fleetsnap
    /// writes: every key reaches a file or a request only through here.
    fn rel<'a>(&self, key: &'a str) -> Result<&'a str> {
        let prefix = self.spec.prefix();
        let rest = if prefix.is_empty() {
            Some(key)
        } else {
            key.strip_prefix(prefix).and_then(|r| r.strip_prefix('/'))
        };
        let rest = rest.ok_or_else(|| {
            self.err(format!(
                "key {:?} is outside the destination's prefix {prefix:?}: refused",
                key.chars().take(200).collect::<String>()
            ))
        })?;
        check_key(rest).map_err(|e| self.err(e.to_string()))?;
        Ok(rest)
    }

    /// The file a key names in a file region, for messages.
    fn shown(&self, key: &str) -> String {
        match &self.inner {
            Inner::File(region) => region.shown(key).display().to_string(),
            Inner::S3(_) => key.to_string(),
        }
    }

    /// Starts writing an object; nothing is visible under `key` until `finish`.
    pub async fn begin(&self, key: &str) -> Result<Upload> {
        let rel = self.rel(key)?;
        match &self.inner {
            Inner::File(region) => Ok(Upload::File(Box::new(region.begin(rel).await?))),
            Inner::S3(bucket) => Ok(Upload::S3(Box::new(bucket.begin(key)))),
        }
    }

    /// Writes a small object whole (manifests), atomically.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.rel(key)?;
        match &self.inner {
            Inner::File(_) => {
                let mut up = self.begin(key).await?;
                up.write(bytes).await?;
                up.finish().await.map(|_| ())
            }
            Inner::S3(bucket) => bucket.put(key, bytes).await,
        }
    }

    /// Reads an object in chunks. `limit` is the most bytes it may have (its size in a
    /// manifest): a longer object is an error, found before it is read to its end.
    pub async fn get(&self, key: &str, limit: u64) -> Result<Download> {
        let rel = self.rel(key)?;
        let too_long = |size: u64| {
            self.err(format!(
                "{} holds {size} bytes, more than the {limit} it may have: the region's copy was altered or damaged; refused without reading it",
                self.shown(rel)
            ))
        };
        let inner = match &self.inner {
            Inner::File(region) => {
                let (f, path, size) = region.open_file(rel).await?;
                if size > limit {
                    return Err(too_long(size));
                }
                Reading::File(f, path)
            }
            Inner::S3(bucket) => {
                let (body, size) = bucket.get(key).await?;
                if let Some(size) = size
                    && size > limit
                {
                    return Err(too_long(size));
                }
                Reading::S3(body)
            }
        };
        Ok(Download {
            inner,
            store: Box::new(self.clone()),
            key: key.to_string(),
            limit,
            read: 0,
        })
    }

    /// Reads a small object whole (a manifest: at most `MANIFEST_MAX_BYTES`).
    pub async fn get_all(&self, key: &str) -> Result<Vec<u8>> {
        let mut d = self.get(key, MANIFEST_MAX_BYTES).await?;
        let mut out = Vec::new();
        while let Some(c) = d.next().await? {
            out.extend_from_slice(&c);
        }
        Ok(out)
    }

    /// Reads and checks the manifest at `key`: its own rules, and that it names the set whose
    /// directory holds it (a manifest copied into another set's directory is refused).
    pub async fn read_manifest(&self, key: &str) -> Result<fleetsnap_core::Manifest> {
        let bytes = self.get_all(key).await?;
        self.manifest_at(key, &bytes)
    }

    /// `read_manifest` over bytes already read from `key`.
    pub fn manifest_at(&self, key: &str, bytes: &[u8]) -> Result<fleetsnap_core::Manifest> {
        use fleetsnap_core::manifest::{self, MANIFEST_NAME};
        let m = fleetsnap_core::Manifest::from_json(bytes, &format!("{self} {key}"))
            .map_err(|e| self.err(e.to_string()))?;
        let want = format!(
            "{}/{MANIFEST_NAME}",
            manifest::backup_dir(self.spec.prefix(), &m.cluster, &m.backup_id)
        );
        if key != want {
            return Err(self.err(format!(
                "the manifest at {key} names backup {} of cluster {}, whose manifest belongs at {want}: the region's copy was moved or altered; refused",
                m.backup_id, m.cluster
            )));
        }
        Ok(m)
    }

    /// Every key under `prefix`, recursively, that follows the names fleetsnap writes; others
    /// are left out with a warning naming the first, never resolved.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let below = if self.spec.prefix().is_empty() {
            prefix
        } else if prefix.trim_end_matches('/') == self.spec.prefix() {
            ""
        } else {
            self.rel(prefix.trim_end_matches('/'))?
        };
        let below = below.trim_end_matches('/');
        if !below.is_empty() {
            check_key(below).map_err(|e| self.err(e.to_string()))?;
        }
        let (mut out, refused) = match &self.inner {
            Inner::File(region) => region.list(below).await?,
            Inner::S3(bucket) => bucket
                .list(prefix)
                .await?
                .into_iter()
                .partition(|k| self.rel(k).is_ok()),
        };
        if let Some(first) = refused.first() {
            tracing::warn!(
                destination = %self.spec,
                "{} keys do not follow fleetsnap's names and were left alone (first: {:?})",
                refused.len(),
                first.chars().take(200).collect::<String>()
            );
        }
        out.sort();
        Ok(out)
    }

    /// Deletes an object; one already gone is no error. In a file region, the directories it
    /// leaves empty go with it.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let rel = self.rel(key)?;
        match &self.inner {
            Inner::File(region) => region.delete(rel).await,
            Inner::S3(bucket) => bucket.delete(key).await,
        }
    }

    /// The stored size of an object.
    pub async fn size(&self, key: &str) -> Result<u64> {
        let rel = self.rel(key)?;
        match &self.inner {
            Inner::File(region) => region.size(rel).await,
            Inner::S3(bucket) => bucket.size(key).await,
        }
    }
}

/// An object being written.
pub enum Upload {
    /// To a `.partial` file, renamed on finish.
    File(Box<FileUpload>),
    /// An S3 multipart upload (or one PutObject when small).
    S3(Box<S3Upload>),
}

impl Upload {
    /// Appends bytes.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        match self {
            Upload::File(f) => f.write(data).await,
            Upload::S3(up) => up.write(data).await,
        }
    }

    /// Makes the object visible under its key and checks its stored size; returns it.
    pub async fn finish(self) -> Result<u64> {
        match self {
            Upload::File(f) => f.finish().await,
            Upload::S3(up) => up.finish().await,
        }
    }

    /// Drops whatever was written; nothing remains under the key.
    pub async fn abort(self) {
        match self {
            Upload::File(f) => f.abort(),
            Upload::S3(up) => up.abort().await,
        }
    }
}

/// An object being read, never past the most bytes it may have.
pub struct Download {
    inner: Reading,
    store: Box<Store>,
    key: String,
    limit: u64,
    read: u64,
}

enum Reading {
    /// From a file, read on the blocking pool in large chunks.
    File(Arc<std::fs::File>, PathBuf),
    /// From S3 (the bucket is the store's).
    S3(ByteStream),
}

impl Download {
    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        let chunk = match &mut self.inner {
            // One byte past the limit is enough to know the object is too long.
            Reading::File(f, path) => {
                file::read_chunk(f, path, (self.limit - self.read).saturating_add(1)).await?
            }
            Reading::S3(body) => match &self.store.inner {
                Inner::S3(bucket) => bucket.next(&self.key, body).await?,
                Inner::File(_) => unreachable!("an S3 body read from a file region"),
            },
        };
        if let Some(c) = &chunk {
            self.read += c.len() as u64;
            if self.read > self.limit {
                return Err(self.store.err(format!(
                    "{} is longer than the {} bytes it may have: the region's copy was altered or damaged; reading stopped",
                    self.store.shown(self.store.rel(&self.key).unwrap_or(&self.key)),
                    self.limit
                )));
            }
        }
        Ok(chunk)
    }
}
