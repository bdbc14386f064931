"""PostgreSQL messages: a user's inbox (written by the realm storage's role updates and
re-encryption starts, which number them under the recipient's user_ row lock)."""

from __future__ import annotations

from parsec.backend.models import Message
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.realm_common import INT4_MAX, PgRealmScopedStorage, clamp

__all__ = ["PgMessageStorage"]

_MESSAGE_GET = PreparedStatement("""
SELECT message_index, sender, sent_on, body FROM message
WHERE organization_id = %(org)s::text AND recipient = %(user)s::text AND message_index > %(offset)s::integer
ORDER BY message_index
""")


class PgMessageStorage(PgRealmScopedStorage):
    async def get(self, organization_id: str, user_id: str, offset: int) -> list[Message]:
        rows = await self._pool.fetch(
            _MESSAGE_GET, {"org": organization_id, "user": user_id, "offset": clamp(offset, -1, INT4_MAX)}
        )
        return [
            Message(index=index, sender=sender, timestamp=sent_on, body=body)
            for index, sender, sent_on, body in rows
        ]

