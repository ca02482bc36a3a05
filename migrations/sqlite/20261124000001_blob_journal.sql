-- The blob journal (see the PostgreSQL migration of the same name for its protocol).
CREATE TABLE blob_journal (
    storage_key  TEXT    PRIMARY KEY,
    created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX blob_journal_created ON blob_journal (created_at);
