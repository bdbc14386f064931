"""PostgreSQL messages: a user's inbox (written by the realm storage's role updates and
re-encryption starts, which number them under the recipient's user_ row lock and check its
unread bounds against user_.message_read, moved forward here)."""

from __future__ import annotations

from parsec.backend.models import Message
from parsec.backend.storage import DEFAULT_MESSAGE_BOUNDS, MessageBounds
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.realm_common import INT4_MAX, PgRealmScopedStorage, clamp

__all__ = ["PgMessageStorage"]

# The read mark moves forward (never past the last message); the page is the first messages
# after `offset` within the bounds (`keep` is true for a prefix of them: row number and running
# size only grow). The row after the page is read to stop there, its body is not sent.
_MESSAGE_GET = PreparedStatement("""
WITH mark AS (
    UPDATE user_ SET message_read = least(%(offset)s::integer, message_count)
    WHERE organization_id = %(org)s::text AND user_id = %(user)s::text
      AND message_read < least(%(offset)s::integer, message_count)
), page AS (
    SELECT message_index, sender, sent_on, body,
           row_number() OVER w <= %(count)s::integer
           AND (row_number() OVER w = 1 OR sum(octet_length(body)) OVER w <= %(size)s::bigint) AS keep
    FROM message
    WHERE organization_id = %(org)s::text AND recipient = %(user)s::text AND message_index > %(offset)s::integer
    WINDOW w AS (ORDER BY message_index)
    ORDER BY message_index
    LIMIT %(count)s::integer + 1
)
SELECT message_index, sender, sent_on, body FROM page WHERE keep ORDER BY message_index
""")


class PgMessageStorage(PgRealmScopedStorage):
    async def get(
        self, organization_id: str, user_id: str, offset: int, bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS
    ) -> list[Message]:
        rows = await self._pool.fetch(
            _MESSAGE_GET,
            {
                "org": organization_id,
                "user": user_id,
                "offset": clamp(offset, -1, INT4_MAX),
                "count": clamp(bounds.count, 1, INT4_MAX - 1),
                "size": bounds.size,
            },
        )
        return [
            Message(index=index, sender=sender, timestamp=sent_on, body=body)
            for index, sender, sent_on, body in rows
        ]
