-- Parsec server schema, migration 2: block creations in progress, messages read.
--
-- `block_create` claims its block id here before the bytes go to the blockstore, and the
-- statement that records the block ends the claim: of two racing creations of one id only
-- one writes (parsec.storage.postgresql.block). `claim` is the creation's own random id;
-- `author` the device, which may claim the id again at once (a retry); a claim older than
-- the `block_create_claim` limit (a failed write, a crashed server) may be taken over.
-- No foreign key: a claim only lives while its creation runs, and is never read elsewhere.
CREATE TABLE block_claim (
    organization_id text NOT NULL,
    block_id uuid NOT NULL,
    claim uuid NOT NULL,
    author text NOT NULL,                              -- device_id
    claimed_on timestamptz NOT NULL,
    PRIMARY KEY (organization_id, block_id)
);


-- user_.message_read: the highest `offset` the user's devices gave `message_get` (at most
-- message_count). The messages after it are unread; their count and size are bounded by the
-- `pending_messages` / `pending_message_bytes` limits, checked by the statements that append
-- messages. Messages stored before this migration count as read (the bound applies to new
-- ones; `message_get` replies are bounded anyway).
ALTER TABLE user_ ADD COLUMN message_read integer NOT NULL DEFAULT 0 CHECK (message_read >= 0);
UPDATE user_ SET message_read = message_count;
