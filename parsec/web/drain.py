"""In-flight HTTP requests, tracked so that a graceful stop really waits for them (bounded).

The site hands every HTTP request that is not a websocket upgrade to a :class:`RequestTracker`
(`track`); a request leaves it when its answer is finished or its connection is lost
(`Request.notifyFinish`, public twisted.web API). At shutdown, once the listeners are closed,
`drain(grace)` waits until none is left, or `grace` seconds: the connections of the requests
still unfinished then are closed (and logged), so that a stuck request cannot hold the stop.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.server import Request

__all__ = ["RequestTracker"]

_log = Logger(namespace="parsec.web.drain")


class RequestTracker:
    """The HTTP requests being answered."""

    def __init__(self) -> None:
        self._requests: set[Request] = set()
        self._idle: list[defer.Deferred[None]] = []

    def __len__(self) -> int:
        return len(self._requests)

    def track(self, request: Request) -> None:
        self._requests.add(request)
        request.notifyFinish().addBoth(self._done, request)

    def _done(self, _: object, request: Request) -> None:
        # Returning None consumes the failure of a lost connection: not an error here.
        self._requests.discard(request)
        if not self._requests:
            idle, self._idle = self._idle, []
            for waiter in idle:
                if not waiter.called:  # not timed out meanwhile
                    waiter.callback(None)

    async def drain(self, grace: float, reactor: Any) -> None:
        """Wait until no request is in flight; after `grace` seconds, close what is left."""
        if not self._requests:
            return
        _log.info("Waiting for {count} HTTP request(s) in flight", count=len(self._requests))
        idle: defer.Deferred[None] = defer.Deferred()
        self._idle.append(idle)
        idle.addTimeout(grace, reactor)
        try:
            await idle
        except defer.TimeoutError:
            left = list(self._requests)
            _log.warn(
                "{count} HTTP request(s) still unfinished after {grace} s: closing their connections",
                count=len(left),
                grace=grace,
            )
            for request in left:
                request.loseConnection()
