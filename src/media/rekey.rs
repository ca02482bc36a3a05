//! Moving one stored object to a DEK version (`rotate-keys --objects`, `encrypt-objects`; the passes
//! are `jobs::objects`): a copy through the service's own cipher — the object is read and opened
//! (or read as it is, when stored in the clear), sealed under the target version while it streams
//! into a fresh key, and checked (the plaintext's length and SHA-256 are the row's) — then the
//! rows' compare-and-set (`db::media::objects`). The copy is journaled before its first byte, so
//! whatever happens to this process it is deleted unless rows came to reference it.
//!
//! An upload whose bytes were sealed under a version that retired before its row was written is
//! copied the same way under the current version ([`reseal_unrecorded`]), so a rotation never fails
//! an upload in flight; one whose version a shred destroyed is refused (never opened again).
//!
//! Memory is flat: one segment in each direction, as for uploads and downloads.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::ingest::pipeline::Pipeline;
use super::sealed::{self, SealedObject, Sealing};
use super::MediaError;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::object::sealed_len;
use crate::db::media::{MediaRecord, MoveOutcome, ObjectToMove};
use crate::db::{journal, DbError};
use crate::jobs::objects::Reseal;
use crate::storage::StorageError;

/// Copies objects under new keys (cheap to clone).
#[derive(Clone)]
pub struct ObjectMover {
    pipeline: Pipeline,
}

impl ObjectMover {
    /// A mover storing through `pipeline`'s blob store, under its key prefix.
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }

    /// Moves `object` to `target` (see the module docs): a copy whose rows did not come to
    /// reference it is deleted; after an error whose outcome is unknown (the commit's answer lost)
    /// it stays journaled, for the sweeper.
    /// The old object stays journaled as kept until `grace` after the move (the sweeper leaves it
    /// until then).
    pub async fn move_object(
        &self,
        object: &ObjectToMove,
        target: u32,
        grace: Duration,
    ) -> Result<MoveOutcome, MediaError> {
        let key = self.pipeline.new_storage_key();
        if let Err(err) = self.copy(object, &key, target).await {
            self.pipeline.discard(&key).await;
            // An object deleted with its last row while it was read: nothing to move.
            if matches!(err, MediaError::Storage(StorageError::NotFound)) {
                let row = self.pipeline.repo().get(&object.tenant, &object.id).await?;
                if row.is_none_or(|row| row.record.storage_key != object.storage_key) {
                    return Ok(MoveOutcome::Lost("its rows are gone"));
                }
            }
            return Err(err);
        }
        let moved = self.pipeline.repo().move_object(object, &key, target, grace).await?;
        if let MoveOutcome::Lost(_) = moved {
            self.pipeline.discard(&key).await;
        }
        Ok(moved)
    }

    /// Streams the plaintext of `object` into `key`, sealed under `target`, and checks the copy.
    async fn copy(&self, object: &ObjectToMove, key: &str, target: u32) -> Result<(), MediaError> {
        let blobs = self.pipeline.blobs();
        let keys = self.pipeline.repo().keys();
        let tenant = object.tenant.as_str();
        let source = match object.object_dek_version {
            Some(dek_version) => {
                let sealed = SealedObject { tenant, key: &object.storage_key, dek_version, size: object.size };
                sealed::open(blobs.as_ref(), keys, sealed, None).await?
            }
            None => blobs.get(&object.storage_key, None).await?,
        };
        if source.total_size != object.size {
            return Err(MediaError::ObjectIntegrity);
        }
        let tally = Arc::new(Mutex::new((Sha256::new(), 0u64)));
        let tap = tally.clone();
        let plain = source
            .body
            .inspect(move |chunk| {
                if let Ok(bytes) = chunk {
                    let mut tally = tap.lock().unwrap_or_else(PoisonError::into_inner);
                    tally.0.update(bytes);
                    tally.1 += bytes.len() as u64;
                }
            })
            .boxed();
        let sealing = Sealing::under(keys, tenant, key, target).await?;
        journal::open(self.pipeline.db(), key).await?;
        let length = sealed_len(object.size);
        let written = blobs.put_sized(key, &object.mime, length, sealing.seal(plain)).await;
        let written = written.map_err(|err| match err {
            StorageError::Source(err) => StorageError::backend(blobs.backend(), "get", err),
            other => other,
        })?;
        let (sha256, bytes) = std::mem::take(&mut *tally.lock().unwrap_or_else(PoisonError::into_inner));
        let sha256: [u8; 32] = sha256.finalize().into();
        if written != length || bytes != object.size || object.sha256.is_some_and(|want| want != sha256) {
            tracing::error!(tenant, id = object.id, "an object's copy is not the bytes its row records");
            return Err(MediaError::ObjectIntegrity);
        }
        Ok(())
    }
}

/// The object of `record` — a row not yet written, whose object was sealed under a version retired
/// meanwhile — copied under the tenant's current version into a fresh key; the old object is
/// deleted and the record that references the copy comes back (its journal entry ends with its row).
pub(crate) async fn reseal_unrecorded(pipeline: &Pipeline, record: &MediaRecord) -> Result<MediaRecord, MediaError> {
    // Opened through this process's key cache: if a shred (in any process) destroyed the version,
    // nothing sealed under it may come back readable — checked before the copy, and after it (the
    // shred may land while it runs): the copy goes and the upload fails. (The refused row write has
    // already given the tenant a fresh key; it seals nothing.)
    source_held(pipeline, record).await?;
    let target = pipeline.repo().keys().current(&record.tenant_id, KeyPurpose::Dek).await?.version;
    let object = ObjectToMove {
        tenant: record.tenant_id.clone(),
        id: record.id.clone(),
        mac: None,
        storage_key: record.storage_key.clone(),
        object_dek_version: record.object_dek_version,
        size: record.size,
        mime: record.mime.clone(),
        sha256: record.sha256,
    };
    let mover = ObjectMover::new(pipeline.clone());
    let key = pipeline.new_storage_key();
    if let Err(err) = mover.copy(&object, &key, target).await {
        pipeline.discard(&key).await;
        return Err(err);
    }
    if let Err(err) = source_held(pipeline, record).await {
        pipeline.discard(&key).await;
        return Err(err);
    }
    pipeline.discard(&record.storage_key).await;
    Ok(MediaRecord { storage_key: key, object_dek_version: Some(target), ..record.clone() })
}

/// Refuses a record whose object's DEK version the database no longer holds (a shred destroyed it).
async fn source_held(pipeline: &Pipeline, record: &MediaRecord) -> Result<(), MediaError> {
    let Some(version) = record.object_dek_version else { return Ok(()) };
    match pipeline.repo().keys().held(&record.tenant_id, KeyPurpose::Dek, version).await? {
        true => Ok(()),
        false => Err(DbError::MissingKey { version }.into()),
    }
}

#[async_trait::async_trait]
impl Reseal for ObjectMover {
    async fn reseal(&self, object: &ObjectToMove, target: u32, grace: Duration) -> anyhow::Result<MoveOutcome> {
        Ok(self.move_object(object, target, grace).await?)
    }
}
