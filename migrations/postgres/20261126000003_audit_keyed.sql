-- Audit events are chained with a keyed MAC and name callers, media and client addresses by
-- pseudonym (`format` 2). Events written before this migration keep `format` 1 (a plain SHA-256
-- chain with subjects in the clear) until the service reseals them: `media-api migrate` and a
-- server migrating on start pseudonymize their actors and subjects under the tenant's keys and
-- rechain them with the audit key (src/db/audit/legacy.rs). `audit verify` checks either format.
ALTER TABLE audit_events ADD COLUMN format SMALLINT NOT NULL DEFAULT 1 CHECK (format IN (1, 2));
-- Finds what is left to reseal without reading the whole log at every start.
CREATE INDEX audit_events_legacy ON audit_events (tenant_id) WHERE format = 1;
