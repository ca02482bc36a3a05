-- media-api initial schema (SQLite, the embedded default). Same tables and meaning as
-- migrations/postgres; timestamps are ISO-8601 UTC text, bytes are BLOBs.

CREATE TABLE tenant_keys (
    tenant_id    TEXT    NOT NULL,
    purpose      TEXT    NOT NULL CHECK (purpose IN ('dek', 'index')),
    version      INTEGER NOT NULL CHECK (version > 0),
    kek_id       TEXT    NOT NULL,
    wrapped_key  BLOB,
    state        TEXT    NOT NULL CHECK (state IN ('active', 'retired', 'destroyed')),
    encryptions  INTEGER NOT NULL DEFAULT 0 CHECK (encryptions >= 0),
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (tenant_id, purpose, version),
    CHECK ((state = 'destroyed') = (wrapped_key IS NULL))
);
-- Also covers the compare-and-set of a re-wrap exactly (kek_id plus the primary key).
CREATE INDEX tenant_keys_by_kek ON tenant_keys (kek_id, tenant_id, purpose, version);

CREATE TABLE media_objects (
    tenant_id        TEXT    NOT NULL,
    id               TEXT    NOT NULL CHECK (id GLOB 'jan_[a-z0-9]*' AND id NOT GLOB 'jan_*[^a-z0-9]*'),
    status           TEXT    NOT NULL CHECK (status IN ('pending', 'ready')),
    mime             TEXT    NOT NULL,
    size_bytes       INTEGER NOT NULL CHECK (size_bytes >= 0),
    dek_version      INTEGER NOT NULL CHECK (dek_version > 0),
    content_mac      BLOB,
    filename_enc     BLOB,
    uploader_enc     BLOB    NOT NULL,
    user_hint_enc    BLOB,
    storage_key_enc  BLOB    NOT NULL,
    sha256_enc       BLOB,
    metadata_enc     BLOB,
    created_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    retention_until  TEXT,
    PRIMARY KEY (tenant_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX media_objects_id ON media_objects (id);
CREATE UNIQUE INDEX media_objects_dedup ON media_objects (tenant_id, content_mac) WHERE content_mac IS NOT NULL;
CREATE INDEX media_objects_dek_version ON media_objects (tenant_id, dek_version, id);
CREATE INDEX media_objects_retention ON media_objects (retention_until) WHERE retention_until IS NOT NULL;
CREATE INDEX media_objects_pending ON media_objects (created_at) WHERE status = 'pending';

CREATE TABLE audit_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    TEXT    NOT NULL,
    chain_seq    INTEGER NOT NULL CHECK (chain_seq > 0),
    occurred_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    kind         TEXT    NOT NULL,
    actor        TEXT,
    subject      TEXT,
    details      TEXT    NOT NULL DEFAULT '{}',
    prev_hash    BLOB    NOT NULL,
    hash         BLOB    NOT NULL,
    UNIQUE (tenant_id, chain_seq)
);

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: UPDATE refused');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: DELETE refused');
END;
