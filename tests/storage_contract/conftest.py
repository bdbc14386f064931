"""The storage contract suite: written once against the interfaces of parsec.backend.storage,
run on every implementation (the `backend` fixture: "memory" and "postgresql").

* `backend`: a started `Storage` (memory: `build_memory_storage`; PostgreSQL:
  `build_postgresql_storage` on the run's shared migrated database, LISTEN included) and an
  event `Recorder` on its bus. On memory every storage call must complete without yielding to
  the reactor (what makes the memory storage atomic): the storages are wrapped to check it.
* `world`: a fresh organization (unique id) on that backend, made through the storage's own
  methods: alice (ADMIN, dev1 + dev2), bob (STANDARD, dev1 + dev2), carol (STANDARD), zoe
  (OUTSIDER); deterministic, strictly increasing timestamps; helpers to share realms and write
  vlobs; `published(call)` returns what a call returned (or raised) and the events it published.

The PostgreSQL half carries the `postgresql` marker.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from parsec.backend.bus import BackendEvent, EventBus, MemoryEventBus
from parsec.backend.conduit import InvalidStateError
from parsec.backend.models import Device, RealmGrant, User
from parsec.backend.storage import Storage, StorageError
from parsec.config import BackendConfig
from parsec.storage.memory import build_memory_storage
from parsec.storage.postgresql.events import PostgreSQLEventBus
from parsec.storage.postgresql.factory import build_postgresql_storage
from tests.support import CountingPool

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
KINDS = ("memory", "postgresql")
DEADLINE = 10.0  # seconds: only turns a lost event into a failure

_orgs = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/storage_contract/" in item.nodeid and "[postgresql" in item.nodeid:
            item.add_marker(pytest.mark.postgresql)


# ---- events ------------------------------------------------------------------------------------


class Recorder:
    """Every event of the bus, in arrival order; markers delimit the events of one call."""

    MARKER = "test.marker"

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.events: list[BackendEvent] = []
        self._waiting: dict[str, defer.Deferred[None]] = {}
        bus.connect(self._on_event)

    def _on_event(self, event: BackendEvent) -> None:
        self.events.append(event)
        if event.name == self.MARKER:
            waiter = self._waiting.pop(event["id"], None)
            if waiter is not None:
                waiter.callback(None)

    async def sync(self, organization_id: str) -> int:
        """Publish a marker and wait for it: every event committed before is then recorded
        (NOTIFYs of committed transactions arrive in commit order). Returns the index of the
        marker."""
        marker_id = uuid4().hex
        waiter: defer.Deferred[None] = defer.Deferred()
        self._waiting[marker_id] = waiter
        self.bus.publish(BackendEvent(self.MARKER, organization_id, {"id": marker_id}))
        if not waiter.called:
            waiter.addTimeout(DEADLINE, reactor)
        await waiter
        return next(
            i for i in range(len(self.events) - 1, -1, -1)
            if self.events[i].name == self.MARKER and self.events[i]["id"] == marker_id
        )

    def between(self, start: int, end: int, organization_id: str) -> list[BackendEvent]:
        return [
            e for e in self.events[start + 1 : end] if e.organization_id == organization_id and e.name != self.MARKER
        ]


# ---- backends ----------------------------------------------------------------------------------


class _NeverSuspends:
    """A memory storage whose every coroutine method must complete without yielding."""

    def __init__(self, inner: object) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            coro = attribute(*args, **kwargs)
            try:
                coro.send(None)
            except StopIteration as stop:
                return stop.value
            coro.close()
            raise AssertionError(f"{type(self._inner).__name__}.{name} suspended (yielded to the reactor)")

        return call


@attrs.define(eq=False)
class Backend:
    kind: str
    storage: Storage
    recorder: Recorder
    pool: CountingPool | None = None  # PostgreSQL: the storage's pool
    listening: PostgreSQLEventBus | None = None  # PostgreSQL: its bus


async def start_postgresql_backend(pool: CountingPool) -> Backend:
    """The PostgreSQL storage on `pool` (started: schema checked) and its bus (listening), as
    the service tree starts them; `stop_backend` them."""
    storage, bus, _ = build_postgresql_storage(BackendConfig(db_url=pool.dsn), reactor=reactor, pool=pool)
    await storage.start()
    await bus.start()
    return Backend("postgresql", storage, Recorder(bus), pool, bus)


async def stop_backend(backend: Backend) -> None:
    if backend.listening is not None:
        await backend.listening.stop()
    await backend.storage.stop()


def memory_backend() -> Backend:
    """The memory storage, every call of which must complete without yielding."""
    bus = MemoryEventBus()
    storage = build_memory_storage(bus)
    for domain in ("organization", "user", "invite", "realm", "vlob", "block", "message", "pki"):
        setattr(storage, domain, _NeverSuspends(getattr(storage, domain)))
    return Backend("memory", storage, Recorder(bus))


@contextlib.asynccontextmanager
async def running_postgresql_backend(pool: CountingPool) -> AsyncIterator[Backend]:
    """`start_postgresql_backend(pool)`, stopped on the way out."""
    backend = await start_postgresql_backend(pool)
    try:
        yield backend
    finally:
        await stop_backend(backend)


@pytest.fixture(params=KINDS)
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend_dsn(request: pytest.FixtureRequest, backend_kind: str) -> str | None:
    # Only the PostgreSQL runs need (and start) the cluster; outside the reactor's greenlet.
    return str(request.getfixturevalue("pg_dsn")) if backend_kind == "postgresql" else None


@pytest_twisted.async_yield_fixture
async def backend(backend_dsn: str | None) -> Any:
    if backend_dsn is None:
        yield memory_backend()
        return
    async with running_postgresql_backend(new_pool(backend_dsn)) as pg_backend:
        yield pg_backend


def new_pool(dsn: str, max_connections: int = 8) -> CountingPool:
    return CountingPool(dsn, min_connections=1, max_connections=max_connections, max_connection_attempts=1)


# ---- records -----------------------------------------------------------------------------------


def make_user(
    user_id: str,
    profile: str = "STANDARD",
    *,
    email: str | None = None,
    certifier: str | None = "alice@dev1",
    created_on: datetime = EPOCH,
) -> tuple[User, Device]:
    user = User(
        user_id=user_id,
        profile=profile,
        user_certificate=f"uc {user_id}".encode(),
        redacted_user_certificate=f"ruc {user_id}".encode(),
        user_certifier=certifier,
        created_on=created_on,
        human_handle=(email, email.split("@")[0].title()) if email else None,
        public_key=b"pk",
    )
    return user, make_device(f"{user_id}@dev1", certifier=certifier, created_on=created_on)


def make_device(device_id: str, *, certifier: str | None = "alice@dev1", created_on: datetime = EPOCH) -> Device:
    return Device(
        device_id=device_id,
        verify_key=b"vk",
        device_certificate=f"dc {device_id}".encode(),
        redacted_device_certificate=f"rdc {device_id}".encode(),
        device_certifier=certifier,
        created_on=created_on,
    )


# ---- scenario helpers --------------------------------------------------------------------------


@attrs.define(eq=False)
class World:
    """One organization on one backend. Users are given as device ids ("alice@dev1")."""

    backend: Backend
    org: str
    _clock: Any = attrs.field(factory=lambda: itertools.count(1))

    @property
    def storage(self) -> Storage:
        return self.backend.storage

    @property
    def organization(self) -> Any:
        return self.storage.organization

    @property
    def user(self) -> Any:
        return self.storage.user

    @property
    def invite(self) -> Any:
        return self.storage.invite

    @property
    def realm(self) -> Any:
        return self.storage.realm

    @property
    def vlob(self) -> Any:
        return self.storage.vlob

    @property
    def block(self) -> Any:
        return self.storage.block

    @property
    def message(self) -> Any:
        return self.storage.message

    @property
    def pki(self) -> Any:
        return self.storage.pki

    def ts(self) -> datetime:
        """Strictly increasing timestamps, one second apart."""
        return EPOCH + timedelta(seconds=next(self._clock))

    async def published(
        self, call: Awaitable[Any] | Callable[[], Awaitable[Any]]
    ) -> tuple[Any, list[tuple[str, dict[str, Any]]]]:
        """(what `call` returned, or the rule violation it raised; the (name, data) of the events
        of this organization it published, in order)."""
        recorder = self.backend.recorder
        start = await recorder.sync(self.org)
        try:
            result: Any = await (call() if callable(call) else call)
        except (StorageError, InvalidStateError) as exc:
            result = exc
        end = await recorder.sync(self.org)
        return result, [(event.name, event.data) for event in recorder.between(start, end, self.org)]

    async def add_user(self, device_id: str, profile: str = "STANDARD", *more_devices: str) -> str:
        user_id = device_id.split("@", 1)[0]
        user, device = make_user(user_id, profile)
        device = attrs.evolve(device, device_id=device_id)
        await self.user.create_user(self.org, user, device, EPOCH)
        for other in more_devices:
            await self.user.create_device(self.org, make_device(other))
        return device_id

    async def revoke(self, user_id: str, revoked_on: datetime, by: str) -> None:
        await self.user.revoke_user(self.org, user_id, b"rev", by, revoked_on)

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
        index: int | None = await self.realm.update_roles(
            self.org, self.grant(realm_id, by, user_id, role, timestamp), message
        )
        return index

    async def create_vlob(
        self, author: str, realm_id: UUID, blob: bytes = b"v1", vlob_id: UUID | None = None, revision: int = 1
    ) -> UUID:
        vlob_id = vlob_id or uuid4()
        await self.vlob.create(self.org, author, realm_id, revision, vlob_id, self.ts(), blob)
        return vlob_id


async def new_organization(backend: Backend, prefix: str = "Org") -> str:
    """A bootstrapped organization whose first user is alice@dev1 (ADMIN, certified by the root)."""
    org = f"{prefix}{next(_orgs)}_{uuid4().hex[:8]}"
    await backend.storage.organization.create(org, "token", None, True, EPOCH)
    alice, alice_dev1 = make_user("alice", "ADMIN", certifier=None)
    await backend.storage.organization.bootstrap(org, "token", b"rvk", alice, alice_dev1, EPOCH)
    return org


async def make_world(backend: Backend) -> World:
    """A fresh organization: alice (ADMIN, dev1 + dev2), bob (STANDARD, dev1 + dev2), carol
    (STANDARD), zoe (OUTSIDER)."""
    world = World(backend, await new_organization(backend, "RealmOrg"))
    await world.user.create_device(world.org, make_device("alice@dev2"))
    await world.add_user("bob@dev1", "STANDARD", "bob@dev2")
    await world.add_user("carol@dev1")
    await world.add_user("zoe@dev1", "OUTSIDER")
    return world


@pytest_twisted.async_fixture
async def world(backend: Backend) -> World:
    return await make_world(backend)
