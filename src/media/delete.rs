//! Deleting a media: its uploader or a caller with `media:admin`; the row, then the object (see
//! [`crate::jobs::removal`]), recorded in the tenant's audit chain.

use serde_json::json;

use super::direct::require_owner;
use super::{MediaError, MediaService};
use crate::auth::Principal;
use crate::domain::media_id::is_valid;

/// Reads of the row before a delete that keeps losing to a completion gives up.
const ATTEMPTS: usize = 3;

impl MediaService {
    /// Deletes the caller's media `id`.
    pub async fn delete(&self, caller: &Principal, id: &str) -> Result<(), MediaError> {
        if !is_valid(id) {
            return Err(MediaError::NotFound);
        }
        // A pending upload completing at the same moment changes the row under the delete: read again.
        for _ in 0..ATTEMPTS {
            let record = self.repo.get(&caller.tenant, id).await?.ok_or(MediaError::NotFound)?.record;
            require_owner(caller, &record)?;
            if self.pipeline.remove(&record).await? {
                let details = json!({});
                self.pipeline.audit(&caller.tenant, &caller.subject, "media.deleted", &record.id, details).await;
                return Ok(());
            }
        }
        Err(MediaError::Conflict {
            code: "media_changed",
            message: "the media kept changing while it was being deleted; try again".into(),
        })
    }
}
