"""PostgreSQL PKI enrollments (`PkiStorage`, behaviour of parsec.storage.memory.pki).

Every method is one round trip. The mutating ones are serialized per organization with user
creation and revocation: their query string starts with the organization row lock (see
parsec.storage.postgresql.user), then one statement reads the facts, decides and writes.
Enrollments of the same certificate are recognized by the SHA-256 of its DER bytes, computed
by the database (a stored generated column).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from parsec.backend import bus as events
from parsec.backend.models import Device, User
from parsec.backend.storage import (
    AlreadyEnrolledError,
    AlreadySubmittedError,
    EmailAlreadyUsedError,
    EnrollmentIdAlreadyUsedError,
    NoLongerAvailableError,
    NotFoundError,
    PkiAcceptance,
    PkiEnrollment,
    TooManyPendingEnrollmentsError,
)
from parsec.limits import DEFAULT as DEFAULT_LIMITS
from parsec.storage.postgresql.events import Notify
from parsec.storage.postgresql.pool import PostgreSQLPool
from parsec.storage.postgresql.user import (
    LOCK_ORGANIZATION,
    NEW_USER_FACT_COLUMNS,
    NEW_USER_FACTS,
    USER_CREATED,
    comparable,
    insert_user_and_device,
    new_user_params,
    raise_new_user_refusal,
)

_ENROLLMENT_COLUMNS = """
    enrollment_id, submitter_der_x509_certificate, submit_payload_signature, submit_payload,
    submitted_on, state, cancelled_on, rejected_on, accepted_on, accepter_der_x509_certificate,
    accept_payload_signature, accept_payload, accepter, accepted
"""

# `pki_enrollment.updated`, published by the write statements themselves: once per enrollment
# written (a forced submission cancels one and submits one).
_CANCELLED = Notify("cancelled")
_UPDATED = Notify("updated")

# Checks in memory's order: the enrollment id; the latest enrollment of the same certificate
# (SUBMITTED: refused unless forced, then cancelled; ACCEPTED with its user still active:
# refused); the e-mail. `verdict.ok` gates both writes.
_SUBMIT = (
    LOCK_ORGANIZATION
    + f"""
WITH org AS (
    SELECT organization_id FROM organization WHERE organization_id = %(org)s
), previous AS (
    SELECT enrollment_id, state, submitted_on, accepted FROM pki_enrollment
    WHERE organization_id = %(org)s AND submitter_der_x509_certificate_sha256 = sha256(%(certificate)s)
    ORDER BY seq DESC
    LIMIT 1
), facts AS (
    SELECT
        EXISTS (SELECT 1 FROM pki_enrollment
                WHERE organization_id = %(org)s AND enrollment_id = %(enrollment_id)s) AS id_used,
        p.enrollment_id AS previous_id,
        p.state AS previous_state,
        p.submitted_on AS previous_submitted_on,
        (p.state = 'ACCEPTED' AND EXISTS (
            SELECT 1 FROM user_ u
            WHERE u.organization_id = %(org)s AND u.user_id = split_part(p.accepted, '@', 1)
              AND (u.revoked_on IS NULL OR u.revoked_on > %(now)s))) AS previous_user_active,
        (%(email)s::text IS NOT NULL AND EXISTS (
            SELECT 1 FROM user_ u
            WHERE u.organization_id = %(org)s AND u.human_email = %(email)s::text
              AND (u.revoked_on IS NULL OR u.revoked_on > %(now)s))) AS email_used,
        (SELECT count(*) FROM pki_enrollment
         WHERE organization_id = %(org)s AND state = 'SUBMITTED') AS pending
    FROM org LEFT JOIN previous p ON true
), verdict AS (
    SELECT
        NOT id_used
        AND NOT (coalesce(previous_state = 'SUBMITTED', false) AND NOT %(force)s)
        AND NOT coalesce(previous_user_active, false)
        AND NOT email_used
        -- The forced resubmission cancels the previous SUBMITTED one (counted in `pending`).
        AND pending - CASE WHEN coalesce(previous_state = 'SUBMITTED', false) THEN 1 ELSE 0 END
            < %(max_pending)s AS ok,
        previous_id,
        previous_state
    FROM facts
), cancelled AS (
    UPDATE pki_enrollment SET state = 'CANCELLED', cancelled_on = %(submitted_on)s
    FROM verdict v
    WHERE v.ok AND v.previous_state = 'SUBMITTED'
      AND pki_enrollment.organization_id = %(org)s AND pki_enrollment.enrollment_id = v.previous_id
    RETURNING pki_enrollment.enrollment_id
), submitted AS (
    INSERT INTO pki_enrollment (organization_id, enrollment_id, submitter_der_x509_certificate,
                                submitter_der_x509_certificate_email, submit_payload_signature,
                                submit_payload, submitted_on)
    SELECT %(org)s, %(enrollment_id)s, %(certificate)s, %(email)s, %(signature)s, %(payload)s,
           %(submitted_on)s
    FROM verdict WHERE ok
    RETURNING 1
)
SELECT f.id_used, f.previous_state, f.previous_submitted_on, f.previous_user_active, f.email_used,
       (SELECT enrollment_id FROM cancelled), EXISTS (SELECT 1 FROM submitted),
       (SELECT {_CANCELLED.sql} FROM cancelled), (SELECT {_UPDATED.sql} FROM submitted)
FROM facts f
"""
)

_INFO = f"""
SELECT {_ENROLLMENT_COLUMNS} FROM pki_enrollment
WHERE organization_id = %(org)s AND enrollment_id = %(enrollment_id)s
"""

_LIST_SUBMITTED = f"""
SELECT {_ENROLLMENT_COLUMNS} FROM pki_enrollment
WHERE organization_id = %(org)s AND state = 'SUBMITTED'
ORDER BY seq
"""

_REJECT = (
    LOCK_ORGANIZATION
    + f"""
WITH target AS (
    SELECT state FROM pki_enrollment WHERE organization_id = %(org)s AND enrollment_id = %(enrollment_id)s
), rejected AS (
    UPDATE pki_enrollment SET state = 'REJECTED', rejected_on = %(rejected_on)s
    WHERE organization_id = %(org)s AND enrollment_id = %(enrollment_id)s AND state = 'SUBMITTED'
    RETURNING 1
)
SELECT (SELECT state FROM target), EXISTS (SELECT 1 FROM rejected), (SELECT {_UPDATED.sql} FROM rejected)
"""
)

# NotFound / NoLongerAvailable first, then the checks of a user creation; the user, its
# device and the ACCEPTED state are written together or not at all.
_ACCEPT = (
    LOCK_ORGANIZATION
    + "WITH"
    + NEW_USER_FACTS
    + """, target AS (
    SELECT state FROM pki_enrollment WHERE organization_id = %(org)s AND enrollment_id = %(enrollment_id)s
), allowed AS (
    SELECT 1 FROM new_user_allowed, target WHERE target.state = 'SUBMITTED'
),"""
    + insert_user_and_device("allowed")
    + f""", accepted AS (
    UPDATE pki_enrollment
    SET state = 'ACCEPTED', accepted_on = %(accepted_on)s,
        accepter_der_x509_certificate = %(accepter_certificate)s,
        accept_payload_signature = %(accept_signature)s, accept_payload = %(accept_payload)s,
        accepter = %(accepter)s, accepted = %(device_id)s
    WHERE organization_id = %(org)s AND enrollment_id = %(enrollment_id)s
      AND EXISTS (SELECT 1 FROM new_device)
    RETURNING 1
)
SELECT (SELECT state FROM target), {NEW_USER_FACT_COLUMNS}, EXISTS (SELECT 1 FROM accepted),
       (SELECT {USER_CREATED.sql} FROM accepted), (SELECT {_UPDATED.sql} FROM accepted)
FROM new_user_facts f
"""
)


def _enrollment_from_row(row: tuple[Any, ...]) -> PkiEnrollment:
    (enrollment_id, certificate, signature, payload, submitted_on, state, cancelled_on, rejected_on,
     accepted_on, accepter_certificate, accept_signature, accept_payload, accepter, accepted) = row
    return PkiEnrollment(
        enrollment_id=enrollment_id,
        submitter_der_x509_certificate=certificate,
        submit_payload_signature=signature,
        submit_payload=payload,
        submitted_on=submitted_on,
        status=state,
        cancelled_on=cancelled_on,
        rejected_on=rejected_on,
        accepted_on=accepted_on,
        accepter_der_x509_certificate=accepter_certificate,
        accept_payload_signature=accept_signature,
        accept_payload=accept_payload,
        accepter=accepter,
        accepted_device=accepted,
    )


class PgPkiStorage:
    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool

    async def submit(
        self,
        organization_id: str,
        enrollment: PkiEnrollment,
        force: bool,
        email: str | None,
        now: datetime,
        max_pending: int = DEFAULT_LIMITS.pending_enrollments,
    ) -> UUID | None:
        row = await self._pool.fetchrow(
            _SUBMIT,
            {
                "org": organization_id,
                "enrollment_id": enrollment.enrollment_id,
                "certificate": enrollment.submitter_der_x509_certificate,
                "signature": enrollment.submit_payload_signature,
                "payload": enrollment.submit_payload,
                "submitted_on": enrollment.submitted_on,
                # Never read back; with NUL it cannot be any user's e-mail: NULL.
                "email": comparable(email) or None,
                "force": force,
                "now": now,
                "max_pending": max_pending,
                **_CANCELLED.params(events.pki_enrollment_updated(organization_id)),
                **_UPDATED.params(events.pki_enrollment_updated(organization_id)),
            },
        )
        if row is None:
            raise NotFoundError()
        (id_used, previous_state, previous_submitted_on, previous_user_active, email_used,
         cancelled, submitted, _, _) = row
        if id_used:
            raise EnrollmentIdAlreadyUsedError()
        if previous_state == "SUBMITTED" and not force:
            raise AlreadySubmittedError(previous_submitted_on)
        if previous_user_active:
            raise AlreadyEnrolledError()
        if email_used:
            raise EmailAlreadyUsedError()
        if not submitted:
            raise TooManyPendingEnrollmentsError()
        cancelled_id: UUID | None = cancelled
        return cancelled_id

    async def info(self, organization_id: str, enrollment_id: UUID) -> PkiEnrollment:
        row = await self._pool.fetchrow(_INFO, {"org": organization_id, "enrollment_id": enrollment_id})
        if row is None:
            raise NotFoundError()
        return _enrollment_from_row(row)

    async def list_submitted(self, organization_id: str) -> list[PkiEnrollment]:
        rows = await self._pool.fetch(_LIST_SUBMITTED, {"org": organization_id})
        return [_enrollment_from_row(row) for row in rows]

    async def reject(self, organization_id: str, enrollment_id: UUID, rejected_on: datetime) -> None:
        row = await self._pool.fetchrow(
            _REJECT,
            {
                "org": organization_id,
                "enrollment_id": enrollment_id,
                "rejected_on": rejected_on,
                **_UPDATED.params(events.pki_enrollment_updated(organization_id)),
            },
        )
        assert row is not None
        state, rejected, _ = row
        if state is None:
            raise NotFoundError()
        if not rejected:
            raise NoLongerAvailableError()

    async def accept(
        self,
        organization_id: str,
        enrollment_id: UUID,
        acceptance: PkiAcceptance,
        user: User,
        device: Device,
        now: datetime,
    ) -> None:
        row = await self._pool.fetchrow(
            _ACCEPT,
            {
                "org": organization_id,
                "now": now,
                "enrollment_id": enrollment_id,
                "accepted_on": acceptance.accepted_on,
                "accepter_certificate": acceptance.accepter_der_x509_certificate,
                "accept_signature": acceptance.accept_payload_signature,
                "accept_payload": acceptance.accept_payload,
                "accepter": acceptance.accepter,
                **new_user_params(user, device),
                **USER_CREATED.params(events.user_created(organization_id, user.user_id)),
                **_UPDATED.params(events.pki_enrollment_updated(organization_id)),
            },
        )
        if row is None:
            raise NotFoundError()
        state, *facts, accepted, _, _ = row
        if state is None:
            raise NotFoundError()
        if state != "SUBMITTED":
            raise NoLongerAvailableError()
        raise_new_user_refusal(tuple(facts), user, device)
        assert accepted, row
