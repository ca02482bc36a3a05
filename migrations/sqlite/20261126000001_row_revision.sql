-- A revision per media row, raised by every write that changes a row in place (a direct upload
-- made ready, a re-encryption under a new DEK version). A writer that read a row updates it only if
-- the revision is still the one it read (compare-and-set), so a rotation batch read before a
-- completion can never write the row's stale pending columns over the completed row. Existing rows
-- start at revision 0.
ALTER TABLE media_objects ADD COLUMN revision INTEGER NOT NULL DEFAULT 0 CHECK (revision >= 0);
