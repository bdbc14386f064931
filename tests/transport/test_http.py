"""Plain HTTP routes of the listener (docs/protocol/transport.md §2, §5) and TLS."""

from __future__ import annotations

import pytest
import pytest_twisted

from parsec.api.codec import packb
from parsec.config import BackendAddr, BackendConfig, ListenConfig
from tests import httpclient
from tests.httpclient import parse_response, raw_request, request
from tests.orgs import bootstrap_organization
from tests.tlsutil import client_options, make_self_signed
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


def assert_common_headers(rep) -> None:
    assert rep.headers["server"] == "parsec"
    assert rep.headers["connection"] == "close"
    assert "date" in rep.headers
    assert int(rep.headers["content-length"]) == len(rep.body)


@ok
async def test_landing_page(server):
    rep = await request(server.port, "GET", "/")
    assert rep.status == 200
    assert rep.headers["content-type"] == "text/html;charset=utf-8"
    assert b"Parsec" in rep.body
    assert_common_headers(rep)


@pytest.mark.parametrize("method", ["HEAD", "SPAM", "POST", "DELETE"])
@ok
async def test_method_not_allowed(server, method):
    rep = await request(server.port, method, "/")
    assert rep.status == 405
    assert rep.body == b""
    assert "content-type" not in rep.headers


@pytest.mark.parametrize("path", ["/dummy", "/ws", "/static", "/administration", "/administration/foo", "/anonymous"])
@ok
async def test_not_found(server, path):
    rep = await request(server.port, "GET", path)
    assert rep.status == 404
    assert rep.headers["content-type"] == "text/html;charset=utf-8"
    assert b"Not found" in rep.body
    assert_common_headers(rep)


@ok
async def test_ws_without_proper_upgrade_is_plain_http(server):
    for headers, version in [
        ({"Connection": "keep-alive, Upgrade", "Upgrade": "websocket"}, "HTTP/1.1"),
        ({"Connection": "Upgrade", "Upgrade": "dummy"}, "HTTP/1.1"),
        ({"Connection": "Upgrade", "Upgrade": "websocket"}, "HTTP/1.0"),
    ]:
        rep = await request(server.port, "GET", "/ws", headers=headers, version=version)
        assert rep.status == 404
    # A real upgrade without a key is a bad request, not a crash.
    rep = await request(server.port, "GET", "/ws", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert rep.status == 400


@pytest.mark.parametrize("name, ctype", [
    ("base.css", "text/css"), ("parsec.png", "image/png"), ("parsec-vert.png", "image/png"),
    ("favicon.ico", "image/vnd.microsoft.icon"),
])
@ok
async def test_static(server, name, ctype):
    rep = await request(server.port, "GET", f"/static/{name}")
    assert rep.status == 200
    assert rep.headers["content-type"] == ctype
    assert rep.body


@pytest.mark.parametrize("path", ["/static/__init__.py", "/static/../site.py", "/static/%2E%2E%2Fsite.py", "/static/nope.css"])
@ok
async def test_static_not_found(server, path):
    rep = await request(server.port, "GET", path)
    assert rep.status in (404,)


@ok
async def test_redirect(server_factory):
    server = await server_factory(backend=BackendConfig(backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False)))
    rep = await request(server.port, "GET", "/redirect/foo/bar?a=1&b=2")
    assert rep.status == 302
    assert rep.headers["location"] == "parsec://127.0.0.1:6777/foo/bar?a=1&b=2&no_ssl=true"
    rep = await request(server.port, "GET", "/redirect/spam?no_ssl=false&a=1&b=2")
    assert rep.headers["location"] == "parsec://127.0.0.1:6777/spam?a=1&b=2&no_ssl=true"
    rep = await request(
        server.port, "GET", "/redirect/%E4%BD%A0%E5%A5%BD/%E8%82%AF%E8%AF%BA%E6%AF%94?%E4%B8%8A%E5%B0%86=%E8%A1%8C"
    )
    assert rep.headers["location"] == (
        "parsec://127.0.0.1:6777/%E4%BD%A0%E5%A5%BD/%E8%82%AF%E8%AF%BA%E6%AF%94?%E4%B8%8A%E5%B0%86=%E8%A1%8C&no_ssl=true"
    )
    ssl_server = await server_factory(backend=BackendConfig(backend_addr=BackendAddr("parsec.example.com")))
    rep = await request(ssl_server.port, "GET", "/redirect/spam?no_ssl=false&a=1")
    assert rep.headers["location"] == "parsec://parsec.example.com/spam?a=1"


@ok
async def test_forward_proto_enforce_https(server_factory):
    server = await server_factory(
        backend=BackendConfig(
            backend_addr=BackendAddr("parsec.example.com", 4443), forward_proto_enforce_https=("x-forwarded-proto", "https")
        )
    )
    rep = await request(server.port, "GET", "/", headers={"x-forwarded-proto": "https"})
    assert rep.status == 200
    for value in ("HTTPS", "42"):
        rep = await request(server.port, "GET", "/foo?a=1", headers={"X-Forwarded-Proto": value})
        assert rep.status == 301
        assert rep.headers["location"] == "https://parsec.example.com:4443/foo?a=1"
    rep = await request(server.port, "GET", "/")
    assert rep.status == 200


@ok
async def test_hostile_http(server):
    # Garbage and unknown versions: 400, never a crash.
    for data in (b"\x00\r\n\r\n", b"GET / HTTP/42.0\r\n\r\n", b"NOT HTTP AT ALL\r\n\r\n"):
        raw = await raw_request(server.port, data)
        assert raw.startswith(b"HTTP/1.1 400"), raw
    # Headers larger than 8 KiB.
    data = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"
    raw = await raw_request(server.port, data)
    assert raw.startswith(b"HTTP/1.1 431") or raw == b""
    # Expect: 100-continue gets the interim answer first.
    raw = await raw_request(
        server.port, b"POST /anonymous/CoolOrg HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
    )
    assert raw.startswith(b"HTTP/1.1 100")
    # Only one request per connection.
    raw = await raw_request(server.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /dummy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.count(b"HTTP/1.1 ") == 1
    # The server still serves.
    assert (await request(server.port, "GET", "/")).status == 200


# ---- anonymous route ---------------------------------------------------------------------


@ok
async def test_anonymous_route(server):
    await bootstrap_organization(server)
    rep = await request(server.port, "GET", "/anonymous/CoolOrg")
    assert (rep.status, rep.msgpack()) == (200, {})
    assert rep.headers["content-type"] == "application/msgpack"
    rep = await request(server.port, "GET", "/anonymous/Unknown")
    assert (rep.status, rep.msgpack()) == (404, {})
    rep = await request(server.port, "GET", "/anonymous/Bad!Org")
    assert (rep.status, rep.msgpack()) == (404, {})
    rep = await request(server.port, "POST", "/anonymous/Unknown", body=packb({"cmd": "organization_bootstrap"}))
    assert (rep.status, rep.msgpack()) == (404, {})
    rep = await request(server.port, "POST", "/anonymous/CoolOrg", body=b"")
    assert (rep.status, rep.msgpack()) == (200, {"status": "invalid_msg_format"})
    rep = await request(server.port, "POST", "/anonymous/CoolOrg", body=b"\xc1")
    assert rep.msgpack() == {"status": "invalid_msg_format"}
    for cmd in ("ping", None, 42, "user_get"):
        rep = await httpclient.anonymous(server.port, "CoolOrg", {"cmd": cmd})
        assert (rep.status, rep.msgpack()) == (200, {"status": "unknown_command"})
    rep = await httpclient.anonymous(server.port, "CoolOrg", {"cmd": "organization_bootstrap"})
    assert rep.msgpack()["status"] == "bad_message"
    rep = await httpclient.anonymous(server.port, "CoolOrg", {"cmd": "pki_enrollment_info"})
    assert rep.msgpack()["status"] == "bad_message"
    rep = await request(server.port, "PUT", "/anonymous/CoolOrg")
    assert rep.status == 405


@ok
async def test_anonymous_route_spontaneous(server_factory):
    server = await server_factory(backend=BackendConfig(spontaneous_organization_bootstrap=True))
    rep = await request(server.port, "GET", "/anonymous/NewOrg")
    assert rep.status == 404
    rep = await httpclient.anonymous(server.port, "NewOrg", {"cmd": "pki_enrollment_info"})
    assert rep.status == 404


# ---- TLS ---------------------------------------------------------------------------------


@ok
async def test_tls_listener(server_factory, tmp_path):
    key, cert = make_self_signed(tmp_path)
    server = await server_factory(listen=ListenConfig(host="127.0.0.1", port=0, ssl_keyfile=str(key), ssl_certfile=str(cert)))
    options = client_options(cert)
    rep = parse_response(await raw_request(server.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", tls_options=options))
    assert rep.status == 200
    await bootstrap_organization_tls(server, options)


async def bootstrap_organization_tls(server, options) -> None:
    client = await WsClient.connect(server.port, host="127.0.0.1", tls_options=options)
    rep = await client.handshake_anonymous_v1("Unknown")
    assert rep["result"] == "bad_identity"
    await client.wait_closed()


# ---- HTTP hygiene (parsec.web.listener) -----------------------------------------------------


def assert_complete_error(raw: bytes, status: int) -> None:
    rep = parse_response(raw)
    assert rep.status == status, raw
    assert rep.body == b""
    assert rep.headers["content-length"] == "0"
    assert rep.headers["connection"] == "close"
    assert rep.headers["server"] == "parsec"
    assert "date" in rep.headers


@pytest.mark.parametrize(
    "data",
    [b"GET / HTTP/42.0\r\n\r\n", b"NOT HTTP AT ALL\r\n\r\n", b"GET /\r\n\r\n", b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
     b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"],
)
@ok
async def test_malformed_requests_get_complete_answers(server, data):
    assert_complete_error(await raw_request(server.port, data), 400)


@pytest.mark.parametrize("data", [b"\x00", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b" GET / HTTP/1.1", b"\xff"])
@ok
async def test_first_byte_that_cannot_start_a_request(server, data):
    # No line end is ever sent: the answer comes from the first byte alone.
    assert_complete_error(await raw_request(server.port, data), 400)


def _head_of(size: int) -> bytes:
    base = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    return base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * (size - len(base)))


@ok
async def test_head_limit_counts_the_whole_head(server):
    assert len(_head_of(8192)) == 8192
    rep = parse_response(await raw_request(server.port, _head_of(8192)))
    assert rep.status == 200
    raw = await raw_request(server.port, _head_of(8193))
    assert_complete_error(raw, 431)
    # A head that never ends is refused as soon as it is over the limit.
    raw = await raw_request(server.port, b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 9000)
    assert_complete_error(raw, 431)


@pytest.mark.parametrize("path", ["/static/", "/static/a/b", "/static/../site.py", "/static/%2E%2E%2Fsite.py", "/static/..%2Fstatic%2Fbase.css"])
@ok
async def test_static_escape_is_an_empty_404(server, path):
    rep = await request(server.port, "GET", path)
    assert rep.status == 404
    assert rep.body == b""
