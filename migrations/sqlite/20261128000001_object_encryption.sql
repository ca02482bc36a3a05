-- Encrypted objects (DESIGN §9): with MEDIA_OBJECT_ENCRYPTION=on the bytes of a media are sealed in
-- 64 KiB segments under a key derived from the tenant's DEK (src/crypto/object.rs) before they reach
-- the blob store. `object_dek_version` names the DEK version the row's object is sealed under; NULL
-- means the object is stored in the clear. Existing rows carry forward as plain (NULL). The rows of a
-- dedup group share one object, so they share this value too. It is a plain column, like
-- `dek_version`, so "which objects still use version N" is one query.
ALTER TABLE media_objects ADD COLUMN object_dek_version INTEGER CHECK (object_dek_version > 0);
CREATE INDEX media_objects_object_dek_version ON media_objects (tenant_id, object_dek_version)
    WHERE object_dek_version IS NOT NULL;
