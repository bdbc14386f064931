"""`message_get` (docs/protocol/commands.md §7): the connected user's messages, shared by all its devices.

Messages are appended by realm_update_roles and realm_start_reencryption_maintenance (see
parsec.backend.realm); this component only reads them.

Nothing grows past what can be sent (README.rst, Limits): a message is at most
`message_bytes` (the request schema), a user has at most `pending_messages` unread messages
(`pending_message_bytes` of bodies: appending one more is refused with `not_allowed`), and a
reply holds at most as much, so it always fits in a websocket message. A message is unread
while it comes after the highest `offset` the user's devices asked for (the client asks from
the last message it processed). An older offset may find more: the reply then holds the first
ones, and the client's next `message_get` (on the next `message.received`, or when it
reconnects) asks for the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from parsec.backend.command import AuthenticatedContext, Reply, api, ok
from parsec.backend.storage import MessageBounds
from parsec.config import BackendConfig

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp


def message_bounds(config: BackendConfig) -> MessageBounds:
    return MessageBounds(count=config.limits.pending_messages, size=config.limits.pending_message_bytes)


class MessageComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    @api("message_get")
    async def api_message_get(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        messages = await self._app.storage.message.get(
            ctx.organization_id, ctx.user_id, req["offset"], message_bounds(self._app.config)
        )
        return ok(
            messages=[
                {"count": m.index, "sender": m.sender, "timestamp": m.timestamp, "body": m.body}
                for m in messages
            ]
        )
