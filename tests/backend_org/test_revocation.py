"""Revocation is final (docs/protocol/DECISIONS.md; issue: a revocation dated ahead let its user
reconnect at once and keep that connection for good; one recorded between the handshake's
lookup and the registration was missed).

* a handshake is refused for any recorded revocation, whatever its date;
* open connections of a user revoked for a future instant are closed at that instant, by a
  timer of the server's reactor (driven here by a `task.Clock`), cancelled when the
  connection goes away first;
* a connection re-reads the revocation once registered.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

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
async def test_revocation_between_lookup_and_registration(server):
    """The revocation is recorded right after the handshake's identity lookup, its event
    published before the connection is registered (here: not at all): the connection's own
    re-check once registered closes it."""
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    users = server.app.storage.user
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    lookup = users.get_authenticated_identity

    async def lookup_then_revoke(organization_id: str, device_id: str) -> Any:
        identity = await lookup(organization_id, device_id)
        if device_id == "bob@dev1":
            await users.revoke_user(organization_id, "bob", cert, "alice@dev1", now())
        return identity

    users.get_authenticated_identity = lookup_then_revoke
    try:
        bob = await org.connect("bob@dev1")  # the lookup predates the revocation: ok
    finally:
        del users.get_authenticated_identity
    code, _ = await bob.wait_closed()
    assert code == 1000
    assert await handshake(org, "bob@dev1") == {
        "handshake": "result",
        "result": "revoked_device",
        "help": "Device has been revoked",
    }
