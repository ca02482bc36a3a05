-- Old objects kept for a grace (see the PostgreSQL migration of the same name).
ALTER TABLE blob_journal ADD COLUMN delete_after TEXT;
ALTER TABLE blob_journal ADD COLUMN tenant_id TEXT;
CREATE INDEX blob_journal_delete_after ON blob_journal (delete_after) WHERE delete_after IS NOT NULL;
CREATE INDEX blob_journal_tenant ON blob_journal (tenant_id) WHERE tenant_id IS NOT NULL;
