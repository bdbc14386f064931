-- Parsec server schema, migration 3: the tables every vlob write and block creation inserts
-- into lose their foreign keys.
--
-- A foreign key costs one trigger per inserted row, and the trigger runs a query that locks
-- the referenced row (`FOR KEY SHARE`): six per `vlob_create` (vlob -> realm; vlob_atom ->
-- vlob, encryption revision, device; realm_vlob_update -> realm, vlob), five per
-- `vlob_update`, two per block. They checked nothing the statements do not already
-- guarantee: every one of these rows is written by one statement that has just locked or
-- created what it points at (the realm row, its current encryption revision, the vlob row),
-- and the author is the authenticated device, which exists; realms, revisions, vlobs and
-- devices are never deleted (parsec.storage.postgresql.realm_common). Measured on one
-- connection, PostgreSQL's own CPU per `vlob_create`: 255-310 us with the keys, 215-240
-- without (README.rst, Performance).
--
-- `parsec backend import` adds the foreign keys of the tables it loads back after loading
-- them, as a check of the rows it wrote: these tables now have none to check, the rows come
-- from a database that had them (the upstream schema references every one of them).
ALTER TABLE vlob DROP CONSTRAINT vlob_organization_id_realm_id_fkey;
ALTER TABLE vlob_atom DROP CONSTRAINT vlob_atom_organization_id_vlob_id_fkey;
ALTER TABLE vlob_atom DROP CONSTRAINT vlob_atom_organization_id_realm_id_encryption_revision_fkey;
ALTER TABLE vlob_atom DROP CONSTRAINT vlob_atom_organization_id_author_fkey;
ALTER TABLE realm_vlob_update DROP CONSTRAINT realm_vlob_update_organization_id_realm_id_fkey;
ALTER TABLE realm_vlob_update DROP CONSTRAINT realm_vlob_update_organization_id_vlob_id_fkey;
ALTER TABLE block DROP CONSTRAINT block_organization_id_realm_id_fkey;
ALTER TABLE block DROP CONSTRAINT block_organization_id_author_fkey;
