//! Direct uploads: `prepare` writes a pending row and answers a presigned PUT bound to the declared
//! type (and length, when given) on a staging key no verified bytes ever live under; the upload is
//! verified by `complete` or on first read ([`MediaService::verify_pending`]).

use std::time::Duration;

use super::ingest::sources::{check_user_hint, clean_filename};
use super::{MediaError, MediaService};
use crate::auth::{Permission, Principal};
use crate::db::media::{MediaRecord, MediaStatus};
use crate::domain::media_id::new_id;
use crate::domain::mime::canonical;
use crate::storage::{PresignPut, PresignedRequest};

/// A direct upload to prepare, as the client described it.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    /// The type the file will have, as declared.
    pub declared_type: String,
    /// Exact size; the URL only accepts a body of this length. Required on S3 (see
    /// [`crate::storage::BlobStore::unsized_puts_unbounded`]).
    pub bytes: Option<u64>,
    /// Filename to record.
    pub filename: Option<String>,
    /// A client hint only.
    pub user_hint: Option<String>,
}

/// A prepared direct upload.
#[derive(Debug)]
pub struct Prepared {
    /// The pending row.
    pub record: MediaRecord,
    /// Where and how to PUT the bytes.
    pub link: PresignedRequest,
    /// How long the link stays valid.
    pub ttl: Duration,
}

impl MediaService {
    /// Writes a pending row and presigns the PUT of its bytes.
    pub async fn prepare(&self, caller: &Principal, request: PrepareRequest) -> Result<Prepared, MediaError> {
        check_user_hint(request.user_hint.as_deref())?;
        let declared = request.declared_type;
        let mime = canonical(&declared)
            .filter(|m| self.pipeline.allowlist().allows(m))
            .ok_or(MediaError::UnacceptedType { declared })?;
        let max = self.settings.max_bytes;
        match request.bytes {
            Some(0) => return Err(MediaError::invalid("empty", "bytes must be more than 0")),
            Some(size) if size > max => return Err(MediaError::TooLarge { limit: max }),
            None if self.blobs.unsized_puts_unbounded() => {
                return Err(MediaError::invalid(
                    "bytes_required",
                    "bytes is required: the upload URL is bound to the exact size of the file (without it the store \
                     would take any size until the URL expires)",
                ))
            }
            _ => {}
        }
        let record = MediaRecord {
            id: new_id(),
            tenant_id: caller.tenant.clone(),
            status: MediaStatus::Pending,
            mime: mime.clone(),
            size: request.bytes.unwrap_or(0),
            filename: request.filename.as_deref().and_then(clean_filename),
            uploader: caller.owner(),
            user_hint: request.user_hint,
            storage_key: self.pipeline.new_staging_key(),
            object_dek_version: None,
            sha256: None,
            metadata: None,
            retention_until: self.pipeline.retention_until(),
        };
        let ttl = self.settings.presign_ttl;
        let options = PresignPut { ttl, content_type: mime, content_length: request.bytes };
        let link = self.blobs.presign_put(&record.storage_key, &options).await?;
        self.repo.insert(&record).await?;
        // The link's own lifetime: the store may cut it (S3 credentials that expire sooner).
        let ttl = (link.expires_at - chrono::Utc::now()).to_std().unwrap_or_default();
        Ok(Prepared { record, link, ttl })
    }
}

/// Only the uploader of a media, or a caller with `media:admin`, may delete or complete it.
pub fn require_owner(caller: &Principal, record: &MediaRecord) -> Result<(), MediaError> {
    if record.uploader == caller.owner() || caller.can(Permission::Admin) {
        Ok(())
    } else {
        Err(MediaError::Forbidden {
            code: "not_owner",
            message: "only the uploader or an admin may change this media".into(),
        })
    }
}
