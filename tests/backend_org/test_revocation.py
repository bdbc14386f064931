"""Revocation is final (docs/protocol/DECISIONS.md; issue: a revocation dated ahead let its user
reconnect at once and keep that connection for good; one recorded between the handshake's
lookup and the registration was missed).

* a handshake is refused for any recorded revocation, whatever its date;
* open connections of a user revoked for a future instant are closed at that instant, by a
  timer of the server's reactor (driven here by a `task.Clock`), cancelled when the
  connection goes away first;
* a revocation recorded during a handshake, after its lookup, is heard by the handshake,
  which refuses the device.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.orgs import bootstrap_organization, now
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

AHEAD = 30.0  # seconds: a revocation dated ahead, inside the ballpark
SAFETY = 20.0  # seconds: only to turn a hang into a failure, never asserted on


async def wait_for(predicate: Any, what: str) -> None:
    deadline = reactor.seconds() + SAFETY
    while not predicate():
        if reactor.seconds() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await task.deferLater(reactor, 0.02, lambda: None)


async def handshake(org: Any, device_id: str) -> dict[str, Any]:
    device = org.devices[device_id]
    client = await WsClient.connect(org.server.port)
    try:
        return await client.handshake_authenticated(
            org.organization_id, device.device_id, device.signing_key, org.root_verify_key
        )
    finally:
        if not client.proto.closed.called:
            await client.close()


def timers(clock: task.Clock) -> list[Any]:
    return [call for call in clock.getDelayedCalls() if call.active()]


async def still_open(client: WsClient) -> bool:
    return await client.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}


@ok
async def test_handshake_refused_for_a_revocation_dated_ahead(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    admin = await org.connect("alice@dev1")
    cert = org.devices["alice@dev1"].revoked_user_certificate(
        user_id="bob", timestamp=now() + timedelta(seconds=AHEAD)
    )
    assert await admin.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    # Not yet in effect, yet recorded: no new session.
    assert await handshake(org, "bob@dev1") == {
        "handshake": "result",
        "result": "revoked_device",
        "help": "Device has been revoked",
    }
    await admin.close()


@ok
async def test_open_connections_closed_at_the_revocation_instant(server):
    clock = task.Clock()
    server.app.reactor = clock  # the server-side timers only; I/O stays on the real reactor
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    await org.new_device("bob@dev1", "dev2")
    bob1 = await org.connect("bob@dev1")
    bob2 = await org.connect("bob@dev2")
    leaving = await org.connect("bob@dev1")
    other = await org.connect("alice@dev1")

    admin = await org.connect("alice@dev1")
    cert = org.devices["alice@dev1"].revoked_user_certificate(
        user_id="bob", timestamp=now() + timedelta(seconds=AHEAD)
    )
    assert await admin.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    # One timer per connection of bob (the event comes through NOTIFY on PostgreSQL).
    await wait_for(lambda: len(timers(clock)) == 3, "the revocation timers")

    # A connection that goes away first takes its timer with it.
    await leaving.close()
    await wait_for(lambda: len(timers(clock)) == 2, "the timer of the closed connection cancelled")

    clock.advance(AHEAD - 10)
    assert await still_open(bob1) and await still_open(bob2)
    clock.advance(20)
    for client in (bob1, bob2):
        code, _ = await client.wait_closed()
        assert code == 1000
    assert timers(clock) == []
    # Others are not concerned.
    assert await still_open(other)
    for client in (other, admin):
        await client.close()


@ok
async def test_revocation_in_the_past_closes_at_once(server):
    clock = task.Clock()
    server.app.reactor = clock  # never advanced: nothing may wait for it
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    bob = await org.connect("bob@dev1")
    admin = await org.connect("alice@dev1")
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    assert await admin.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    code, _ = await bob.wait_closed()
    assert code == 1000
    assert timers(clock) == []
    await admin.close()


@ok
async def test_revocation_recorded_during_the_handshake(server):
    """The revocation is recorded right after the handshake's identity lookup (which did not
    see it), its event heard before the handshake ends: the handshake, watching its
    organization's revocations since before the lookup, refuses the device."""
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    users = server.app.storage.user
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    lookup = users.get_authenticated_identity
    heard: defer.Deferred[None] = defer.Deferred()

    def on_event(event: Any) -> None:
        if event.name == "user.revoked" and not heard.called:
            heard.callback(None)

    async def lookup_then_revoke(organization_id: str, device_id: str) -> Any:
        identity = await lookup(organization_id, device_id)
        if device_id == "bob@dev1":
            assert identity.user.revoked_on is None
            await users.revoke_user(organization_id, "bob", cert, "alice@dev1", now())
            # Memory: heard already; PostgreSQL: once the LISTEN session gets the NOTIFY.
            await heard.addTimeout(SAFETY, reactor)
        return identity

    server.app.bus.connect(on_event)  # after the app's own listener: it heard it first
    users.get_authenticated_identity = lookup_then_revoke
    try:
        assert await handshake(org, "bob@dev1") == {
            "handshake": "result",
            "result": "revoked_device",
            "help": "Device has been revoked",
        }
    finally:
        del users.get_authenticated_identity
        server.app.bus.disconnect(on_event)
    assert server.app._handshaking == {}  # the watch ended with the handshake
    alice = await org.connect("alice@dev1")  # the organization's other users are let in
    assert await still_open(alice)
    await alice.close()


@pytest.mark.storage("postgresql")
@ok
async def test_authenticated_handshake_is_one_statement(server):
    """No second lookup once registered (see test_revocation_recorded_during_the_handshake):
    an authenticated handshake costs the database one statement."""
    org = await bootstrap_organization(server)
    pool = server.app.storage.pool

    def statements() -> int:
        return sum(conn.round_trips for conn in [*pool._idle, *pool._in_use])

    first = await org.connect("alice@dev1")  # the statement is PREPAREd on first use
    await first.close()
    before = statements()
    client = await org.connect("alice@dev1")
    assert await still_open(client)
    await client.close()
    assert statements() - before == 1
