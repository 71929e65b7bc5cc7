//! Storage destinations ("regions"): local directories (`file:///path`) and S3-compatible buckets
//! (`s3://bucket/prefix?region=R&endpoint=URL&profile=NAME`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::config::{
    BehaviorVersion, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use url::Url;

use crate::confined::{Confined, Pending};
use crate::error::{Error, Result};
use fleetsnap_core::manifest::{MANIFEST_MAX_BYTES, check_key};
use fleetsnap_core::policy::ObjectLock;

/// S3 part size: above the 5 MiB minimum, small enough to keep memory bounded.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once per destination.
pub const PARTS_IN_FLIGHT: usize = 2;

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

/// The SDK's mode of a lock.
fn lock_mode(l: &ObjectLock) -> ObjectLockMode {
    if l.compliance() {
        ObjectLockMode::Compliance
    } else {
        ObjectLockMode::Governance
    }
}

/// The retain-until date of an object written now under lock `l`.
fn lock_until(l: &ObjectLock) -> aws_sdk_s3::primitives::DateTime {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    aws_sdk_s3::primitives::DateTime::from_secs(now + i64::from(l.days) * 86_400)
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
        let shown = crate::target::redacted(text);
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

/// An opened destination.
#[derive(Clone)]
pub struct Store {
    spec: DestSpec,
    inner: StoreInner,
}

#[derive(Clone)]
enum StoreInner {
    File(Confined),
    S3 {
        client: aws_sdk_s3::Client,
        bucket: String,
        lock: Option<ObjectLock>,
    },
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
            DestSpec::File { root } => StoreInner::File(Confined::new(root.clone())),
            DestSpec::S3 {
                bucket,
                region,
                endpoint,
                profile,
                path_style,
                object_lock,
                ..
            } => {
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .region(Region::new(region.clone()));
                if let Some(p) = profile {
                    // A named profile is used as is, ahead of any AWS_* variables: two regions
                    // may need different keys.
                    let creds = aws_config::profile::ProfileFileCredentialsProvider::builder()
                        .profile_name(p)
                        .build();
                    loader = loader.profile_name(p).credentials_provider(creds);
                }
                let timeouts = aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build();
                let shared = loader.timeout_config(timeouts).load().await;
                let mut b = aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(*path_style)
                    .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                    .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
                if let Some(e) = endpoint {
                    b = b.endpoint_url(e);
                }
                StoreInner::S3 {
                    client: aws_sdk_s3::Client::from_conf(b.build()),
                    bucket: bucket.clone(),
                    lock: object_lock.clone(),
                }
            }
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

    fn s3_err<E: ProvideErrorMetadata + std::error::Error + 'static, R: fmt::Debug>(
        &self,
        op: &str,
        key: &str,
        e: SdkError<E, R>,
    ) -> Error {
        let (code, bucket) = (
            e.code().map(str::to_string),
            match &self.inner {
                StoreInner::S3 { bucket, .. } => bucket.clone(),
                StoreInner::File(_) => String::new(),
            },
        );
        let hint = match code.as_deref() {
            Some("AccessDenied") | Some("InvalidAccessKeyId") | Some("SignatureDoesNotMatch") | Some("Forbidden") =>
                format!("access denied: check the credentials (profile= in the URL, or the AWS_* environment) and that the bucket policy lets them {op}"),
            Some("NoSuchBucket") => format!("bucket {bucket:?} does not exist: create it or fix the URL (some servers, Garage among them, also say so when the credentials have no rights on the bucket)"),
            Some("NoSuchKey") | Some("NotFound") => format!("object {key} does not exist"),
            _ => match &e {
                SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => "the endpoint cannot be reached: check endpoint= and the network; the region may be down".to_string(),
                _ => String::new(),
            },
        };
        let detail = match (e.code(), e.message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => error_chain(&e),
        };
        let context = DisplayErrorContext(&e).to_string();
        let hint = if context.contains("CredentialsNotLoaded")
            || context.contains("credential provider was not enabled")
        {
            match &self.spec {
                DestSpec::S3 { profile: Some(p), .. } => format!("profile {p:?} is not in the AWS credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials): add it or fix profile="),
                _ => "no AWS credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or name a profile with profile=".to_string(),
            }
        } else {
            hint
        };
        if hint.is_empty() {
            self.err(format!("{op} {key} failed: {detail}"))
        } else {
            self.err(format!("{op} {key} failed: {hint} ({detail})"))
        }
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
            StoreInner::File(root) => root.display_path(key).display().to_string(),
            StoreInner::S3 { .. } => key.to_string(),
        }
    }

    /// Starts writing an object; nothing is visible under `key` until `finish`.
    pub async fn begin(&self, key: &str) -> Result<Upload> {
        let rel = self.rel(key)?;
        match &self.inner {
            StoreInner::File(root) => {
                let path = root.display_path(rel);
                let partial = partial_path(&path);
                let (root, owned) = (root.clone(), rel.to_string());
                let created = tokio::task::spawn_blocking(move || root.create(&owned))
                    .await
                    .map_err(|e| self.err(format!("cannot create {}: {e}", partial.display())))?
                    .map_err(|e| self.err(format!("cannot create {}: {e}", partial.display())))?;
                let (file, pending) = created.into_parts();
                Ok(Upload::File(Box::new(FileUpload {
                    store: self.clone(),
                    file: tokio::io::BufWriter::with_capacity(
                        1 << 20,
                        tokio::fs::File::from_std(file),
                    ),
                    partial,
                    pending,
                    written: 0,
                })))
            }
            StoreInner::S3 { .. } => Ok(Upload::S3(Box::new(S3Upload {
                store: self.clone(),
                key: key.to_string(),
                upload_id: None,
                buf: BytesMut::new(),
                next_part: 1,
                tasks: JoinSet::new(),
                done_parts: Vec::new(),
                slots: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
                written: 0,
            }))),
        }
    }

    /// Writes a small object whole (manifests), atomically.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.rel(key)?;
        match &self.inner {
            StoreInner::File(_) => {
                let mut up = self.begin(key).await?;
                up.write(bytes).await?;
                up.finish().await.map(|_| ())
            }
            StoreInner::S3 {
                client,
                bucket,
                lock,
            } => {
                client
                    .put_object()
                    .bucket(bucket)
                    .key(key)
                    .set_object_lock_mode(lock.as_ref().map(lock_mode))
                    .set_object_lock_retain_until_date(lock.as_ref().map(lock_until))
                    // S3 requires the algorithm header on any upload under Object Lock.
                    .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                    .checksum_crc32_c(crc32c_b64(&bytes))
                    .body(ByteStream::from(bytes))
                    .send()
                    .await
                    .map_err(|e| self.s3_err("PutObject", key, e))?;
                Ok(())
            }
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
            StoreInner::File(root) => {
                let path = root.display_path(rel);
                let (root, owned) = (root.clone(), rel.to_string());
                let f = tokio::task::spawn_blocking(move || root.open(&owned))
                    .await
                    .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?
                    .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?;
                let size = f
                    .metadata()
                    .map_err(|e| self.err(format!("cannot open {}: {e}", path.display())))?
                    .len();
                if size > limit {
                    return Err(too_long(size));
                }
                DownloadInner::File(Arc::new(f), path)
            }
            StoreInner::S3 { client, bucket, .. } => {
                let out = client
                    .get_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| self.s3_err("GetObject", key, e))?;
                if let Some(size) = out.content_length()
                    && size.max(0) as u64 > limit
                {
                    return Err(too_long(size.max(0) as u64));
                }
                DownloadInner::S3(out.body)
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
        let mut out = Vec::new();
        let mut refused: Vec<String> = Vec::new();
        match &self.inner {
            StoreInner::File(root) => {
                if !root.dir_inside(below) {
                    let start = root.display_path(below);
                    if std::fs::symlink_metadata(&start).is_err() {
                        return Ok(out);
                    }
                    return Err(self.err(format!(
                        "{} is a symbolic link or not a directory: links inside a region are not followed",
                        start.display()
                    )));
                }
                let mut stack = vec![below.to_string()];
                while let Some(rel) = stack.pop() {
                    let dir = root.display_path(&rel);
                    let mut rd = match tokio::fs::read_dir(&dir).await {
                        Ok(rd) => rd,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel.is_empty() => {
                            continue;
                        }
                        Err(e) => {
                            return Err(self.err(format!("cannot list {}: {e}", dir.display())));
                        }
                    };
                    while let Some(entry) = rd
                        .next_entry()
                        .await
                        .map_err(|e| self.err(format!("cannot list {}: {e}", dir.display())))?
                    {
                        let name = entry.file_name().to_string_lossy().into_owned();
                        let key = if rel.is_empty() {
                            name
                        } else {
                            format!("{rel}/{name}")
                        };
                        if check_key(&key).is_err() {
                            refused.push(key);
                            continue;
                        }
                        // The entry's own type: a link is listed as what it is, never entered.
                        if entry.file_type().await.map(|t| t.is_dir()).unwrap_or(false) {
                            stack.push(key);
                        } else {
                            out.push(key);
                        }
                    }
                }
            }
            StoreInner::S3 { client, bucket, .. } => {
                let mut token = None;
                loop {
                    let mut req = client.list_objects_v2().bucket(bucket).prefix(prefix);
                    if let Some(t) = token.take() {
                        req = req.continuation_token(t);
                    }
                    let page = req
                        .send()
                        .await
                        .map_err(|e| self.s3_err("ListObjectsV2", prefix, e))?;
                    for k in page.contents().iter().filter_map(|o| o.key()) {
                        if self.rel(k).is_ok() {
                            out.push(k.to_string());
                        } else {
                            refused.push(k.to_string());
                        }
                    }
                    match page.next_continuation_token() {
                        Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                        _ => break,
                    }
                }
            }
        }
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
            StoreInner::File(root) => {
                let (root, owned) = (root.clone(), rel.to_string());
                tokio::task::spawn_blocking(move || root.remove(&owned))
                    .await
                    .map_err(|e| self.err(format!("cannot delete {}: {e}", self.shown(rel))))?
                    .map_err(|e| self.err(format!("cannot delete {}: {e}", self.shown(rel))))
            }
            StoreInner::S3 { client, bucket, .. } => {
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| self.s3_err("DeleteObject", key, e))?;
                Ok(())
            }
        }
    }

    /// The stored size of an object.
    pub async fn size(&self, key: &str) -> Result<u64> {
        let rel = self.rel(key)?;
        match &self.inner {
            StoreInner::File(root) => {
                let (root, owned) = (root.clone(), rel.to_string());
                tokio::task::spawn_blocking(move || root.size(&owned))
                    .await
                    .map_err(|e| self.err(format!("cannot stat {}: {e}", self.shown(rel))))?
                    .map_err(|e| self.err(format!("cannot stat {}: {e}", self.shown(rel))))
            }
            StoreInner::S3 { client, bucket, .. } => {
                let h = client
                    .head_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|e| self.s3_err("HeadObject", key, e))?;
                Ok(h.content_length().unwrap_or(-1).max(0) as u64)
            }
        }
    }
}

/// The messages of an error and its sources, joined; without the SDK's debug dumps.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn crc32c_b64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// An object being written.
pub enum Upload {
    /// To a `.partial` file, renamed on finish.
    File(Box<FileUpload>),
    /// An S3 multipart upload (or one PutObject when small).
    S3(Box<S3Upload>),
}

/// State of a file upload.
pub struct FileUpload {
    store: Store,
    file: tokio::io::BufWriter<tokio::fs::File>,
    partial: PathBuf,
    pending: Pending,
    written: u64,
}

/// State of an S3 upload.
pub struct S3Upload {
    store: Store,
    key: String,
    upload_id: Option<String>,
    buf: BytesMut,
    next_part: i32,
    tasks: JoinSet<Result<CompletedPart>>,
    done_parts: Vec<CompletedPart>,
    slots: Arc<Semaphore>,
    written: u64,
}

impl Upload {
    /// Appends bytes.
    pub async fn write(&mut self, data: Bytes) -> Result<()> {
        match self {
            Upload::File(f) => {
                let FileUpload {
                    store,
                    file,
                    partial,
                    written,
                    ..
                } = &mut **f;
                *written += data.len() as u64;
                file.write_all(&data).await.map_err(|e| {
                    store.err(format!(
                        "cannot write {}: {e}{}",
                        partial.display(),
                        if e.raw_os_error() == Some(28) {
                            " (disk full: free space in the destination)"
                        } else {
                            ""
                        }
                    ))
                })
            }
            Upload::S3(up) => {
                up.written += data.len() as u64;
                up.buf.extend_from_slice(&data);
                while up.buf.len() >= PART_SIZE {
                    let part = up.buf.split_to(PART_SIZE).freeze();
                    up.send_part(part).await?;
                }
                Ok(())
            }
        }
    }

    /// Makes the object visible under its key and checks its stored size; returns it.
    pub async fn finish(self) -> Result<u64> {
        match self {
            Upload::File(f) => {
                let FileUpload {
                    store,
                    mut file,
                    partial,
                    pending,
                    written,
                } = *f;
                let io = |e: std::io::Error| {
                    store.err(format!("cannot finish {}: {e}", partial.display()))
                };
                let done = async {
                    file.flush().await?;
                    file.get_mut().sync_all().await?;
                    file.get_ref().metadata().await.map(|m| m.len())
                }
                .await;
                drop(file);
                let size = match done {
                    Ok(size) => size,
                    Err(e) => {
                        pending.abort();
                        return Err(io(e));
                    }
                };
                if size != written {
                    pending.abort();
                    return Err(store.err(format!(
                        "{} holds {size} bytes after writing {written}",
                        partial.display()
                    )));
                }
                pending.commit().map_err(io)?;
                Ok(written)
            }
            Upload::S3(up) => up.finish().await,
        }
    }

    /// Drops whatever was written; nothing remains under the key.
    pub async fn abort(self) {
        match self {
            Upload::File(f) => {
                let FileUpload { pending, file, .. } = *f;
                drop(file);
                pending.abort();
            }
            Upload::S3(mut up) => {
                up.tasks.abort_all();
                if let (Some(id), StoreInner::S3 { client, bucket, .. }) =
                    (&up.upload_id, &up.store.inner)
                {
                    client
                        .abort_multipart_upload()
                        .bucket(bucket)
                        .key(&up.key)
                        .upload_id(id)
                        .send()
                        .await
                        .ok();
                }
            }
        }
    }
}

impl S3Upload {
    fn client(&self) -> (&aws_sdk_s3::Client, &str) {
        match &self.store.inner {
            StoreInner::S3 { client, bucket, .. } => (client, bucket),
            StoreInner::File(_) => unreachable!("S3 upload on a file store"),
        }
    }

    fn lock(&self) -> Option<ObjectLock> {
        match &self.store.inner {
            StoreInner::S3 { lock, .. } => lock.clone(),
            StoreInner::File(_) => None,
        }
    }

    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        if self.upload_id.is_none() {
            let lock = self.lock();
            let (client, bucket) = self.client();
            let out = client
                .create_multipart_upload()
                .bucket(bucket)
                .key(&self.key)
                .set_object_lock_mode(lock.as_ref().map(lock_mode))
                .set_object_lock_retain_until_date(lock.as_ref().map(lock_until))
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .send()
                .await
                .map_err(|e| self.store.s3_err("CreateMultipartUpload", &self.key, e))?;
            self.upload_id = Some(out.upload_id().unwrap_or_default().to_string());
        }
        // Collect finished parts first so a failure surfaces early and memory stays bounded.
        while let Some(done) = self.tasks.try_join_next() {
            self.done_parts
                .push(done.map_err(|e| self.store.err(format!("part upload task failed: {e}")))??);
        }
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (client, bucket) = self.client();
        let (client, bucket, key, id, store) = (
            client.clone(),
            bucket.to_string(),
            self.key.clone(),
            self.upload_id.clone().unwrap_or_default(),
            self.store.clone(),
        );
        let number = self.next_part;
        self.next_part += 1;
        self.tasks.spawn(async move {
            let _permit = permit;
            let crc = crc32c_b64(&part);
            let out = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(id)
                .part_number(number)
                .checksum_crc32_c(crc.clone())
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| store.s3_err("UploadPart", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_crc32_c(crc)
                .build())
        });
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64> {
        let written = self.written;
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buf).freeze();
            let lock = self.lock();
            let (client, bucket) = self.client();
            client
                .put_object()
                .bucket(bucket)
                .key(&self.key)
                .set_object_lock_mode(lock.as_ref().map(lock_mode))
                .set_object_lock_retain_until_date(lock.as_ref().map(lock_until))
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .checksum_crc32_c(crc32c_b64(&body))
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| self.store.s3_err("PutObject", &self.key, e))?;
        } else {
            if !self.buf.is_empty() {
                let last = std::mem::take(&mut self.buf).freeze();
                if let Err(e) = self.send_part(last).await {
                    Upload::S3(self).abort().await;
                    return Err(e);
                }
            }
            while let Some(done) = self.tasks.join_next().await {
                match done
                    .map_err(|e| self.store.err(format!("part upload task failed: {e}")))
                    .and_then(|r| r)
                {
                    Ok(p) => self.done_parts.push(p),
                    Err(e) => {
                        Upload::S3(self).abort().await;
                        return Err(e);
                    }
                }
            }
            self.done_parts.sort_by_key(|p| p.part_number());
            let parts = std::mem::take(&mut self.done_parts);
            let (client, bucket) = self.client();
            let r = client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(&self.key)
                .upload_id(self.upload_id.clone().unwrap_or_default())
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await;
            if let Err(e) = r {
                let err = self.store.s3_err("CompleteMultipartUpload", &self.key, e);
                Upload::S3(self).abort().await;
                return Err(err);
            }
        }
        let size = self.store.size(&self.key).await?;
        if size != written {
            return Err(self.store.err(format!(
                "{} holds {size} bytes after writing {written}",
                self.key
            )));
        }
        Ok(written)
    }
}

/// How much of a file region's object one read returns.
const FILE_CHUNK: usize = 4 << 20;

/// An object being read, never past the most bytes it may have.
pub struct Download {
    inner: DownloadInner,
    store: Box<Store>,
    key: String,
    limit: u64,
    read: u64,
}

enum DownloadInner {
    /// From a file, read on the blocking pool in large chunks.
    File(Arc<std::fs::File>, PathBuf),
    /// From S3.
    S3(ByteStream),
}

impl Download {
    /// The next chunk; `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        let chunk = match &mut self.inner {
            DownloadInner::File(f, path) => {
                let f = Arc::clone(f);
                // One byte past the limit is enough to know the object is too long.
                let want = (self.limit - self.read)
                    .saturating_add(1)
                    .min(FILE_CHUNK as u64);
                // read_to_end fills spare capacity without zeroing it first.
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = Vec::with_capacity(want as usize);
                    std::io::Read::read_to_end(&mut std::io::Read::take(&*f, want), &mut buf)
                        .map(|_| buf)
                })
                .await
                .map_err(|e| Error::file("cannot read", path.clone(), std::io::Error::other(e)))?
                .map_err(|e| Error::file("cannot read", path.clone(), e))?;
                (!read.is_empty()).then(|| Bytes::from(read))
            }
            DownloadInner::S3(body) => body
                .try_next()
                .await
                .map_err(|e| self.store.err(format!("reading {} failed: {e}", self.key)))?,
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
