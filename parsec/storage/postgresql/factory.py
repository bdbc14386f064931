"""Assembly of the PostgreSQL storage: pool, LISTEN/NOTIFY event bus, domain storages.

    storage, bus, resources = build_postgresql_storage(backend_config, reactor=reactor, feed=watcher)
    await storage.start()   # connect (retry policy), check the schema
    await bus.start()       # start listening
    ...
    await bus.stop()        # stop listening
    await storage.stop()    # close the pool

The service tree starts the storage and the event feed as two services, in this order (and
stops them in reverse). `resources.pool` is the pool the POSTGRESQL blockstore shares.

Event feed (docs/protocol/server-config.md §4, docs/protocol/events.md §6). While serving, losing the LISTEN connection
means events may have been missed: the bus tells the `feed` given at construction at once
(`feed.event_feed_lost(error)`: the service drops its websocket clients and refuses new ones),
then reconnects under the retry policy: `feed.event_feed_restored()` once listening again, or,
when the attempts are exhausted, `feed.event_feed_gave_up(error)` (the service exits with
status 1). Without a `feed`, a loss is only logged.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from parsec.backend.storage import Storage
from parsec.config import BackendConfig
from parsec.storage.postgresql.block import PgBlockStorage
from parsec.storage.postgresql.connection import DatabaseUnavailable
from parsec.storage.postgresql.events import PostgreSQLEventBus
from parsec.storage.postgresql.invite import PgInviteStorage
from parsec.storage.postgresql.message import PgMessageStorage
from parsec.storage.postgresql.migrations import check_schema_up_to_date
from parsec.storage.postgresql.organization import PgOrganizationStorage
from parsec.storage.postgresql.pki import PgPkiStorage
from parsec.storage.postgresql.pool import PostgreSQLPool
from parsec.storage.postgresql.realm import PgRealmStorage
from parsec.storage.postgresql.user import PgUserStorage
from parsec.storage.postgresql.vlob import PgVlobStorage

__all__ = ["EventFeedWatcher", "PostgreSQLResources", "PostgreSQLStorage", "build_postgresql_storage"]


@attrs.define(eq=False)
class PostgreSQLResources:
    """What other parts of the server share with the storage."""

    pool: PostgreSQLPool
    bus: PostgreSQLEventBus


class EventFeedWatcher(Protocol):
    """Told about the LISTEN connection (the event feed) of the storage's bus."""

    def event_feed_lost(self, error: DatabaseUnavailable) -> None: ...

    def event_feed_restored(self) -> None: ...

    def event_feed_gave_up(self, error: DatabaseUnavailable) -> None: ...


@attrs.define(eq=False)
class PostgreSQLStorage(Storage):
    pool: PostgreSQLPool = attrs.field(kw_only=True)

    async def start(self) -> None:
        """Raises DatabaseUnavailable (attempts exhausted) or SchemaError; both one line."""
        await self.pool.start()
        await check_schema_up_to_date(self.pool)

    async def stop(self) -> None:
        await self.pool.close()


def build_postgresql_storage(
    backend_config: BackendConfig,
    reactor: Any = None,
    feed: EventFeedWatcher | None = None,
    *,
    pool: PostgreSQLPool | None = None,
) -> tuple[PostgreSQLStorage, PostgreSQLEventBus, PostgreSQLResources]:
    """Build (without connecting) the storage of `backend_config.db_url`, on `pool` when given
    (tests count the round trips of theirs)."""
    limits = backend_config.limits
    if pool is None:
        pool = PostgreSQLPool(
            backend_config.db_url,
            min_connections=backend_config.db_min_connections,
            max_connections=max(backend_config.db_max_connections, backend_config.db_min_connections, 1),
            max_connection_attempts=backend_config.db_max_connection_attempts,
            pause_before_retry=backend_config.db_pause_before_retry,
            statement_timeout=limits.db_statement_timeout,
            lock_timeout=limits.db_lock_timeout,
            acquire_timeout=limits.db_acquire_timeout,
            max_waiters=limits.db_max_waiters,
            reactor=reactor,
        )
    if feed is None:
        bus = PostgreSQLEventBus(pool, outbox_bytes=limits.event_outbox_bytes)
    else:
        bus = PostgreSQLEventBus(
            pool,
            on_connection_lost=feed.event_feed_lost,
            on_reconnected=feed.event_feed_restored,
            on_gave_up=feed.event_feed_gave_up,
            outbox_bytes=limits.event_outbox_bytes,
        )
    storage = PostgreSQLStorage(
        organization=PgOrganizationStorage(pool),
        user=PgUserStorage(pool),
        invite=PgInviteStorage(pool),
        realm=PgRealmStorage(pool),
        vlob=PgVlobStorage(pool),
        block=PgBlockStorage(pool),
        message=PgMessageStorage(pool),
        pki=PgPkiStorage(pool),
        pool=pool,
    )
    return storage, bus, PostgreSQLResources(pool=pool, bus=bus)
