"""Fixtures for the workspace commands: an organization with a few users on the running
`server` (whatever its storage), clients whose every reply is checked against the reply
schemas of `parsec.api.protocol`, and helpers to create realms, share them and check events.

Event checks never rely on timing: an expected event is awaited with `events_listen(wait)`,
and "nothing else was delivered" is proven by a ping from another device (`World.sync`):
events reach a connection in the order the server produced them, so the ping must be the
next event. Events travel asynchronously (PostgreSQL: NOTIFY, then LISTEN), so
`Client.subscribe` first waits until the server has routed every event published so far
(`World.settle`): what happened before the subscription is never delivered.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest_twisted
from twisted.internet import defer, reactor

from parsec.api import protocol
from parsec.backend.bus import BackendEvent
from tests.api.certgen import LocalDevice
from tests.orgs import Org, bootstrap_organization
from tests.support import limited_config
from tests.wsclient import WsClient


def check_reply(cmd: str, rep: dict[str, Any]) -> None:
    """Raise unless `rep` is a reply the authenticated command `cmd` may send."""
    spec = None if rep.get("status") in ("unknown_command", "invalid_msg_format") else (
        protocol.AUTHENTICATED_COMMANDS[cmd]
    )
    protocol.validate_reply(spec, rep)


SYNC_PREFIX = "sync-"
SETTLE_EVENT = "tests.settle"


def is_sync_ping(event: dict[str, Any]) -> bool:
    return event.get("event") == "pinged" and str(event.get("ping")).startswith(SYNC_PREFIX)


@attrs.define(eq=False)
class Client:
    ws: WsClient
    device: LocalDevice
    pending: list[str] = attrs.field(factory=list)
    world: World | None = None

    @property
    def device_id(self) -> str:
        return self.device.device_id

    @property
    def user_id(self) -> str:
        return self.device.user_id

    async def cmd(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.send(cmd, **fields)
        return await self.recv()

    def send(self, cmd: str, **fields: Any) -> None:
        self.pending.append(cmd)
        self.ws.send({"cmd": cmd, **fields})

    def forget(self) -> None:
        """The oldest pending request gets no reply (a cancelled events_listen)."""
        self.pending.pop(0)

    async def recv(self) -> dict[str, Any]:
        rep = await self.ws.recv()
        check_reply(self.pending.pop(0), rep)
        return rep

    async def subscribe(self) -> None:
        if self.world is not None:
            await self.world.settle()
        assert await self.cmd("events_subscribe") == {"status": "ok"}

    async def next_event(self, *, skip_sync: bool = True) -> dict[str, Any]:
        """Wait for the next event of this connection (without status), skipping the pings
        `World.sync` sent to other connections."""
        while True:
            rep = await self.cmd("events_listen", wait=True)
            assert rep["status"] == "ok", rep
            event = {k: v for k, v in rep.items() if k != "status"}
            if skip_sync and is_sync_ping(event):
                continue
            return event

    async def close(self) -> None:
        await self.ws.close()


class Timestamps:
    """Strictly increasing timestamps close to now (causality rules need an order)."""

    def __init__(self) -> None:
        self._last = datetime.now(tz=UTC) - timedelta(seconds=1)

    def __call__(self) -> datetime:
        now = datetime.now(tz=UTC)
        self._last = max(now, self._last + timedelta(milliseconds=1))
        return self._last


@attrs.define(eq=False)
class World:
    server: Any
    org: Org
    ts: Timestamps = attrs.field(factory=Timestamps)
    clients: list[Client] = attrs.field(factory=list)
    _sync_client: Client | None = None
    _sync_counter: Any = attrs.field(factory=lambda: itertools.count(1))

    @property
    def app(self) -> Any:
        return self.server.app

    async def connect(self, device_id: str, *, org: Org | None = None, **kwargs: Any) -> Client:
        org = org or self.org
        ws = await org.connect(device_id, **kwargs)
        client = Client(ws, org.devices[device_id], world=self)
        self.clients.append(client)
        return client

    async def new_user(self, device_id: str, profile: str = "STANDARD") -> LocalDevice:
        return await self.org.new_user("alice@dev1", device_id, profile=profile)

    async def create_realm(self, client: Client, realm_id: UUID | None = None) -> UUID:
        realm_id = realm_id or uuid4()
        cert = client.device.realm_role_certificate(
            realm_id=realm_id, user_id=client.user_id, role="OWNER", timestamp=self.ts()
        )
        rep = await client.cmd("realm_create", role_certificate=cert)
        assert rep == {"status": "ok"}, rep
        return realm_id

    def role_certificate(
        self, author: Client, realm_id: UUID, user_id: str, role: str | None, timestamp: datetime | None = None
    ) -> bytes:
        return author.device.realm_role_certificate(
            realm_id=realm_id, user_id=user_id, role=role, timestamp=timestamp or self.ts()
        )

    async def share(
        self,
        author: Client,
        realm_id: UUID,
        user_id: str,
        role: str | None,
        *,
        timestamp: datetime | None = None,
        message: bytes | None = None,
    ) -> dict[str, Any]:
        cert = self.role_certificate(author, realm_id, user_id, role, timestamp)
        return await author.cmd("realm_update_roles", role_certificate=cert, recipient_message=message)

    async def grant(self, author: Client, realm_id: UUID, user_id: str, role: str | None, **kwargs: Any) -> None:
        rep = await self.share(author, realm_id, user_id, role, **kwargs)
        assert rep == {"status": "ok"}, rep

    async def create_vlob(
        self, client: Client, realm_id: UUID, blob: bytes = b"v1", vlob_id: UUID | None = None
    ) -> UUID:
        vlob_id = vlob_id or uuid4()
        rep = await client.cmd(
            "vlob_create",
            realm_id=realm_id,
            encryption_revision=1,
            vlob_id=vlob_id,
            timestamp=self.ts(),
            blob=blob,
        )
        assert rep == {"status": "ok"}, rep
        return vlob_id

    async def settle(self) -> None:
        """Wait until the server has routed every event published so far: a marker event that
        no component routes, published after them, is seen by a listener of the server's bus
        (the memory bus delivers at once, the PostgreSQL bus in NOTIFY order)."""
        mark = uuid4().hex
        seen: defer.Deferred[None] = defer.Deferred()

        def listener(event: BackendEvent) -> None:
            if event.name == SETTLE_EVENT and event.data.get("mark") == mark and not seen.called:
                seen.callback(None)

        bus = self.app.bus
        bus.connect(listener)
        try:
            bus.publish(BackendEvent(SETTLE_EVENT, self.org.organization_id, {"mark": mark}))
            seen.addTimeout(10, reactor)
            await seen
        finally:
            bus.disconnect(listener)

    async def sync(self, client: Client) -> None:
        """Assert that `client` (subscribed) has no event queued, by pinging it from another
        device and checking the ping is its next event."""
        if self._sync_client is None:
            await self.new_user("syncer@dev1", profile="STANDARD")
            self._sync_client = await self.connect("syncer@dev1")
        mark = f"{SYNC_PREFIX}{next(self._sync_counter)}"
        assert await self._sync_client.cmd("ping", ping=mark) == {"status": "ok", "pong": mark}
        while True:
            event = await client.next_event(skip_sync=False)
            if event == {"event": "pinged", "ping": mark}:
                return
            # Only older sync pings (meant for other connections) may come first.
            assert is_sync_ping(event), f"unexpected event {event}"

    async def close_clients(self) -> None:
        for client in self.clients:
            await client.close()

    async def expect_events(self, client: Client, *events: dict[str, Any]) -> None:
        """`client`'s next events are exactly `events`, and nothing else is queued."""
        for expected in events:
            assert await client.next_event() == expected
        await self.sync(client)


@pytest_twisted.async_yield_fixture
async def world(server):
    org = await bootstrap_organization(server)
    world = World(server, org)
    await org.new_device("alice@dev1", "dev2")
    await world.new_user("bob@dev1")
    await org.new_device("bob@dev1", "dev2")
    await world.new_user("carol@dev1")
    await world.new_user("zoe@dev1", profile="OUTSIDER")
    yield world
    await world.close_clients()


async def world_with_limits(server_factory: Any, **limits: Any) -> World:
    """A server with some of `parsec.limits` changed (tests.support.limited_config), an
    organization (alice) and bob."""
    server = await server_factory(limited_config(**limits))
    world = World(server, await bootstrap_organization(server))
    await world.new_user("bob@dev1")
    return world


@pytest_twisted.async_fixture
async def other_org(server):
    """A second organization whose first user is also called alice."""
    return await bootstrap_organization(server, "OtherOrg")
