//! Uploads from every source: a body streamed as it arrives (raw, or a multipart `file` part), a
//! `data:` URL (decoded within the size limit) and a `remote_url` (fetched by the SSRF-safe
//! fetcher). Each goes through the same pipeline, in its own task ([`Pipeline::detached`]).
//!
//! [`Pipeline::detached`]: super::ingest::pipeline::Pipeline::detached

use std::sync::Arc;

use futures::StreamExt;

use super::ingest::pipeline::{Ingested, Upload};
use super::ingest::sniff::DeclaredBy;
use super::ingest::sources::{check_user_hint, decode_data_url};
use super::ingest::ByteStream;
use super::{MediaError, MediaService};
use crate::auth::Principal;

impl MediaService {
    /// Stores `body` as described by `upload`, holding `hold` (the upload's slot) to the end.
    pub async fn upload(
        &self,
        caller: Arc<Principal>,
        upload: Upload,
        body: ByteStream,
        hold: impl Send + 'static,
    ) -> Result<Ingested, MediaError> {
        check_user_hint(upload.user_hint.as_deref())?;
        let pipeline = self.pipeline.clone();
        self.pipeline.detached(async move { pipeline.ingest(&caller, upload, body).await }, hold).await
    }

    /// Stores the bytes of a `data:<mime>;base64,…` URL (its type is a declaration like any other).
    pub async fn upload_data_url(
        &self,
        caller: Arc<Principal>,
        data_url: String,
        filename: Option<String>,
        user_hint: Option<String>,
        hold: impl Send + 'static,
    ) -> Result<Ingested, MediaError> {
        check_user_hint(user_hint.as_deref())?;
        let (mime, bytes) = decode_data_url(&data_url, self.settings.max_bytes)?;
        drop(data_url);
        let upload = Upload {
            declared: mime.map(|m| (DeclaredBy::DataUrl, m)).into_iter().collect(),
            filename,
            user_hint,
            content_length: Some(bytes.len() as u64),
            expected: None,
        };
        let body: ByteStream = futures::stream::once(async move { Ok(bytes) }).boxed();
        self.upload(caller, upload, body, hold).await
    }

    /// Fetches `url` (public addresses only) and stores what it serves.
    pub async fn upload_remote(
        &self,
        caller: Arc<Principal>,
        url: &str,
        filename: Option<String>,
        user_hint: Option<String>,
        hold: impl Send + 'static,
    ) -> Result<Ingested, MediaError> {
        check_user_hint(user_hint.as_deref())?;
        let fetched = self.remote.fetch(url).await?;
        let upload = Upload {
            declared: fetched.content_type.map(|t| (DeclaredBy::Remote, t)).into_iter().collect(),
            filename: filename.or(fetched.filename),
            user_hint,
            content_length: fetched.content_length,
            expected: None,
        };
        self.upload(caller, upload, fetched.body, hold).await
    }
}
