-- Tenant state, checked in the same transaction as every row write: `active` (writes allowed),
-- `shredding` (a shred is removing the tenant's rows, objects and keys: every write is refused),
-- `shredded` (done; the next write starts the tenant afresh, with new keys). SQLite has one writer
-- at a time, so the check and the write cannot interleave with a shred. Existing tenants start active.
CREATE TABLE tenants (
    tenant_id   TEXT NOT NULL PRIMARY KEY,
    state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'shredding', 'shredded')),
    updated_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;
INSERT OR IGNORE INTO tenants (tenant_id) SELECT DISTINCT tenant_id FROM tenant_keys;
INSERT OR IGNORE INTO tenants (tenant_id) SELECT DISTINCT tenant_id FROM media_objects;
