"""Assembly of the PostgreSQL storage: pool, LISTEN/NOTIFY event bus, domain storages.

    storage, bus, resources = build_postgresql_storage(backend_config, reactor=reactor)
    await storage.start()   # connect (retry policy), check the schema, start listening
    ...
    await storage.stop()    # stop listening, close the pool

`resources.pool` is the pool the POSTGRESQL blockstore shares.

Event feed (docs/protocol/server-config.md §4, docs/protocol/events.md §6). While serving, losing the LISTEN connection
means events may have been missed: the bus calls `storage.on_listen_lost(error)` at once (the
service drops its websocket clients and refuses new ones), then reconnects under the retry
policy: `storage.on_listen_restored()` once listening again, or, when the attempts are
exhausted, `storage.on_listen_gave_up(error)` (the service exits with status 1). The service
sets these three hooks; unset, a loss is only logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

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

__all__ = ["PostgreSQLResources", "PostgreSQLStorage", "build_postgresql_storage"]

_log = Logger(namespace="parsec.storage.postgresql")


@attrs.define(eq=False)
class PostgreSQLResources:
    """What other parts of the server share with the storage."""

    pool: PostgreSQLPool
    bus: PostgreSQLEventBus


@attrs.define(eq=False)
class PostgreSQLStorage(Storage):
    pool: PostgreSQLPool = attrs.field(kw_only=True)
    bus: PostgreSQLEventBus = attrs.field(kw_only=True)
    on_listen_lost: Callable[[DatabaseUnavailable], None] | None = attrs.field(default=None, kw_only=True)
    on_listen_restored: Callable[[], None] | None = attrs.field(default=None, kw_only=True)
    on_listen_gave_up: Callable[[DatabaseUnavailable], None] | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        self.bus.on_connection_lost = self._listen_lost
        self.bus.on_reconnected = self._listen_restored
        self.bus.on_gave_up = self._listen_gave_up

    async def start(self) -> None:
        """Raises DatabaseUnavailable (attempts exhausted) or SchemaError; both one line."""
        await self.pool.start()
        await check_schema_up_to_date(self.pool)
        await self.bus.start()

    async def stop(self) -> None:
        await self.bus.stop()
        await self.pool.close()

    def _listen_lost(self, error: DatabaseUnavailable) -> None:
        if self.on_listen_lost is not None:
            self.on_listen_lost(error)

    def _listen_restored(self) -> None:
        if self.on_listen_restored is not None:
            self.on_listen_restored()

    def _listen_gave_up(self, error: DatabaseUnavailable) -> None:
        if self.on_listen_gave_up is not None:
            self.on_listen_gave_up(error)
        else:
            _log.critical("Event feed lost for good: {error}", error=str(error))


def build_postgresql_storage(
    backend_config: BackendConfig, reactor: Any = None
) -> tuple[PostgreSQLStorage, PostgreSQLEventBus, PostgreSQLResources]:
    """Build (without connecting) the storage of `backend_config.db_url`."""
    limits = backend_config.limits
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
    bus = PostgreSQLEventBus(pool, outbox_bytes=limits.event_outbox_bytes)
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
        bus=bus,
    )
    return storage, bus, PostgreSQLResources(pool=pool, bus=bus)
