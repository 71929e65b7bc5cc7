//! S3-compatible buckets: the client, the requests fleetsnap makes, multipart uploads with their
//! parts in flight, Object Lock on every object written, and errors that name the fix.

use std::fmt;
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
use fleetsnap_core::policy::ObjectLock;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::dest::DestSpec;
use crate::error::{Error, Result};

/// S3 part size: above the 5 MiB minimum, small enough to keep memory bounded.
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts uploaded at once per destination.
pub const PARTS_IN_FLIGHT: usize = 2;

/// One bucket (and the destination it stands for, for messages).
#[derive(Clone)]
pub(super) struct Bucket {
    spec: DestSpec,
    client: aws_sdk_s3::Client,
    bucket: String,
    lock: Option<ObjectLock>,
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

fn crc32c_b64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, data) as u32;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

impl Bucket {
    /// Builds the client for an `s3://` destination; checks nothing remote yet.
    pub(super) async fn open(spec: &DestSpec) -> Self {
        let DestSpec::S3 {
            bucket,
            region,
            endpoint,
            profile,
            path_style,
            object_lock,
            ..
        } = spec
        else {
            unreachable!("a bucket is opened for s3:// destinations only")
        };
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).region(Region::new(region.clone()));
        if let Some(p) = profile {
            // A named profile is used as is, ahead of any AWS_* variables: two regions may need
            // different keys.
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
        Self {
            spec: spec.clone(),
            client: aws_sdk_s3::Client::from_conf(b.build()),
            bucket: bucket.clone(),
            lock: object_lock.clone(),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::storage(&self.spec, message)
    }

    /// An SDK error as a message that says what to fix where the cause is known.
    fn s3_err<E: ProvideErrorMetadata + std::error::Error + 'static, R: fmt::Debug>(
        &self,
        op: &str,
        key: &str,
        e: SdkError<E, R>,
    ) -> Error {
        let (code, bucket) = (e.code().map(str::to_string), &self.bucket);
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

    /// Starts a (multipart, once past one part) upload of `key`.
    pub(super) fn begin(&self, key: &str) -> S3Upload {
        S3Upload {
            bucket: self.clone(),
            key: key.to_string(),
            upload_id: None,
            buf: BytesMut::new(),
            next_part: 1,
            tasks: JoinSet::new(),
            done_parts: Vec::new(),
            slots: Arc::new(Semaphore::new(PARTS_IN_FLIGHT)),
            written: 0,
        }
    }

    /// One PutObject of a whole object, under the bucket's lock.
    pub(super) async fn put(&self, key: &str, bytes: Bytes) -> Result<()> {
        let lock = &self.lock;
        self.client
            .put_object()
            .bucket(&self.bucket)
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

    /// Starts reading `key`: its body, and the length the server declares (if any).
    pub(super) async fn get(&self, key: &str) -> Result<(ByteStream, Option<u64>)> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.s3_err("GetObject", key, e))?;
        let size = out.content_length().map(|s| s.max(0) as u64);
        Ok((out.body, size))
    }

    /// The next chunk of a body being read.
    pub(super) async fn next(&self, key: &str, body: &mut ByteStream) -> Result<Option<Bytes>> {
        body.try_next()
            .await
            .map_err(|e| self.err(format!("reading {key} failed: {e}")))
    }

    /// Every key under `prefix`, as the bucket lists them (unchecked).
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix);
            if let Some(t) = token.take() {
                req = req.continuation_token(t);
            }
            let page = req
                .send()
                .await
                .map_err(|e| self.s3_err("ListObjectsV2", prefix, e))?;
            out.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_string),
            );
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Deletes `key` (S3 says nothing of one already gone).
    pub(super) async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.s3_err("DeleteObject", key, e))?;
        Ok(())
    }

    /// The stored size of `key`.
    pub(super) async fn size(&self, key: &str) -> Result<u64> {
        let h = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.s3_err("HeadObject", key, e))?;
        Ok(h.content_length().unwrap_or(-1).max(0) as u64)
    }
}

/// State of an S3 upload.
pub struct S3Upload {
    bucket: Bucket,
    key: String,
    upload_id: Option<String>,
    buf: BytesMut,
    next_part: i32,
    tasks: JoinSet<Result<CompletedPart>>,
    done_parts: Vec<CompletedPart>,
    slots: Arc<Semaphore>,
    written: u64,
}

impl S3Upload {
    /// Appends bytes; every full part goes out (a few in flight at once).
    pub(super) async fn write(&mut self, data: Bytes) -> Result<()> {
        self.written += data.len() as u64;
        self.buf.extend_from_slice(&data);
        while self.buf.len() >= PART_SIZE {
            let part = self.buf.split_to(PART_SIZE).freeze();
            self.send_part(part).await?;
        }
        Ok(())
    }

    async fn send_part(&mut self, part: Bytes) -> Result<()> {
        let b = &self.bucket;
        if self.upload_id.is_none() {
            let lock = &b.lock;
            let out = b
                .client
                .create_multipart_upload()
                .bucket(&b.bucket)
                .key(&self.key)
                .set_object_lock_mode(lock.as_ref().map(lock_mode))
                .set_object_lock_retain_until_date(lock.as_ref().map(lock_until))
                .checksum_algorithm(ChecksumAlgorithm::Crc32C)
                .send()
                .await
                .map_err(|e| b.s3_err("CreateMultipartUpload", &self.key, e))?;
            self.upload_id = Some(out.upload_id().unwrap_or_default().to_string());
        }
        // Collect finished parts first so a failure surfaces early and memory stays bounded.
        while let Some(done) = self.tasks.try_join_next() {
            self.done_parts
                .push(done.map_err(|e| b.err(format!("part upload task failed: {e}")))??);
        }
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore open");
        let (bucket, key, id) = (
            b.clone(),
            self.key.clone(),
            self.upload_id.clone().unwrap_or_default(),
        );
        let number = self.next_part;
        self.next_part += 1;
        self.tasks.spawn(async move {
            let _permit = permit;
            let crc = crc32c_b64(&part);
            let out = bucket
                .client
                .upload_part()
                .bucket(&bucket.bucket)
                .key(&key)
                .upload_id(id)
                .part_number(number)
                .checksum_crc32_c(crc.clone())
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(|e| bucket.s3_err("UploadPart", &key, e))?;
            Ok(CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .checksum_crc32_c(crc)
                .build())
        });
        Ok(())
    }

    /// Completes the upload (one PutObject when it never filled a part) and checks the stored
    /// size; returns it.
    pub(super) async fn finish(mut self) -> Result<u64> {
        let written = self.written;
        if self.upload_id.is_none() {
            let body = std::mem::take(&mut self.buf).freeze();
            self.bucket.put(&self.key, body).await?;
        } else {
            if !self.buf.is_empty() {
                let last = std::mem::take(&mut self.buf).freeze();
                if let Err(e) = self.send_part(last).await {
                    self.abort().await;
                    return Err(e);
                }
            }
            while let Some(done) = self.tasks.join_next().await {
                match done
                    .map_err(|e| self.bucket.err(format!("part upload task failed: {e}")))
                    .and_then(|r| r)
                {
                    Ok(p) => self.done_parts.push(p),
                    Err(e) => {
                        self.abort().await;
                        return Err(e);
                    }
                }
            }
            self.done_parts.sort_by_key(|p| p.part_number());
            let parts = std::mem::take(&mut self.done_parts);
            let b = &self.bucket;
            let r = b
                .client
                .complete_multipart_upload()
                .bucket(&b.bucket)
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
                let err = b.s3_err("CompleteMultipartUpload", &self.key, e);
                self.abort().await;
                return Err(err);
            }
        }
        let size = self.bucket.size(&self.key).await?;
        if size != written {
            return Err(self.bucket.err(format!(
                "{} holds {size} bytes after writing {written}",
                self.key
            )));
        }
        Ok(written)
    }

    /// Stops the parts in flight and aborts the multipart upload: nothing remains.
    pub(super) async fn abort(mut self) {
        self.tasks.abort_all();
        if let Some(id) = &self.upload_id {
            let b = &self.bucket;
            b.client
                .abort_multipart_upload()
                .bucket(&b.bucket)
                .key(&self.key)
                .upload_id(id)
                .send()
                .await
                .ok();
        }
    }
}
