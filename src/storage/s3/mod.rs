//! S3 blob store (AWS S3, Garage, MinIO, Ceph …) through aws-sdk-s3 over rustls.
//!
//! Uploads stream with bounded memory. A body of known length (`put_sized`: a `Content-Length`, a
//! copy) above one part goes up as one streamed `PutObject` without buffering — no part buffers, one
//! request, and a PUT is atomic: an interrupted body leaves no object and nothing to abort; a store
//! that stops taking its bytes, or answering, is given up on after what a part's request may take
//! (`sized::Stall`), not after the longest upload time its read timeout allows for the client. So
//! does a body of unknown length above one part, sent chunked, on stores that take that
//! (`streamed`, `MEDIA_S3_CHUNKED_PUT`). Otherwise the body is cut into parts of `part_size`
//! bytes; a body of at most one part goes up as one `PutObject`, anything larger as a multipart
//! upload with at most `upload_concurrency` parts in memory, the one being filled included (buffers
//! reused from part to part and upload to upload; see `part`), a part sent while it fills when S3
//! would otherwise wait for it (see `fill`). Any
//! error — a failing source stream, a refused part, the future being dropped — aborts the multipart
//! upload so no part is left billed and invisible in the bucket. A body of announced length is a
//! `sized` body; one of guessed length (a form's file) is streamed the same way and rebuilt when
//! the guess was wrong (`expected`).
//!
//! Presigned URLs are signed by a second client configured for `MEDIA_S3_PUBLIC_ENDPOINT` when that
//! is set, so the URL a client gets is exactly the one that was signed (never rewritten afterwards).
//! Payload checksums beyond SigV4's own are only sent when an operation requires them, which keeps
//! the SDK compatible with S3 servers that do not implement the newer checksum trailers. Every
//! attempt's duration is recorded by operation and outcome (see `observe`).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::{RetryPartition, TokenBucket};
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::Client;
use bytes::Bytes;
use chrono::{Timelike, Utc};
use futures::StreamExt;
use secrecy::ExposeSecret;

use super::s3_presign::GetSigner;
use super::{
    validate_key, BlobMeta, BlobObject, BlobStore, ByteRange, ByteStream, PresignGet, PresignPut, PresignedRequest,
    StorageError,
};
use crate::config::S3Config;

pub(super) const BACKEND: &str = "s3";
/// The largest object S3 takes in one `PutObject`.
const MAX_STREAMED_PUT: u64 = 5 << 30;

mod expected;
mod fill;
mod observe;
mod part;
mod sized;
mod streamed;
mod upload;

use fill::{fill_part, Live};
use part::PartBuffers;
use sized::SizedBody;
use streamed::ChunkedPuts;
use upload::abort_upload;

/// Blobs in one S3 bucket.
#[derive(Debug, Clone)]
pub struct S3BlobStore {
    client: Client,
    presign_client: Client,
    get_signer: std::sync::Arc<GetSigner>,
    bucket: String,
    part_size: usize,
    upload_concurrency: usize,
    /// Part buffers, reused from upload to upload.
    buffers: std::sync::Arc<PartBuffers>,
    sign_payload: bool,
    /// `MEDIA_S3_READ_TIMEOUT`.
    read_timeout: Duration,
    /// Whether bodies of unknown length go up as one chunked `PutObject` (`MEDIA_S3_CHUNKED_PUT`).
    chunked: std::sync::Arc<ChunkedPuts>,
}

pub(super) fn sdk_error<E>(operation: &'static str) -> impl Fn(SdkError<E, HttpResponse>) -> StorageError
where
    E: std::error::Error + 'static,
{
    move |err| {
        match err.raw_response().map(|r| r.status().as_u16()) {
            Some(404) => return StorageError::NotFound,
            Some(416) => return StorageError::InvalidRange { size: 0 },
            _ => {}
        }
        let message = match &err {
            SdkError::ServiceError(service) => DisplayErrorContext(service.err()).to_string(),
            other => DisplayErrorContext(other).to_string(),
        };
        StorageError::backend(BACKEND, operation, message)
    }
}

/// An HTTPS client trusting the platform roots plus `MEDIA_CA_FILE`.
fn https_client_trusting(
    ca: &crate::config::CaBundle,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient, StorageError> {
    use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider, TlsContext, TrustStore};
    let trust = TrustStore::default().with_native_roots(true).with_pem_certificate(ca.pem.to_vec());
    let context = TlsContext::builder().with_trust_store(trust).build().map_err(|e| StorageError::Backend {
        backend: "s3",
        operation: "configure",
        message: format!("MEDIA_CA_FILE cannot be used: {e}"),
    })?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::AwsLc))
        .tls_context(context)
        .build_https())
}

impl S3BlobStore {
    /// Builds the clients: static credentials when configured, else the default AWS chain.
    pub async fn new(config: &S3Config) -> Result<Self, StorageError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(Region::new(config.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .read_timeout(config.read_timeout)
                    .build(),
            );
        if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id.clone(),
                secret.expose_secret().to_owned(),
                None,
                None,
                "media-api-config",
            ));
        }
        if let Some(ca) = &config.ca {
            loader = loader.http_client(https_client_trusting(ca)?);
        }
        let shared = loader.load().await;
        // Retries are bounded by the attempt count, not by a shared quota: the SDK's default retry
        // quota is drained by an outage (every failed request spends it), and then refuses to retry
        // the first transient error after the store is back — the service would answer 503 for a
        // while after every outage. Load on the store is bounded by the upload slots instead.
        let retries = RetryPartition::custom("media-api-s3").token_bucket(TokenBucket::unlimited()).build();
        let client_for = |endpoint: Option<&url::Url>| {
            let mut builder = aws_sdk_s3::config::Builder::from(&shared)
                .retry_partition(retries.clone())
                .force_path_style(config.path_style)
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
                .interceptor(observe::RequestMetrics);
            if let Some(endpoint) = endpoint {
                builder = builder.endpoint_url(endpoint.as_str().trim_end_matches('/'));
            }
            Client::from_conf(builder.build())
        };
        let client = client_for(config.endpoint.as_ref());
        let public_endpoint = config.public_endpoint.as_ref().or(config.endpoint.as_ref());
        // A second client (its own connector and TLS roots) only when URLs are signed for another
        // endpoint than the one the service talks to.
        let presign_client = match &config.public_endpoint {
            Some(_) => client_for(public_endpoint),
            None => client.clone(),
        };
        let provider = shared.credentials_provider().ok_or_else(|| StorageError::Backend {
            backend: "s3",
            operation: "configure",
            message: "no S3 credentials provider (set MEDIA_S3_ACCESS_KEY and MEDIA_S3_SECRET_KEY)".into(),
        })?;
        let get_signer = std::sync::Arc::new(GetSigner::new(
            public_endpoint,
            &config.bucket,
            &config.region,
            config.path_style,
            provider,
        )?);
        let part_size = usize::try_from(config.part_size).unwrap_or(usize::MAX);
        Ok(Self {
            get_signer,
            client,
            presign_client,
            bucket: config.bucket.clone(),
            part_size,
            upload_concurrency: config.upload_concurrency,
            buffers: PartBuffers::new(part_size, config.upload_concurrency),
            sign_payload: config.sign_payload,
            read_timeout: config.read_timeout,
            chunked: std::sync::Arc::new(ChunkedPuts::new(config.chunked_put)),
        })
    }

    /// The SDK client for the service's own calls (maintenance: listing uploads, sweeping).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }
}

/// Total size from a `Content-Range: bytes a-b/total` header.
fn total_from_content_range(value: &str) -> Option<u64> {
    value.rsplit('/').next()?.parse().ok()
}

#[async_trait]
impl BlobStore for S3BlobStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn put(&self, key: &str, content_type: &str, mut body: ByteStream) -> Result<u64, StorageError> {
        validate_key(key)?;
        let mut first = self.buffers.part();
        let mut carry = Bytes::new();
        let ended = fill_part(&mut body, &mut first, &mut carry, &mut Live::Never, None).await?;
        if ended {
            return self.put_single(key, content_type, first).await;
        }
        self.put_multipart(key, content_type, first, body, carry).await
    }

    async fn put_sized(
        &self,
        key: &str,
        content_type: &str,
        length: u64,
        body: ByteStream,
    ) -> Result<u64, StorageError> {
        // Streaming needs an unsigned payload (SigV4 would have to hash the body first).
        if self.sign_payload || length <= self.part_size as u64 || length > MAX_STREAMED_PUT {
            return self.put(key, content_type, super::exact_length(body, length)).await;
        }
        validate_key(key)?;
        self.put_streamed(key, content_type, SizedBody::new(body, length)).await
    }

    async fn put_at_most(
        &self,
        key: &str,
        content_type: &str,
        at_most: u64,
        body: ByteStream,
    ) -> Result<u64, StorageError> {
        self.put_unknown_length(key, content_type, at_most, body).await
    }

    async fn put_expecting(
        &self,
        key: &str,
        content_type: &str,
        expected: u64,
        body: ByteStream,
        after: ByteStream,
    ) -> Result<u64, StorageError> {
        // As `put_sized`: a guess within one part, or past one `PutObject`, is not worth it.
        if self.sign_payload || expected <= self.part_size as u64 || expected > MAX_STREAMED_PUT {
            return self.put(key, content_type, body).await;
        }
        validate_key(key)?;
        self.put_guessed(key, content_type, expected, body, after).await
    }

    async fn get(&self, key: &str, range: Option<ByteRange>) -> Result<BlobObject, StorageError> {
        validate_key(key)?;
        let request = self.client.get_object().bucket(&self.bucket).key(key);
        let request = match range {
            Some(range) => request.range(range.header_value()),
            None => request,
        };
        let output = match request.send().await.map_err(sdk_error("get")) {
            Err(StorageError::InvalidRange { .. }) => {
                let size = self.head(key).await?.size;
                return Err(StorageError::InvalidRange { size });
            }
            other => other?,
        };
        let content_length = output.content_length().unwrap_or_default().max(0) as u64;
        let total_size = output.content_range().and_then(total_from_content_range).unwrap_or(content_length);
        let served = match (range, output.content_range()) {
            (Some(range), Some(_)) => Some(range.resolve(total_size)?),
            _ => None,
        };
        // The SDK body's chunks are handed on as they arrive (slices of the connection's read
        // buffer): no copy into a reader's buffer on the download path.
        let body = futures::stream::unfold(output.body, |mut body| async move {
            let chunk = body.next().await?.map_err(|e| std::io::Error::other(DisplayErrorContext(&e).to_string()));
            Some((chunk, body))
        })
        .boxed();
        Ok(BlobObject { body, content_length, total_size, range: served })
    }

    async fn head(&self, key: &str) -> Result<BlobMeta, StorageError> {
        validate_key(key)?;
        let output = self.client.head_object().bucket(&self.bucket).key(key).send().await.map_err(sdk_error("head"))?;
        Ok(BlobMeta {
            size: output.content_length().unwrap_or_default().max(0) as u64,
            content_type: output.content_type().map(str::to_owned),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        match self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(sdk_error("delete")) {
            Ok(_) | Err(StorageError::NotFound) => Ok(()),
            Err(err) => Err(err),
        }
    }

    async fn presign_get(&self, key: &str, options: &PresignGet) -> Result<PresignedRequest, StorageError> {
        validate_key(key)?;
        presigning(options.ttl)?;
        let signed =
            self.get_signer.get_url(key, &options.content_type, &options.content_disposition, options.ttl).await?;
        Ok(PresignedRequest { url: signed.url, method: "GET", headers: Vec::new(), expires_at: signed.expires_at })
    }

    async fn presign_put(&self, key: &str, options: &PresignPut) -> Result<PresignedRequest, StorageError> {
        validate_key(key)?;
        let mut request =
            self.presign_client.put_object().bucket(&self.bucket).key(key).content_type(&options.content_type);
        if let Some(length) = options.content_length {
            request = request.content_length(length as i64);
        }
        // Signed with the credentials the lifetime was cut for (the SDK's own cache may hold others,
        // refreshed at another time): see `GetSigner::credentials_for`.
        let (credentials, ttl) = self.get_signer.credentials_for(options.ttl).await?;
        // The SDK signs after this instant (its `X-Amz-Date`, whole seconds, is no earlier), so the
        // URL works at least until this second plus `ttl`: the end told never overshoots.
        let signed_from = Utc::now().with_nanosecond(0).unwrap_or_else(Utc::now);
        let presigned = request
            .customize()
            .config_override(aws_sdk_s3::config::Builder::default().credentials_provider(credentials))
            .presigned(presigning(ttl)?)
            .await
            .map_err(sdk_error("presign put"))?;
        Ok(to_presigned(presigned, "PUT", signed_from + chrono::Duration::seconds(ttl.as_secs() as i64)))
    }

    async fn check(&self) -> Result<(), StorageError> {
        self.client.head_bucket().bucket(&self.bucket).send().await.map_err(sdk_error("check"))?;
        Ok(())
    }

    async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<u64, StorageError> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut aborted = 0u64;
        let (mut key_marker, mut id_marker): (Option<String>, Option<String>) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(id_marker.take())
                .send()
                .await
                .map_err(sdk_error("list uploads"))?;
            for upload in page.uploads() {
                let started = upload.initiated().and_then(|t| std::time::SystemTime::try_from(*t).ok());
                let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) else { continue };
                if started.is_some_and(|started| started < cutoff) {
                    abort_upload(&self.client, &self.bucket, key, id).await;
                    aborted += 1;
                }
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
            if key_marker.is_none() {
                break;
            }
        }
        let mut objects = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{prefix}staging/"))
            .into_paginator()
            .send();
        while let Some(page) = objects.next().await {
            let page = page.map_err(sdk_error("list staging objects"))?;
            for object in page.contents() {
                let modified = object.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok());
                if let (Some(key), true) = (object.key(), modified.is_some_and(|m| m < cutoff)) {
                    self.delete(key).await?;
                    aborted += 1;
                }
            }
        }
        Ok(aborted)
    }

    async fn list_older_than(&self, prefix: &str, older_than: Duration) -> Result<Vec<String>, StorageError> {
        let cutoff = std::time::SystemTime::now() - older_than;
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(&self.bucket).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            for object in page.map_err(sdk_error("list objects"))?.contents() {
                let modified = object.last_modified().and_then(|t| std::time::SystemTime::try_from(*t).ok());
                if let (Some(key), true) = (object.key(), modified.is_some_and(|m| m < cutoff)) {
                    keys.push(key.to_owned());
                }
            }
        }
        Ok(keys)
    }
}

fn presigning(ttl: Duration) -> Result<PresigningConfig, StorageError> {
    PresigningConfig::expires_in(ttl).map_err(|e| StorageError::backend(BACKEND, "presign", e))
}

fn to_presigned(
    presigned: aws_sdk_s3::presigning::PresignedRequest,
    method: &'static str,
    expires_at: chrono::DateTime<Utc>,
) -> PresignedRequest {
    PresignedRequest {
        url: presigned.uri().to_owned(),
        method,
        headers: presigned.headers().map(|(name, value)| (name.to_owned(), value.to_owned())).collect(),
        expires_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_gives_the_total_size() {
        assert_eq!(total_from_content_range("bytes 0-9/100"), Some(100));
        assert_eq!(total_from_content_range("bytes 0-9/*"), None);
    }
}
