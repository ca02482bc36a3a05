//! Reading a caller's media: every lookup is by `(tenant of the caller, id)`, so an ID that does not
//! parse, does not exist or belongs to another tenant gets the same answer. A pending direct upload
//! is verified the first time it is read (jan clients never call `complete`): [`Found::Pending`]
//! tells the caller to admit the work and call [`MediaService::verify_pending`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::ingest::pipeline::Ingested;
use super::ingest::sniff::extension;
use super::sealed::{self, SealedObject};
use super::{MediaError, MediaService};
use crate::auth::Principal;
use crate::db::media::{MediaRecord, MediaStatus, StoredMedia};
use crate::domain::media_id::is_valid;
use crate::storage::links::LinkedObject;
use crate::storage::{content_disposition, BlobObject, ByteRange, PresignGet, PresignedRequest};

/// A media of the caller's tenant, as stored.
#[derive(Debug)]
pub enum Found {
    /// Ready to be served.
    Ready(MediaRecord),
    /// A direct upload not verified yet.
    Pending(MediaRecord),
}

impl From<MediaRecord> for Found {
    fn from(record: MediaRecord) -> Self {
        match record.status {
            MediaStatus::Ready => Self::Ready(record),
            MediaStatus::Pending => Self::Pending(record),
        }
    }
}

impl MediaService {
    /// The caller's media with this id.
    pub async fn find(&self, caller: &Principal, id: &str) -> Result<Found, MediaError> {
        Ok(Arc::unwrap_or_clone(self.find_shared(caller, id).await?).record.into())
    }

    /// [`Self::find`], the row shared with the row cache (read in place, not copied); the caller
    /// looks at its status.
    pub async fn find_shared(&self, caller: &Principal, id: &str) -> Result<Arc<StoredMedia>, MediaError> {
        if !is_valid(id) {
            return Err(MediaError::NotFound);
        }
        self.repo.get_shared(&caller.tenant, id).await?.ok_or(MediaError::NotFound)
    }

    /// The caller's media with these ids (one query), or [`MediaError::MediaNotFound`] naming the
    /// first one the tenant does not have.
    pub async fn find_many(&self, caller: &Principal, ids: &BTreeSet<String>) -> Result<Vec<Found>, MediaError> {
        let wanted: Vec<String> = ids.iter().filter(|id| is_valid(id)).cloned().collect();
        let found = self.repo.get_many(&caller.tenant, &wanted).await?;
        let mut records: HashMap<String, _> = found.into_iter().map(|m| (m.record.id.clone(), m.record)).collect();
        if let Some(missing) = ids.iter().find(|id| !records.contains_key(id.as_str())) {
            return Err(MediaError::MediaNotFound { id: missing.clone() });
        }
        Ok(records.drain().map(|(_, record)| record.into()).collect())
    }

    /// Verifies a pending direct upload (see [`Pipeline::complete`]), holding `hold` to the end;
    /// with `dedup` the pending id may give way to an existing media with the same bytes.
    ///
    /// [`Pipeline::complete`]: super::ingest::pipeline::Pipeline::complete
    pub async fn verify_pending(
        &self,
        caller: Arc<Principal>,
        pending: MediaRecord,
        dedup: bool,
        hold: impl Send + 'static,
    ) -> Result<Ingested, MediaError> {
        let pipeline = self.pipeline.clone();
        self.pipeline.detached(async move { pipeline.complete(&caller, pending, dedup).await }, hold).await
    }

    /// A presigned GET of a media (at most `MEDIA_PRESIGN_MAX_TTL`), forcing its sniffed type and
    /// an inline, RFC 6266-safe disposition. An encrypted object's URL is the service's own signed
    /// link (a store's presigned URL could not decrypt it), under `MEDIA_PUBLIC_URL`.
    pub async fn presign(&self, record: &MediaRecord, ttl: Duration) -> Result<PresignedRequest, MediaError> {
        let options = PresignGet {
            ttl: ttl.min(self.settings.presign_max_ttl),
            content_type: record.mime.clone(),
            content_disposition: content_disposition("inline", &download_name(record)),
        };
        let link = match record.object_dek_version {
            None => self.blobs.presign_get(&record.storage_key, &options).await?,
            Some(dek_version) => {
                let links = self.links.as_ref().ok_or(MediaError::NoLinks)?;
                let object = LinkedObject { tenant: record.tenant_id.clone(), dek_version, size: record.size };
                let (ttl, disposition) = (options.ttl, &options.content_disposition);
                links.sign_sealed_get(&record.storage_key, ttl, &options.content_type, disposition, &object)
            }
        };
        self.presigns.increment(1);
        Ok(link)
    }

    /// The bytes of a media (a range of them, when asked), decrypted while they stream when its
    /// object is encrypted; sizes and ranges are the plaintext's either way.
    pub async fn open(&self, record: &MediaRecord, range: Option<ByteRange>) -> Result<BlobObject, MediaError> {
        let Some(dek_version) = record.object_dek_version else {
            return Ok(self.blobs.get(&record.storage_key, range).await?);
        };
        let object =
            SealedObject { tenant: &record.tenant_id, key: &record.storage_key, dek_version, size: record.size };
        sealed::open(self.blobs.as_ref(), self.repo.keys(), object, range).await
    }
}

/// The download name of a media: its filename, or `<id>.<ext>`.
pub fn download_name(record: &MediaRecord) -> String {
    record.filename.clone().unwrap_or_else(|| [record.id.as_str(), ".", extension(&record.mime)].concat())
}
