-- Old objects kept for a grace after their rows moved to a copy (`rotate-keys --objects`,
-- `encrypt-objects`) are journaled with the time they may be deleted (`delete_after`) and their
-- tenant (so `tenant shred` deletes them at once instead of leaving them for the grace). An entry
-- without `delete_after` keeps the rule of an abandoned write: the sweeper takes it once it is older
-- than the abandoned-upload age. Existing entries are carried forward as they are (both columns
-- NULL): the rule they were written under still applies to them.
ALTER TABLE blob_journal ADD COLUMN delete_after TIMESTAMPTZ;
ALTER TABLE blob_journal ADD COLUMN tenant_id TEXT;
CREATE INDEX blob_journal_delete_after ON blob_journal (delete_after) WHERE delete_after IS NOT NULL;
CREATE INDEX blob_journal_tenant ON blob_journal (tenant_id) WHERE tenant_id IS NOT NULL;
