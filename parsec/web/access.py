"""The access log: one INFO line per connection, written when it closes (namespace `parsec.access`).

The server closes every HTTP connection after its answer, so a connection is one HTTP request
or one websocket. The listener's guard (parsec.web.listener.HttpGuard) owns an `Access`
record per connection: it counts the bytes in and out and the time from accept to close;
the HTTP request fills in method, path, status and the client; the websocket adds who it
served once the Parsec handshake is done, and how it was closed. Nothing is formatted until
an observer writes the line (and the level filter drops it below INFO): the cost is a few
attribute updates per connection and one log event when it closes. Per-command lines stay at
DEBUG (parsec.web.websocket).

Fields (JSON: one key each; `-` where a value does not apply):

* `client`: the peer's address, or, when the peer is a `--trusted-proxy`, the client its
  X-Forwarded-For names (the same rule as the per-address connection cap);
* `method`, `path` (without the query string: invitation links carry tokens there; at most
  `PATH_CHARS` characters, non-printable bytes escaped), `status` (HTTP status, 101 for a
  websocket);
* `duration` (seconds, accept to close), `bytes_in`, `bytes_out` (as received and sent on the
  connection: HTTP head and body, websocket frames; inside TLS);
* websockets: `kind` (`authenticated`, `invited`, `anonymous`; `-` when the Parsec handshake
  did not succeed), `handshake` (`ok` or the refusal, e.g. `bad_identity`; `-` when none was
  answered), `organization_id`, `device_id` (authenticated connections), `close_code` (the code
  of the first Close frame; `-` when the TCP connection ended without one) and `closed_by`
  (`server` or `client`).

A connection that sent nothing and got nothing (a TCP health check) is not logged; neither is
a connection refused by a connection cap (those are counted: metrics and a rate-limited
warning, parsec.web.listener).
"""

from __future__ import annotations

import time
from typing import Any

from twisted.logger import Logger

__all__ = ["PATH_CHARS", "Access", "printable"]

_log = Logger(namespace="parsec.access")

PATH_CHARS = 200
NONE = "-"

_HTTP_FORMAT = '{client} "{method} {path}" {status} {duration:.3f}s in={bytes_in} out={bytes_out}'
_WS_FORMAT = (
    _HTTP_FORMAT + " {kind} {organization_id} {device_id} handshake={handshake} close={close_code} by {closed_by}"
)


def printable(raw: bytes, limit: int = PATH_CHARS) -> str:
    """Bytes from the wire as log text: ASCII, anything else escaped, at most `limit` chars."""
    text = raw[:limit].decode("latin-1")
    if text.isprintable() and text.isascii():
        return text
    return text.encode("unicode_escape").decode("ascii")[:limit]


class Access:
    """What the access line of one connection says (filled while the connection lives)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "client",
        "close_code",
        "closed_by",
        "device_id",
        "handshake",
        "kind",
        "method",
        "organization_id",
        "path",
        "started",
        "status",
        "websocket",
    )

    def __init__(self, client: str) -> None:
        self.started = time.monotonic()
        self.client = client
        self.bytes_in = 0
        self.bytes_out = 0
        self.method = NONE
        self.path = NONE
        self.status: int | str = NONE
        self.websocket = False
        self.kind = NONE
        self.handshake = NONE
        self.organization_id = NONE
        self.device_id = NONE
        self.close_code: int | str = NONE
        self.closed_by = NONE

    def request(self, method: bytes, uri: bytes, client: str) -> None:
        self.method = printable(method, 16)
        self.path = printable(uri.split(b"?", 1)[0])
        self.client = client

    def emit(self) -> None:
        """The line, once the connection is closed."""
        if self.bytes_in == 0 and self.status == NONE:
            return  # a TCP probe: nothing asked, nothing answered
        fields: dict[str, Any] = {
            "client": self.client,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "duration": round(time.monotonic() - self.started, 6),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        if self.websocket:
            fields.update(
                kind=self.kind,
                handshake=self.handshake,
                organization_id=self.organization_id,
                device_id=self.device_id,
                close_code=self.close_code,
                closed_by=self.closed_by,
            )
        # The message says everything: the CONSOLE format adds no key=value pairs (JSON has them).
        _log.info(_WS_FORMAT if self.websocket else _HTTP_FORMAT, log_console_inline=True, **fields)
