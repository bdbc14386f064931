"""Whether the server serves, and why not: the state the site answers 503 from, and `/ready`.

:class:`Readiness` is created first and handed, at construction, to everything that reads or
changes it: the service tree (starting -> serving -> stopping), the PostgreSQL event feed
(lost -> restored: events may have been missed meanwhile, so clients are turned away), and the
site (503 with the reason while not serving).

:class:`ReadyCheck` answers `GET /ready` for load balancers and orchestrators: not serving
(starting, shutting down, event feed lost) is a 503 at once; otherwise every dependency probe
(PostgreSQL, the blockstore) must answer within `READY_PROBE_TIMEOUT`. The request is
unauthenticated, so a probe result is shared by concurrent requests and reused for
`READY_PROBE_CACHE` seconds: however often `/ready` is asked, the dependencies see at most one
probe at a time.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.logger import Logger

__all__ = ["READY_PROBE_CACHE", "READY_PROBE_TIMEOUT", "Probe", "ReadyCheck", "Readiness"]

_log = Logger(namespace="parsec.readiness")

# Seconds a dependency has to answer a readiness probe.
READY_PROBE_TIMEOUT = 2.0
# Seconds a readiness probe result is reused for (bounds what /ready costs the dependencies).
READY_PROBE_CACHE = 1.0


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    STOPPING = "shutting down"


class Readiness:
    """Serving or not, and why."""

    def __init__(self) -> None:
        self.phase = Phase.STARTING
        self._feed_error: str | None = None

    @property
    def serving(self) -> bool:
        return self.phase is Phase.SERVING and self._feed_error is None

    @property
    def reason(self) -> str | None:
        """Why requests are refused (None while serving)."""
        if self.phase is not Phase.SERVING:
            phase: str = self.phase.value
            return phase
        if self._feed_error is not None:
            return "database unavailable"
        return None

    @property
    def feed_lost(self) -> bool:
        return self._feed_error is not None

    def started(self) -> None:
        if self.phase is Phase.STARTING:
            self.phase = Phase.SERVING

    def stopping(self) -> None:
        self.phase = Phase.STOPPING

    def event_feed_lost(self, error: str) -> None:
        self._feed_error = error

    def event_feed_restored(self) -> None:
        self._feed_error = None


@attrs.frozen
class Probe:
    """One dependency check: `check()` returns when the dependency answered, raises otherwise."""

    name: str  # "PostgreSQL", "blockstore"
    check: Callable[[], Coroutine[Any, Any, object]]


class ReadyCheck:
    """`GET /ready`: None when ready, else the reason (one line, no secrets)."""

    def __init__(
        self,
        readiness: Readiness,
        probes: Sequence[Probe],
        reactor: Any,
        *,
        timeout: float = READY_PROBE_TIMEOUT,
        cache: float = READY_PROBE_CACHE,
    ) -> None:
        self._readiness = readiness
        self._probes = tuple(probes)
        self._reactor = reactor
        self._timeout = timeout
        self._cache = cache
        self._running: defer.Deferred[str | None] | None = None
        self._waiters: list[defer.Deferred[str | None]] = []
        self._last: tuple[float, str | None] | None = None

    async def __call__(self) -> str | None:
        if not self._readiness.serving:
            return self._readiness.reason
        now = self._reactor.seconds()
        if self._last is not None and now - self._last[0] < self._cache:
            return self._last[1]
        # Each caller waits on a Deferred of its own: a caller that goes away (its request
        # is cancelled) does not cancel the probe others share.
        waiter: defer.Deferred[str | None] = defer.Deferred()
        self._waiters.append(waiter)
        if self._running is None:
            self._running = defer.Deferred.fromCoroutine(self._probe_all())
            self._running.addBoth(self._probed)
        return await waiter

    def _probed(self, result: Any) -> None:
        self._running = None
        if not isinstance(result, str | None):  # a Failure: a bug in a probe wrapper
            _log.failure("Readiness probe crashed", result)
            result = "readiness probe failed"
        self._last = (self._reactor.seconds(), result)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(result)

    async def _probe_all(self) -> str | None:
        outcomes = await defer.DeferredList(
            [defer.Deferred.fromCoroutine(self._probe(probe)) for probe in self._probes],
            consumeErrors=True,
        )
        reasons = [reason for ok, reason in outcomes if ok and reason is not None]
        if not self._readiness.serving:  # stopping began, or the feed was lost, meanwhile
            return self._readiness.reason
        return "; ".join(reasons) if reasons else None

    async def _probe(self, probe: Probe) -> str | None:
        check: defer.Deferred[object] = defer.ensureDeferred(probe.check())
        check.addTimeout(self._timeout, self._reactor)
        try:
            await check
        except defer.TimeoutError:
            return f"{probe.name}: no answer within {self._timeout:g} s"
        except Exception as exc:
            return f"{probe.name}: {exc}"
        return None
