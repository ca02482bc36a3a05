-- The blob journal: keys of objects that no media row references — an upload being written, or an
-- object whose row is gone and whose delete is pending. An entry is written before the first byte
-- of an upload and removed in the same transaction as the row that comes to reference its key (or
-- after the object is deleted); a row delete writes the entry of its key in its own transaction. So
-- an entry a crash leaves behind names an object nothing else can reach, and the sweeper deletes it.
CREATE TABLE blob_journal (
    storage_key  TEXT        PRIMARY KEY,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX blob_journal_created ON blob_journal (created_at);
