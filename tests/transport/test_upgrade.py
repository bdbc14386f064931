"""The websocket upgrade (docs/protocol/transport.md §2.2), on memory and PostgreSQL.

A plain upgrade request is opened by `ParsecWebSocketFactory.upgrade` from twisted.web's
parsed request; any other (something to negotiate or check) goes to Autobahn's
WebSocketResource, which parses and checks it all itself. Both must answer alike: the same
101, then the Parsec challenge; and Autobahn keeps refusing what it refuses.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
from typing import Any

import attrs
import pytest
import pytest_twisted
from autobahn.websocket.protocol import parseHttpHeader
from twisted.internet import abstract, tcp
from twisted.web.http_headers import Headers

from parsec.api.codec import unpackb
from parsec.config import ListenConfig
from parsec.web.listener import SEND_BYTES_PER_CALL, lowest_transport
from parsec.web.websocket import plain_upgrade
from tests.tlsutil import client_options, make_self_signed
from tests.transport.test_hostile import raw_closed, raw_connect, until
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3


def _request(key: bytes, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return (
        method + b" /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def _frame(data: bytes) -> bytes | None:
    """The payload of the first (unmasked, server) frame in `data`, None until it is whole."""
    if len(data) < 2:
        return None
    size, start = data[1], 2
    if size == 126:
        size, start = int.from_bytes(data[2:4], "big"), 4
    if len(data) < start + size:
        return None
    return data[start : start + size]


def _head(raw: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {line.split(b":", 1)[0].strip().lower(): line.split(b":", 1)[1].strip() for line in lines[1:]}
    return lines[0], headers, rest


async def _upgrade(port: int, extra: bytes = b"", key: bytes | None = None, method: bytes = b"GET") -> tuple[bytes, Any]:
    key = key if key is not None else base64.b64encode(os.urandom(16))
    conn = await raw_connect(port)
    conn.transport.write(_request(key, extra, method))
    await until(
        lambda: b"\r\n\r\n" in conn.data
        and (not conn.data.startswith(b"HTTP/1.1 101") or _frame(_head(conn.data)[2]) is not None)
    )
    return key, conn


def _assert_opened(key: bytes, conn: Any) -> None:
    status, headers, rest = _head(conn.data)
    assert status == b"HTTP/1.1 101 Switching Protocols", conn.data
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    assert headers == {b"upgrade": b"WebSocket", b"connection": b"Upgrade", b"sec-websocket-accept": accept}, conn.data
    # No subprotocol, no extension, no server or date header: then the challenge, a binary frame.
    assert rest[0] == 0x82, conn.data
    payload = _frame(rest)
    assert payload is not None and unpackb(payload)["handshake"] == "challenge"


@ok
async def test_plain_upgrade_is_answered_101_then_the_challenge(server):
    key, conn = await _upgrade(server.port)
    _assert_opened(key, conn)
    # Nagle off on the websocket's socket (set by twisted.web's channel, not again by Autobahn).
    (proto,) = server.service.ws_factory.connections
    sock = lowest_transport(proto.transport).getHandle()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    conn.transport.loseConnection()
    await raw_closed(conn)


def _autobahn_refuses(request: bytes) -> bool:
    try:
        parseHttpHeader(request)
    except ValueError:
        return True
    return False


@pytest.mark.parametrize(
    "extra",
    [
        b"Origin: http://127.0.0.1\r\n",
        b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
        b"Sec-WebSocket-Protocol: chat, superchat\r\n",
        b"Host: 127.0.0.2\r\n",  # twice: Autobahn sees them joined, as one
        b"Cookie: a\x01b\r\n",  # a control character: Autobahn's own parser decides
    ],
    ids=["origin", "extensions", "protocols", "two-hosts", "control-character"],
)
@ok
async def test_upgrade_with_something_to_negotiate_is_answered_alike(server, extra):
    key, conn = await _upgrade(server.port, extra)
    if _autobahn_refuses(_request(key, extra, b"GET")):
        # Autobahn 26.11 refuses a header value with a control character (earlier releases
        # take it): answered, never opened, as Autobahn's own parser has it.
        assert extra.startswith(b"Cookie")
        await raw_closed(conn)
        assert conn.data.startswith(b"HTTP/1.1 400 "), conn.data
        return
    _assert_opened(key, conn)
    conn.transport.loseConnection()
    await raw_closed(conn)


@pytest.mark.parametrize(
    "key, extra, method, status",
    [
        (b"c2hvcnQ=", b"", b"GET", 400),  # a key that is not 16 bytes
        (None, b"Sec-WebSocket-Version: 13\r\n", b"GET", 400),  # the version twice
        (None, b"", b"POST", 405),
    ],
    ids=["short-key", "two-versions", "post"],
)
@ok
async def test_upgrade_autobahn_refuses_is_still_refused(server, key, extra, method, status):
    _, conn = await _upgrade(server.port, extra, key, method)
    await raw_closed(conn)
    assert conn.data.startswith(b"HTTP/1.1 %d " % status), conn.data
    assert server.service.ws_factory.connections == set()


@attrs.define
class _Parsed:
    """What `plain_upgrade` reads of a twisted.web request."""

    requestHeaders: Headers  # noqa: N815 -- twisted.web's name
    method: bytes = b"GET"
    content: Any = attrs.field(factory=io.BytesIO)


KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _parsed(**changes: Any) -> _Parsed:
    headers: dict[bytes, list[bytes]] = {
        b"host": [b"example.com:6777"],
        b"upgrade": [b"websocket"],
        b"connection": [b"Upgrade"],
        b"sec-websocket-key": [KEY],
        b"sec-websocket-version": [b"13"],
        b"user-agent": [b"parsec/2.10.0"],
    }
    method = changes.pop("method", b"GET")
    body = changes.pop("body", b"")
    for name, value in changes.items():
        name = name.replace("_", "-").encode()
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    return _Parsed(Headers(headers), method, io.BytesIO(body))


def test_plain_upgrade_takes_only_what_needs_no_further_check() -> None:
    assert plain_upgrade(_parsed()) == (KEY.decode(), "example.com")
    assert plain_upgrade(_parsed(host=[b"[::1]"])) == (KEY.decode(), "[::1]")
    assert plain_upgrade(_parsed(host=[b"[::1]:443"])) == (KEY.decode(), "[::1]")
    for changes in [
        {"method": b"POST"},
        {"body": b"x"},
        {"host": None},
        {"host": [b"a", b"b"]},
        {"host": [b"example.com:http"]},
        {"sec_websocket_key": None},
        {"sec_websocket_key": [KEY, KEY]},
        {"sec_websocket_key": [b"dGhlIHNhbXBsZSBub25jZQ="]},
        {"sec_websocket_key": [b"dGhlIHNhbXBsZSBub25jZ!=="]},
        {"sec_websocket_version": None},
        {"sec_websocket_version": [b"8"]},
        {"sec_websocket_version": [b"13", b"13"]},
        {"origin": [b"https://example.com"]},
        {"sec_websocket_extensions": [b"permessage-deflate"]},
        {"sec_websocket_protocol": [b"chat"]},
        {"cookie": [b"a\x7fb"]},
    ]:
        assert plain_upgrade(_parsed(**changes)) is None, changes


@ok
async def test_socket_sends_a_whole_block_per_call_over_tcp_and_tls(server_factory, tmp_path) -> None:
    """Twisted's TCP transport sends at most `SEND_LIMIT` bytes per call (128 KiB by default,
    one call per turn of the event loop): the listener raises it on every accepted socket,
    under TLS too, so that a block reply goes in one call as far as the socket buffer takes it."""
    assert SEND_BYTES_PER_CALL > 1024 * 1024  # the largest reply: a 1 MiB block, and its frame
    # What the setting relies on: Twisted's TCP transport reads it per instance.
    assert abstract.FileDescriptor.SEND_LIMIT == 128 * 1024
    assert "SEND_LIMIT" in (tcp.Connection.writeSomeData.__doc__ or "")

    key, cert = make_self_signed(tmp_path)
    plain = await server_factory()
    secure = await server_factory(
        listen=ListenConfig(host="127.0.0.1", port=0, ssl_keyfile=str(key), ssl_certfile=str(cert))
    )
    for server, options in ((plain, None), (secure, client_options(cert))):
        client = await WsClient.connect(server.port, host="127.0.0.1", tls_options=options)
        assert (await client.challenge())["handshake"] == "challenge"
        (proto,) = server.service.ws_factory.connections
        socket_transport = lowest_transport(proto.transport)
        assert isinstance(socket_transport, tcp.Server)
        assert socket_transport.SEND_LIMIT == SEND_BYTES_PER_CALL
        await client.close()
