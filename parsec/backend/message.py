"""`message_get` (docs/protocol/commands.md §7): the connected user's messages, shared by all its devices.

Messages are appended by realm_update_roles and realm_start_reencryption_maintenance (see
parsec.backend.realm); this component only reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsec.backend.command import AuthenticatedContext, Reply, api, ok

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp


class MessageComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @api("message_get")
    async def api_message_get(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        messages = await self._app.storage.message.get(ctx.organization_id, ctx.user_id, req["offset"])
        return ok(
            messages=[
                {"count": m.index, "sender": m.sender, "timestamp": m.timestamp, "body": m.body}
                for m in messages
            ]
        )
