"""Hostile clients at the transport (issue: every resource bounded), on memory and PostgreSQL.

Each test plays one attack and asserts the bound of parsec.limits on the outcome: the reply
status or close code, the connection count, the bytes or requests queued on the server; the
autouse `logged_failures` fixture fails any test whose server logged a failure or CRITICAL.
No test measures time: benchmarks/hostile.py prints the costs.
"""

from __future__ import annotations

import base64
import os
import zlib
from typing import Any

import attrs
import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from parsec.api.codec import packb
from parsec.limits import DEFAULT as LIMITS
from parsec.limits import Limits
from tests import httpclient
from tests.api.certgen import LocalDevice, new_user_certificates
from tests.orgs import bootstrap_organization, create_organization, now
from tests.support import limited_config as config
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred
TIMEOUT = 10.0


async def until(predicate: Any, timeout: float = TIMEOUT) -> None:
    """Let the reactor run until `predicate()` holds (an outcome, not a duration)."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        assert reactor.seconds() < deadline, "condition never reached"
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d


def server_protocols(server: Any) -> list[Any]:
    return list(server.service.ws_factory.connections)


class _Raw(protocol.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


async def raw_connect(port: int) -> _Raw:
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    return await endpoint.connect(protocol.Factory.forProtocol(_Raw))


async def raw_closed(proto: _Raw) -> bytes:
    lost = proto.lost
    if not lost.called:
        lost.addTimeout(TIMEOUT, reactor)
        await lost
    return proto.data


def upgrade_request(extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def assert_complete_answer(raw: bytes, status: int) -> None:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and body == b"", raw
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 %d " % status), raw
    headers = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip() for line in lines[1:]}
    assert headers[b"content-length"] == b"0", raw
    assert headers[b"connection"] == b"close", raw
    assert headers[b"date"], raw


# ---- 1. handshake amplification ----------------------------------------------------------


@ok
async def test_handshake_answer_over_the_limit_is_closed(server):
    # A few MiB of nested empty lists: refused by the frame limit before any decoding.
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.send_raw(packb({"handshake": "answer", "type": [[]] * (1024 * 1024)}))
    code, _ = await client.wait_closed()
    assert code in (1009, 1006)
    await until(lambda: not server_protocols(server))
    # The limit is the table's: just under it is decoded (and refused as an answer).
    client = await WsClient.connect(server.port)
    await client.challenge()
    answer = packb({"handshake": "answer", "client_api_version": [2, 7], "type": "x" * 1000})
    padding = LIMITS.handshake_bytes - len(answer) - 8
    client.send_raw(packb({"handshake": "answer", "client_api_version": [2, 7], "type": "x" * 1000, "p": b"p" * padding}))
    rep = await client.recv()
    assert rep["result"] == "bad_protocol"
    await client.wait_closed()


@ok
async def test_handshake_help_never_echoes_the_client(server):
    for value in ("X" * 3000, ["y" * 100] * 20, {"k" * 50: "v" * 2000}):
        client = await WsClient.connect(server.port)
        await client.challenge()
        client.send({"handshake": "answer", "client_api_version": [2, 7], "type": value, "organization_id": "Org"})
        rep = await client.recv()
        assert rep["result"] == "bad_protocol"
        assert len(rep["help"]) <= LIMITS.handshake_help_chars
        assert "XXX" not in rep["help"] and "yyy" not in rep["help"] and "vvv" not in rep["help"]
        await client.wait_closed()


@ok
async def test_handshake_deadline(server_factory):
    server = await server_factory(config(handshake_timeout=0.5))
    client = await WsClient.connect(server.port)
    await client.challenge()
    # Never answer: the server closes with 1008 (policy violation).
    code, _ = await client.wait_closed()
    assert code == 1008
    await until(lambda: not server_protocols(server))
    # An honest client is not affected once its handshake is done.
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.7, d.callback, None)
    await d
    assert await alice.cmd("ping", ping="still") == {"status": "ok", "pong": "still"}
    await alice.close()


@ok
async def test_upgrade_that_never_completes_is_answered(server_factory):
    server = await server_factory(config(http_request_timeout=0.5))
    conn = await raw_connect(server.port)
    conn.transport.write(b"GET /ws HTTP/1.1\r\nHost: x\r\n")  # and nothing more
    assert_complete_answer(await raw_closed(conn), 408)


# ---- 2. decompression bomb on /anonymous/<org> -------------------------------------------


def _bomb() -> bytes:
    """~1 KiB of zlib inflating to 1 MiB of msgpack."""
    inner = packb({"type": "user_certificate", "pad": [[]] * 1000}) + b"\x90" * (1024 * 1024)
    return zlib.compress(inner, 9)


@ok
async def test_bootstrap_bomb_on_bootstrapped_organization(server):
    org = await bootstrap_organization(server)
    attacker = SigningKey.generate()
    bomb = _bomb()
    assert len(bomb) < 2048
    signed = bytes(attacker.sign(bomb))
    rep = await httpclient.anonymous(
        server.port,
        org.organization_id,
        {
            "cmd": "organization_bootstrap",
            "bootstrap_token": "whatever",
            "root_verify_key": bytes(attacker.verify_key),
            "user_certificate": signed,
            "device_certificate": signed,
            "redacted_user_certificate": signed,
            "redacted_device_certificate": signed,
        },
    )
    # Refused on the organization's state, before any certificate is looked at.
    assert (rep.status, rep.msgpack()) == (200, {"status": "already_bootstrapped"})


@ok
async def test_bootstrap_bomb_wrong_token_and_capped_inflation(server):
    token = await create_organization(server, "BombOrg")
    attacker = SigningKey.generate()
    signed = bytes(attacker.sign(_bomb()))
    request = {
        "cmd": "organization_bootstrap",
        "root_verify_key": bytes(attacker.verify_key),
        "user_certificate": signed,
        "device_certificate": signed,
        "redacted_user_certificate": signed,
        "redacted_device_certificate": signed,
    }
    rep = await httpclient.anonymous(server.port, "BombOrg", {**request, "bootstrap_token": "wrong"})
    assert rep.msgpack() == {"status": "not_found"}
    # With the right token the certificate is decoded, but inflation stops at the limit.
    rep = await httpclient.anonymous(server.port, "BombOrg", {**request, "bootstrap_token": token})
    body = rep.msgpack()
    assert body["status"] == "invalid_certification"
    assert f"Decompressed data exceeds {LIMITS.decompressed_bytes} bytes" in body["reason"]
    # The organization is still free for its owner.
    alice = LocalDevice.generate("alice@dev1", profile="ADMIN")
    root = SigningKey.generate()
    blobs = new_user_certificates(root, None, alice, timestamp=now())
    rep = await httpclient.anonymous(
        server.port,
        "BombOrg",
        {"cmd": "organization_bootstrap", "bootstrap_token": token, "root_verify_key": bytes(root.verify_key), **blobs.as_request()},
    )
    assert rep.msgpack() == {"status": "ok"}


# ---- 3. connections: caps, deadline ------------------------------------------------------


@ok
async def test_connection_caps(server_factory):
    server = await server_factory(config(max_connections=6, max_connections_per_address=4))
    held = [await raw_connect(server.port) for _ in range(4)]
    await until(lambda: len(server.service.site.listener.protocols) == 4)
    # A fifth from the same address: 429, complete, closed at once.
    extra = await raw_connect(server.port)
    assert_complete_answer(await raw_closed(extra), 429)
    for conn in held:
        conn.transport.loseConnection()
        await raw_closed(conn)
    await until(lambda: not server.service.site.listener.protocols)
    assert (await httpclient.request(server.port, "GET", "/")).status == 200


@ok
async def test_total_connection_cap(server_factory):
    server = await server_factory(config(max_connections=3))
    held = [await raw_connect(server.port) for _ in range(3)]
    await until(lambda: len(server.service.site.listener.protocols) == 3)
    extra = await raw_connect(server.port)
    assert_complete_answer(await raw_closed(extra), 503)
    for conn in held:
        conn.transport.loseConnection()
        await raw_closed(conn)
    await until(lambda: not server.service.site.listener.protocols)
    assert (await httpclient.request(server.port, "GET", "/")).status == 200


async def proxied_upgrade(port: int, forwarded: bytes) -> _Raw:
    """A websocket upgrade as the trusted proxy sends it, for the client `forwarded`."""
    conn = await raw_connect(port)
    conn.transport.write(upgrade_request(b"X-Forwarded-For: " + forwarded + b"\r\n"))
    await until(lambda: b"\r\n\r\n" in conn.data or conn.lost.called)
    return conn


@ok
async def test_per_address_cap_behind_trusted_proxy(server_factory):
    base = config(max_connections_per_address=2)
    server = await server_factory(attrs.evolve(base, trusted_proxies=("127.0.0.0/8",)))
    listener = server.service.site.listener

    async def upgrade(forwarded: bytes) -> _Raw:
        return await proxied_upgrade(server.port, forwarded)

    first = [await upgrade(b"203.0.113.7"), await upgrade(b"198.51.100.1, 203.0.113.7")]
    assert all(c.data.startswith(b"HTTP/1.1 101") for c in first)
    assert listener.connections_from("203.0.113.7") == 2
    refused = await upgrade(b"203.0.113.7")
    assert_complete_answer(await raw_closed(refused), 429)
    other = await upgrade(b"203.0.113.8")
    assert other.data.startswith(b"HTTP/1.1 101")
    # Garbage in the header: nobody to count, the proxy's own address is not capped.
    garbage = await upgrade(b"not-an-address")
    assert garbage.data.startswith(b"HTTP/1.1 101")
    for conn in [*first, other, garbage]:
        conn.transport.abortConnection()
        await raw_closed(conn)
    await until(lambda: listener.connections_from("203.0.113.7") == 0)


@ok
async def test_forwarded_for_ignored_from_untrusted_peer(server_factory):
    server = await server_factory(config(max_connections_per_address=50))
    conn = await raw_connect(server.port)
    conn.transport.write(upgrade_request(b"X-Forwarded-For: 203.0.113.9\r\n"))
    await until(lambda: b"\r\n\r\n" in conn.data)
    listener = server.service.site.listener
    assert listener.connections_from("203.0.113.9") == 0
    assert listener.connections_from("127.0.0.1") == 1
    conn.transport.abortConnection()
    await raw_closed(conn)


# ---- 4. replies over the frame limit -----------------------------------------------------


@ok
async def test_reply_over_the_message_limit(server_factory):
    server = await server_factory(config(ws_message_bytes=64 * 1024))
    from tests.backend_realm.conftest import World

    org = await bootstrap_organization(server)
    world = World(server, org)
    await world.new_user("bob@dev1")
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm = await world.create_realm(alice)
    for role in ("READER", "CONTRIBUTOR", "READER", "MANAGER"):
        await world.grant(alice, realm, "bob", role, message=os.urandom(30 * 1024))
    rep = await bob.cmd("message_get", offset=0)
    assert rep == {"status": "bad_message", "reason": "Reply too large"}
    # The connection goes on, and what fits is still served.
    assert (await bob.cmd("message_get", offset=3))["status"] == "ok"
    assert await bob.cmd("ping", ping="after") == {"status": "ok", "pong": "after"}


# ---- 5. back-pressure --------------------------------------------------------------------


@ok
async def test_pipeline_is_bounded_while_a_request_waits(server):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    token = rep["token"]
    # A long-poll that does not look at the socket (docs/protocol/transport.md §6.1)...
    alice.send({"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": bytes(32)})
    # ... then 24 requests of ~1 MiB each: the server must stop reading.
    big = {"cmd": "ping", "ping": "p", "pad": b"\x00" * (1024 * 1024 - 64)}
    for _ in range(24):
        alice.send(big)
    (proto,) = [p for p in server_protocols(server) if p._ctx is not None]
    await until(lambda: proto._reading_paused)
    requests, queued = proto.queued_requests
    assert queued <= LIMITS.pipeline_bytes + LIMITS.msgpack_bin_bytes + 64 * 1024
    assert requests <= 2
    # The claimer arrives: the wait ends, every request is answered, in order.
    claimer = await WsClient.connect(server.port)
    assert (await claimer.handshake_invited(org.organization_id, "DEVICE", token))["result"] == "ok"
    claimer.send({"cmd": "invite_1_claimer_wait_peer", "claimer_public_key": bytes(32)})
    assert (await alice.recv())["status"] == "ok"
    for _ in range(24):
        assert await alice.recv() == {"status": "ok", "pong": "p"}
    assert not proto._reading_paused
    await claimer.close()
    await alice.close()


@ok
async def test_peer_that_does_not_read_stops_the_processing(server):
    from tests.backend_realm.conftest import World

    org = await bootstrap_organization(server)
    world = World(server, org)
    alice = await world.connect("alice@dev1")
    realm = await world.create_realm(alice)
    block_id = os.urandom(16)
    from uuid import UUID

    block = os.urandom(1024 * 1024 - 1024)
    rep = await alice.cmd("block_create", block_id=UUID(bytes=block_id), realm_id=realm, block=block)
    assert rep == {"status": "ok"}, rep
    ws = alice.ws
    (proto,) = [p for p in server_protocols(server) if p._ctx is not None]
    sent_before = proto.trafficStats.outgoingWebSocketMessages
    ws.proto.transport.pauseProducing()  # the client stops reading
    count = 200
    for _ in range(count):
        ws.send({"cmd": "block_read", "block_id": UUID(bytes=block_id)})
    await until(lambda: proto._output_blocked and proto._reading_paused and not proto._running)
    replied = proto.trafficStats.outgoingWebSocketMessages - sent_before
    requests, queued = proto.queued_requests
    # Replies stop once the kernel buffers and the 64 KiB write buffer are full.
    assert replied < count // 4, replied
    assert queued <= LIMITS.pipeline_bytes + 64 * 1024
    ws.proto.transport.resumeProducing()
    for _ in range(count):
        rep = await ws.recv()
        assert rep["status"] == "ok" and rep["block"] == block
    assert await alice.cmd("ping", ping="done") == {"status": "ok", "pong": "done"}


@ok
async def test_cancellable_long_poll_still_cancelled_by_a_new_message(server):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    assert (await alice.cmd("events_subscribe"))["status"] == "ok"
    alice.send({"cmd": "events_listen", "wait": True})
    assert await alice.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}
    await alice.close()


# ---- msgpack limits on the wire ----------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"\x82\xa3cmd\xa4ping\xa4ping" + b"\x91" * 40 + b"\xc0",  # too deep
        b"\x82\xa3cmd\xa4ping\xa4ping\xdb" + (LIMITS.msgpack_str_bytes + 1).to_bytes(4, "big") + b"a" * (LIMITS.msgpack_str_bytes + 1),
        b"\x82\xa3cmd\xa4ping\xa4ping\xdd" + (LIMITS.msgpack_array_len + 1).to_bytes(4, "big") + b"\xc0" * (LIMITS.msgpack_array_len + 1),
        b"\x82\xa3cmd\xa4ping\xa4ping\xdc\xff\xff" + (b"\xdc\xff\xff" + b"\x90" * 65535) * 2,  # too many values
    ],
    ids=["depth", "str", "array", "values"],
)
@ok
async def test_msgpack_limits(server, payload):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    alice.send_raw(payload)
    assert await alice.recv() == {"status": "invalid_msg_format", "reason": "Invalid message format"}
    code, _ = await alice.wait_closed()
    assert code == 1000


@ok
async def test_ping_length(server):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    limit = LIMITS.ping_chars
    assert await alice.cmd("ping", ping="p" * limit) == {"status": "ok", "pong": "p" * limit}
    rep = await alice.cmd("ping", ping="p" * (limit + 1))
    assert rep["status"] == "bad_message" and "ping" in rep["errors"]
    await alice.close()


def test_limits_are_one_table():
    from parsec import limits

    assert [f.name for f in attrs.fields(Limits)] == [limit.name for limit in limits.TABLE]
    for limit in limits.TABLE:
        assert getattr(limits.DEFAULT, limit.name) == limit.default
        if limit.option is not None:
            assert limit.env == "PARSEC_" + limit.option[2:].replace("-", "_").upper()


def test_readme_shows_the_table():
    from pathlib import Path

    from parsec import limits

    readme = (Path(__file__).parents[2] / "README.rst").read_text(encoding="utf-8")
    assert limits.rst_table() in readme, "README.rst: paste parsec.limits.rst_table() in the Limits section"


# ---- a burst of new connections ----------------------------------------------------------


def test_new_connections_start_a_few_per_turn():
    from twisted.internet.task import Clock

    from parsec.web.listener import Listener

    class Guard:
        gone = False
        started = False

        def start(self) -> None:
            self.started = True

    clock = Clock()
    listener = Listener(attrs.evolve(LIMITS, connections_per_turn=2), (), clock)
    guards = [Guard() for _ in range(5)]
    immediate = [listener.may_start(g) for g in guards]  # type: ignore[arg-type]
    assert immediate == [True, True, False, False, False]
    assert listener.waiting == 3
    guards[3].gone = True  # closed while waiting: skipped
    clock.advance(0)
    assert [g.started for g in guards] == [False, False, True, False, True]
    assert listener.waiting == 0
    clock.advance(0)
    assert not clock.getDelayedCalls()


@ok
async def test_burst_of_connections_is_served(server_factory):
    server = await server_factory(config(connections_per_turn=1))
    replies = await defer.gatherResults(
        [defer.ensureDeferred(httpclient.request(server.port, "GET", "/")) for _ in range(30)]
    )
    assert [rep.status for rep in replies] == [200] * 30
    assert server.service.site.listener.waiting == 0


# ---- keep-alive (Autobahn auto-ping) -------------------------------------------------------


@ok
async def test_keepalive_pings_and_cuts_a_silent_peer(server_factory):
    from tests.fuzz.wsraw import OP_BINARY, OP_PING, RawWs

    server = await server_factory(config(ws_keepalive_interval=0.2, ws_keepalive_timeout=0.4))
    raw = await RawWs.connect(server.port)
    first = await raw.next_frame()
    assert first is not None and first.opcode == OP_BINARY  # the challenge
    ping = await raw.next_frame()
    assert ping is not None and ping.opcode == OP_PING
    # No pong: the server drops the connection once the timeout has passed.
    assert await raw.wait_lost()
    await until(lambda: not server_protocols(server))


@ok
async def test_keepalive_without_timeout_never_cuts(server_factory):
    server = await server_factory(config(ws_keepalive_interval=0.2, ws_keepalive_timeout=0))
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    alice.proto.transport.pauseProducing()  # a pooled client connection nobody reads
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(1.0, d.callback, None)
    await d
    alice.proto.transport.resumeProducing()
    assert await alice.cmd("ping", ping="still") == {"status": "ok", "pong": "still"}
    await alice.close()


# ---- found by the audit: fragments, control-frame floods, unfinished messages -------------


def _masked(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """A client frame with a zero masking key (the payload goes as it is), under 126 bytes."""
    assert len(payload) < 126
    return bytes(((0x80 if fin else 0) | opcode, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload


def _in_pieces(message: bytes, pieces: int) -> bytes:
    """`message` as one binary websocket message in `pieces` frames (the last one the rest)."""
    assert len(message) >= pieces
    out = bytearray()
    for index in range(pieces - 1):
        out += _masked(0x2 if index == 0 else 0x0, message[index : index + 1], fin=False)
    rest = message[pieces - 1 :]
    head = bytes((0x80 | (0x2 if pieces == 1 else 0x0),))
    if len(rest) < 126:
        head += bytes((0x80 | len(rest),))
    elif len(rest) < 65536:
        head += bytes((0x80 | 126,)) + len(rest).to_bytes(2, "big")
    else:
        head += bytes((0x80 | 127,)) + len(rest).to_bytes(8, "big")
    out += head + b"\x00\x00\x00\x00" + rest
    return bytes(out)


@ok
async def test_message_in_too_many_frames_is_refused(server):
    from parsec import limits as limits_module

    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    limit = LIMITS.ws_message_frames
    message = packb({"cmd": "ping", "ping": "frames", "pad": b"\x00" * (2 * limit)})
    # At the limit: reassembled and answered.
    alice.proto.transport.write(_in_pieces(message, limit))
    assert await alice.recv() == {"status": "ok", "pong": "frames"}
    # One piece more: refused before the message is complete (each piece costs memory).
    hits = limits_module.hits["ws_message_frames"]
    alice.proto.transport.write(_in_pieces(message, limit + 1))
    code, _ = await alice.wait_closed()
    assert code in (1009, 1006)
    assert limits_module.hits["ws_message_frames"] == hits + 1
    await until(lambda: not server_protocols(server))
    # Before the handshake too (the limit is on pieces, whatever the message's size).
    from tests.fuzz.wsraw import RawWs

    raw = await RawWs.connect(server.port)
    assert await raw.next_frame() is not None  # the challenge
    raw.write(_in_pieces(b"\x00" * (limit + 1), limit + 1))
    assert await raw.wait_lost()
    assert limits_module.hits["ws_message_frames"] == hits + 2


@ok
async def test_tiny_frames_are_parsed_a_few_per_turn(server):
    from parsec import limits as limits_module

    org = await bootstrap_organization(server)
    flooder = await org.connect("alice@dev1")
    other = await org.connect("alice@dev1")
    hits = limits_module.hits["ws_frames_per_turn"]
    # 20,000 empty pings in one write, then a request: Autobahn copies the rest of its buffer
    # for each frame, so the server parses a few per turn and lets the others through.
    count = 20_000
    flooder.proto.transport.write(_masked(0x9) * count + _masked(0x2, packb({"cmd": "ping", "ping": "flood"})))
    other.send({"cmd": "ping", "ping": "other"})
    assert await other.recv() == {"status": "ok", "pong": "other"}
    # The other connection was answered while the flood was still being parsed.
    assert any(p._unparsed for p in server_protocols(server))
    assert not flooder.proto.inbox
    assert await flooder.recv() == {"status": "ok", "pong": "flood"}
    # Two steps (header, empty payload) per ping.
    assert limits_module.hits["ws_frames_per_turn"] - hits >= 2 * count // LIMITS.ws_frames_per_turn - 10
    await flooder.close()
    await other.close()


@ok
async def test_unauthenticated_message_limit(server):
    from parsec import limits as limits_module

    org = await bootstrap_organization(server)
    limit = LIMITS.unauthenticated_message_bytes
    assert limit < LIMITS.ws_message_bytes

    # Anonymous: under the limit, answered; over it, closed before the message is held.
    anonymous = await WsClient.connect(server.port)
    assert (await anonymous.handshake_anonymous_v1(org.organization_id))["result"] == "ok"
    half = (limit - 1024) // 2  # two bin values: each stays under msgpack_bin_bytes
    under = packb({"cmd": "ping", "ping": "anonymous", "a": b"\x00" * half, "b": b"\x00" * half})
    assert limit - 1024 <= len(under) <= limit
    anonymous.send_raw(under)
    assert await anonymous.recv() == {"status": "ok", "pong": "anonymous"}
    hits = limits_module.hits["unauthenticated_message_bytes"]
    anonymous.send_raw(b"\x00" * (limit + 1))
    code, _ = await anonymous.wait_closed()
    assert code in (1009, 1006)
    assert limits_module.hits["unauthenticated_message_bytes"] == hits + 1
    # Invited: the same limit.
    alice = await org.connect("alice@dev1")
    token = (await alice.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    invited = await WsClient.connect(server.port)
    assert (await invited.handshake_invited(org.organization_id, "DEVICE", token))["result"] == "ok"
    invited.send_raw(b"\x00" * (limit + 1))
    code, _ = await invited.wait_closed()
    assert code in (1009, 1006)
    assert limits_module.hits["unauthenticated_message_bytes"] == hits + 2
    # Authenticated: the full message limit.
    big = packb({"cmd": "ping", "ping": "big", "a": b"\x00" * (limit - 64), "b": b"\x00" * (limit - 64)})
    assert len(big) > limit + 1024
    alice.send_raw(big)
    assert await alice.recv() == {"status": "ok", "pong": "big"}
    await alice.close()


# ---- over our own TLS: a handshake never completed, a request never finished ------------------


@ok
async def test_tls_peer_that_stalls_is_closed_after_the_request_timeout(server_factory, tmp_path):
    from twisted.internet.endpoints import SSL4ClientEndpoint

    from parsec.config import ListenConfig
    from tests.tlsutil import client_options, make_self_signed

    key, cert = make_self_signed(tmp_path)
    listen = ListenConfig(host="127.0.0.1", port=0, ssl_keyfile=str(key), ssl_certfile=str(cert))
    server = await server_factory(config(http_request_timeout=0.5), listen=listen)
    listener = server.service.site.listener
    # No ClientHello at all, and half a ClientHello: no answer can be encrypted, the
    # connection is closed.
    silent = await raw_connect(server.port)
    partial = await raw_connect(server.port)
    partial.transport.write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert await raw_closed(silent) == b""
    assert await raw_closed(partial) == b""
    # TLS done, half a request, then the peer reads nothing more (it never answers our
    # close_notify): it gets its 408 and the server lets the connection go.
    endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", server.port, client_options(cert))
    stalled = await endpoint.connect(protocol.Factory.forProtocol(_Raw))
    stalled.transport.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
    await until(lambda: any(guard.access.bytes_in for guard in listener.protocols))
    stalled.transport.pauseProducing()
    await until(lambda: not listener.protocols)
    stalled.transport.resumeProducing()
    assert (await raw_closed(stalled)).startswith(b"HTTP/1.1 408 ")


def _binary_head(length: int) -> bytes:
    """The header of one final binary client frame of `length` bytes (zero masking key)."""
    if length < 126:
        return bytes((0x82, 0x80 | length)) + b"\x00\x00\x00\x00"
    if length < 65536:
        return bytes((0x82, 0x80 | 126)) + length.to_bytes(2, "big") + b"\x00\x00\x00\x00"
    return bytes((0x82, 0x80 | 127)) + length.to_bytes(8, "big") + b"\x00\x00\x00\x00"


@ok
async def test_unfinished_unauthenticated_messages_share_one_budget(server_factory):
    from parsec import limits as limits_module

    held = 60 * 1024
    # Room for three held and the rest of one, not for a fourth.
    server = await server_factory(config(unauthenticated_pending_bytes=3 * held + 50 * 1024))
    factory = server.service.ws_factory
    org = await bootstrap_organization(server)
    message = packb({"cmd": "ping", "ping": "late", "pad": b"\x00" * (100 * 1024)})
    # Three anonymous connections each hold 60 KiB of a message they do not finish.
    holders = []
    for _ in range(3):
        client = await WsClient.connect(server.port)
        assert (await client.handshake_anonymous_v1(org.organization_id))["result"] == "ok"
        client.proto.transport.write(_binary_head(len(message)) + message[:held])
        holders.append(client)
    await until(lambda: factory.unauthenticated_pending == 3 * held)
    # A fourth goes over the budget: closed, the others kept.
    hits = limits_module.hits["unauthenticated_pending_bytes"]
    fourth = await WsClient.connect(server.port)
    assert (await fourth.handshake_anonymous_v1(org.organization_id))["result"] == "ok"
    fourth.proto.transport.write(_binary_head(len(message)) + message[:held])
    code, _ = await fourth.wait_closed()
    assert code in (1013, 1006)
    assert limits_module.hits["unauthenticated_pending_bytes"] == hits + 1
    assert factory.unauthenticated_pending == 3 * held
    # Authenticated connections do not count: a large message goes through.
    alice = await org.connect("alice@dev1")
    assert await alice.cmd("ping", ping="alice", pad=b"\x00" * (512 * 1024)) == {"status": "ok", "pong": "alice"}
    # A holder that finishes its message is answered and gives its share back...
    holders[0].proto.transport.write(message[held:])
    assert await holders[0].recv() == {"status": "ok", "pong": "late"}
    assert factory.unauthenticated_pending == 2 * held
    # ... and one that leaves gives it back too.
    holders[1].proto.transport.abortConnection()
    await until(lambda: factory.unauthenticated_pending == held)
    for client in (holders[0], holders[2], alice):
        client.proto.transport.abortConnection()
    await until(lambda: factory.unauthenticated_pending == 0 and not server_protocols(server))


@ok
async def test_ipv6_clients_are_capped_by_network(server_factory):
    # One subscriber commonly holds a whole /64: as many caps as addresses otherwise.
    base = config(max_connections_per_address=2)
    server = await server_factory(attrs.evolve(base, trusted_proxies=("127.0.0.0/8",)))
    listener = server.service.site.listener

    async def upgrade(forwarded: bytes) -> _Raw:
        return await proxied_upgrade(server.port, forwarded)

    first = [await upgrade(b"2001:db8:0:1::1"), await upgrade(b"2001:db8:0:1:ffff::2")]
    assert all(c.data.startswith(b"HTTP/1.1 101") for c in first)
    assert listener.connections_from("2001:db8:0:1::1234") == 2
    refused = await upgrade(b"2001:db8:0:1::3")
    assert_complete_answer(await raw_closed(refused), 429)
    other = await upgrade(b"2001:db8:0:2::1")  # the next /64
    assert other.data.startswith(b"HTTP/1.1 101")
    mapped = await upgrade(b"::ffff:203.0.113.7")  # an IPv4 client, counted as such
    assert mapped.data.startswith(b"HTTP/1.1 101")
    assert listener.connections_from("203.0.113.7") == 1
    for conn in [*first, other, mapped]:
        conn.transport.abortConnection()
        await raw_closed(conn)
    await until(lambda: not listener.protocols)
    assert listener.connections_from("2001:db8:0:1::1") == 0
