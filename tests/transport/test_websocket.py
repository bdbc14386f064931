"""Websocket framing, dispatch and close rules (docs/protocol/transport.md §3, §6)."""

from __future__ import annotations

import msgpack
import pytest
import pytest_twisted

from parsec.api.codec import packb
from tests.orgs import bootstrap_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred
INVALID = {"status": "invalid_msg_format", "reason": "Invalid message format"}
UNKNOWN = {"status": "unknown_command", "reason": "Unknown command"}


@pytest_twisted.async_yield_fixture
async def alice(server):
    org = await bootstrap_organization(server)
    client = await org.connect("alice@dev1")
    yield client
    await client.close()


@ok
async def test_ping(alice):
    assert await alice.cmd("ping", ping="hello") == {"status": "ok", "pong": "hello"}
    # Extra keys are ignored.
    assert await alice.cmd("ping", ping="", extra=42) == {"status": "ok", "pong": ""}


@pytest.mark.parametrize(
    "msg, errors",
    [
        ({"cmd": "ping"}, {"ping": ["Missing data for required field."]}),
        ({"cmd": "ping", "ping": 42}, {"ping": ["Not a valid string."]}),
        ({"cmd": "ping", "ping": None}, {"ping": ["Field may not be null."]}),
    ],
)
@ok
async def test_bad_message(alice, msg, errors):
    alice.send(msg)
    assert await alice.recv() == {"status": "bad_message", "reason": "Invalid message.", "errors": errors}
    assert await alice.cmd("ping", ping="still alive") == {"status": "ok", "pong": "still alive"}


@pytest.mark.parametrize("cmd", ["dummy", 42, None, "invite_info", "organization_bootstrap", "user_find"])
@ok
async def test_unknown_command(alice, cmd):
    alice.send({"cmd": cmd})
    assert await alice.recv() == UNKNOWN
    alice.send({"no_cmd": "ping"})
    assert await alice.recv() == UNKNOWN
    assert await alice.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        packb([1, 2, 3]),
        packb(42),
        packb({"cmd": "ping", "ping": "x"}) + b"\x00",
        msgpack.packb({"cmd": "ping", "x": msgpack.ExtType(2, b"short")}),
        msgpack.packb({"cmd": "ping", "ping": b"x" * (1024 * 1024 + 1)}),
    ],
    ids=["empty", "bad-header", "array-root", "int-root", "trailing", "bad-uuid-ext", "bin-too-big"],
)
@ok
async def test_invalid_msg_format_closes(alice, payload):
    alice.send_raw(payload)
    assert await alice.recv() == INVALID
    code, _ = await alice.wait_closed()
    assert code == 1000


@ok
async def test_limits(alice):
    # A bin of exactly 1 MiB is accepted (as any value where the schema wants a str: bad_message).
    rep = await alice.cmd("ping", ping=b"x" * (1024 * 1024))
    assert rep["status"] == "bad_message"
    # Strings are limited (parsec.limits: msgpack_str_bytes, ping_chars), unlike the reference.
    big = "y" * (3 * 1024 * 1024)
    assert await alice.cmd("ping", ping=big) == INVALID
    await alice.wait_closed()


@ok
async def test_opaque_ext(alice):
    # Unknown ext types are opaque values, refused by the schema.
    alice.send_raw(msgpack.packb({"cmd": "ping", "ping": msgpack.ExtType(5, b"abc")}))
    assert (await alice.recv())["status"] == "bad_message"


@ok
async def test_oversized_frame_clean_close(server, alice):
    alice.send_raw(b"\x00" * (17 * 1024 * 1024))
    code, _ = await alice.wait_closed()
    # The server fails the connection with 1009 (message too big) and drops TCP while the
    # client may still be writing the frame, so the client can see 1006.
    assert code in (1009, 1006)
    assert server.service.ws_factory.connections == set()
    other = await WsClient.connect(server.port)
    assert (await other.handshake_anonymous_v1("CoolOrg"))["result"] == "ok"
    await other.close()


@ok
async def test_text_frame(alice):
    alice.send_raw(b"{}", binary=False)
    assert await alice.recv() == INVALID
    code, _ = await alice.wait_closed()
    assert code == 1000


@ok
async def test_requests_are_answered_in_order(alice):
    for i in range(20):
        alice.send({"cmd": "ping", "ping": str(i)})
    for i in range(20):
        assert await alice.recv() == {"status": "ok", "pong": str(i)}


@ok
async def test_events_listen_cancelled_by_next_request(alice):
    assert await alice.cmd("events_subscribe") == {"status": "ok"}
    assert await alice.cmd("events_listen", wait=False) == {"status": "no_events"}
    alice.send({"cmd": "events_listen", "wait": True})
    # The pending listen is abandoned without reply: the next message is the ping's reply.
    assert await alice.cmd("ping", ping="after") == {"status": "ok", "pong": "after"}


@ok
async def test_pinged_event_between_devices(server):
    org = await bootstrap_organization(server)
    await org.new_device("alice@dev1", "dev2")
    await org.new_user("alice@dev1", "bob@dev1")
    dev1 = await org.connect("alice@dev1")
    dev2 = await org.connect("alice@dev2")
    bob = await org.connect("bob@dev1")
    for client in (dev1, dev2, bob):
        assert await client.cmd("events_subscribe") == {"status": "ok"}
    dev2.send({"cmd": "events_listen", "wait": True})
    assert await dev1.cmd("ping", ping="foo") == {"status": "ok", "pong": "foo"}
    assert await dev2.recv() == {"status": "ok", "event": "pinged", "ping": "foo"}
    # Bob (same organization, other user) gets it too; the author's own device does not.
    assert await bob.cmd("events_listen", wait=False) == {"status": "ok", "event": "pinged", "ping": "foo"}
    assert await dev1.cmd("events_listen", wait=False) == {"status": "no_events"}
    # Each event's reply is framed once for all its listeners: the next one is its own.
    assert await dev1.cmd("ping", ping="bar") == {"status": "ok", "pong": "bar"}
    for client in (dev2, bob):
        assert await client.cmd("events_listen", wait=True) == {"status": "ok", "event": "pinged", "ping": "bar"}
    for client in (dev1, dev2, bob):
        await client.close()


@ok
async def test_revocation_closes_connection(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    bob = await org.connect("bob@dev1")
    assert await bob.cmd("events_subscribe") == {"status": "ok"}
    bob.send({"cmd": "events_listen", "wait": True})
    alice = await org.connect("alice@dev1")
    from tests.orgs import now

    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    assert await alice.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    code, _ = await bob.wait_closed()
    assert code == 1000
    await alice.close()


@ok
async def test_expiration_closes_authenticated_connections(server):
    from tests import httpclient

    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    rep = await httpclient.admin(server.port, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": True})
    assert rep.status == 200
    code, _ = await alice.wait_closed()
    assert code == 1000


@ok
async def test_ping_on_invited_connection(server):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    token = (await alice.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    claimer = await WsClient.connect(server.port)
    assert (await claimer.handshake_invited("CoolOrg", "DEVICE", token))["result"] == "ok"
    assert await claimer.cmd("ping", ping="i") == {"status": "ok", "pong": "i"}
    assert await claimer.cmd("user_get", user_id="alice") == UNKNOWN
    await claimer.close()
    await alice.close()
