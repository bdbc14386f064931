"""Fixtures and helpers of the invitation tests (docs/protocol/commands.md §8, docs/protocol/invitations.md, docs/protocol/events.md).

Everything goes over real TCP on loopback. Every reply a test receives is checked
against the reply schemas of its command (`parsec.api.protocol.validate_reply`).

* `Conn`: a websocket connection (authenticated or invited) that remembers which
  commands are in flight, so each reply is validated against the right schema.
* `org` fixture: CoolOrg with alice (ADMIN, two devices), bob (STANDARD) and
  olivia (OUTSIDER), all with human handles.
* `until(predicate)`: polls server-side state with a bounded deadline; used to
  know that a peer is really blocked in the conduit before its partner acts
  (which side speaks first matters, docs/protocol/invitations.md §3.2).
* SMTP: `pki`, `ca_file`, `smtp_server_factory`, `closed_port` (the SMTP server
  is tests/mail/smtp_server.py, imported lazily: importing twisted.mail installs
  the default reactor).
"""

from __future__ import annotations

import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from parsec.api.protocol import AUTHENTICATED_COMMANDS, INVITED_COMMANDS, validate_reply
from parsec.backend.conduit import ConduitSlots
from parsec.backend.invite import InviteComponent
from tests.orgs import Org, bootstrap_organization
from tests.wsclient import ClosedError, WsClient

if TYPE_CHECKING:
    from tests.mail.smtp_server import SMTPTestServer, ThrowawayPKI

DEADLINE = 5.0

_SPECS = {"authenticated": AUTHENTICATED_COMMANDS, "invited": INVITED_COMMANDS}


class Conn:
    """A client connection whose replies are validated against their command's schemas."""

    def __init__(self, client: WsClient, kind: str) -> None:
        self.client = client
        self.kind = kind
        self.pending: deque[str] = deque()

    def send(self, cmd: str, **fields: Any) -> None:
        self.pending.append(cmd)
        self.client.send({"cmd": cmd, **fields})

    def forget(self, cmd: str) -> None:
        """`cmd` was abandoned by the server (cancelled without a reply)."""
        self.pending.remove(cmd)

    async def recv(self) -> dict[str, Any]:
        rep = await self.client.recv()
        cmd = self.pending.popleft()
        validate_reply(_SPECS[self.kind][cmd], rep)
        return rep

    async def cmd(self, cmd: str, **fields: Any) -> dict[str, Any]:
        self.send(cmd, **fields)
        return await self.recv()

    async def expect_closed_without_reply(self) -> None:
        """The server closed the connection (Close 1000) and sent no reply for what was in flight."""
        code, _ = await self.client.wait_closed()
        assert code == 1000
        assert not self.client.proto.inbox, list(self.client.proto.inbox)
        with pytest.raises(ClosedError):
            await self.client.recv()

    @property
    def closed(self) -> bool:
        return self.client.proto.closed.called

    async def close(self) -> None:
        await self.client.close()


@attrs.define
class InviteEnv:
    """A running server, a bootstrapped organization and its invitation component."""

    server: Any
    org: Org
    conns: list[Conn] = attrs.field(factory=list)

    @property
    def organization_id(self) -> str:
        return self.org.organization_id

    @property
    def component(self) -> InviteComponent:
        return self.server.app.component(InviteComponent)

    async def connect(self, device_id: str) -> Conn:
        conn = Conn(await self.org.connect(device_id), "authenticated")
        self.conns.append(conn)
        return conn

    async def claimer(self, token: UUID, invitation_type: str = "DEVICE", organization_id: str | None = None) -> Conn:
        client = await WsClient.connect(self.server.port)
        rep = await client.handshake_invited(organization_id or self.organization_id, invitation_type, token)
        assert rep == {"handshake": "result", "result": "ok"}, rep
        conn = Conn(client, "invited")
        self.conns.append(conn)
        return conn

    async def new_invitation(self, greeter: Conn, invitation_type: str = "DEVICE", **fields: Any) -> UUID:
        if invitation_type == "USER":
            fields.setdefault("claimer_email", "zack@example.com")
        rep = await greeter.cmd("invite_new", type=invitation_type, send_email=False, **fields)
        assert rep["status"] == "ok", rep
        return rep["token"]

    # ---- server-side state (memory or PostgreSQL storage) --------------------------------

    async def conduit(self, token: UUID, organization_id: str | None = None) -> ConduitSlots:
        """A copy of the invitation's conduit as stored."""
        organization_id = organization_id or self.organization_id
        storage = self.server.app.storage
        pool = getattr(storage, "pool", None)
        if pool is None:
            slots: ConduitSlots = storage.invite._entries(organization_id)[token].conduit
            return attrs.evolve(slots)
        row = await pool.fetchrow(
            "SELECT conduit_state, conduit_greeter_payload, conduit_claimer_payload FROM invitation"
            " WHERE organization_id = %s AND token = %s",
            (organization_id, token),
        )
        assert row is not None, token
        return ConduitSlots(state=row[0], greeter_payload=row[1], claimer_payload=row[2])

    async def vanish(self, token: UUID) -> None:
        """Remove the invitation from storage (cannot happen through the protocol)."""
        storage = self.server.app.storage
        pool = getattr(storage, "pool", None)
        if pool is None:
            del storage.invite._entries(self.organization_id)[token]
        else:
            await pool.execute(
                "DELETE FROM invitation WHERE organization_id = %s AND token = %s", (self.organization_id, token)
            )

    async def delete_unnotified(self, token: UUID) -> None:
        """Mark the invitation deleted as another instance would whose `invite.status_changed`
        has not reached this one yet (the storage's `delete` publishes it with the write)."""
        storage = self.server.app.storage
        pool = getattr(storage, "pool", None)
        if pool is None:
            entry = storage.invite._entries(self.organization_id)[token]
            entry.invitation = attrs.evolve(
                entry.invitation, deleted_on=self.server.app.now(), deleted_reason="CANCELLED"
            )
        else:
            await pool.execute(
                "UPDATE invitation SET deleted_on = now(), deleted_reason = 'CANCELLED'"
                " WHERE organization_id = %s AND token = %s",
                (self.organization_id, token),
            )

    def waiters(self, token: UUID, organization_id: str | None = None) -> int:
        watch = self.component._watches.get((organization_id or self.organization_id, token))
        return 0 if watch is None else len(watch.waiters)

    async def blocked(self, token: UUID, side: str, state: str, waiters: int = 1) -> None:
        """Wait until `side` has spoken in `state` and at least `waiters` exchanges are waiting."""

        async def check() -> bool:
            conduit = await self.conduit(token)
            slot = conduit.greeter_payload if side == "greeter" else conduit.claimer_payload
            return conduit.state == state and slot is not None and self.waiters(token) >= waiters

        await until(check, f"{side} blocked in {state}")

    async def close_and_wait(self, conn: Conn) -> None:
        """Close `conn` and wait until the server has noticed (its context is unregistered)."""
        count = len(self.server.app.connections(self.organization_id))
        await conn.close()
        await until(lambda: len(self.server.app.connections(self.organization_id)) < count, "close noticed")

    async def close_all(self) -> None:
        for conn in self.conns:
            await conn.close()
        # The server notices the closes asynchronously.
        await until(lambda: not self.server.app.connections(self.organization_id), "connections closed")

    async def assert_no_leak(self) -> None:
        await self.close_all()
        await until(lambda: not self.component._watches, "no conduit waiters left")
        assert self.component._watches == {}


async def until(
    predicate: Callable[[], bool | Awaitable[bool]], what: str = "condition", timeout: float = DEADLINE
) -> None:
    """Poll `predicate` (server state, a function or a coroutine function) on the reactor until
    true; fail after `timeout`."""
    deadline = reactor.seconds() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if reactor.seconds() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await task.deferLater(reactor, 0.002, lambda: None)


async def no_reply_yet(conn: Conn) -> None:
    """Nothing received so far (the command is still blocked server-side)."""
    # Let the reactor run a little so that a wrongly sent reply would have arrived.
    for _ in range(5):
        await task.deferLater(reactor, 0.002, lambda: None)
    assert not conn.client.proto.inbox, list(conn.client.proto.inbox)


@pytest_twisted.async_yield_fixture
async def org(server) -> AsyncIterator[InviteEnv]:
    organization = await bootstrap_organization(server)
    await organization.new_device("alice@dev1", "dev2", device_label="alice's 2nd machine")
    await organization.new_user("alice@dev1", "bob@dev1", human_handle=("bob@example.com", "Bob"))
    await organization.new_user(
        "alice@dev1", "olivia@dev1", profile="OUTSIDER", human_handle=("olivia@example.com", "Olivia")
    )
    env = InviteEnv(server, organization)
    yield env
    for conn in env.conns:
        if not conn.closed:
            await conn.close()


# ---------------------------------------------------------------------------------------------
# SMTP
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki() -> ThrowawayPKI:
    from tests.mail.smtp_server import make_pki

    return make_pki()


@pytest.fixture
def ca_file(pki: ThrowawayPKI, tmp_path: Path) -> str:
    path = tmp_path / "smtp-ca.pem"
    path.write_bytes(pki.ca.dumpPEM())
    return str(path)


@pytest_twisted.async_yield_fixture
async def smtp_server_factory(pki: ThrowawayPKI) -> AsyncIterator[Callable[..., defer.Deferred[SMTPTestServer]]]:
    from tests.mail.smtp_server import SMTPTestServer

    servers: list[SMTPTestServer] = []

    def start(**kwargs: Any) -> defer.Deferred[SMTPTestServer]:
        smtp_server = SMTPTestServer(reactor, pki, **kwargs)
        servers.append(smtp_server)
        return defer.Deferred.fromCoroutine(smtp_server.start())

    yield start
    problems: list[str] = []
    for smtp_server in servers:
        problems += await smtp_server.stop()
    assert not problems, problems


