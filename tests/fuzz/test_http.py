"""Hostile HTTP on the listener (docs/protocol/transport.md §2, docs/protocol/admin-api.md, docs/protocol/transport.md §5).

Random methods, targets (bad percent escapes, raw non-ASCII, huge), versions and headers
(bad names and values, duplicates, conflicting lengths, chunked, upgrade pieces), heads over
the 8 KiB limit, bodies shorter or longer than their Content-Length, requests abandoned
half-way (slowloris), JSON bombs on the admin API and msgpack bombs on /anonymous/<org>.

Oracle: a complete request gets an HTTP answer whose status is one the spec can give (never
500), or the connection is closed without one; an abandoned request leaves nothing behind;
the server logs no failure and still serves (landing page, admin API, websocket handshake)
afterwards. Admin API answers are checked more closely: 400/403/404/405 with the documented
JSON bodies, and `organization_config` still answers for the organization afterwards.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from parsec.api import protocol as parsec_protocol
from parsec.api.codec import packb, unpackb
from tests import httpclient
from tests.fuzz import mpack
from tests.fuzz.common import build_world, checked, record, where
from tests.fuzz.gen import Gen, cases, rng_for

ok = pytest_twisted.ensureDeferred

TIMEOUT = 10.0
# Statuses the listener can give to a request it parsed (docs/protocol/transport.md §2, docs/protocol/admin-api.md);
# 101 for upgrades. 500 is a crash and is never acceptable here.
ALLOWED = {101, 200, 301, 302, 400, 403, 404, 405, 413, 431, 501, 505}

METHODS = [b"GET", b"POST", b"PATCH", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE", b"CONNECT", b"SPAM", b"get", b"G\x00T", b"", b"GET /", b"\xff", b"A" * 3000]
TARGETS = [
    b"/", b"", b"*", b"//", b"/ws", b"/ws?x=1", b"/ws/", b"/anonymous/FuzzOrg", b"/anonymous/", b"/anonymous/%zz",
    b"/anonymous/Fuzz%4Frg", b"/anonymous/%", b"/anonymous/%C3", b"/anonymous/%C3%A9" * 20, b"/anonymous/a/b",
    b"/administration/organizations", b"/administration/organizations/", b"/administration/organizations/FuzzOrg",
    b"/administration/organizations/FuzzOrg/stats", b"/administration/organizations/%", b"/administration/organizations/%FF%FE/stats",
    b"/administration/organizations/Fuzz+Org", b"/administration//organizations", b"/redirect/", b"/redirect/%E4%BD%A0?x=%zz&no_ssl=1&&=",
    b"/redirect/" + b"a/" * 2000, b"/static/base.css", b"/static/../setup.py", b"/static/%2e%2e%2fsetup.py", b"/static/", b"/static/a/b",
    b"/%00", b"/\xff\xfe", "/anonymous/é".encode(), b"/?" + b"a=%" * 50, b"http://evil.example/anonymous/FuzzOrg", b"/" + b"a" * 9000,
    b"/ws#frag", b"/%2Fws", b"/;x", b"/..",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/0.9", b"HTTP/2.0", b"HTTP/42.0", b"HTTP/1.1 extra", b"http/1.1", b"", b"HTTP/1.1\x00"]
HEADER_NAMES = [b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection", b"Upgrade", b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
                b"Authorization", b"Expect", b"Content-Type", b"X-Forwarded-Proto", b"Origin", b"Cookie", b"X" * 300, b"Bad Name", b"Bad:Name",
                b"\x00", b"", b"\xe9t\xe9", b"Content-length"]
HEADER_VALUES = [b"", b"0", b"-1", b"1", b"100", b"18446744073709551616", b"1, 2", b" 5 ", b"0x10", b"chunked", b"gzip, chunked", b"identity",
                 b"upgrade", b"Upgrade", b"keep-alive, Upgrade", b"websocket", b"WebSocket", b"dGhlIHNhbXBsZSBub25jZQ==", b"13", b"99",
                 b"Bearer s3cr3t", b"Bearer wrong", b"bearer s3cr3t", b"Bearer s3cr3t ", b"100-continue", b"application/msgpack",
                 b"\xff\xfe", b"a\rb", b"x" * 5000, "é".encode()]


class _Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(b"".join(self.chunks))


async def send(port: int, data: bytes, *, abandon: bool = False, half_close: bool = False) -> bytes | None:
    """Write `data`; then read the whole answer (the server closes after one request), or,
    with `abandon`, hang up at once and return None."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    proto = await endpoint.connect(protocol.Factory.forProtocol(_Collector))
    proto.transport.write(data)
    if abandon:
        proto.transport.abortConnection()
        await proto.done
        return None
    if half_close:
        proto.transport.loseWriteConnection()
    done = proto.done
    done.addTimeout(TIMEOUT, reactor)
    return await done


def status_of(raw: bytes) -> int | None:
    if not raw:
        return None
    # Skip interim 100 Continue answers.
    while raw.startswith(b"HTTP/1.1 100"):
        raw = raw.partition(b"\r\n\r\n")[2]
    line = raw.split(b"\r\n", 1)[0].split(b" ")
    assert len(line) >= 2 and line[0] in (b"HTTP/1.1", b"HTTP/1.0") and line[1].isdigit(), raw[:200]
    return int(line[1])


def random_head(gen: Gen) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    rng = gen.rng
    method = rng.choice(METHODS) if gen.chance(0.4) else rng.choice([b"GET", b"POST", b"PATCH"])
    target = rng.choice(TARGETS)
    if gen.chance(0.2):
        target += b"?" + rng.choice([b"", b"a=b", b"%zz", b"=", b"a" * 500, b"\xff"])
    version = rng.choice(VERSIONS) if gen.chance(0.2) else b"HTTP/1.1"
    headers = [(b"Host", b"127.0.0.1")] if gen.chance(0.9) else []
    hostile = gen.chance(0.5)
    for _ in range(rng.choice([0, 0, 1, 3, 8])):
        if hostile:
            headers.append((rng.choice(HEADER_NAMES), rng.choice(HEADER_VALUES)))
        else:
            headers.append((rng.choice(HEADER_NAMES[:13]), rng.choice(HEADER_VALUES[:28])))
    return method + b" " + target + b" " + version, headers


def encode_head(request_line: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return request_line + b"\r\n" + b"".join(name + b": " + value + b"\r\n" for name, value in headers) + b"\r\n"


def json_bomb(gen: Gen) -> bytes:
    rng = gen.rng
    depth = rng.choice([1000, 100_000])
    return rng.choice(
        [
            b"[" * depth + b"]" * depth,
            b'{"a":' * depth + b"1" + b"}" * depth,
            b'{"organization_id": [' * 10 + b"[" * depth,
            b'{"organization_id": "' + b"x" * 500_000 + b'"}',
            b'{"active_users_limit": 1' + b"0" * 5000 + b"}",
            b'{"active_users_limit": 1e999999}',
            b'{"active_users_limit": NaN, "is_expired": Infinity}',
            b'{"active_users_limit": ' + str(rng.choice([2**63, 2**64, 2**70, -(2**70), 10**30])).encode() + b"}",
            b'{"organization_id": "FuzzOrg", "organization_id": "Other"}',
            b'{"organization_id": "\\ud800"}',
            b'{"is_expired": "\\u0000"}',
            b"\xef\xbb\xbf{}",
            b"\xff\xfe{\x00}\x00",
            b"[" + b"1," * 200_000 + b"1]",
            b'{"' + b'a": 1, "'.join(str(i).encode() for i in range(50_000)) + b'": 1}',
            b"",
            b"null",
            b"\x00",
        ]
    )


def msgpack_bomb(gen: Gen) -> bytes:
    rng = gen.rng
    return rng.choice(
        [
            b"\x81\xa3cmd" + b"\x91" * 100_000,
            b"\x81\xa3cmd" + b"\x91" * 1023 + b"\xc0",
            b"\xdf\xff\xff\xff\xff",
            b"\x81\xa3cmd\xdd\xff\xff\xff\xff",
            b"\x81\xa3cmd\xdb\x7f\xff\xff\xff",
            b"\x82\xa3cmd\xb3pki_enrollment_info\xa1x\xdd" + struct.pack(">I", 300_000) + b"\xc0" * 300_000,
            b"\x82\xa3cmd\xb6organization_bootstrap" + b"\xa1k\xc6" + struct.pack(">I", 1024 * 1024 - 100) + bytes(1024 * 1024 - 100),
            mpack.pack({"cmd": "pki_enrollment_submit", "submit_payload": b"x", mpack.Raw(b"\x91" * 1022 + b"\xc0"): 1}),
            mpack.pack({"cmd": "organization_bootstrap", "bootstrap_token": mpack.Raw(b"\x91" * 1020 + b"\xc0")}),
            packb({"cmd": "pki_enrollment_info", "enrollment_id": "x" * 700_000}),
        ]
    )


async def still_serving(server: Any, world: Any) -> None:
    rep = await httpclient.request(server.port, "GET", "/")
    assert rep.status == 200, rep.status
    rep = await httpclient.admin(server.port, "GET", f"/administration/organizations/{world.organization_id}")
    assert rep.status == 200, rep.body
    client = await world.org.connect("alice@dev1")
    try:
        rep2 = await checked(client, "organization_config")
        assert rep2["status"] == "ok", rep2
    finally:
        await client.close()


def check_admin_answer(raw: bytes | None, context: str) -> None:
    """Admin API answers: the documented statuses and JSON bodies (docs/protocol/admin-api.md §1)."""
    if not raw:
        return
    code = status_of(raw)
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"\r\ncontent-type: application/json" not in head.lower():
        return  # not an admin route after all (e.g. the HTML 404 page), or a 405
    if code in (403, 404, 400, 200):
        data = json.loads(body)
        assert isinstance(data, dict), context
        if code == 403:
            assert data == {"error": "not_allowed"}, context
        elif code == 404:
            assert data == {"error": "not_found"}, context
        elif code == 400:
            assert data.get("error") in ("bad_data", "already_exists"), context


@ok
async def test_hostile_http(server):
    world = await build_world(server)
    name = "hostile-http"
    gen = Gen(rng_for(name), world.known)
    rng = gen.rng
    for case in range(cases(250)):
        kind = rng.choice(["random", "random", "random", "huge head", "length", "slowloris", "json bomb", "json bomb", "msgpack bomb", "garbage"])
        request_line, headers = random_head(gen)
        body = b""
        abandon = half_close = False
        if kind == "huge head":
            headers.append((b"X-Big", b"x" * rng.choice([8200, 20_000, 70_000])) if gen.chance(0.5) else (b"X-Many", b"y" * 40))
            if not gen.chance(0.5):
                headers += [(f"X-{i}".encode(), b"v" * 60) for i in range(rng.choice([150, 1000]))]
        elif kind == "length":
            body = gen.blob_small() + rng.randbytes(rng.randint(0, 50))
            declared = rng.choice([0, max(0, len(body) - 3), len(body) + rng.randint(1, 100), 1024 * 1024, 10**12])
            headers = [(n, v) for n, v in headers if n.lower() != b"content-length"] + [(b"Content-Length", str(declared).encode())]
            request_line = rng.choice([b"POST /anonymous/FuzzOrg HTTP/1.1", b"PATCH /administration/organizations/FuzzOrg HTTP/1.1", request_line])
            headers.append((b"Authorization", b"Bearer s3cr3t"))
            # A body longer than what is sent: the server waits for it, the client gives up.
            abandon = declared > len(body)
        elif kind == "slowloris":
            full = encode_head(b"POST /administration/organizations HTTP/1.1", [(b"Host", b"x"), (b"Content-Length", b"20")]) + b'{"organization_id":'
            body = b""
            data = full[: rng.randrange(1, len(full))]
            raw = None
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", server.port, timeout=TIMEOUT)
            proto = await endpoint.connect(protocol.Factory.forProtocol(_Collector))
            for index in range(0, len(data), 7):
                proto.transport.write(data[index : index + 7])
                await deferLater(0.001)
            proto.transport.abortConnection()
            await proto.done
            record("http slowloris", "abandoned")
            continue
        elif kind == "json bomb":
            body = json_bomb(gen)
            request_line = rng.choice([
                b"POST /administration/organizations HTTP/1.1",
                b"PATCH /administration/organizations/FuzzOrg HTTP/1.1",
                b"PATCH /administration/organizations/FuzzOrg/stats HTTP/1.1",
            ])
            headers = [(b"Host", b"x"), (b"Authorization", b"Bearer s3cr3t")]
        elif kind == "msgpack bomb":
            body = msgpack_bomb(gen)
            request_line = b"POST /anonymous/FuzzOrg HTTP/1.1"
            headers = [(b"Host", b"x")]
        elif kind == "garbage":
            data = rng.choice([rng.randbytes(rng.randint(1, 200)), b"\r\n" * 100, b"GET / HTTP/1.1\n\n", b"\x16\x03\x01\x02\x00\x01"])
            raw = await send(server.port, data, half_close=True)
            code = status_of(raw) if raw else None
            assert code is None or code in ALLOWED, where(name, case, (kind, data[:80], raw[:200] if raw else raw))
            record("http garbage", str(code))
            continue
        if body and kind != "length":
            headers = [(n, v) for n, v in headers if n.lower() not in (b"content-length", b"transfer-encoding")]
            headers.append((b"Content-Length", str(len(body)).encode()))
        elif kind in ("random", "huge head") and any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers):
            # The server may wait for a body that never comes: end the request with EOF
            # (then there may be no answer at all).
            half_close = True
        data = encode_head(request_line, headers) + body
        context = where(name, case, (kind, data[:300]))
        try:
            raw = await send(server.port, data, abandon=abandon, half_close=half_close)
        except defer.TimeoutError:
            raise AssertionError(f"{context} -> no answer and no close after {TIMEOUT} s") from None
        if raw is None:
            record(f"http {kind}", "abandoned")
            continue
        code = status_of(raw)
        assert code is None or code in ALLOWED, f"{context} -> {raw[:300]!r}"
        record(f"http {kind}", str(code))
        if request_line.split(b" ")[1:2] and request_line.split(b" ")[1].startswith(b"/administration") and b"Bearer s3cr3t" in data:
            check_admin_answer(raw, context)
        if kind == "msgpack bomb" and code == 200:
            reply = unpackb(raw.partition(b"\r\n\r\n")[2])
            assert reply.get("status") in {"invalid_msg_format", "unknown_command", "bad_message"} or _anonymous_reply_ok(reply), f"{context} -> {reply!r}"
        if code == 101:
            # an upgrade went through: the challenge follows; nothing more to do
            pass
        if case % 25 == 0:
            await still_serving(server, world)
    await still_serving(server, world)


def _anonymous_reply_ok(reply: dict[str, Any]) -> bool:
    for spec in parsec_protocol.ANONYMOUS_COMMANDS.values():
        try:
            parsec_protocol.validate_reply(spec, reply)
            return True
        except parsec_protocol.InvalidReply:
            continue
    return False


def deferLater(seconds: float) -> defer.Deferred[None]:  # noqa: N802 -- twisted's name
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)
