"""`ping` on every connection type (docs/protocol/commands.md §3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsec.backend import bus as events
from parsec.backend.command import (
    APIV1_ANONYMOUS,
    AUTHENTICATED,
    INVITED,
    AuthenticatedContext,
    Reply,
    api,
    ok,
)

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp


class PingComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @api("ping", kinds=(AUTHENTICATED, INVITED, APIV1_ANONYMOUS))
    async def api_ping(self, ctx: Any, req: dict[str, Any]) -> Reply:
        if isinstance(ctx, AuthenticatedContext):
            # Tied to no write: published directly.
            self._app.bus.publish(events.pinged(ctx.organization_id, ctx.device_id, req["ping"]))
        return ok(pong=req["ping"])
