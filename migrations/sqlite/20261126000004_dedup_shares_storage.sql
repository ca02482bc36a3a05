-- Dedup is storage sharing, invisible between users (DESIGN §5): every upload has its own row (its
-- own id, filename, uploader and hint, sealed under its own AAD), and the ready rows of a tenant
-- whose bytes are equal (same content_mac) point at one shared object. The rows of such a group are
-- the object's references: the object goes with the last of them. Until now the unique index made
-- one row per object, so every existing row is a group of one and carries forward unchanged.
-- Writers serialize a group with the database's write lock (src/db/media/group.rs).
DROP INDEX media_objects_dedup;
CREATE INDEX media_objects_content_group ON media_objects (tenant_id, content_mac) WHERE content_mac IS NOT NULL;
