"""In-memory PKI enrollments (`--db MOCKED`).

Each organization's enrollments live in its `pki` domain. Every method runs its checks and
writes without yielding to the reactor, which makes it atomic with respect to the user
creations and revocations of the same process.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from uuid import UUID

import attrs

from parsec.api import ids
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
from parsec.storage.memory.organization import (
    MemoryDatastore,
    OrgData,
    email_used_by_active_user,
    insert_new_user,
)


def certificate_digest(der_x509_certificate: bytes) -> bytes:
    """How enrollments of the same certificate are recognized (SHA-1 of the DER bytes, as the
    reference's production storage does)."""
    return hashlib.sha1(der_x509_certificate, usedforsecurity=False).digest()


@attrs.define
class _PkiState:
    # Insertion order is submission order.
    enrollments: dict[UUID, PkiEnrollment] = attrs.field(factory=dict)
    # certificate digest -> id of the latest enrollment submitted with that certificate
    latest_by_certificate: dict[bytes, UUID] = attrs.field(factory=dict)
    # The ids of the enrollments still SUBMITTED, in submission order (`put`): counted at each
    # submission and listed, without a scan of every enrollment the organization ever had.
    submitted: dict[UUID, None] = attrs.field(factory=dict)

    def put(self, enrollment: PkiEnrollment) -> None:
        self.enrollments[enrollment.enrollment_id] = enrollment
        if enrollment.status == "SUBMITTED":
            self.submitted[enrollment.enrollment_id] = None
        else:
            self.submitted.pop(enrollment.enrollment_id, None)


class MemoryPkiStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    def _state(self, organization_id: str) -> _PkiState:
        return self._store.domain(organization_id, "pki", _PkiState)

    async def submit(
        self,
        organization_id: str,
        enrollment: PkiEnrollment,
        force: bool,
        email: str | None,
        now: datetime,
        max_pending: int = DEFAULT_LIMITS.pending_enrollments,
    ) -> UUID | None:
        data = self._store.get(organization_id)
        state = self._state(organization_id)
        if enrollment.enrollment_id in state.enrollments:
            raise EnrollmentIdAlreadyUsedError()
        digest = certificate_digest(enrollment.submitter_der_x509_certificate)
        to_cancel: UUID | None = None
        previous_id = state.latest_by_certificate.get(digest)
        if previous_id is not None:
            previous = state.enrollments[previous_id]
            if previous.status == "SUBMITTED":
                if not force:
                    raise AlreadySubmittedError(previous.submitted_on)
                to_cancel = previous_id
            elif previous.status == "ACCEPTED" and _accepted_user_is_active(data, previous, now):
                raise AlreadyEnrolledError()
        if email and email_used_by_active_user(data, email, now):
            raise EmailAlreadyUsedError()
        pending = len(state.submitted)
        if pending - (to_cancel is not None) >= max_pending:
            raise TooManyPendingEnrollmentsError()
        # Every check passed: write.
        if to_cancel is not None:
            cancelled = state.enrollments[to_cancel]
            state.put(attrs.evolve(cancelled, status="CANCELLED", cancelled_on=enrollment.submitted_on))
        submitted = attrs.evolve(
            enrollment,
            status="SUBMITTED",
            cancelled_on=None,
            rejected_on=None,
            accepted_on=None,
            accepter_der_x509_certificate=None,
            accept_payload_signature=None,
            accept_payload=None,
            accepter=None,
            accepted_device=None,
        )
        state.put(submitted)
        state.latest_by_certificate[digest] = enrollment.enrollment_id
        updated = events.pki_enrollment_updated(organization_id)
        self._store.publish(*([updated] * (2 if to_cancel is not None else 1)))
        return to_cancel

    async def info(self, organization_id: str, enrollment_id: UUID) -> PkiEnrollment:
        try:
            return self._state(organization_id).enrollments[enrollment_id]
        except KeyError:
            raise NotFoundError() from None

    async def list_submitted(self, organization_id: str) -> list[PkiEnrollment]:
        state = self._state(organization_id)
        return [state.enrollments[enrollment_id] for enrollment_id in state.submitted]

    def _submitted(self, state: _PkiState, enrollment_id: UUID) -> PkiEnrollment:
        enrollment = state.enrollments.get(enrollment_id)
        if enrollment is None:
            raise NotFoundError()
        if enrollment.status != "SUBMITTED":
            raise NoLongerAvailableError()
        return enrollment

    async def reject(self, organization_id: str, enrollment_id: UUID, rejected_on: datetime) -> None:
        state = self._state(organization_id)
        enrollment = self._submitted(state, enrollment_id)
        state.put(attrs.evolve(enrollment, status="REJECTED", rejected_on=rejected_on))
        self._store.publish(events.pki_enrollment_updated(organization_id))

    async def accept(
        self,
        organization_id: str,
        enrollment_id: UUID,
        acceptance: PkiAcceptance,
        user: User,
        device: Device,
        now: datetime,
    ) -> None:
        data = self._store.get(organization_id)
        state = self._state(organization_id)
        enrollment = self._submitted(state, enrollment_id)
        # Raises before writing anything when the user cannot be created.
        insert_new_user(data, user, device, now)
        accepted = attrs.evolve(
            enrollment,
            status="ACCEPTED",
            accepted_on=acceptance.accepted_on,
            accepter_der_x509_certificate=acceptance.accepter_der_x509_certificate,
            accept_payload_signature=acceptance.accept_payload_signature,
            accept_payload=acceptance.accept_payload,
            accepter=acceptance.accepter,
            accepted_device=device.device_id,
        )
        state.put(accepted)
        self._store.publish(
            events.user_created(organization_id, user.user_id), events.pki_enrollment_updated(organization_id)
        )


def _accepted_user_is_active(data: OrgData, enrollment: PkiEnrollment, now: datetime) -> bool:
    assert enrollment.accepted_device is not None
    user = data.users.get(ids.user_of(enrollment.accepted_device))
    return user is not None and not user.is_revoked(now)
