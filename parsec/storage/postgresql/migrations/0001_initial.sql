-- Parsec server schema, migration 1: every table of the logical model (docs/protocol/storage.md §3).
--
-- Design rules
-- * Natural keys: every table starts with organization_id (text) followed by the protocol's
--   own identifiers (user_id, device_id, realm_id, vlob_id, ...). A request carries those
--   identifiers, so it reaches its rows without first translating them into surrogate keys:
--   each request can be one statement (CTEs, INSERT ... RETURNING), i.e. one round trip.
-- * Current state is kept next to the history it summarizes, updated by the same statement:
--   realm.checkpoint (last checkpoint allocated), vlob.latest_version, realm_user (current
--   role + causality timestamps), user_.message_count (last message index).
-- * Concurrency is enforced by keys, partial unique indexes and row locks, never by "check
--   then insert" alone: see the notes on each table.
-- * Identifier syntax is validated by the API layer; the checks below only guard the shapes
--   other queries rely on.
-- * Opaque encrypted payloads (vlob blobs, block data) use STORAGE EXTERNAL: out of line when
--   large, never compressed (encrypted data does not compress).
-- * Per-organization serialization (user creation, revocation, PKI): take
--   `SELECT ... FROM organization WHERE organization_id = $1 FOR NO KEY UPDATE`. NO KEY UPDATE
--   does not conflict with the KEY SHARE locks that foreign-key checks take, so it does not
--   block the organization's other writes.
-- * Timestamps are timestamptz (UTC); client-provided timestamps are stored as given.
--
-- Migration files run inside one transaction each (no BEGIN/COMMIT, no CONCURRENTLY here).


-- Applied migrations (written by `parsec backend migrate`, one row per file, in the same
-- transaction as the file).
CREATE TABLE migration (
    id integer PRIMARY KEY,
    name text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
);


-- Tenants. Created by the administration API (or spontaneously), bootstrapped once: the
-- bootstrap is a single `UPDATE ... WHERE root_verify_key IS NULL AND bootstrap_token = $t`
-- (row lock: concurrent bootstraps serialize, one wins). Re-creating a non-bootstrapped
-- organization updates the row in place (new token, config reset, not expired) and forgets
-- its PKI enrollments (nothing else can exist before the bootstrap).
-- active_users_limit is a bigint: the administration API accepts any non-negative integer,
-- larger ones are stored as the bigint maximum (no organization gets that many users).
CREATE TABLE organization (
    organization_id text PRIMARY KEY,
    bootstrap_token text NOT NULL,
    root_verify_key bytea,                             -- NULL = not bootstrapped yet
    is_expired boolean NOT NULL DEFAULT false,
    user_profile_outsider_allowed boolean NOT NULL DEFAULT true,
    active_users_limit bigint CHECK (active_users_limit >= 0),   -- NULL = unlimited
    created_on timestamptz NOT NULL,
    bootstrapped_on timestamptz,
    expired_on timestamptz,                            -- informative: last time it expired
    CHECK ((root_verify_key IS NULL) = (bootstrapped_on IS NULL))
);


-- Users ("user" is a reserved word). A user is revoked from revoked_on on (the revocation
-- certificate's timestamp, possibly slightly in the future). message_count is the index of
-- the last message addressed to the user: appending a message is
-- `UPDATE user_ SET message_count = message_count + 1 ... RETURNING message_count` (row lock =
-- race-free numbering).
-- Human handle: (human_email, human_label) as certified for this very user (successive users
-- holding one e-mail keep their own label). human_find compares Unicode case-folded text and
-- sorts by lower-cased label: both are computed by the server when the user is inserted
-- (`human_*_folded`, `human_label_lower`; sort them with COLLATE "C", i.e. code point order).
-- At most one non-revoked user per e-mail: the creation logic checks it under the
-- organization row lock (revoked_on IS NULL OR revoked_on > now), and the partial unique
-- index below backs it for users without any revocation.
CREATE TABLE user_ (
    organization_id text NOT NULL REFERENCES organization,
    user_id text NOT NULL,
    profile text NOT NULL CHECK (profile IN ('ADMIN', 'STANDARD', 'OUTSIDER')),
    human_email text,                                  -- NULL = no human handle
    human_label text,
    human_email_folded text,
    human_label_folded text,
    human_label_lower text,
    public_key bytea NOT NULL,
    user_certificate bytea NOT NULL,
    redacted_user_certificate bytea NOT NULL,
    user_certifier text,                               -- device_id; NULL = organization root key
    created_on timestamptz NOT NULL,
    revoked_on timestamptz,
    revoked_user_certificate bytea,
    revoked_user_certifier text,                       -- device_id
    message_count integer NOT NULL DEFAULT 0 CHECK (message_count >= 0),
    PRIMARY KEY (organization_id, user_id),
    CHECK ((human_email IS NULL) = (human_label IS NULL)),
    CHECK ((human_email IS NULL) = (human_email_folded IS NULL)),
    CHECK ((human_email IS NULL) = (human_label_folded IS NULL)),
    CHECK ((human_email IS NULL) = (human_label_lower IS NULL)),
    CHECK ((revoked_on IS NULL) = (revoked_user_certificate IS NULL)),
    CHECK ((revoked_on IS NULL) = (revoked_user_certifier IS NULL))
) WITH (fillfactor = 90);

CREATE UNIQUE INDEX user_one_unrevoked_per_human
    ON user_ (organization_id, human_email)
    WHERE revoked_on IS NULL AND human_email IS NOT NULL;

-- human_find: humans first, by lower-cased label (code point order) then user id.
CREATE INDEX user_by_human_label
    ON user_ (organization_id, human_label_lower COLLATE "C", user_id COLLATE "C")
    WHERE human_email IS NOT NULL;


-- Devices. device_id is "<user_id>@<device_name>". verify_key (from the certificate) is what
-- the authenticated handshake checks: no certificate decoding per connection.
CREATE TABLE device (
    organization_id text NOT NULL,
    device_id text NOT NULL,
    user_id text NOT NULL,
    device_label text,
    verify_key bytea NOT NULL,
    device_certificate bytea NOT NULL,
    redacted_device_certificate bytea NOT NULL,
    device_certifier text,                             -- device_id; NULL = organization root key
    created_on timestamptz NOT NULL,
    PRIMARY KEY (organization_id, device_id),
    FOREIGN KEY (organization_id, user_id) REFERENCES user_,
    FOREIGN KEY (organization_id, device_certifier) REFERENCES device,
    CHECK (split_part(device_id, '@', 1) = user_id)
);

CREATE INDEX device_by_user ON device (organization_id, user_id);

-- Certifiers are devices, which come after users: close the circle now.
ALTER TABLE user_
    ADD FOREIGN KEY (organization_id, user_certifier) REFERENCES device,
    ADD FOREIGN KEY (organization_id, revoked_user_certifier) REFERENCES device;


-- Invitations and their conduit (docs/protocol/invitations.md). IDLE/READY are not stored (they describe
-- open claimer connections); deletion is. The conduit is a two-slot mailbox driven under a
-- row lock (SELECT ... FOR UPDATE). invite_new is idempotent per (greeter, type, claimer
-- e-mail) among non-deleted invitations: the partial unique index makes
-- `INSERT ... ON CONFLICT (organization_id, greeter_user_id, type, (coalesce(claimer_email, '')))
-- WHERE deleted_on IS NULL DO NOTHING` race-free (the loser reads the winner's row), and
-- serves invite_list. seq orders invite_list (creation order).
CREATE TABLE invitation (
    organization_id text NOT NULL,
    token uuid NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    type text NOT NULL CHECK (type IN ('USER', 'DEVICE')),
    greeter_user_id text NOT NULL,
    claimer_email text,                                -- USER invitations only
    created_on timestamptz NOT NULL,
    deleted_on timestamptz,
    deleted_reason text CHECK (deleted_reason IN ('FINISHED', 'CANCELLED', 'ROTTEN')),
    conduit_state text NOT NULL DEFAULT '1_WAIT_PEERS' CHECK (conduit_state IN (
        '1_WAIT_PEERS', '2_1_CLAIMER_HASHED_NONCE', '2_2_GREETER_NONCE', '2_3_CLAIMER_NONCE',
        '3_1_CLAIMER_TRUST', '3_2_GREETER_TRUST', '4_COMMUNICATE'
    )),
    conduit_greeter_payload bytea,                     -- NULL = slot empty
    conduit_claimer_payload bytea,
    PRIMARY KEY (organization_id, token),
    FOREIGN KEY (organization_id, greeter_user_id) REFERENCES user_,
    CHECK ((type = 'USER') = (claimer_email IS NOT NULL)),
    CHECK ((deleted_on IS NULL) = (deleted_reason IS NULL))
);

CREATE UNIQUE INDEX invitation_pending
    ON invitation (organization_id, greeter_user_id, type, (md5(coalesce(claimer_email, ''))))
    WHERE deleted_on IS NULL;


-- PKI enrollments. The X.509 certificates and payloads are opaque. seq gives the insertion
-- order ("latest enrollment with this certificate", list in submission order); the
-- certificate is looked up by its SHA-256, computed by the database.
CREATE TABLE pki_enrollment (
    seq bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    organization_id text NOT NULL REFERENCES organization,
    enrollment_id uuid NOT NULL,
    submitter_der_x509_certificate bytea NOT NULL,
    submitter_der_x509_certificate_sha256 bytea NOT NULL
        GENERATED ALWAYS AS (sha256(submitter_der_x509_certificate)) STORED,
    submitter_der_x509_certificate_email text,
    submit_payload_signature bytea NOT NULL,
    submit_payload bytea NOT NULL,
    submitted_on timestamptz NOT NULL,
    state text NOT NULL DEFAULT 'SUBMITTED'
        CHECK (state IN ('SUBMITTED', 'ACCEPTED', 'REJECTED', 'CANCELLED')),
    accepted_on timestamptz,
    accepter_der_x509_certificate bytea,
    accept_payload_signature bytea,
    accept_payload bytea,
    accepter text,                                     -- device_id of the accepting ADMIN
    accepted text,                                     -- device_id created by the acceptance
    rejected_on timestamptz,
    cancelled_on timestamptz,
    PRIMARY KEY (organization_id, enrollment_id),
    FOREIGN KEY (organization_id, accepter) REFERENCES device,
    FOREIGN KEY (organization_id, accepted) REFERENCES device,
    CHECK ((state = 'ACCEPTED') = (accepted_on IS NOT NULL)),
    CHECK ((state = 'REJECTED') = (rejected_on IS NOT NULL)),
    CHECK ((state = 'CANCELLED') = (cancelled_on IS NOT NULL))
);

CREATE INDEX pki_enrollment_by_certificate
    ON pki_enrollment (organization_id, submitter_der_x509_certificate_sha256, seq);
CREATE INDEX pki_enrollment_submitted
    ON pki_enrollment (organization_id, seq) WHERE state = 'SUBMITTED';


-- Messages: each user's append-only inbox, numbered 1, 2, ... (message_index = the `count`
-- of message_get, the `index` of message.received), allocated from user_.message_count.
CREATE TABLE message (
    organization_id text NOT NULL,
    recipient text NOT NULL,                           -- user_id
    message_index integer NOT NULL CHECK (message_index >= 1),
    sender text NOT NULL,                              -- device_id
    sent_on timestamptz NOT NULL,                      -- certificate / request timestamp
    body bytea NOT NULL,
    PRIMARY KEY (organization_id, recipient, message_index),
    FOREIGN KEY (organization_id, recipient) REFERENCES user_,
    FOREIGN KEY (organization_id, sender) REFERENCES device
);


-- Realms. The realm row is the write lock of everything inside the realm (roles, vlobs,
-- maintenance, realm_user): every write request first takes
-- `SELECT ... FROM realm WHERE ... FOR NO KEY UPDATE` as a separate statement of the same
-- round trip (an implicit transaction), so the statement that checks and writes starts with a
-- snapshot holding every earlier write of the realm (see parsec.storage.postgresql.realm_common).
-- NO KEY UPDATE does not conflict with the KEY SHARE locks of foreign-key checks.
-- checkpoint = last checkpoint allocated: a vlob write does `checkpoint = checkpoint + 1` under
-- that lock, hence checkpoints gap-free and in commit order. encryption_revision is the
-- current one; maintenance_* are set while a re-encryption runs. vlobs_size = sum of the
-- sizes of the vlob versions written (re-encrypted copies not counted, realm_stats).
CREATE TABLE realm (
    organization_id text NOT NULL REFERENCES organization,
    realm_id uuid NOT NULL,
    encryption_revision integer NOT NULL DEFAULT 1 CHECK (encryption_revision >= 1),
    maintenance_type text CHECK (maintenance_type IN ('REENCRYPTION', 'GARBAGE_COLLECTION')),
    maintenance_started_by text,                       -- device_id
    maintenance_started_on timestamptz,
    checkpoint bigint NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
    vlobs_size bigint NOT NULL DEFAULT 0 CHECK (vlobs_size >= 0),
    created_on timestamptz NOT NULL,
    PRIMARY KEY (organization_id, realm_id),
    FOREIGN KEY (organization_id, maintenance_started_by) REFERENCES device,
    CHECK ((maintenance_type IS NULL) = (maintenance_started_on IS NULL)),
    CHECK ((maintenance_type IS NULL) = (maintenance_started_by IS NULL))
) WITH (fillfactor = 70);                              -- room for HOT updates of checkpoint


-- Encryption revisions of a realm: revision 1 at creation, one more per re-encryption
-- (finished_on NULL while it runs). Every vlob atom belongs to one revision.
CREATE TABLE vlob_encryption_revision (
    organization_id text NOT NULL,
    realm_id uuid NOT NULL,
    encryption_revision integer NOT NULL CHECK (encryption_revision >= 1),
    started_on timestamptz NOT NULL,                   -- realm creation / re-encryption start
    started_by text NOT NULL,                          -- device_id
    finished_on timestamptz,
    PRIMARY KEY (organization_id, realm_id, encryption_revision),
    FOREIGN KEY (organization_id, realm_id) REFERENCES realm,
    FOREIGN KEY (organization_id, started_by) REFERENCES device
);


-- Realm role certificates: the full history (realm_get_role_certificates), oldest first by
-- certified_on then seq. role NULL = access removed.
CREATE TABLE realm_role (
    organization_id text NOT NULL,
    realm_id uuid NOT NULL,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    user_id text NOT NULL,                             -- the user the certificate is about
    role text CHECK (role IN ('OWNER', 'MANAGER', 'CONTRIBUTOR', 'READER')),
    certificate bytea NOT NULL,
    certified_by text NOT NULL,                        -- device_id of the author
    certified_on timestamptz NOT NULL,                 -- the certificate's timestamp
    PRIMARY KEY (organization_id, realm_id, seq),
    FOREIGN KEY (organization_id, realm_id) REFERENCES realm,
    FOREIGN KEY (organization_id, user_id) REFERENCES user_,
    FOREIGN KEY (organization_id, certified_by) REFERENCES device
);


-- Current state of one user in one realm, maintained with the history above (the "realm
-- user change" entity merged with the current role): one primary-key lookup answers every
-- access and causality check of a vlob/block/realm request.
-- * role, role_certified_on: the user's latest role certificate (role NULL = no access) and
--   its timestamp (vlob_read's author_last_role_granted_on, write causality);
-- * last_role_change: latest role certificate this user authored in the realm;
-- * last_vlob_update: latest vlob create/update authored by one of its devices there.
-- A row exists once the user got a first role certificate in the realm.
CREATE TABLE realm_user (
    organization_id text NOT NULL,
    realm_id uuid NOT NULL,
    user_id text NOT NULL,
    role text CHECK (role IN ('OWNER', 'MANAGER', 'CONTRIBUTOR', 'READER')),
    role_certified_on timestamptz NOT NULL,
    last_role_change timestamptz,
    last_vlob_update timestamptz,
    PRIMARY KEY (organization_id, realm_id, user_id),
    FOREIGN KEY (organization_id, realm_id) REFERENCES realm,
    FOREIGN KEY (organization_id, user_id) REFERENCES user_
) WITH (fillfactor = 80);                              -- HOT updates of last_vlob_update

-- "Realms where this user has a role" (events_subscribe, re-encryption participants).
CREATE INDEX realm_user_current_roles
    ON realm_user (organization_id, user_id) INCLUDE (realm_id, role)
    WHERE role IS NOT NULL;


-- Vlobs: one row per vlob id, unique per organization (docs/protocol/DECISIONS.md): creation is
-- `INSERT ... ON CONFLICT DO NOTHING` (the realm lock does not cover the same id created in
-- another realm: the primary key does). latest_version/latest_timestamp describe the newest
-- version: an update is `UPDATE vlob SET latest_version = $v ... WHERE latest_version = $v - 1
-- AND latest_timestamp <= $ts`, under the realm lock.
CREATE TABLE vlob (
    organization_id text NOT NULL,
    vlob_id uuid NOT NULL,
    realm_id uuid NOT NULL,
    latest_version integer NOT NULL CHECK (latest_version >= 1),
    latest_timestamp timestamptz NOT NULL,
    created_on timestamptz NOT NULL,                   -- timestamp of version 1
    PRIMARY KEY (organization_id, vlob_id),
    FOREIGN KEY (organization_id, realm_id) REFERENCES realm
) WITH (fillfactor = 80);


-- Vlob versions: one row per (vlob, encryption revision, version). Writes insert at the
-- realm's current revision; a re-encryption copies every atom of revision N-1 to revision N
-- (same version, author and timestamp, new blob). created_on is the client timestamp of the
-- version. size is computed by the database.
CREATE TABLE vlob_atom (
    organization_id text NOT NULL,
    vlob_id uuid NOT NULL,
    encryption_revision integer NOT NULL,
    version integer NOT NULL CHECK (version >= 1),
    realm_id uuid NOT NULL,
    blob bytea NOT NULL,
    size integer NOT NULL GENERATED ALWAYS AS (octet_length(blob)) STORED,
    author text NOT NULL,                              -- device_id
    created_on timestamptz NOT NULL,
    deleted_on timestamptz,                            -- unused by the 2.x protocol
    PRIMARY KEY (organization_id, vlob_id, encryption_revision, version),
    FOREIGN KEY (organization_id, vlob_id) REFERENCES vlob,
    FOREIGN KEY (organization_id, realm_id, encryption_revision) REFERENCES vlob_encryption_revision,
    FOREIGN KEY (organization_id, author) REFERENCES device
);
ALTER TABLE vlob_atom ALTER COLUMN blob SET STORAGE EXTERNAL;

-- Re-encryption batches (atoms of a revision of a realm) and size statistics.
CREATE INDEX vlob_atom_by_realm
    ON vlob_atom (organization_id, realm_id, encryption_revision) INCLUDE (size);


-- Checkpoint log of a realm: one row per vlob create/update (not for re-encryption copies),
-- at the checkpoint allocated from realm.checkpoint. vlob_poll_changes reads the rows above
-- a checkpoint.
CREATE TABLE realm_vlob_update (
    organization_id text NOT NULL,
    realm_id uuid NOT NULL,
    checkpoint bigint NOT NULL CHECK (checkpoint >= 1),
    vlob_id uuid NOT NULL,
    version integer NOT NULL,
    PRIMARY KEY (organization_id, realm_id, checkpoint),
    FOREIGN KEY (organization_id, realm_id) REFERENCES realm,
    FOREIGN KEY (organization_id, vlob_id) REFERENCES vlob
);


-- Block metadata (the bytes live in the blockstore). Unique per organization.
CREATE TABLE block (
    organization_id text NOT NULL,
    block_id uuid NOT NULL,
    realm_id uuid NOT NULL,
    author text NOT NULL,                              -- device_id
    size integer NOT NULL CHECK (size >= 0),
    created_on timestamptz NOT NULL,
    deleted_on timestamptz,                            -- unused by the 2.x protocol
    PRIMARY KEY (organization_id, block_id),
    FOREIGN KEY (organization_id, realm_id) REFERENCES realm,
    FOREIGN KEY (organization_id, author) REFERENCES device
);

CREATE INDEX block_by_realm ON block (organization_id, realm_id) INCLUDE (size);


-- Block bytes of the POSTGRESQL blockstore. Deliberately without foreign keys: the
-- blockstore is written before the block metadata and knows nothing else.
CREATE TABLE block_data (
    organization_id text NOT NULL,
    block_id uuid NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (organization_id, block_id)
);
ALTER TABLE block_data ALTER COLUMN data SET STORAGE EXTERNAL;
