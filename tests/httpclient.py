"""Raw HTTP/1.1 over TCP for tests: exact bytes out, whole answer in (the server closes after one request)."""

from __future__ import annotations

import json
from typing import Any

import attrs
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint

from parsec.api.codec import packb, unpackb

TIMEOUT = 10.0


@attrs.frozen
class HttpResponse:
    status: int
    reason: str
    headers: dict[str, str]  # lower-cased names, first value
    raw_headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def msgpack(self) -> Any:
        return unpackb(self.body)


class _Collector(protocol.Protocol):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred[bytes] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(b"".join(self.chunks))


def parse_response(raw: bytes) -> HttpResponse:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    # Skip "100 Continue" interim answers.
    while lines and lines[0].split(" ")[1:2] == ["100"]:
        head, _, body = body.partition(b"\r\n\r\n")
        lines = head.decode("latin1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    raw_headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        raw_headers.append((name.strip(), value.strip()))
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        headers.setdefault(name.lower(), value)
    return HttpResponse(
        int(status_line[1]), status_line[2] if len(status_line) > 2 else "", headers, raw_headers, body
    )


async def raw_request(port: int, data: bytes, *, tls_options: Any = None) -> bytes:
    if tls_options is not None:
        endpoint = SSL4ClientEndpoint(reactor, "127.0.0.1", port, tls_options)
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=TIMEOUT)
    proto = await endpoint.connect(protocol.Factory.forProtocol(_Collector))
    proto.transport.write(data)
    done = proto.done
    done.addTimeout(TIMEOUT, reactor)
    return await done


async def request(
    port: int,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
    tls_options: Any = None,
) -> HttpResponse:
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PATCH", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("utf8") + body
    return parse_response(await raw_request(port, data, tls_options=tls_options))


async def admin(port: int, method: str, path: str, data: Any = None, *, token: str = "s3cr3t") -> HttpResponse:
    body = json.dumps(data).encode() if data is not None else b""
    return await request(
        port, method, path, body=body, headers={"Authorization": f"Bearer {token}"}
    )


async def anonymous(port: int, organization_id: str, msg: dict[str, Any]) -> HttpResponse:
    return await request(port, "POST", f"/anonymous/{organization_id}", body=packb(msg))
