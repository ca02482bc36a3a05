//! Dedup as invisible storage sharing (DESIGN §5): identical bytes in a tenant are stored once,
//! and every upload still has its own row — its own id, filename, uploader and hint.
//!
//! A *group* is the ready rows of one tenant with one `content_mac` (the blind index of their
//! SHA-256, see [`crate::crypto::blind_index`]). Every row of a group references the same object,
//! each sealing its own copy of the storage key (under its own AAD and DEK version, so rotation,
//! re-encryption, reconcile and shred keep working row by row). **The object's reference count is
//! the number of rows in its group**: there is no counter that could drift from the rows. Rows
//! without a MAC (pending direct uploads, and those verified on first read before this rule) are
//! groups of one.
//!
//! The writers of a group are serialized inside their transactions — on Postgres by a
//! transaction-scoped advisory lock ([`crate::db::locks::content_group`]), on SQLite by the write
//! lock every write transaction takes with its first statement — and read or count the group only
//! after that (each statement of a Postgres READ COMMITTED transaction sees what committed before
//! it), so:
//! - **insert / completion** ([`MediaRepo::place`]): when a row of the group has the same uploader,
//!   nothing is written and that row's id comes back ([`InsertOutcome::Duplicate`]): a client's
//!   retry is idempotent, and only the caller who uploaded the bytes before learns that they were
//!   there. Otherwise, when the group has rows, the new row takes their storage key and the object
//!   the caller just wrote stays journaled, for the caller to delete ([`InsertOutcome::Joined`]);
//!   when it has none, the row references its own object ([`InsertOutcome::Inserted`]). Racing
//!   identical uploads therefore keep one object and lose no row.
//! - **delete**: the row goes, and its object's key is journaled in the same transaction only when
//!   no row of its group remains ([`Deletion::Last`]): the object goes with its last reference.
//!
//! [`InsertOutcome::Duplicate`]: super::InsertOutcome::Duplicate
//! [`InsertOutcome::Joined`]: super::InsertOutcome::Joined
//! [`InsertOutcome::Inserted`]: super::InsertOutcome::Inserted
//! [`Deletion::Last`]: super::Deletion::Last

use super::cipher::{RowCipher, SealedColumns};
use super::model::InsertOutcome;
use super::MediaRepo;
use crate::crypto::envelope::KeyPurpose;
use crate::crypto::field::FieldCipher;
use crate::crypto::CryptoError;
use crate::db::{Database, DbError};
use crate::with_pool;

/// Serializes a group until the transaction ends (Postgres only; see the module docs).
const LOCK_PG: &str = "SELECT pg_advisory_xact_lock($1)";
/// The group's rows, oldest first.
pub(super) const MEMBERS: &str = "SELECT id, dek_version, object_dek_version, uploader_enc, storage_key_enc \
     FROM media_objects WHERE tenant_id = $1 AND content_mac = $2 ORDER BY created_at, id";
/// The group's size: its object's reference count.
pub(super) const REFERENCES: &str = "SELECT COUNT(*) FROM media_objects WHERE tenant_id = $1 AND content_mac = $2";
const VERSIONS: &str = "SELECT DISTINCT dek_version FROM media_objects WHERE tenant_id = $1 AND content_mac = $2";

/// Inside a write's transaction `$tx`: takes the lock of the group (`$lock`: [`lock_sql`]) of
/// tenant `$tenant` and content MAC `$mac` (`&[u8; 32]`).
macro_rules! lock_group {
    ($tx:expr, $lock:expr, $tenant:expr, $mac:expr) => {
        if let Some(lock) = $lock {
            sqlx::query(lock).bind($crate::db::locks::content_group($tenant, $mac)).execute(&mut *$tx).await?;
        }
    };
}

/// Inside a write's transaction `$tx`: locks the group (see [`lock_group`]) and reads its rows.
macro_rules! group_members {
    ($tx:expr, $lock:expr, $tenant:expr, $mac:expr) => {{
        lock_group!($tx, $lock, $tenant, $mac);
        sqlx::query_as::<_, group::Member>(group::MEMBERS)
            .bind($tenant)
            .bind($mac.as_slice())
            .fetch_all(&mut *$tx)
            .await?
    }};
}

/// The statement that serializes a group on this database (`None` on SQLite, whose write lock
/// already does).
pub(super) fn lock_sql(db: &Database) -> Option<&'static str> {
    match db {
        Database::Postgres(_) => Some(LOCK_PG),
        Database::Sqlite(_) => None,
    }
}

/// A row of a group, its uploader and storage key still sealed.
#[derive(sqlx::FromRow)]
pub(super) struct Member {
    id: String,
    dek_version: i32,
    object_dek_version: Option<i32>,
    uploader_enc: Vec<u8>,
    storage_key_enc: Vec<u8>,
}

/// Where a new row of a group goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// The group is empty: the row references its own object.
    First,
    /// The row joins the group: it references the object under this storage key, sealed under
    /// this DEK version (`None`: in the clear) — whatever the new row's own object was.
    Shared(String, Option<u32>),
    /// The same uploader's row with these bytes: nothing is to be written.
    Own(String),
}

impl Placement {
    /// Seals the shared storage key into `sealed` (as `cipher`'s row) when the row joins a group,
    /// and says what the write did, once it is done; `Own` answers its id.
    pub(super) fn apply(self, cipher: &RowCipher<'_>, sealed: &mut SealedColumns) -> InsertOutcome {
        match self {
            Self::First => InsertOutcome::Inserted,
            Self::Shared(storage_key, object_dek_version) => {
                sealed.storage_key = cipher.seal("storage_key", storage_key.as_bytes());
                InsertOutcome::Joined { storage_key, object_dek_version }
            }
            Self::Own(id) => InsertOutcome::Duplicate(id),
        }
    }
}

/// Values sealed by a write beyond its row's columns: the shared storage key a joining row re-seals.
pub(super) fn extra_encryptions<W>(result: &Result<Result<InsertOutcome, W>, DbError>) -> u64 {
    u64::from(matches!(result, Ok(Ok(InsertOutcome::Joined { .. }))))
}

impl MediaRepo {
    /// Fetches (outside any transaction) the DEK versions of the group's rows, so that deciding a
    /// row's [`Placement`] inside the write's transaction finds its keys cached and needs no second
    /// connection while it holds the group.
    pub(super) async fn warm_group_keys(&self, tenant: &str, mac: &[u8; 32]) -> Result<(), DbError> {
        let versions: Vec<i32> = with_pool!(&self.db, |pool| sqlx::query_scalar(VERSIONS)
            .bind(tenant)
            .bind(mac.as_slice())
            .fetch_all(pool)
            .await)?;
        for version in versions {
            let version = u32::try_from(version).map_err(|_| CryptoError::Integrity)?;
            self.keys.version(tenant, KeyPurpose::Dek, version).await?;
        }
        Ok(())
    }

    /// Where a new row of `uploader` goes in a group whose rows are `members` (see the module
    /// docs); with no `uploader` the row joins the group even when one of its rows is the same
    /// uploader's (a completion that must keep its id).
    pub(super) async fn place(
        &self,
        tenant: &str,
        uploader: Option<&str>,
        members: Vec<Member>,
    ) -> Result<Placement, DbError> {
        let mut shared = None;
        for member in members {
            let version = u32::try_from(member.dek_version).map_err(|_| CryptoError::Integrity)?;
            let dek = self.keys.version(tenant, KeyPurpose::Dek, version).await?;
            let cipher = FieldCipher::new(&dek);
            let row = RowCipher { cipher: &cipher, tenant, id: &member.id };
            if let Some(uploader) = uploader {
                if row.open_text("uploader", &member.uploader_enc)? == uploader {
                    return Ok(Placement::Own(member.id));
                }
            }
            if shared.is_none() {
                let object_version = member.object_dek_version.map(u32::try_from).transpose();
                let object_version = object_version.map_err(|_| CryptoError::Integrity)?;
                shared = Some((row.open_text("storage_key", &member.storage_key_enc)?, object_version));
                if uploader.is_none() {
                    break;
                }
            }
        }
        Ok(shared.map_or(Placement::First, |(key, version)| Placement::Shared(key, version)))
    }
}
