"""Baseline for server_bench.py: a bare Autobahn websocket server answering a msgpack ping.

    .venv/bin/python benchmarks/echo_server.py PORT

The machine's limit for the `ping` workload: the same reactor (epoll), the same Autobahn
websocket protocol and the same msgpack library as our server, nothing else (no twisted.web
resource tree, no listener guard, no Parsec handshake, no command dispatch). Every binary
message is decoded as a msgpack map and answered `{"status": "ok", "pong": <its "ping">}`.
A plain `GET /` (no upgrade) gets Autobahn's status page, which is how the benchmark sees the
server is up. Loopback only; stops on SIGTERM.
"""

from __future__ import annotations

import sys
from typing import Any

import msgpack
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Echo(WebSocketServerProtocol):
    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message: Any = msgpack.unpackb(payload, raw=False)
        self.sendMessage(msgpack.packb({"status": "ok", "pong": message.get("ping")}), isBinary=True)


def main() -> None:
    port = int(sys.argv[1])
    factory = WebSocketServerFactory()
    factory.protocol = Echo
    # The options our server sets too (no compression offered; binary messages only).
    factory.setProtocolOptions(perMessageCompressionAccept=lambda offers: None, utf8validateIncoming=False)
    reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
