"""Our rows -> upstream (parsec-cloud 2.10) tables: the export's plans.

The upstream tables reference each other by serial `_id`. The export numbers the rows
itself, on the source side, with `row_number()` over a unique key (the `*_IDS` subqueries
below); every query that needs the `_id` of a referenced row recomputes the same numbering
in the same snapshot (the source transaction is REPEATABLE READ), so references agree. The
target's serial sequences are moved past the largest `_id` afterwards.

What the upstream schema keeps differently:

* human: one row per (organization, e-mail), shared by the successive users of that e-mail;
  its label is the first such user's (the upstream server keeps the first label too).
* realm_vlob_update points at a vlob atom: the atom of the version's first encryption
  revision (the one written; later revisions hold re-encrypted copies).
* realm_user_change: from our realm_user rows that record a role change or a vlob update.
* pki_enrollment: upstream identifies certificates by SHA-1 (computed here, in Python) and
  groups the acceptance, rejection and cancellation facts in composite columns.
* organization.active_users_limit is an integer upstream: larger limits become its maximum.
* What upstream has no column for is left behind: the realms' creation times, the start and
  end of past re-encryptions, the PKI submitter e-mail, the folded human handles.
"""

from __future__ import annotations

import hashlib

from parsec.transfer.pgcopy import Row
from parsec.transfer.plans import TablePlan

INT_MAX = 2**31 - 1

ORG_IDS = """(
    SELECT organization_id, row_number() OVER (ORDER BY created_on, organization_id) AS _id FROM organization
)"""
USER_IDS = """(
    SELECT organization_id, user_id, row_number() OVER (ORDER BY created_on, organization_id, user_id) AS _id
    FROM user_
)"""
DEVICE_IDS = """(
    SELECT organization_id, device_id, row_number() OVER (ORDER BY created_on, organization_id, device_id) AS _id
    FROM device
)"""
HUMAN_IDS = """(
    SELECT organization_id, human_email,
           row_number() OVER (ORDER BY min(created_on), organization_id, human_email) AS _id,
           (array_agg(human_label ORDER BY created_on, user_id))[1] AS label
    FROM user_ WHERE human_email IS NOT NULL
    GROUP BY organization_id, human_email
)"""
REALM_IDS = """(
    SELECT organization_id, realm_id, row_number() OVER (ORDER BY created_on, organization_id, realm_id) AS _id
    FROM realm
)"""
REVISION_IDS = """(
    SELECT organization_id, realm_id, encryption_revision,
           row_number() OVER (ORDER BY organization_id, realm_id, encryption_revision) AS _id
    FROM vlob_encryption_revision
)"""
_ATOM_ORDER = "ORDER BY organization_id, vlob_id, encryption_revision, version"
ATOM_IDS = f"""(
    SELECT organization_id, vlob_id, encryption_revision, version, row_number() OVER ({_ATOM_ORDER}) AS _id
    FROM vlob_atom
)"""


def _pki_row(row: Row) -> Row:
    (_id, organization, enrollment_id, certificate, signature, payload, submitted_on, accepter, accepted, state,
     info_accepted, info_rejected, info_cancelled) = row
    return (
        _id,
        organization,
        enrollment_id,
        certificate,
        hashlib.sha1(certificate).digest(),
        signature,
        payload,
        submitted_on,
        accepter,
        accepted,
        state,
        info_accepted,
        info_rejected,
        info_cancelled,
    )


EXPORT_PLANS: tuple[TablePlan, ...] = (
    TablePlan(
        "organization",
        ("_id", "organization_id", "bootstrap_token", "root_verify_key", "_expired_on",
         "user_profile_outsider_allowed", "active_users_limit", "is_expired", "_bootstrapped_on", "_created_on"),
        f"""
        SELECT ids._id, o.organization_id, o.bootstrap_token, o.root_verify_key, o.expired_on,
               o.user_profile_outsider_allowed, CASE WHEN o.active_users_limit > {INT_MAX} THEN {INT_MAX} ELSE o.active_users_limit END, o.is_expired,
               o.bootstrapped_on, o.created_on
        FROM organization o JOIN {ORG_IDS} ids USING (organization_id)
        """,
        "SELECT count(*) FROM organization",
    ),
    TablePlan(
        "human",
        ("_id", "organization", "email", "label"),
        f"""
        SELECT h._id, org._id, h.human_email, h.label
        FROM {HUMAN_IDS} h JOIN {ORG_IDS} org USING (organization_id)
        """,
        "SELECT count(*) FROM (SELECT DISTINCT organization_id, human_email FROM user_"
        " WHERE human_email IS NOT NULL) s",
    ),
    TablePlan(
        "user_",
        ("_id", "organization", "user_id", "user_certificate", "user_certifier", "created_on", "revoked_on",
         "revoked_user_certificate", "revoked_user_certifier", "human", "redacted_user_certificate", "profile"),
        f"""
        SELECT ids._id, org._id, u.user_id, u.user_certificate, cd._id, u.created_on, u.revoked_on,
               u.revoked_user_certificate, rd._id, h._id, u.redacted_user_certificate, u.profile
        FROM user_ u
        JOIN {USER_IDS} ids USING (organization_id, user_id)
        JOIN {ORG_IDS} org USING (organization_id)
        LEFT JOIN {DEVICE_IDS} cd ON cd.organization_id = u.organization_id AND cd.device_id = u.user_certifier
        LEFT JOIN {DEVICE_IDS} rd
            ON rd.organization_id = u.organization_id AND rd.device_id = u.revoked_user_certifier
        LEFT JOIN {HUMAN_IDS} h ON h.organization_id = u.organization_id AND h.human_email = u.human_email
        """,
        "SELECT count(*) FROM user_",
    ),
    TablePlan(
        "device",
        ("_id", "organization", "user_", "device_id", "device_certificate", "device_certifier", "created_on",
         "redacted_device_certificate", "device_label"),
        f"""
        SELECT ids._id, org._id, u._id, d.device_id, d.device_certificate, cd._id, d.created_on,
               d.redacted_device_certificate, d.device_label
        FROM device d
        JOIN {DEVICE_IDS} ids USING (organization_id, device_id)
        JOIN {ORG_IDS} org USING (organization_id)
        JOIN {USER_IDS} u ON u.organization_id = d.organization_id AND u.user_id = d.user_id
        LEFT JOIN {DEVICE_IDS} cd ON cd.organization_id = d.organization_id AND cd.device_id = d.device_certifier
        """,
        "SELECT count(*) FROM device",
    ),
    TablePlan(
        "realm",
        ("_id", "organization", "realm_id", "encryption_revision", "maintenance_started_by",
         "maintenance_started_on", "maintenance_type"),
        f"""
        SELECT ids._id, org._id, r.realm_id, r.encryption_revision, md._id, r.maintenance_started_on,
               r.maintenance_type
        FROM realm r
        JOIN {REALM_IDS} ids USING (organization_id, realm_id)
        JOIN {ORG_IDS} org USING (organization_id)
        LEFT JOIN {DEVICE_IDS} md
            ON md.organization_id = r.organization_id AND md.device_id = r.maintenance_started_by
        """,
        "SELECT count(*) FROM realm",
    ),
    TablePlan(
        "realm_user_role",
        ("_id", "realm", "user_", "role", "certificate", "certified_by", "certified_on"),
        f"""
        SELECT row_number() OVER (ORDER BY rr.certified_on, rr.seq), realm._id, u._id, rr.role, rr.certificate,
               d._id, rr.certified_on
        FROM realm_role rr
        JOIN {REALM_IDS} realm USING (organization_id, realm_id)
        JOIN {USER_IDS} u USING (organization_id, user_id)
        JOIN {DEVICE_IDS} d ON d.organization_id = rr.organization_id AND d.device_id = rr.certified_by
        ORDER BY rr.certified_on, rr.seq
        """,
        "SELECT count(*) FROM realm_role",
    ),
    TablePlan(
        "realm_user_change",
        ("_id", "realm", "user_", "last_role_change", "last_vlob_update"),
        f"""
        SELECT row_number() OVER (ORDER BY realm._id, u._id), realm._id, u._id, ru.last_role_change,
               ru.last_vlob_update
        FROM realm_user ru
        JOIN {REALM_IDS} realm USING (organization_id, realm_id)
        JOIN {USER_IDS} u USING (organization_id, user_id)
        WHERE ru.last_role_change IS NOT NULL OR ru.last_vlob_update IS NOT NULL
        """,
        "SELECT count(*) FROM realm_user WHERE last_role_change IS NOT NULL OR last_vlob_update IS NOT NULL",
    ),
    TablePlan(
        "vlob_encryption_revision",
        ("_id", "realm", "encryption_revision"),
        f"""
        SELECT ids._id, realm._id, v.encryption_revision
        FROM vlob_encryption_revision v
        JOIN {REVISION_IDS} ids USING (organization_id, realm_id, encryption_revision)
        JOIN {REALM_IDS} realm USING (organization_id, realm_id)
        """,
        "SELECT count(*) FROM vlob_encryption_revision",
    ),
    TablePlan(
        "vlob_atom",
        ("_id", "organization", "vlob_encryption_revision", "vlob_id", "version", "blob", "size", "author",
         "created_on", "deleted_on"),
        # The numbering is computed over vlob_atom alone (its primary key order, no sort of the
        # joined rows), then the small tables are joined.
        f"""
        SELECT a._id, org._id, ver._id, a.vlob_id, a.version, a.blob, a.size, d._id, a.created_on, a.deleted_on
        FROM (SELECT *, row_number() OVER ({_ATOM_ORDER}) AS _id FROM vlob_atom) a
        JOIN {ORG_IDS} org USING (organization_id)
        JOIN {REVISION_IDS} ver USING (organization_id, realm_id, encryption_revision)
        JOIN {DEVICE_IDS} d ON d.organization_id = a.organization_id AND d.device_id = a.author
        """,
        "SELECT count(*) FROM vlob_atom",
    ),
    TablePlan(
        "realm_vlob_update",
        ("_id", "realm", "index", "vlob_atom"),
        f"""
        SELECT row_number() OVER (ORDER BY realm._id, u.checkpoint), realm._id, u.checkpoint, first_atom._id
        FROM realm_vlob_update u
        JOIN {REALM_IDS} realm USING (organization_id, realm_id)
        JOIN (
            SELECT DISTINCT ON (organization_id, vlob_id, version) organization_id, vlob_id, version, _id
            FROM {ATOM_IDS} atoms
            ORDER BY organization_id, vlob_id, version, encryption_revision
        ) first_atom USING (organization_id, vlob_id, version)
        """,
        "SELECT count(*) FROM realm_vlob_update",
    ),
    TablePlan(
        "block",
        ("_id", "organization", "block_id", "realm", "author", "size", "created_on", "deleted_on"),
        f"""
        SELECT row_number() OVER (ORDER BY b.created_on, b.organization_id, b.block_id), org._id, b.block_id,
               realm._id, d._id, b.size, b.created_on, b.deleted_on
        FROM block b
        JOIN {ORG_IDS} org USING (organization_id)
        JOIN {REALM_IDS} realm USING (organization_id, realm_id)
        JOIN {DEVICE_IDS} d ON d.organization_id = b.organization_id AND d.device_id = b.author
        """,
        "SELECT count(*) FROM block",
    ),
    TablePlan(
        "block_data",
        ("_id", "organization_id", "block_id", "data"),
        # Numbered in storage order: no sort of the block bytes.
        "SELECT row_number() OVER (), organization_id, block_id, data FROM block_data",
        "SELECT count(*) FROM block_data",
    ),
    TablePlan(
        "message",
        ("_id", "organization", "recipient", "timestamp", "index", "sender", "body"),
        f"""
        SELECT row_number() OVER (ORDER BY m.organization_id, m.recipient, m.message_index), org._id, u._id,
               m.sent_on, m.message_index, d._id, m.body
        FROM message m
        JOIN {ORG_IDS} org USING (organization_id)
        JOIN {USER_IDS} u ON u.organization_id = m.organization_id AND u.user_id = m.recipient
        JOIN {DEVICE_IDS} d ON d.organization_id = m.organization_id AND d.device_id = m.sender
        """,
        "SELECT count(*) FROM message",
    ),
    TablePlan(
        "invitation",
        ("_id", "organization", "token", "type", "greeter", "claimer_email", "created_on", "deleted_on",
         "deleted_reason", "conduit_state", "conduit_greeter_payload", "conduit_claimer_payload"),
        f"""
        SELECT row_number() OVER (ORDER BY i.seq), org._id, i.token, i.type, u._id, i.claimer_email,
               i.created_on, i.deleted_on, i.deleted_reason, i.conduit_state, i.conduit_greeter_payload,
               i.conduit_claimer_payload
        FROM invitation i
        JOIN {ORG_IDS} org USING (organization_id)
        JOIN {USER_IDS} u ON u.organization_id = i.organization_id AND u.user_id = i.greeter_user_id
        """,
        "SELECT count(*) FROM invitation",
    ),
    TablePlan(
        "pki_enrollment",
        ("_id", "organization", "enrollment_id", "submitter_der_x509_certificate",
         "submitter_der_x509_certificate_sha1", "submit_payload_signature", "submit_payload", "submitted_on",
         "accepter", "submitter_accepted_device", "enrollment_state", "info_accepted", "info_rejected",
         "info_cancelled"),
        # The composite values travel as their text form (record syntax), which the target's
        # COPY reads into the composite columns.
        f"""
        SELECT row_number() OVER (ORDER BY p.seq), org._id, p.enrollment_id, p.submitter_der_x509_certificate,
               p.submit_payload_signature, p.submit_payload, p.submitted_on, ad._id, sd._id, p.state,
               CASE WHEN p.state = 'ACCEPTED' THEN ROW(p.accepted_on, p.accepter_der_x509_certificate,
                                                     p.accept_payload_signature, p.accept_payload)::text END,
               CASE WHEN p.rejected_on IS NOT NULL THEN ROW(p.rejected_on)::text END,
               CASE WHEN p.cancelled_on IS NOT NULL THEN ROW(p.cancelled_on)::text END
        FROM pki_enrollment p
        JOIN {ORG_IDS} org USING (organization_id)
        LEFT JOIN {DEVICE_IDS} ad ON ad.organization_id = p.organization_id AND ad.device_id = p.accepter
        LEFT JOIN {DEVICE_IDS} sd ON sd.organization_id = p.organization_id AND sd.device_id = p.accepted
        ORDER BY p.seq
        """,
        "SELECT count(*) FROM pki_enrollment",
        transform=_pki_row,
    ),
)

SERIAL_TABLES = tuple(plan.table for plan in EXPORT_PLANS)
