"""PKI enrollment (docs/protocol/commands.md §12).

An anonymous submitter posts an enrollment request over HTTP (`pki_enrollment_submit`) and
polls it (`pki_enrollment_info`); an ADMIN lists, rejects or accepts it, accepting creating
the user exactly as `user_create` would. The X.509 certificates and the payload signatures
are opaque: the server only checks that the payloads decode.

Every state change publishes `pki_enrollment.updated` (delivered to the ADMINs of the same
organization only, docs/protocol/DECISIONS.md): the storage does, with the write.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsec import limits as limits_module
from parsec.api import certificates as certs
from parsec.backend.command import (
    ANONYMOUS,
    AnonymousContext,
    AuthenticatedContext,
    Reply,
    api,
    ok,
    status,
)
from parsec.backend.storage import (
    ActiveUsersLimitReachedError,
    AlreadyEnrolledError,
    AlreadyExistsError,
    AlreadySubmittedError,
    EmailAlreadyUsedError,
    EnrollmentIdAlreadyUsedError,
    NoLongerAvailableError,
    NotFoundError,
    PkiAcceptance,
    PkiEnrollment,
    PkiStorage,
    TooManyPendingEnrollmentsError,
)
from parsec.backend.user import UserComponent

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

TOO_MANY_PENDING = "Too many pending enrollments in this organization"


def _not_found() -> Reply:
    # The reason key is present and empty (upstream tests compare it).
    return status("not_found", "")


def _no_longer_available() -> Reply:
    return status("no_longer_available", "")


def _info_reply(enrollment: PkiEnrollment) -> Reply:
    state = enrollment.status
    if state == "SUBMITTED":
        return ok(enrollment_status=state, submitted_on=enrollment.submitted_on)
    if state == "ACCEPTED":
        return ok(
            enrollment_status=state,
            submitted_on=enrollment.submitted_on,
            accepted_on=enrollment.accepted_on,
            accepter_der_x509_certificate=enrollment.accepter_der_x509_certificate,
            accept_payload_signature=enrollment.accept_payload_signature,
            accept_payload=enrollment.accept_payload,
        )
    if state == "REJECTED":
        return ok(
            enrollment_status=state, submitted_on=enrollment.submitted_on, rejected_on=enrollment.rejected_on
        )
    if state == "CANCELLED":
        return ok(
            enrollment_status=state,
            submitted_on=enrollment.submitted_on,
            cancelled_on=enrollment.cancelled_on,
        )
    raise AssertionError(f"unknown enrollment status {state!r}")


class PkiComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @property
    def _storage(self) -> PkiStorage:
        return self._app.storage.pki

    # ---- anonymous (HTTP) ----------------------------------------------------------------

    @api("pki_enrollment_submit", kinds=(ANONYMOUS,))
    async def api_pki_enrollment_submit(self, ctx: AnonymousContext, req: dict[str, Any]) -> Reply:
        try:
            certs.load_pki_submit_payload(req["submit_payload"])
        except certs.CertificateError as exc:
            return status("invalid_payload_data", str(exc))
        now = self._app.now()
        enrollment = PkiEnrollment(
            enrollment_id=req["enrollment_id"],
            submitter_der_x509_certificate=req["submitter_der_x509_certificate"],
            submit_payload_signature=req["submit_payload_signature"],
            submit_payload=req["submit_payload"],
            submitted_on=now,
        )
        # Absent (clients < 2.8.3), nil or "": no e-mail check.
        email = req.get("submitter_der_x509_certificate_email") or None
        try:
            await self._storage.submit(
                ctx.organization_id,
                enrollment,
                req["force"],
                email,
                now,
                self._app.config.limits.pending_enrollments,
            )
        except EnrollmentIdAlreadyUsedError:
            return status("enrollment_id_already_used")
        except AlreadySubmittedError as exc:
            return status("already_submitted", submitted_on=exc.submitted_on)
        except AlreadyEnrolledError:
            return status("already_enrolled")
        except EmailAlreadyUsedError:
            return status("email_already_used")
        except TooManyPendingEnrollmentsError:
            limits_module.hit("pending_enrollments")
            # Bounded so that pki_enrollment_list always fits in one message; the real client
            # shows any status but ok as an error (docs/protocol/DECISIONS.md).
            return status("not_allowed", TOO_MANY_PENDING)
        return ok(submitted_on=now)

    @api("pki_enrollment_info", kinds=(ANONYMOUS,))
    async def api_pki_enrollment_info(self, ctx: AnonymousContext, req: dict[str, Any]) -> Reply:
        try:
            enrollment = await self._storage.info(ctx.organization_id, req["enrollment_id"])
        except NotFoundError:
            return _not_found()
        return _info_reply(enrollment)

    # ---- authenticated, ADMIN ------------------------------------------------------------

    @api("pki_enrollment_list", admin_only=True)
    async def api_pki_enrollment_list(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        enrollments = await self._storage.list_submitted(ctx.organization_id)
        return ok(
            enrollments=[
                {
                    "enrollment_id": e.enrollment_id,
                    "submitted_on": e.submitted_on,
                    "submitter_der_x509_certificate": e.submitter_der_x509_certificate,
                    "submit_payload_signature": e.submit_payload_signature,
                    "submit_payload": e.submit_payload,
                }
                for e in enrollments
            ]
        )

    @api("pki_enrollment_reject", admin_only=True)
    async def api_pki_enrollment_reject(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            await self._storage.reject(ctx.organization_id, req["enrollment_id"], self._app.now())
        except NotFoundError:
            return _not_found()
        except NoLongerAvailableError:
            return _no_longer_available()
        return ok()

    @api("pki_enrollment_accept", admin_only=True)
    async def api_pki_enrollment_accept(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            certs.load_pki_accept_payload(req["accept_payload"])
        except certs.CertificateError as exc:
            return status("invalid_payload_data", str(exc))
        now = self._app.now()
        # docs/protocol/DECISIONS.md: an organization refusing outsiders refuses them here too.
        checked = await self._app.component(UserComponent).new_user_from_request(ctx, req, now)
        if isinstance(checked, dict):
            return checked
        user, device = checked
        acceptance = PkiAcceptance(
            accepter=ctx.device_id,
            accepter_der_x509_certificate=req["accepter_der_x509_certificate"],
            accept_payload_signature=req["accept_payload_signature"],
            accept_payload=req["accept_payload"],
            accepted_on=now,
        )
        try:
            await self._storage.accept(
                ctx.organization_id, req["enrollment_id"], acceptance, user, device, now
            )
        except NotFoundError:
            return _not_found()
        except NoLongerAvailableError:
            return _no_longer_available()
        except ActiveUsersLimitReachedError:
            return status("active_users_limit_reached")
        except AlreadyExistsError:
            return status("already_exists", "")
        return ok()
