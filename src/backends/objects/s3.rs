//! Objects in S3 or MinIO (crate `aws-sdk-s3`): path-style addressing and a custom endpoint
//! for MinIO, the bucket created at start when missing, multipart uploads for objects
//! written as they grow, presigned GET URLs for downloads.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_types::timeout::TimeoutConfig;
use bytes::Bytes;
use recorder::objects::{validate_key, MultipartUpload, ObjectError, ObjectInfo, ObjectStore};

/// Connection settings of the S3 store.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// Endpoint URL; empty for AWS.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Path-style addressing.
    pub path_style: bool,
}

/// One bucket of S3 or MinIO.
pub struct S3Objects {
    client: Client,
    bucket: String,
    /// Set once the bucket is known to exist.
    bucket_ready: tokio::sync::OnceCell<()>,
}

fn unavailable<E: std::error::Error + 'static, R: std::fmt::Debug>(err: SdkError<E, R>) -> ObjectError {
    ObjectError::Unavailable(DisplayErrorContext(&err).to_string())
}

/// A multipart request's failure: `NotFound` when the store no longer has the upload.
fn upload_error<E: std::error::Error + ProvideErrorMetadata + 'static, R: std::fmt::Debug>(
    upload_id: &str,
    err: SdkError<E, R>,
) -> ObjectError {
    match err.as_service_error().and_then(|e| e.code()) {
        Some("NoSuchUpload") => ObjectError::NotFound(upload_id.to_owned()),
        _ => unavailable(err),
    }
}

impl S3Objects {
    /// A client for `settings` (no request is made).
    pub fn new(settings: &S3Settings) -> Self {
        let http = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let credentials = Credentials::new(&settings.access_key, &settings.secret_key, None, None, "switchboard-config");
        let timeouts =
            TimeoutConfig::builder().connect_timeout(Duration::from_secs(3)).operation_attempt_timeout(Duration::from_secs(60)).build();
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(settings.path_style)
            .http_client(http)
            .timeout_config(timeouts)
            // MinIO and other S3 servers differ in their support of the newer checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if !settings.endpoint.is_empty() {
            config = config.endpoint_url(&settings.endpoint);
        }
        Self { client: Client::from_conf(config.build()), bucket: settings.bucket.clone(), bucket_ready: tokio::sync::OnceCell::new() }
    }

    /// Creates the bucket unless it exists; once that succeeded, answers at once.
    pub async fn ensure_bucket(&self) -> Result<(), ObjectError> {
        self.bucket_ready.get_or_try_init(|| self.create_bucket()).await.map(drop)
    }

    async fn create_bucket(&self) -> Result<(), ObjectError> {
        if self.client.head_bucket().bucket(&self.bucket).send().await.is_ok() {
            return Ok(());
        }
        match self.client.create_bucket().bucket(&self.bucket).send().await {
            Ok(_) => {
                tracing::info!(bucket = %self.bucket, "bucket created");
                Ok(())
            }
            Err(err) if err.as_service_error().is_some_and(|e| e.is_bucket_already_owned_by_you()) => Ok(()),
            Err(err) => Err(unavailable(err)),
        }
    }

    /// The handle of upload `upload_id` to `key`, with the parts it already has.
    fn upload(&self, key: &str, upload_id: String, parts: Vec<CompletedPart>, size: u64) -> Box<dyn MultipartUpload> {
        Box::new(S3Upload { client: self.client.clone(), bucket: self.bucket.clone(), key: key.to_owned(), upload_id, parts, size })
    }
}

#[async_trait]
impl ObjectStore for S3Objects {
    async fn put(&self, key: &str, body: Bytes, content_type: &str) -> Result<(), ObjectError> {
        validate_key(key)?;
        self.ensure_bucket().await?;
        let request = self.client.put_object().bucket(&self.bucket).key(key).content_type(content_type).body(ByteStream::from(body));
        request.send().await.map(drop).map_err(unavailable)
    }

    async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        validate_key(key)?;
        self.ensure_bucket().await?;
        let object = match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(object) => object,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => return Err(ObjectError::NotFound(key.to_owned())),
            Err(err) => return Err(unavailable(err)),
        };
        let body = object.body.collect().await.map_err(|e| ObjectError::Unavailable(e.to_string()))?;
        Ok(body.into_bytes())
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        validate_key(key)?;
        self.ensure_bucket().await?;
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map(drop).map_err(unavailable)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, ObjectError> {
        self.ensure_bucket().await?;
        let mut objects = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(unavailable)?;
            for object in page.contents() {
                let key = object.key().unwrap_or_default().to_owned();
                objects.push(ObjectInfo { key, size: object.size().unwrap_or(0).max(0) as u64 });
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn start_upload(&self, key: &str, content_type: &str) -> Result<Box<dyn MultipartUpload>, ObjectError> {
        validate_key(key)?;
        self.ensure_bucket().await?;
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(unavailable)?;
        let upload_id = created.upload_id().ok_or_else(|| ObjectError::Unavailable("no upload id in the answer".into()))?.to_owned();
        Ok(self.upload(key, upload_id, Vec::new(), 0))
    }

    async fn resume_upload(&self, key: &str, id: &str) -> Result<Box<dyn MultipartUpload>, ObjectError> {
        validate_key(key)?;
        let mut parts = Vec::new();
        let mut size = 0u64;
        let mut marker: Option<String> = None;
        loop {
            let listed = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(id)
                .set_part_number_marker(marker.clone())
                .send()
                .await
                .map_err(|err| upload_error(id, err))?;
            for part in listed.parts() {
                size += u64::try_from(part.size().unwrap_or(0)).unwrap_or(0);
                parts.push(CompletedPart::builder().set_part_number(part.part_number()).set_e_tag(part.e_tag().map(str::to_owned)).build());
            }
            match (listed.is_truncated(), listed.next_part_number_marker()) {
                (Some(true), Some(next)) => marker = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(self.upload(key, id.to_owned(), parts, size))
    }

    async fn presign_get(&self, key: &str, expiry: Duration) -> Result<String, ObjectError> {
        validate_key(key)?;
        let config = PresigningConfig::expires_in(expiry).map_err(|e| ObjectError::Unavailable(e.to_string()))?;
        let request = self.client.get_object().bucket(&self.bucket).key(key).presigned(config).await.map_err(unavailable)?;
        Ok(request.uri().to_owned())
    }
}

/// A multipart upload in progress.
struct S3Upload {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    parts: Vec<CompletedPart>,
    size: u64,
}

#[async_trait]
impl MultipartUpload for S3Upload {
    fn id(&self) -> &str {
        &self.upload_id
    }

    async fn put_part(&mut self, body: Bytes) -> Result<(), ObjectError> {
        let number = i32::try_from(self.parts.len() + 1).map_err(|_| ObjectError::Unavailable("too many parts".into()))?;
        let length = body.len() as u64;
        let uploaded = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .part_number(number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|err| upload_error(&self.upload_id, err))?;
        self.parts.push(CompletedPart::builder().part_number(number).set_e_tag(uploaded.e_tag().map(str::to_owned)).build());
        self.size += length;
        Ok(())
    }

    async fn complete(&mut self) -> Result<u64, ObjectError> {
        let parts = CompletedMultipartUpload::builder().set_parts(Some(self.parts.clone())).build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .multipart_upload(parts)
            .send()
            .await
            .map_err(|err| upload_error(&self.upload_id, err))?;
        Ok(self.size)
    }

    async fn abort(&mut self) -> Result<(), ObjectError> {
        let request = self.client.abort_multipart_upload().bucket(&self.bucket).key(&self.key).upload_id(&self.upload_id);
        request.send().await.map(drop).map_err(unavailable)
    }
}
