"""Organization bootstrap webhook (docs/protocol/admin-api.md §3): JSON POST, 30 s timeout, never blocking forever.

The URL is a secret (its path or query often holds a token): log lines show its scheme and
host only (`parsec.confidential.redact_url`)."""

from __future__ import annotations

import json
from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from parsec.confidential import redact_url, scrub_url

_log = Logger()

WEBHOOK_TIMEOUT = 30.0


async def send_bootstrap_webhook(
    url: str, payload: dict[str, Any], *, reactor: Any = None, timeout: float = WEBHOOK_TIMEOUT
) -> bool:
    """POST the payload; errors and non-2xx answers are logged, never raised."""
    if reactor is None:
        # The global reactor only when none is given: importing it installs the default one.
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    pool = HTTPConnectionPool(reactor, persistent=False)
    # cast: Agent declares IAgent with zope's @implementer, which mypy does not read.
    client = HTTPClient(cast(IAgent, Agent(reactor, pool=pool)))
    try:
        d = client.post(
            url,
            data=json.dumps(payload).encode("utf8"),
            headers=Headers({b"content-type": [b"application/json; charset=utf-8"]}),
        )
        d.addTimeout(timeout, reactor)
        response = await d
        body = response.content()
        body.addTimeout(timeout, reactor)
        await body
        if not 200 <= response.code < 300:
            _log.warn("Bootstrap webhook {url} answered {code}", url=redact_url(url), code=response.code)
            return False
        return True
    except (Exception, defer.CancelledError) as exc:
        # The URL often carries a token: only its scheme and host are logged, and it is
        # scrubbed from the error text too.
        _log.warn(
            "Bootstrap webhook {url} failed: {error}",
            url=redact_url(url),
            error=scrub_url(str(exc), url) or type(exc).__name__,
        )
        return False
    finally:
        await pool.closeCachedConnections()
