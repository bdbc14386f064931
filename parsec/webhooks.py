"""Organization bootstrap webhook (docs/protocol/admin-api.md §3): JSON POST, 30 s timeout, never blocking forever."""

from __future__ import annotations

import json
from typing import Any, cast

from treq.client import HTTPClient
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

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
            _log.warn(
                "Bootstrap webhook {url} answered {code}", url=url, code=response.code
            )
            return False
        return True
    except (Exception, defer.CancelledError) as exc:
        _log.warn("Bootstrap webhook {url} failed: {error}", url=url, error=str(exc) or type(exc).__name__)
        return False
    finally:
        await pool.closeCachedConnections()
