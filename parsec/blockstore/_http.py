"""Shared HTTP plumbing of the S3 and Swift blockstores.

Each store owns one treq client on its own `HTTPConnectionPool` (closed by `stop`), never
follows redirects, and bounds every operation (connect + request + body, authentication
included) by one timeout, so a hung server surfaces as a `BlockStoreError` in time.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar, cast

import attrs
from treq.client import HTTPClient
from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from parsec.blockstore.base import BlockStoreError, log_block_error

# What `_send` takes (treq's own annotation of request headers).
RequestHeaders = dict[bytes | str, bytes | str]

T = TypeVar("T")

# Idle keep-alive connections are dropped before servers usually drop them themselves.
_IDLE_CONNECTION_SECONDS = 20
_MAX_IDLE_CONNECTIONS_PER_HOST = 16


@attrs.frozen
class HTTPReply:
    code: int
    phrase: str
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name.encode("ascii"))
        return values[0].decode("latin-1") if values else None

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


class HTTPStoreFailure(Exception):
    """Internal: one-line reason, turned into a BlockStoreError naming the store."""


def _describe_failure(failure: Failure | BaseException) -> str:
    exc = failure.value if isinstance(failure, Failure) else failure
    if isinstance(exc, ResponseFailed | ResponseNeverReceived | RequestTransmissionFailed) and exc.reasons:
        inner = exc.reasons[0]
        return f"{type(exc).__name__}: {_describe_failure(inner)}"
    text = str(exc).strip().replace("\n", " ") or "no details"
    return f"{type(exc).__name__}: {text}"


def _is_cancellation(exc: Exception) -> bool:
    if isinstance(exc, ResponseFailed | ResponseNeverReceived | RequestTransmissionFailed):
        return any(reason.check(defer.CancelledError) for reason in exc.reasons)
    return False


def cancellation_wins(inner: defer.Deferred[T]) -> defer.Deferred[T]:
    """`inner`, except that cancelling the result always fails it with CancelledError.

    Cancelling a request of Twisted's Agent does not always surface as a cancellation: while
    the connection still resolves the host name, HostnameEndpoint turns ANY failure of the
    resolution (our cancellation included) into `DNSLookupError("Couldn't find the hostname
    ...")`, and while it connects the failure is a `ConnectingCancelledError`. A RAID loser
    cancelled in that phase must not be logged as a failing node, and a timeout then must be
    labelled a timeout: whatever `inner` fails with once we cancelled it is consumed here.
    """
    cancelling = False

    def cancel(outer: defer.Deferred[T]) -> None:
        nonlocal cancelling
        cancelling = True
        inner.cancel()
        if not outer.called:
            outer.errback(defer.CancelledError())

    outer: defer.Deferred[T] = defer.Deferred(cancel)

    def settle(result: T | Failure) -> None:
        if cancelling or outer.called:
            return None  # consumed: we asked for this failure
        outer.callback(result)  # a Failure errbacks
        return None

    inner.addBoth(settle)
    return outer


def _is_stale_connection(exc: Exception) -> bool:
    # The server closed an idle keep-alive connection just as we reused it: nothing was
    # answered, so sending again (on a new connection) is safe for our idempotent requests.
    if isinstance(exc, ResponseNeverReceived | RequestTransmissionFailed):
        return any(reason.check(ConnectionDone, ConnectionLost) for reason in exc.reasons)
    return False


class HTTPBlockStore:
    """Base of the HTTP stores: pool, bounded operations, failure logging."""

    description: str

    def __init__(self, description: str, *, reactor: Any = None, timeout: float = 30.0) -> None:
        if reactor is None:
            # The global reactor only when none is given: importing it installs the default one.
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.description = description
        self._reactor: IReactorTime = reactor
        self._timeout = timeout
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = _MAX_IDLE_CONNECTIONS_PER_HOST
        self._pool.cachedConnectionTimeout = _IDLE_CONNECTION_SECONDS
        # cast: Agent declares IAgent with zope's @implementer, which mypy does not read.
        self._http = HTTPClient(cast(IAgent, Agent(reactor, pool=self._pool, connectTimeout=timeout)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"

    async def stop(self) -> None:
        await self._pool.closeCachedConnections()

    async def _send(
        self, method: str, url: str, headers: RequestHeaders, body: bytes | None = None
    ) -> HTTPReply:
        """One HTTP exchange, body read in full. Transport errors become HTTPStoreFailure."""
        for attempt in (1, 2):
            try:
                response = await cancellation_wins(
                    self._http.request(method, url, headers=headers, data=body, allow_redirects=False)
                )
                content = await cancellation_wins(response.content())
            except defer.CancelledError:
                raise
            except Exception as exc:
                if _is_cancellation(exc):
                    # The Agent reports its own cancellation wrapped; it is ours (timeout, RAID loser).
                    raise defer.CancelledError() from exc
                if attempt == 1 and _is_stale_connection(exc):
                    continue
                raise HTTPStoreFailure(f"{method} failed: {_describe_failure(exc)}") from exc
            phrase = response.phrase.decode("latin-1") if isinstance(response.phrase, bytes) else ""
            return HTTPReply(code=response.code, phrase=phrase, headers=response.headers, body=content)
        raise AssertionError("unreachable")

    async def _bounded(self, operation: Callable[[], Coroutine[Any, Any, T]], what: str) -> T:
        """Run `operation` within the timeout; any failure becomes a BlockStoreError naming the store.

        Cancellation from the caller (e.g. a RAID cancelling a losing node) is passed through as
        is: it is not a failure of this store.
        """
        deferred: defer.Deferred[T] = defer.Deferred.fromCoroutine(operation())
        deferred.addTimeout(self._timeout, self._reactor)
        try:
            return await deferred
        except defer.TimeoutError:
            raise BlockStoreError(self.description, f"{what}: no answer within {self._timeout:g} s") from None
        except HTTPStoreFailure as exc:
            raise BlockStoreError(self.description, f"{what}: {exc}") from None

    async def _block_operation(
        self,
        kind: Literal["read", "create"],
        organization_id: str,
        block_id: uuid.UUID,
        operation: Callable[[], Coroutine[Any, Any, T]],
    ) -> T:
        """`_bounded` plus the `Block read error` / `Block create error` log line on failure."""
        try:
            return await self._bounded(operation, kind)
        except BlockStoreError as exc:
            log_block_error(kind, exc, organization_id, block_id)
            raise

    async def _start_checked(self, check: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        """Start-up check; on failure the pool is closed so that nothing is left behind."""
        try:
            await self._bounded(check, what)
        except BaseException:
            await self.stop()
            raise


def error_reason(reply: HTTPReply, detail: str = "") -> str:
    reason = f"HTTP {reply.code} {reply.phrase}".rstrip()
    return f"{reason} ({detail})" if detail else reason
