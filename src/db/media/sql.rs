//! The SQL of `media_objects` (the same text runs on Postgres and SQLite unless named `_PG`).

/// The table.
pub(super) const TABLE: &str = "media_objects";
pub(super) const COLUMNS: &str = "id, tenant_id, status, mime, size_bytes, dek_version, object_dek_version, \
     filename_enc, uploader_enc, user_hint_enc, storage_key_enc, sha256_enc, metadata_enc, created_at, retention_until, \
     revision";
pub(super) const INSERT: &str =
    "INSERT INTO media_objects (tenant_id, id, status, mime, size_bytes, dek_version, content_mac, \
     filename_enc, uploader_enc, user_hint_enc, storage_key_enc, sha256_enc, metadata_enc, created_at, updated_at, \
     retention_until, object_dek_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14, \
     $15, $16)";
/// Compare-and-set on the revision read (which also pins the version read).
pub(super) const REENCRYPT: &str = "UPDATE media_objects SET dek_version = $4, filename_enc = $5, uploader_enc = $6, \
     user_hint_enc = $7, storage_key_enc = $8, sha256_enc = $9, metadata_enc = $10, updated_at = $11, \
     revision = revision + 1 WHERE tenant_id = $1 AND id = $2 AND dek_version = $3 AND revision = $12";
pub(super) const SELECT_STORAGE_KEYS: &str = "SELECT id, dek_version, storage_key_enc FROM media_objects \
     WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3";
/// [`REENCRYPT`] for a whole batch in one statement.
pub(super) const REENCRYPT_PG: &str = "UPDATE media_objects AS m SET dek_version = $2, filename_enc = u.filename, \
     uploader_enc = u.uploader, user_hint_enc = u.user_hint, storage_key_enc = u.storage_key, sha256_enc = u.sha256, \
     metadata_enc = u.metadata, updated_at = $11, revision = m.revision + 1 \
     FROM UNNEST($3::text[], $4::int4[], $5::bytea[], $6::bytea[], $7::bytea[], $8::bytea[], $9::bytea[], $10::bytea[], \
     $12::int8[]) AS u(id, old_version, filename, uploader, user_hint, storage_key, sha256, metadata, revision) \
     WHERE m.tenant_id = $1 AND m.id = u.id AND m.dek_version = u.old_version AND m.revision = u.revision";
pub(super) const MARK_READY: &str = "UPDATE media_objects SET status = 'ready', mime = $3, size_bytes = $4, dek_version = $5, \
     content_mac = $6, filename_enc = $7, uploader_enc = $8, user_hint_enc = $9, storage_key_enc = $10, sha256_enc = $11, \
     metadata_enc = $12, updated_at = $13, object_dek_version = $14, revision = revision + 1 \
     WHERE tenant_id = $1 AND id = $2 AND status = 'pending'";
pub(super) const SWEEPABLE: &str = "SELECT tenant_id, id FROM media_objects \
     WHERE (retention_until < $1 OR (status = 'pending' AND created_at < $2)) AND (tenant_id, id) > ($3, $4) \
     ORDER BY tenant_id, id LIMIT $5";
/// Answers the deleted row's content MAC (its group, `super::group`).
pub(super) const DELETE: &str =
    "DELETE FROM media_objects WHERE tenant_id = $1 AND id = $2 AND ($3 IS NULL OR status = $3) RETURNING content_mac";
pub(super) const TENANTS: &str = "SELECT DISTINCT tenant_id FROM media_objects ORDER BY tenant_id";
