"""Storage-level tests of the realm/vlob/block/message storages, memory and PostgreSQL.

* `backend` is parametrized ("memory", "postgresql"): the same scenario runs against
  `parsec.storage.memory.realm` and `parsec.storage.postgresql.{realm,vlob,block,message}`.
  Both expose the four storages plus `add_org` / `add_user` / `revoke_user`, the few organization/user facts the
  realm rules read (users go into PostgreSQL with plain SQL: the PostgreSQL user storage is
  not needed for these tests).
* `world` = a fresh organization (unique id) on that backend with deterministic, strictly
  increasing timestamps and helpers to create realms, share them and write vlobs.
* The PostgreSQL fixtures (session cluster, migrated `pg_dsn`, `unique_org`, the no-leftover
  check) are those of tests/postgresql/conftest.py.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import pytest_twisted

from parsec.backend.bus import MemoryEventBus
from parsec.backend.models import Device, Organization, RealmGrant, User
from parsec.storage.memory.organization import MemoryDatastore, OrgData
from parsec.storage.memory.realm import (
    MemoryBlockStorage,
    MemoryMessageStorage,
    MemoryRealmStorage,
    MemoryVlobStorage,
)
from parsec.storage.postgresql.block import PgBlockStorage
from parsec.storage.postgresql.connection import PgConnection
from parsec.storage.postgresql.message import PgMessageStorage
from parsec.storage.postgresql.pool import PostgreSQLPool
from parsec.storage.postgresql.realm import PgRealmStorage
from parsec.storage.postgresql.vlob import PgVlobStorage
from tests.postgresql.conftest import (  # noqa: F401 (fixtures)
    no_leftovers,
    pg_cluster,
    pg_dsn,
)

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/postgresql_realm/" in item.nodeid and "[memory" not in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


# ---- backends ----------------------------------------------------------------------------------


class MemoryBackend:
    kind = "memory"

    def __init__(self) -> None:
        self.store = MemoryDatastore(MemoryEventBus())
        self.realm = MemoryRealmStorage(self.store)
        self.vlob = MemoryVlobStorage(self.store)
        self.block = MemoryBlockStorage(self.store)
        self.message = MemoryMessageStorage(self.store)

    async def add_org(self, organization_id: str) -> None:
        self.store.orgs[organization_id] = OrgData(
            Organization(organization_id, bootstrap_token="", root_verify_key=b"rvk", created_on=EPOCH)
        )

    async def add_user(self, organization_id: str, user_id: str, profile: str, devices: list[str]) -> None:
        data = self.store.get(organization_id)
        data.users[user_id] = User(user_id, profile, b"uc", b"ruc", None, EPOCH)
        for device_id in devices:
            data.devices[device_id] = Device(device_id, b"vk", b"dc", b"rdc", None, EPOCH)

    async def revoke_user(self, organization_id: str, user_id: str, revoked_on: datetime, by: str) -> None:
        data = self.store.get(organization_id)
        data.users[user_id] = attrs.evolve(
            data.users[user_id], revoked_on=revoked_on, revoked_user_certificate=b"rev", revoked_user_certifier=by
        )


class CountingPool(PostgreSQLPool):
    """Records the SQL text of every round trip sent through its connections (`PREPARE`s, sent
    once per connection and statement, included)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    async def acquire(self, *, nested_ok: bool = False) -> PgConnection:
        conn = await super().acquire(nested_ok=nested_ok)
        if not getattr(conn, "_counting", False):
            send = conn._send

            async def counting_send(sql: str, params: Any) -> Any:
                self.sent.append(sql)
                return await send(sql, params)

            conn._send = counting_send  # type: ignore[method-assign]
            conn._counting = True  # type: ignore[attr-defined]
        return conn


def statement_count(sql: str) -> int:
    """Top-level statements of one round trip (our SQL has no ';' inside literals/comments)."""
    return sql.strip().rstrip(";").count(";") + 1


class PgBackend:
    kind = "postgresql"

    def __init__(self, pool: CountingPool) -> None:
        self.pool = pool
        self.realm = PgRealmStorage(pool)
        self.vlob = PgVlobStorage(pool)
        self.block = PgBlockStorage(pool)
        self.message = PgMessageStorage(pool)

    async def add_org(self, organization_id: str) -> None:
        await self.pool.execute(
            "INSERT INTO organization (organization_id, bootstrap_token, root_verify_key, created_on,"
            " bootstrapped_on) VALUES (%s, '', 'rvk', %s, %s)",
            (organization_id, EPOCH, EPOCH),
        )

    async def add_user(self, organization_id: str, user_id: str, profile: str, devices: list[str]) -> None:
        await self.pool.execute(
            """
            WITH new_user AS (
                INSERT INTO user_ (organization_id, user_id, profile, public_key, user_certificate,
                                   redacted_user_certificate, created_on)
                VALUES (%(org)s, %(user)s, %(profile)s, 'pk', 'uc', 'ruc', %(now)s)
                RETURNING user_id
            )
            INSERT INTO device (organization_id, device_id, user_id, verify_key, device_certificate,
                                redacted_device_certificate, created_on)
            SELECT %(org)s, d, user_id, 'vk', 'dc', 'rdc', %(now)s FROM new_user, unnest(%(devices)s::text[]) AS d
            """,
            {"org": organization_id, "user": user_id, "profile": profile, "now": EPOCH, "devices": devices},
        )

    async def revoke_user(self, organization_id: str, user_id: str, revoked_on: datetime, by: str) -> None:
        await self.pool.execute(
            "UPDATE user_ SET revoked_on = %s, revoked_user_certificate = 'rev', revoked_user_certifier = %s"
            " WHERE organization_id = %s AND user_id = %s",
            (revoked_on, by, organization_id, user_id),
        )


Backend = MemoryBackend | PgBackend


def new_pool(dsn: str, max_connections: int = 8) -> CountingPool:
    return CountingPool(dsn, min_connections=1, max_connections=max_connections, max_connection_attempts=1)


@pytest.fixture(params=["memory", "postgresql"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_dsn(request: pytest.FixtureRequest, backend_kind: str) -> str | None:
    # Only the PostgreSQL runs need (and start) the cluster.
    return str(request.getfixturevalue("pg_dsn")) if backend_kind == "postgresql" else None


@pytest_twisted.async_yield_fixture
async def backend(backend_kind: str, backend_dsn: str | None) -> Any:
    if backend_dsn is None:
        yield MemoryBackend()
        return
    pool = new_pool(backend_dsn)
    await pool.start()
    try:
        yield PgBackend(pool)
    finally:
        await pool.close()


@pytest_twisted.async_yield_fixture
async def pg_backend(pg_dsn: str) -> Any:  # noqa: F811
    """PostgreSQL only, with a pool big enough for the concurrency tests."""
    pool = new_pool(pg_dsn, max_connections=24)
    await pool.start()
    try:
        yield PgBackend(pool)
    finally:
        await pool.close()


# ---- scenario helpers --------------------------------------------------------------------------

_orgs = itertools.count(1)


@attrs.define(eq=False)
class World:
    """One organization on one backend. Users are given as device ids ("alice@dev1")."""

    backend: Backend
    org: str
    _clock: Any = attrs.field(factory=lambda: itertools.count(1))

    @property
    def realm(self) -> Any:
        return self.backend.realm

    @property
    def vlob(self) -> Any:
        return self.backend.vlob

    @property
    def block(self) -> Any:
        return self.backend.block

    @property
    def message(self) -> Any:
        return self.backend.message

    def ts(self) -> datetime:
        """Strictly increasing timestamps, one second apart."""
        return EPOCH + timedelta(seconds=next(self._clock))

    async def add_user(self, device_id: str, profile: str = "STANDARD", *more_devices: str) -> str:
        user_id = device_id.split("@", 1)[0]
        await self.backend.add_user(self.org, user_id, profile, [device_id, *more_devices])
        return device_id

    async def revoke(self, user_id: str, revoked_on: datetime, by: str) -> None:
        await self.backend.revoke_user(self.org, user_id, revoked_on, by)

    def grant(
        self, realm_id: UUID, by: str, user_id: str, role: str | None, timestamp: datetime | None = None
    ) -> RealmGrant:
        return RealmGrant(
            realm_id=realm_id,
            user_id=user_id,
            role=role,
            certificate=f"cert:{realm_id}:{user_id}:{role}:{next(self._clock)}".encode(),
            granted_by=by,
            granted_on=timestamp or self.ts(),
        )

    async def create_realm(self, owner: str, realm_id: UUID | None = None) -> UUID:
        realm_id = realm_id or uuid4()
        await self.realm.create(self.org, self.grant(realm_id, owner, owner.split("@")[0], "OWNER"))
        return realm_id

    async def share(
        self,
        realm_id: UUID,
        by: str,
        user_id: str,
        role: str | None,
        *,
        timestamp: datetime | None = None,
        message: bytes | None = None,
    ) -> int | None:
        return await self.realm.update_roles(  # type: ignore[no-any-return]
            self.org, self.grant(realm_id, by, user_id, role, timestamp), message
        )

    async def create_vlob(
        self, author: str, realm_id: UUID, blob: bytes = b"v1", vlob_id: UUID | None = None, revision: int = 1
    ) -> UUID:
        vlob_id = vlob_id or uuid4()
        await self.vlob.create(self.org, author, realm_id, revision, vlob_id, self.ts(), blob)
        return vlob_id


async def make_world(backend: Backend) -> World:
    """A fresh organization (unique id): alice (ADMIN, dev1 + dev2), bob (STANDARD, dev1 +
    dev2), carol (STANDARD), zoe (OUTSIDER)."""
    org = f"RealmOrg{next(_orgs)}_{uuid4().hex[:8]}"
    await backend.add_org(org)
    world = World(backend, org)
    await world.add_user("alice@dev1", "ADMIN", "alice@dev2")
    await world.add_user("bob@dev1", "STANDARD", "bob@dev2")
    await world.add_user("carol@dev1")
    await world.add_user("zoe@dev1", "OUTSIDER")
    return world


@pytest_twisted.async_fixture
async def world(backend: Backend) -> World:
    return await make_world(backend)


@pytest_twisted.async_fixture
async def pg_world(pg_backend: PgBackend) -> World:
    return await make_world(pg_backend)
