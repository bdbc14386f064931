"""How business components expose commands, and the connection contexts they receive.

A component method decorated with `@api("vlob_create")` becomes the handler of
that command. The handler receives the connection context and the request
already validated against the command's schema (`parsec.api.protocol`), and
returns the reply map (with its `status`). `admin_only` / `outsider_reason`
are profile checks that run *before* schema validation (docs/protocol/commands.md §2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from parsec.api.handshake import BALLPARK_CLIENT_EARLY_OFFSET, BALLPARK_CLIENT_LATE_OFFSET
from parsec.backend.models import HumanHandle

Reply = dict[str, Any]

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
    device_label: str | None
    public_key: bytes
    verify_key: bytes
    api_version: tuple[int, int]
    conn_id: int = 0
    kind: str = AUTHENTICATED
    # Filled by the events component on `events_subscribe`.
    events: Any = None
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


@attrs.define(eq=False)
class AnonymousContext:
    """APIv1 anonymous websocket, or one anonymous HTTP request (`/anonymous/<org>`)."""

    organization_id: str
    kind: str = APIV1_ANONYMOUS
    api_version: tuple[int, int] = (1, 3)
    conn_id: int = 0
    close: Callable[[], None] = lambda: None


ClientContext = AuthenticatedContext | InvitedContext | AnonymousContext

Handler = Callable[[Any, dict[str, Any]], Awaitable[Reply]]


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
) -> Callable[[Handler], Handler]:
    def decorator(fn: Handler) -> Handler:
        fn._parsec_api = ApiMeta(
            name, kinds, admin_only, outsider_reason, cancellable, long_poll or cancellable
        )  # type: ignore[attr-defined]
        return fn

    return decorator


def collect_handlers(component: object) -> list[tuple[ApiMeta, Handler]]:
    found = []
    for attr in dir(type(component)):
        fn = getattr(type(component), attr, None)
        meta = getattr(fn, "_parsec_api", None)
        if meta is not None:
            found.append((meta, getattr(component, attr)))
    return found


# ---- common replies -------------------------------------------------------------------------


def ok(**fields: Any) -> Reply:
    return {"status": "ok", **fields}


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


def timestamp_in_ballpark(ts: datetime, now: datetime) -> bool:
    delta = (now - ts).total_seconds()
    return -BALLPARK_CLIENT_EARLY_OFFSET < delta < BALLPARK_CLIENT_LATE_OFFSET


def uuid_hex(value: UUID) -> str:
    return value.hex
