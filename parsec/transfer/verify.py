"""The verification pass: the same facts, computed on both schemas, must agree.

Each `Check` describes one kind of fact (users, vlob atoms, ...) twice: as a query over the
upstream schema and as a query over ours. Both return one text per row, built from natural
identifiers (never `_id`s), plain values, and the SHA-256 of every certificate, blob, body
and payload. Each side reduces its rows to (row count, checksum), the checksum being the sum
of the first 64 bits of each row text's MD5: independent of row order, computed by the
database in one pass with constant memory, and changed by any difference in any row. The
sessions of both connections use UTC and ISO dates, so timestamps print the same way on
both sides.

The checks cover every table either way, plus the state derived from the history (current
roles, latest vlob versions, realm checkpoints and sizes, message counts): the transfer
computes those with one set of queries, the checks with another.

Where the upstream schema keeps less than ours, both sides are compared on what both keep:
upstream keeps one label per human e-mail (the first user's), so user rows carry the label
of the e-mail's first user; the organization's bootstrap time is not compared (some upstream
databases lack it, see parsec.transfer.importer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import psycopg2.extensions

from parsec.transfer.exporter import INT_MAX

Connection = psycopg2.extensions.connection


def _row(*expressions: str) -> str:
    """SQL text of one row: every value quoted (NULL stays distinct from 'NULL' and '')."""
    return "concat_ws('|', " + ", ".join(f"quote_nullable({e})" for e in expressions) + ")"


def _sha(expression: str) -> str:
    return f"encode(sha256({expression}), 'hex')"


@attrs.frozen
class Check:
    name: str
    upstream: str  # SELECT <one text column> FROM <upstream tables>
    ours: str  # SELECT <one text column> FROM <our tables>


_UP_CHECKPOINTS = """(
    SELECT u.realm, max(u.index) AS checkpoint, sum(a.size) AS vlobs_size
    FROM realm_vlob_update u JOIN vlob_atom a ON a._id = u.vlob_atom GROUP BY u.realm
)"""

CHECKS: tuple[Check, ...] = (
    Check(
        "organizations",
        f"""SELECT {_row("o.organization_id", "o.bootstrap_token", _sha("o.root_verify_key"), "o.is_expired",
                         "o.user_profile_outsider_allowed", "o.active_users_limit", "o._created_on",
                         "o._expired_on")}
            FROM organization o""",
        f"""SELECT {_row("organization_id", "bootstrap_token", _sha("root_verify_key"), "is_expired",
                         "user_profile_outsider_allowed", f"CASE WHEN active_users_limit > {INT_MAX} THEN {INT_MAX} ELSE active_users_limit END", "created_on",
                         "expired_on")}
            FROM organization""",
    ),
    Check(
        "users (certificates, revocations, humans, message counts)",
        f"""SELECT {_row("o.organization_id", "u.user_id", "u.profile", "h.email", "h.label",
                         _sha("u.user_certificate"), _sha("u.redacted_user_certificate"), "cd.device_id",
                         "u.created_on", "u.revoked_on", _sha("u.revoked_user_certificate"), "rd.device_id",
                         "coalesce(mc.messages, 0)")}
            FROM user_ u
            JOIN organization o ON o._id = u.organization
            LEFT JOIN human h ON h._id = u.human
            LEFT JOIN device cd ON cd._id = u.user_certifier
            LEFT JOIN device rd ON rd._id = u.revoked_user_certifier
            LEFT JOIN (SELECT recipient, count(*) AS messages FROM message GROUP BY recipient) mc
                ON mc.recipient = u._id""",
        f"""SELECT {_row("organization_id", "user_id", "profile", "human_email", "first_label",
                         _sha("user_certificate"), _sha("redacted_user_certificate"), "user_certifier",
                         "created_on", "revoked_on", _sha("revoked_user_certificate"), "revoked_user_certifier",
                         "message_count")}
            FROM (
                SELECT *, first_value(human_label) OVER (
                    PARTITION BY organization_id, human_email ORDER BY created_on, user_id) AS first_label
                FROM user_
            ) u""",
    ),
    Check(
        "devices",
        f"""SELECT {_row("o.organization_id", "d.device_id", "u.user_id", "d.device_label",
                         _sha("d.device_certificate"), _sha("d.redacted_device_certificate"), "cd.device_id",
                         "d.created_on")}
            FROM device d
            JOIN organization o ON o._id = d.organization
            JOIN user_ u ON u._id = d.user_
            LEFT JOIN device cd ON cd._id = d.device_certifier""",
        f"""SELECT {_row("organization_id", "device_id", "user_id", "device_label", _sha("device_certificate"),
                         _sha("redacted_device_certificate"), "device_certifier", "created_on")}
            FROM device""",
    ),
    Check(
        "messages",
        f"""SELECT {_row("o.organization_id", "u.user_id", "row_number() OVER (PARTITION BY m.recipient ORDER BY m._id)",
                         "d.device_id", "m.timestamp", _sha("m.body"))}
            FROM message m
            JOIN organization o ON o._id = m.organization
            JOIN user_ u ON u._id = m.recipient
            JOIN device d ON d._id = m.sender""",
        f"""SELECT {_row("organization_id", "recipient", "message_index", "sender", "sent_on", _sha("body"))}
            FROM message""",
    ),
    Check(
        "invitations",
        f"""SELECT {_row("o.organization_id", "i.token", "i.type", "u.user_id", "i.claimer_email", "i.created_on",
                         "i.deleted_on", "i.deleted_reason", "i.conduit_state", _sha("i.conduit_greeter_payload"),
                         _sha("i.conduit_claimer_payload"))}
            FROM invitation i
            JOIN organization o ON o._id = i.organization
            JOIN user_ u ON u._id = i.greeter""",
        f"""SELECT {_row("organization_id", "token", "type", "greeter_user_id", "claimer_email", "created_on",
                         "deleted_on", "deleted_reason", "conduit_state", _sha("conduit_greeter_payload"),
                         _sha("conduit_claimer_payload"))}
            FROM invitation""",
    ),
    Check(
        "PKI enrollments",
        f"""SELECT {_row("o.organization_id", "p.enrollment_id", _sha("p.submitter_der_x509_certificate"),
                         _sha("p.submit_payload_signature"), _sha("p.submit_payload"), "p.submitted_on",
                         "p.enrollment_state", "(p.info_accepted).accepted_on",
                         _sha("(p.info_accepted).accepter_der_x509_certificate"),
                         _sha("(p.info_accepted).accept_payload_signature"),
                         _sha("(p.info_accepted).accept_payload"), "ad.device_id", "sd.device_id",
                         "(p.info_rejected).rejected_on", "(p.info_cancelled).cancelled_on")}
            FROM pki_enrollment p
            JOIN organization o ON o._id = p.organization
            LEFT JOIN device ad ON ad._id = p.accepter
            LEFT JOIN device sd ON sd._id = p.submitter_accepted_device""",
        f"""SELECT {_row("organization_id", "enrollment_id", _sha("submitter_der_x509_certificate"),
                         _sha("submit_payload_signature"), _sha("submit_payload"), "submitted_on", "state",
                         "accepted_on", _sha("accepter_der_x509_certificate"), _sha("accept_payload_signature"),
                         _sha("accept_payload"), "accepter", "accepted", "rejected_on", "cancelled_on")}
            FROM pki_enrollment""",
    ),
    Check(
        "realms (revision, maintenance, checkpoint, size)",
        f"""SELECT {_row("o.organization_id", "r.realm_id", "r.encryption_revision", "r.maintenance_type",
                         "md.device_id", "r.maintenance_started_on", "coalesce(up.checkpoint, 0)",
                         "coalesce(up.vlobs_size, 0)")}
            FROM realm r
            JOIN organization o ON o._id = r.organization
            LEFT JOIN device md ON md._id = r.maintenance_started_by
            LEFT JOIN {_UP_CHECKPOINTS} up ON up.realm = r._id""",
        f"""SELECT {_row("organization_id", "realm_id", "encryption_revision", "maintenance_type",
                         "maintenance_started_by", "maintenance_started_on", "checkpoint", "vlobs_size")}
            FROM realm""",
    ),
    Check(
        "realm role certificates",
        f"""SELECT {_row("o.organization_id", "r.realm_id", "u.user_id", "rr.role", _sha("rr.certificate"),
                         "d.device_id", "rr.certified_on")}
            FROM realm_user_role rr
            JOIN realm r ON r._id = rr.realm
            JOIN organization o ON o._id = r.organization
            JOIN user_ u ON u._id = rr.user_
            JOIN device d ON d._id = rr.certified_by""",
        f"""SELECT {_row("organization_id", "realm_id", "user_id", "role", _sha("certificate"), "certified_by",
                         "certified_on")}
            FROM realm_role""",
    ),
    Check(
        "current realm roles",
        f"""SELECT {_row("o.organization_id", "r.realm_id", "u.user_id", "cur.role", "cur.certified_on")}
            FROM (
                SELECT DISTINCT ON (realm, user_) realm, user_, role, certified_on FROM realm_user_role
                ORDER BY realm, user_, certified_on DESC, _id DESC
            ) cur
            JOIN realm r ON r._id = cur.realm
            JOIN organization o ON o._id = r.organization
            JOIN user_ u ON u._id = cur.user_""",
        f"""SELECT {_row("organization_id", "realm_id", "user_id", "role", "role_certified_on")}
            FROM realm_user""",
    ),
    Check(
        "realm user changes",
        f"""SELECT {_row("o.organization_id", "r.realm_id", "u.user_id", "ch.last_role_change",
                         "ch.last_vlob_update")}
            FROM realm_user_change ch
            JOIN realm r ON r._id = ch.realm
            JOIN organization o ON o._id = r.organization
            JOIN user_ u ON u._id = ch.user_
            WHERE ch.last_role_change IS NOT NULL OR ch.last_vlob_update IS NOT NULL""",
        f"""SELECT {_row("organization_id", "realm_id", "user_id", "last_role_change", "last_vlob_update")}
            FROM realm_user
            WHERE last_role_change IS NOT NULL OR last_vlob_update IS NOT NULL""",
    ),
    Check(
        "encryption revisions",
        f"""SELECT {_row("o.organization_id", "r.realm_id", "v.encryption_revision")}
            FROM vlob_encryption_revision v
            JOIN realm r ON r._id = v.realm
            JOIN organization o ON o._id = r.organization""",
        f"""SELECT {_row("organization_id", "realm_id", "encryption_revision")}
            FROM vlob_encryption_revision""",
    ),
    Check(
        "vlobs (latest versions)",
        f"""SELECT {_row("o.organization_id", "a.vlob_id", "r.realm_id", "a.version", "a.created_on")}
            FROM (
                SELECT DISTINCT ON (organization, vlob_id) organization, vlob_id, vlob_encryption_revision,
                       version, created_on
                FROM vlob_atom ORDER BY organization, vlob_id, version DESC
            ) a
            JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
            JOIN realm r ON r._id = v.realm
            JOIN organization o ON o._id = a.organization""",
        f"""SELECT {_row("organization_id", "vlob_id", "realm_id", "latest_version", "latest_timestamp")}
            FROM vlob""",
    ),
    Check(
        "vlob atoms (every version's blob)",
        f"""SELECT {_row("o.organization_id", "a.vlob_id", "v.encryption_revision", "a.version", "r.realm_id",
                         _sha("a.blob"), "a.size", "d.device_id", "a.created_on", "a.deleted_on")}
            FROM vlob_atom a
            JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
            JOIN realm r ON r._id = v.realm
            JOIN organization o ON o._id = a.organization
            JOIN device d ON d._id = a.author""",
        f"""SELECT {_row("organization_id", "vlob_id", "encryption_revision", "version", "realm_id", _sha("blob"),
                         "size", "author", "created_on", "deleted_on")}
            FROM vlob_atom""",
    ),
    Check(
        "realm checkpoints",
        f"""SELECT {_row("o.organization_id", "r.realm_id", "u.index", "a.vlob_id", "a.version")}
            FROM realm_vlob_update u
            JOIN realm r ON r._id = u.realm
            JOIN organization o ON o._id = r.organization
            JOIN vlob_atom a ON a._id = u.vlob_atom""",
        f"""SELECT {_row("organization_id", "realm_id", "checkpoint", "vlob_id", "version")}
            FROM realm_vlob_update""",
    ),
    Check(
        "blocks",
        f"""SELECT {_row("o.organization_id", "b.block_id", "r.realm_id", "d.device_id", "b.size", "b.created_on",
                         "b.deleted_on")}
            FROM block b
            JOIN organization o ON o._id = b.organization
            JOIN realm r ON r._id = b.realm
            JOIN device d ON d._id = b.author""",
        f"""SELECT {_row("organization_id", "block_id", "realm_id", "author", "size", "created_on", "deleted_on")}
            FROM block""",
    ),
    Check(
        "block data (POSTGRESQL blockstore)",
        f"SELECT {_row('organization_id', 'block_id', _sha('data'))} FROM block_data",
        f"SELECT {_row('organization_id', 'block_id', _sha('data'))} FROM block_data",
    ),
)


def fingerprint(conn: Connection, select: str) -> tuple[int, int]:
    """(row count, checksum) of a check's query on one side."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), coalesce(sum(('x' || left(md5(t.line), 16))::bit(64)::bigint), 0)"
            f" FROM ({select}) AS t (line)"
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@attrs.frozen
class CheckResult:
    name: str
    source_rows: int
    target_rows: int
    source_checksum: int
    target_checksum: int

    @property
    def ok(self) -> bool:
        return self.source_rows == self.target_rows and self.source_checksum == self.target_checksum


def verify(
    source: Connection,
    target: Connection,
    source_is_upstream: bool,
    checks: Sequence[Check] = CHECKS,
    on_check: Callable[[CheckResult], None] = lambda result: None,
) -> list[CheckResult]:
    results = []
    for check in checks:
        source_sql, target_sql = (check.upstream, check.ours) if source_is_upstream else (check.ours, check.upstream)
        source_rows, source_sum = fingerprint(source, source_sql)
        target_rows, target_sum = fingerprint(target, target_sql)
        result = CheckResult(check.name, source_rows, target_rows, source_sum, target_sum)
        on_check(result)
        results.append(result)
    return results


def name_width(checks: Sequence[Check]) -> int:
    return max((len(check.name) for check in checks), default=0)


def header_line(width: int) -> str:
    return f"  {'':<{width}}  {'source rows':>12}  {'target rows':>12}  checksums"


def result_line(result: CheckResult, width: int) -> str:
    if result.ok:
        verdict = "equal"
    elif result.source_rows != result.target_rows:
        verdict = "DIFFERENT (row counts differ)"
    else:
        verdict = "DIFFERENT"
    return f"  {result.name:<{width}}  {result.source_rows:>12,}  {result.target_rows:>12,}  {verdict}"
