"""Upstream (parsec-cloud 2.10) rows -> our tables: the import's plans.

The upstream schema references rows by serial `_id`; ours by natural identifiers. Every
source query below joins the referenced tables to turn `_id`s back into identifiers, and
computes what our schema keeps alongside the history (docs on each table in
parsec/storage/postgresql/migrations/0001_initial.sql):

* organization.bootstrapped_on: upstream's `_bootstrapped_on`; databases migrated from
  before it existed may lack it for a bootstrapped organization: the first user's creation
  (which the bootstrap made) stands in, else the organization's creation.
* user_: the human handle comes from upstream's `human` row (one per e-mail, shared by the
  successive users of that e-mail: its label is what the upstream server shows for all of
  them); the folded forms and the public key are computed here, in Python, as the server does
  when it creates a user; message_count = the user's number of messages; message_read =
  message_count (imported messages count as read: the bound on unread messages applies to new
  ones, as migration 0002 decided for the messages it found).
* device.verify_key: read from the device certificate, as the server does at creation.
* message.message_index: the message's position in its recipient's inbox by insertion order
  (upstream `message_get` serves them ordered by `_id`, and its `index` column is not
  guaranteed gap-free).
* realm: created_on = its first role certificate (realm creation writes the creator's OWNER
  role at the same timestamp); checkpoint = its last `realm_vlob_update.index`; vlobs_size =
  the sizes of the vlob versions that have a checkpoint (upstream realm_stats' own rule:
  re-encrypted copies do not count).
* vlob_encryption_revision: upstream keeps only (realm, revision). Revision 1 started with
  the realm (its creation time and creator). The revision under re-encryption right now
  started with the realm's maintenance. For the other revisions the upstream database does not
  say when or by whom the re-encryption ran: the realm's creation time and creator are
  recorded (informative only: the server never reads these columns back), and finished_on is
  the import's time.
* realm_role: in the order upstream's current-role rule reads them (certified_on, then
  insertion), which our `seq` numbers.
* realm_user: the latest role certificate of each (realm, user) merged with upstream's
  realm_user_change row (last role change, last vlob update).
* vlob: one row per vlob id: its realm, latest version and that version's timestamp, and the
  timestamp of its first version.
* realm_vlob_update: upstream points at the vlob atom; ours names (vlob_id, version).
* pki_enrollment: upstream's composite "info" columns are spread over our columns; the
  submitter e-mail is not kept upstream (NULL).
* block_claim: block creations in progress (migration 0002); upstream has none.
"""

from __future__ import annotations

from parsec.api.certificates import unsecure_load_device_certificate, unsecure_load_user_certificate
from parsec.transfer.pgcopy import Row, TransferError
from parsec.transfer.plans import TablePlan


def _user_row(row: Row) -> Row:
    (organization_id, user_id, profile, email, label, certificate, redacted, certifier, created_on,
     revoked_on, revoked_certificate, revoked_certifier, message_count) = row
    try:
        public_key = unsecure_load_user_certificate(certificate).public_key
    except Exception as exc:
        raise TransferError(
            f"user {user_id} of organization {organization_id}: its user certificate cannot be decoded ({exc})"
        ) from None
    return (
        organization_id,
        user_id,
        profile,
        email,
        label,
        email.casefold() if email is not None else None,
        label.casefold() if label is not None else None,
        label.lower() if label is not None else None,
        public_key,
        certificate,
        redacted,
        certifier,
        created_on,
        revoked_on,
        revoked_certificate,
        revoked_certifier,
        message_count,
        message_count,  # message_read
    )


def _device_row(row: Row) -> Row:
    organization_id, device_id, user_id, label, certificate, redacted, certifier, created_on = row
    try:
        verify_key = unsecure_load_device_certificate(certificate).verify_key
    except Exception as exc:
        raise TransferError(
            f"device {device_id} of organization {organization_id}: its device certificate cannot be decoded ({exc})"
        ) from None
    return (organization_id, device_id, user_id, label, verify_key, certificate, redacted, certifier, created_on)


# The first role certificate of each realm (its creation).
_REALM_CREATION = """
    SELECT DISTINCT ON (rr.realm) rr.realm, rr.certified_on, d.device_id AS creator
    FROM realm_user_role rr JOIN device d ON d._id = rr.certified_by
    ORDER BY rr.realm, rr.certified_on, rr._id
"""

IMPORT_PLANS: tuple[TablePlan, ...] = (
    TablePlan(
        "organization",
        ("organization_id", "bootstrap_token", "root_verify_key", "is_expired", "user_profile_outsider_allowed",
         "active_users_limit", "created_on", "bootstrapped_on", "expired_on"),
        """
        SELECT o.organization_id, o.bootstrap_token, o.root_verify_key, o.is_expired,
               o.user_profile_outsider_allowed, o.active_users_limit, o._created_on,
               CASE WHEN o.root_verify_key IS NOT NULL THEN coalesce(
                   o._bootstrapped_on,
                   (SELECT min(u.created_on) FROM user_ u WHERE u.organization = o._id),
                   o._created_on) END,
               o._expired_on
        FROM organization o
        """,
        "SELECT count(*) FROM organization",
    ),
    TablePlan(
        "user_",
        ("organization_id", "user_id", "profile", "human_email", "human_label", "human_email_folded",
         "human_label_folded", "human_label_lower", "public_key", "user_certificate", "redacted_user_certificate",
         "user_certifier", "created_on", "revoked_on", "revoked_user_certificate", "revoked_user_certifier",
         "message_count", "message_read"),
        """
        SELECT o.organization_id, u.user_id, u.profile::text, h.email, h.label, u.user_certificate,
               u.redacted_user_certificate, cd.device_id, u.created_on, u.revoked_on,
               u.revoked_user_certificate, rd.device_id, coalesce(mc.messages, 0)
        FROM user_ u
        JOIN organization o ON o._id = u.organization
        LEFT JOIN human h ON h._id = u.human
        LEFT JOIN device cd ON cd._id = u.user_certifier
        LEFT JOIN device rd ON rd._id = u.revoked_user_certifier
        LEFT JOIN (SELECT recipient, count(*) AS messages FROM message GROUP BY recipient) mc
            ON mc.recipient = u._id
        ORDER BY u._id
        """,
        "SELECT count(*) FROM user_",
        transform=_user_row,
    ),
    TablePlan(
        "device",
        ("organization_id", "device_id", "user_id", "device_label", "verify_key", "device_certificate",
         "redacted_device_certificate", "device_certifier", "created_on"),
        """
        SELECT o.organization_id, d.device_id, u.user_id, d.device_label, d.device_certificate,
               d.redacted_device_certificate, cd.device_id, d.created_on
        FROM device d
        JOIN organization o ON o._id = d.organization
        JOIN user_ u ON u._id = d.user_
        LEFT JOIN device cd ON cd._id = d.device_certifier
        ORDER BY d._id
        """,
        "SELECT count(*) FROM device",
        transform=_device_row,
    ),
    TablePlan(
        "realm",
        ("organization_id", "realm_id", "encryption_revision", "maintenance_type", "maintenance_started_by",
         "maintenance_started_on", "checkpoint", "vlobs_size", "created_on"),
        f"""
        SELECT o.organization_id, r.realm_id, r.encryption_revision, r.maintenance_type::text, md.device_id,
               r.maintenance_started_on, coalesce(up.checkpoint, 0), coalesce(up.vlobs_size, 0),
               coalesce(cr.certified_on, r.maintenance_started_on, now())
        FROM realm r
        JOIN organization o ON o._id = r.organization
        LEFT JOIN device md ON md._id = r.maintenance_started_by
        LEFT JOIN (
            SELECT u.realm, max(u.index) AS checkpoint, sum(a.size) AS vlobs_size
            FROM realm_vlob_update u JOIN vlob_atom a ON a._id = u.vlob_atom
            GROUP BY u.realm
        ) up ON up.realm = r._id
        LEFT JOIN ({_REALM_CREATION}) cr ON cr.realm = r._id
        """,
        "SELECT count(*) FROM realm",
    ),
    TablePlan(
        "vlob_encryption_revision",
        ("organization_id", "realm_id", "encryption_revision", "started_on", "started_by", "finished_on"),
        f"""
        SELECT o.organization_id, r.realm_id, v.encryption_revision,
               CASE WHEN in_progress THEN r.maintenance_started_on ELSE cr.certified_on END,
               CASE WHEN in_progress THEN md.device_id ELSE cr.creator END,
               CASE WHEN in_progress THEN NULL ELSE now() END
        FROM vlob_encryption_revision v
        JOIN realm r ON r._id = v.realm
        JOIN organization o ON o._id = r.organization
        LEFT JOIN device md ON md._id = r.maintenance_started_by
        LEFT JOIN ({_REALM_CREATION}) cr ON cr.realm = r._id
        CROSS JOIN LATERAL (
            SELECT v.encryption_revision = r.encryption_revision AND r.maintenance_type IS NOT NULL
                   AND v.encryption_revision > 1 AS in_progress
        ) AS state
        """,
        "SELECT count(*) FROM vlob_encryption_revision",
    ),
    TablePlan(
        "realm_role",
        ("organization_id", "realm_id", "user_id", "role", "certificate", "certified_by", "certified_on"),
        """
        SELECT o.organization_id, r.realm_id, u.user_id, rr.role::text, rr.certificate, d.device_id,
               rr.certified_on
        FROM realm_user_role rr
        JOIN realm r ON r._id = rr.realm
        JOIN organization o ON o._id = r.organization
        JOIN user_ u ON u._id = rr.user_
        JOIN device d ON d._id = rr.certified_by
        ORDER BY rr.certified_on, rr._id
        """,
        "SELECT count(*) FROM realm_user_role",
    ),
    TablePlan(
        "realm_user",
        ("organization_id", "realm_id", "user_id", "role", "role_certified_on", "last_role_change",
         "last_vlob_update"),
        """
        SELECT o.organization_id, r.realm_id, u.user_id, cur.role::text, cur.certified_on,
               ch.last_role_change, ch.last_vlob_update
        FROM (
            SELECT DISTINCT ON (realm, user_) realm, user_, role, certified_on
            FROM realm_user_role
            ORDER BY realm, user_, certified_on DESC, _id DESC
        ) cur
        JOIN realm r ON r._id = cur.realm
        JOIN organization o ON o._id = r.organization
        JOIN user_ u ON u._id = cur.user_
        LEFT JOIN realm_user_change ch ON ch.realm = cur.realm AND ch.user_ = cur.user_
        """,
        "SELECT count(*) FROM (SELECT DISTINCT realm, user_ FROM realm_user_role) s",
    ),
    TablePlan(
        "vlob",
        ("organization_id", "vlob_id", "realm_id", "latest_version", "latest_timestamp", "created_on"),
        """
        SELECT DISTINCT ON (a.organization, a.vlob_id)
               o.organization_id, a.vlob_id, r.realm_id, a.version, a.created_on,
               first_value(a.created_on) OVER (PARTITION BY a.organization, a.vlob_id ORDER BY a.version)
        FROM vlob_atom a
        JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
        JOIN realm r ON r._id = v.realm
        JOIN organization o ON o._id = a.organization
        ORDER BY a.organization, a.vlob_id, a.version DESC
        """,
        "SELECT count(*) FROM (SELECT DISTINCT organization, vlob_id FROM vlob_atom) s",
    ),
    TablePlan(
        "vlob_atom",
        ("organization_id", "vlob_id", "encryption_revision", "version", "realm_id", "blob", "author",
         "created_on", "deleted_on"),
        """
        SELECT o.organization_id, a.vlob_id, v.encryption_revision, a.version, r.realm_id, a.blob, d.device_id,
               a.created_on, a.deleted_on
        FROM vlob_atom a
        JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
        JOIN realm r ON r._id = v.realm
        JOIN organization o ON o._id = a.organization
        JOIN device d ON d._id = a.author
        """,
        "SELECT count(*) FROM vlob_atom",
    ),
    TablePlan(
        "realm_vlob_update",
        ("organization_id", "realm_id", "checkpoint", "vlob_id", "version"),
        """
        SELECT o.organization_id, r.realm_id, u.index, a.vlob_id, a.version
        FROM realm_vlob_update u
        JOIN realm r ON r._id = u.realm
        JOIN organization o ON o._id = r.organization
        JOIN vlob_atom a ON a._id = u.vlob_atom
        """,
        "SELECT count(*) FROM realm_vlob_update",
    ),
    TablePlan(
        "block",
        ("organization_id", "block_id", "realm_id", "author", "size", "created_on", "deleted_on"),
        """
        SELECT o.organization_id, b.block_id, r.realm_id, d.device_id, b.size, b.created_on, b.deleted_on
        FROM block b
        JOIN organization o ON o._id = b.organization
        JOIN realm r ON r._id = b.realm
        JOIN device d ON d._id = b.author
        """,
        "SELECT count(*) FROM block",
    ),
    TablePlan(
        "block_data",
        ("organization_id", "block_id", "data"),
        "SELECT organization_id, block_id, data FROM block_data",
        "SELECT count(*) FROM block_data",
    ),
    TablePlan(
        "block_claim",
        ("organization_id", "block_id", "claim", "author", "claimed_on"),
        "SELECT NULL::text, NULL::uuid, NULL::uuid, NULL::text, NULL::timestamptz WHERE false",
        "SELECT 0",
    ),
    TablePlan(
        "message",
        ("organization_id", "recipient", "message_index", "sender", "sent_on", "body"),
        """
        SELECT o.organization_id, u.user_id,
               row_number() OVER (PARTITION BY m.recipient ORDER BY m._id), d.device_id, m.timestamp, m.body
        FROM message m
        JOIN organization o ON o._id = m.organization
        JOIN user_ u ON u._id = m.recipient
        JOIN device d ON d._id = m.sender
        """,
        "SELECT count(*) FROM message",
    ),
    TablePlan(
        "invitation",
        ("organization_id", "token", "type", "greeter_user_id", "claimer_email", "created_on", "deleted_on",
         "deleted_reason", "conduit_state", "conduit_greeter_payload", "conduit_claimer_payload"),
        """
        SELECT o.organization_id, i.token, i.type::text, u.user_id, i.claimer_email, i.created_on, i.deleted_on,
               i.deleted_reason::text, i.conduit_state::text, i.conduit_greeter_payload, i.conduit_claimer_payload
        FROM invitation i
        JOIN organization o ON o._id = i.organization
        JOIN user_ u ON u._id = i.greeter
        ORDER BY i.created_on, i._id
        """,
        "SELECT count(*) FROM invitation",
    ),
    TablePlan(
        "pki_enrollment",
        ("organization_id", "enrollment_id", "submitter_der_x509_certificate", "submitter_der_x509_certificate_email",
         "submit_payload_signature", "submit_payload", "submitted_on", "state", "accepted_on",
         "accepter_der_x509_certificate", "accept_payload_signature", "accept_payload", "accepter", "accepted",
         "rejected_on", "cancelled_on"),
        """
        SELECT o.organization_id, p.enrollment_id, p.submitter_der_x509_certificate, NULL::text,
               p.submit_payload_signature, p.submit_payload, p.submitted_on, p.enrollment_state::text,
               (p.info_accepted).accepted_on, (p.info_accepted).accepter_der_x509_certificate,
               (p.info_accepted).accept_payload_signature, (p.info_accepted).accept_payload,
               ad.device_id, sd.device_id, (p.info_rejected).rejected_on, (p.info_cancelled).cancelled_on
        FROM pki_enrollment p
        JOIN organization o ON o._id = p.organization
        LEFT JOIN device ad ON ad._id = p.accepter
        LEFT JOIN device sd ON sd._id = p.submitter_accepted_device
        ORDER BY p._id
        """,
        "SELECT count(*) FROM pki_enrollment",
    ),
)
