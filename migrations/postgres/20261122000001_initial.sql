-- media-api initial schema (PostgreSQL).
-- Sensitive fields of media rows are stored only encrypted (BYTEA, AES-256-GCM under a tenant DEK);
-- the plain columns are what queries need: tenant, id, type, size, status, times, key version.

-- Wrapped tenant keys: data-encryption keys (purpose 'dek', rotated) and blind-index keys
-- (purpose 'index', rewrapped but never rotated). `kek_id` names the master key that wraps the row,
-- so unwrapping never needs trial decryption and a KEK can be retired once nothing references it.
-- Several versions are 'active' (usable) while rows still use them; new writes use the highest.
-- The primary key makes concurrent creation of the same version (first write, rotation) conflict.
CREATE TABLE tenant_keys (
    tenant_id    TEXT        NOT NULL,
    purpose      TEXT        NOT NULL CHECK (purpose IN ('dek', 'index')),
    version      INTEGER     NOT NULL CHECK (version > 0),
    kek_id       TEXT        NOT NULL,
    wrapped_key  BYTEA,                       -- NULL once destroyed (crypto-shredding)
    state        TEXT        NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    encryptions  BIGINT      NOT NULL DEFAULT 0 CHECK (encryptions >= 0),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, purpose, version),
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
-- Also covers the compare-and-set of a re-wrap exactly (kek_id plus the primary key).
CREATE INDEX tenant_keys_by_kek ON tenant_keys (kek_id, tenant_id, purpose, version);

CREATE TABLE media_objects (
    tenant_id        TEXT        NOT NULL,
    id               TEXT        NOT NULL CHECK (id ~ '^jan_[a-z0-9]+$'),
    status           TEXT        NOT NULL CHECK (status IN ('pending', 'ready')),
    mime             TEXT        NOT NULL,
    size_bytes       BIGINT      NOT NULL CHECK (size_bytes >= 0),
    dek_version      INTEGER     NOT NULL CHECK (dek_version > 0),
    content_mac      BYTEA,                   -- HMAC(tenant index key, sha256); NULL while pending
    filename_enc     BYTEA,
    uploader_enc     BYTEA       NOT NULL,
    user_hint_enc    BYTEA,
    storage_key_enc  BYTEA       NOT NULL,
    sha256_enc       BYTEA,
    metadata_enc     BYTEA,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    retention_until  TIMESTAMPTZ,
    PRIMARY KEY (tenant_id, id)
);
-- IDs are random and never reused across tenants.
CREATE UNIQUE INDEX media_objects_id ON media_objects (id);
-- Per-tenant dedup through the blind index.
CREATE UNIQUE INDEX media_objects_dedup ON media_objects (tenant_id, content_mac) WHERE content_mac IS NOT NULL;
-- Key inventory: "which rows still use version N" is one index scan; with id it also serves the
-- compare-and-set updates of rotation exactly (the planner may prefer it to the primary key).
CREATE INDEX media_objects_dek_version ON media_objects (tenant_id, dek_version, id);
CREATE INDEX media_objects_retention ON media_objects (retention_until) WHERE retention_until IS NOT NULL;
CREATE INDEX media_objects_pending ON media_objects (created_at) WHERE status = 'pending';

-- Append-only audit log with a hash chain per tenant ('' is the system chain).
CREATE TABLE audit_events (
    seq          BIGSERIAL   PRIMARY KEY,
    tenant_id    TEXT        NOT NULL,
    chain_seq    BIGINT      NOT NULL CHECK (chain_seq > 0),
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind         TEXT        NOT NULL,
    actor        TEXT,
    subject      TEXT,
    details      TEXT        NOT NULL DEFAULT '{}',
    prev_hash    BYTEA       NOT NULL,
    hash         BYTEA       NOT NULL,
    UNIQUE (tenant_id, chain_seq)
);

CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END;
$$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only();
