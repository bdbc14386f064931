"""The command layer: how business components expose commands, the connection contexts they
receive, and every reply status built from what the layers below report.

A component method decorated with `@api("vlob_create")` becomes the handler of
that command. The handler receives the connection context and the request
already validated against the command's schema (`parsec.api.protocol`), and
returns the reply map (with its `status`). `admin_only` / `outsider_reason`
are profile checks that run *before* schema validation (docs/protocol/commands.md §2).

Neither the storages (parsec.backend.storage exceptions) nor the certificate checks
(parsec.api.certificates exceptions) know reply statuses: `error_reply` and
`certificate_error_reply` below map them.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from parsec.api import certificates as certs
from parsec.api.ballpark import BALLPARK_CLIENT_EARLY_OFFSET, BALLPARK_CLIENT_LATE_OFFSET
from parsec.backend.models import HumanHandle
from parsec.backend.storage import (
    AlreadyGrantedError,
    BadEncryptionRevisionError,
    BadVersionError,
    InMaintenanceError,
    MaintenanceError,
    MessageBoxFullError,
    NotAllowedError,
    NotInMaintenanceError,
    ParticipantsMismatchError,
    RealmNotFoundError,
    RequireGreaterTimestampError,
    StorageError,
    UserRevokedError,
    VlobNotFoundError,
)

Reply = dict[str, Any]
# What a handler returns: its reply, or, for a command that waits for someone else (an event, a
# peer), the Deferred of its reply. Returned rather than awaited, the wait keeps no coroutine
# frames nor a coroutine driver: an idle connection waiting in `events_listen` holds its
# Deferred alone (benchmarks/server_bench.py, idle: about 1.5 KiB less per connection).
# Cancelling that Deferred abandons the command (the transport then sends no reply).
Answer = Reply | Deferred[Reply]

AUTHENTICATED = "authenticated"
INVITED = "invited"
APIV1_ANONYMOUS = "apiv1_anonymous"
ANONYMOUS = "anonymous"


@attrs.define(eq=False)
class AuthenticatedContext:
    organization_id: str
    device_id: str
    user_id: str
    profile: str
    human_handle: HumanHandle | None
    verify_key: bytes
    api_version: tuple[int, int]
    conn_id: int = 0
    kind: str = AUTHENTICATED
    # Called by the server to close the connection (revocation, expiration).
    close: Callable[[], None] = lambda: None
    # The timer that closes the connection when its user's revocation takes effect (an
    # IDelayedCall, cancelled when the connection goes away).
    revocation_timer: Any = None


@attrs.define(eq=False)
class InvitedContext:
    organization_id: str
    token: UUID
    invitation_type: str
    greeter_user_id: str
    greeter_human_handle: HumanHandle | None
    claimer_email: str | None
    api_version: tuple[int, int]
    conn_id: int = 0
    kind: str = INVITED
    close: Callable[[], None] = lambda: None
    # Called when the invitation is deleted: closes the connection once its in-flight request
    # (if any) is answered (the claimer's last exchange may have its answer already).
    close_when_idle: Callable[[], None] = lambda: None


@attrs.define(eq=False)
class AnonymousContext:
    """APIv1 anonymous websocket, or one anonymous HTTP request (`/anonymous/<org>`)."""

    organization_id: str
    kind: str = APIV1_ANONYMOUS
    api_version: tuple[int, int] = (1, 3)
    conn_id: int = 0
    close: Callable[[], None] = lambda: None


ClientContext = AuthenticatedContext | InvitedContext | AnonymousContext

# A bound handler: (context, validated request) -> reply. The context is of one of the kinds
# the command is declared for.
Handler = Callable[[Any, dict[str, Any]], Awaitable[Answer]]
_Method = TypeVar("_Method", bound=Callable[..., Awaitable[Answer]])


@attrs.frozen
class ApiMeta:
    name: str
    kinds: tuple[str, ...]
    admin_only: bool  # profile ADMIN checked before the schema
    outsider_reason: str | None  # OUTSIDER refused (before the schema) with this reason
    cancellable: bool  # abandoned without reply when the client sends another request
    long_poll: bool  # waits for someone else: cancelled at once on server shutdown


def api(
    name: str,
    *,
    kinds: tuple[str, ...] = (AUTHENTICATED,),
    admin_only: bool = False,
    outsider_reason: str | None = None,
    cancellable: bool = False,
    long_poll: bool = False,
) -> Callable[[_Method], _Method]:
    """Mark a component method `async def m(self, ctx, req) -> Reply` as the handler of `name`."""

    def decorator(fn: _Method) -> _Method:
        setattr(fn, _META, ApiMeta(name, kinds, admin_only, outsider_reason, cancellable, long_poll or cancellable))
        return fn

    return decorator


_META = "_parsec_api"


def collect_handlers(component: object) -> list[tuple[ApiMeta, Handler]]:
    found = []
    for attr in dir(type(component)):
        fn = getattr(type(component), attr, None)
        meta = getattr(fn, _META, None)
        if isinstance(meta, ApiMeta):
            found.append((meta, getattr(component, attr)))
    return found


# ---- common replies -------------------------------------------------------------------------


class Resumed:
    """Runs the rest of a command's coroutine (or of any coroutine awaiting only Deferreds),
    which already ran up to its first await in `context`; `deferred` fires with its result.
    Used where most coroutines finish without waiting: the caller steps the coroutine once
    itself, and only one that waits gets this driver.

    What `Deferred.fromCoroutine` would do, minus what a command never needs: every await of a
    command ends on a Deferred, which we wait for with one callback, then step the coroutine
    again in the same context (a context variable set before an await must be reset in the
    context that set it). Cancelling `deferred` cancels the Deferred being awaited, which
    raises CancelledError in the coroutine. Half the objects of Twisted's driver per awaiting
    request: 0.7 KiB less per connection waiting in `events_listen` (tracemalloc, 500 idle
    listeners: 12.0 -> 11.3 KiB each); the CPU saved is small (callgrind, `vlob_create` on
    PostgreSQL: 951k -> 946k instructions).
    """

    __slots__ = ("_coro", "_context", "_awaited", "deferred")

    def __init__(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context, awaited: Any) -> None:
        self._coro = coro
        self._context = context
        self._awaited: defer.Deferred[Any] | None = None
        self.deferred: defer.Deferred[Any] = defer.Deferred(self._cancel)
        self._wait(awaited)

    def _wait(self, awaited: Any) -> None:
        if not isinstance(awaited, defer.Deferred):
            self._coro.close()
            self.deferred.errback(TypeError(f"a command awaited {type(awaited).__name__}, not a Deferred"))
            return
        self._awaited = awaited
        awaited.addBoth(self._resume)

    def _resume(self, result: object) -> None:
        # A Deferred awaited by a coroutine hands it its own result when the coroutine is
        # stepped, which must happen while that result is still in place: here, inside the
        # Deferred's last callback. A failure is thrown in (as Twisted's driver does); returning
        # None consumes it.
        self._awaited = None
        try:
            if isinstance(result, Failure):
                awaited = self._context.run(result.throwExceptionIntoGenerator, self._coro)
            else:
                awaited = self._context.run(self._coro.send, None)
        except StopIteration as done:
            if isinstance(done.value, defer.Deferred):
                # The command returned the Deferred of its reply (parsec.backend.command.Answer).
                self._awaited = done.value
                done.value.addBoth(self._deliver)
            elif not self.deferred.called:
                self.deferred.callback(done.value)
            return None
        except BaseException:
            if not self.deferred.called:
                self.deferred.errback()
            return None
        self._wait(awaited)
        return None

    def _deliver(self, result: object) -> None:
        self._awaited = None
        if not self.deferred.called:
            if isinstance(result, Failure):
                self.deferred.errback(result)
            else:
                self.deferred.callback(result)

    def _cancel(self, _: defer.Deferred[Any]) -> None:
        if self._awaited is not None:
            self._awaited.cancel()


def ok(**fields: Any) -> Reply:
    return {"status": "ok", **fields}


class SharedReply(dict[str, Any]):
    """A reply sent as it is to several connections (an event heard by every subscriber): the
    websocket frames it once and keeps the frame in `framed` (limit, frame) for the next
    connection. Never modified once built."""

    __slots__ = ("framed",)

    def __init__(self, **fields: Any) -> None:
        super().__init__(status="ok", **fields)
        self.framed: tuple[int, bytes | list[bytes]] | None = None


def status(name: str, reason: str | None = None, **fields: Any) -> Reply:
    reply: Reply = {"status": name}
    if reason is not None:
        reply["reason"] = reason
    reply.update(fields)
    return reply


def not_admin(ctx: AuthenticatedContext) -> Reply:
    return status("not_allowed", f"User `{ctx.user_id}` is not admin")


def bad_timestamp(client_timestamp: datetime, backend_timestamp: datetime) -> Reply:
    return {
        "status": "bad_timestamp",
        "ballpark_client_early_offset": BALLPARK_CLIENT_EARLY_OFFSET,
        "ballpark_client_late_offset": BALLPARK_CLIENT_LATE_OFFSET,
        "backend_timestamp": backend_timestamp,
        "client_timestamp": client_timestamp,
    }


def require_greater_timestamp(strictly_greater_than: datetime) -> Reply:
    return {"status": "require_greater_timestamp", "strictly_greater_than": strictly_greater_than}


def uuid_hex(value: UUID) -> str:
    return value.hex


# ---- storage rule violations ------------------------------------------------------------------

PARTICIPANTS_MISMATCH = "Realm participants and message recipients mismatch"
REENCRYPTION_NOT_OVER = "Reencryption operations are not over"
MESSAGE_BOX_FULL = "The recipient has too many unread messages"

# Errors whose reply is the bare status, whatever the command.
_BARE_STATUS: dict[type[StorageError], str] = {
    NotAllowedError: "not_allowed",
    InMaintenanceError: "in_maintenance",
    BadEncryptionRevisionError: "bad_encryption_revision",
    BadVersionError: "bad_version",
    UserRevokedError: "user_revoked",
    AlreadyGrantedError: "already_granted",
}


def realm_not_found(realm_id: UUID) -> Reply:
    return status("not_found", f"Realm `{uuid_hex(realm_id)}` doesn't exist")


def vlob_not_found(vlob_id: UUID) -> Reply:
    return status("not_found", f"Vlob `{uuid_hex(vlob_id)}` doesn't exist")


def not_in_maintenance(realm_id: UUID) -> Reply:
    return status("not_in_maintenance", f"Realm `{uuid_hex(realm_id)}` not under maintenance")


def error_reply(exc: StorageError, *, realm_id: UUID | None = None, vlob_id: UUID | None = None) -> Reply:
    """The usual reply for a storage rule violation (realms, vlobs, blocks). Commands handle
    their quirks (e.g. `not_allowed` for an unknown realm in vlob_create) before calling this.
    An error the command cannot produce is re-raised (a bug, logged by the transport)."""
    if isinstance(exc, RequireGreaterTimestampError):
        return require_greater_timestamp(exc.strictly_greater_than)
    if isinstance(exc, RealmNotFoundError) and realm_id is not None:
        return realm_not_found(realm_id)
    if isinstance(exc, VlobNotFoundError) and vlob_id is not None:
        return vlob_not_found(vlob_id)
    if isinstance(exc, NotInMaintenanceError) and realm_id is not None:
        return not_in_maintenance(realm_id)
    if isinstance(exc, MaintenanceError):
        return status("maintenance_error", REENCRYPTION_NOT_OVER)
    if isinstance(exc, ParticipantsMismatchError):
        return status("participants_mismatch", PARTICIPANTS_MISMATCH)
    if isinstance(exc, MessageBoxFullError):
        # The real client shows `not_allowed` as an error (sharing / re-encryption refused)
        # instead of retrying (docs/protocol/DECISIONS.md).
        return status("not_allowed", MESSAGE_BOX_FULL)
    name = _BARE_STATUS.get(type(exc))
    if name is None:
        raise exc
    return status(name)


# ---- certificate checks -------------------------------------------------------------------------

# The reply status of each failed certificate check (docs/protocol/commands.md §5.1, §6, §9).
CERTIFICATE_ERROR_STATUS: dict[type[certs.CertificateValidationError], str] = {
    certs.InvalidCertificationError: "invalid_certification",
    certs.InvalidCertificateDataError: "invalid_data",
    certs.DeviceOfAnotherUserError: "bad_user_id",
    certs.SelfRevocationError: "not_allowed",
    certs.TimestampOutOfBallparkError: "bad_timestamp",
}


def certificate_error_reply(exc: certs.CertificateValidationError) -> Reply:
    if isinstance(exc, certs.TimestampOutOfBallparkError):
        return bad_timestamp(exc.client_timestamp, exc.backend_timestamp)
    return status(CERTIFICATE_ERROR_STATUS[type(exc)], exc.reason)
