-- Tenant state, checked in the same transaction as every row write: `active` (writes allowed),
-- `shredding` (a shred is removing the tenant's rows, objects and keys: every write is refused),
-- `shredded` (done; the next write starts the tenant afresh, with new keys). Writers hold the row
-- `FOR SHARE` while they write and a shred moves it to `shredding` with an UPDATE, so a shred waits
-- for writes in flight and every write after it sees the new state. Existing tenants start active.
CREATE TABLE tenants (
    tenant_id   TEXT        PRIMARY KEY,
    state       TEXT        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'shredding', 'shredded')),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO tenants (tenant_id) SELECT DISTINCT tenant_id FROM tenant_keys ON CONFLICT DO NOTHING;
INSERT INTO tenants (tenant_id) SELECT DISTINCT tenant_id FROM media_objects ON CONFLICT DO NOTHING;
