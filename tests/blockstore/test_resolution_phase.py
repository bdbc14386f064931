"""A store request cancelled or timed out while its connection still resolves the host name.

Twisted's HostnameEndpoint turns ANY failure of its name resolution, a cancellation included,
into `DNSLookupError("Couldn't find the hostname ...")`: a RAID read whose losing node was
still resolving `127.0.0.1` (the other nodes had already answered) was logged as that node's
failure, and a timeout in that phase was labelled a DNS failure too.

The stores here are real (the session's Swift + S3 on loopback); only the name resolution of
one of them is held back until the test lets it go (`HeldResolver`, which then asks the
reactor's own resolver), so that the request is reliably in that phase.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.interfaces import IHostnameResolver, IHostResolution, IReactorPluggableNameResolver
from zope.interface import implementer

from parsec.blockstore.base import BlockStoreError
from parsec.blockstore.raid import RAID1BlockStore
from parsec.blockstore.s3 import S3BlockStore
from parsec.blockstore.swift import SwiftBlockStore

from .conftest import ObjectStore

pytestmark = pytest.mark.objectstore

ORG = "resolution-phase"
BLOCK = os.urandom(4096)
SHORT_TIMEOUT = 0.5


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class HeldResolver:
    """Holds every resolution until `release()`, then (and from then on) asks the real resolver."""

    def __init__(self, real: IHostnameResolver) -> None:
        self._real = real
        self._held: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []
        self._released = False
        self.started = 0

    def resolveHostName(self, receiver: Any, hostName: str, *args: Any, **kwargs: Any) -> IHostResolution:
        self.started += 1
        if self._released:
            return self._real.resolveHostName(receiver, hostName, *args, **kwargs)
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        self._held.append((receiver, (hostName, *args), kwargs))
        return resolution

    def release(self) -> None:
        self._released = True
        held, self._held = self._held, []
        for receiver, args, kwargs in held:
            self._real.resolveHostName(receiver, *args, **kwargs)


@implementer(IReactorPluggableNameResolver)
class ReactorWithHeldResolver:
    """The global reactor, except for its name resolver."""

    def __init__(self) -> None:
        from twisted.internet import reactor

        self._reactor = reactor
        self.nameResolver = HeldResolver(reactor.nameResolver)

    def installNameResolver(self, resolver: IHostnameResolver) -> IHostnameResolver:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def block_events(logs: list[dict[str, Any]]) -> list[str]:
    return [
        f"{event.get('store')}: {event.get('reason')}"
        for event in logs
        if "Block" in str(event.get("log_format", "")) or event.get("log_failure") is not None
    ]


@pytest_twisted.async_yield_fixture
async def held() -> Any:
    reactor = ReactorWithHeldResolver()
    made: list[Any] = []
    yield reactor, made
    reactor.nameResolver.release()
    for store in made:
        await store.stop()


@pytest_twisted.ensureDeferred
async def test_raid_loser_cancelled_while_resolving_is_not_a_failure(
    objectstore: ObjectStore, held: Any, captured_logs: list[dict[str, Any]]
) -> None:
    reactor, made = held
    slow = S3BlockStore(objectstore.s3("node0"), reactor=reactor, timeout=30)
    fast = SwiftBlockStore(objectstore.swift("node1"), timeout=30)
    made += [slow, fast]
    block_id = uuid.uuid4()
    await fast.create(ORG, block_id, BLOCK)

    raid = RAID1BlockStore([slow, fast])
    assert await raid.read(ORG, block_id) == BLOCK
    assert reactor.nameResolver.started == 1  # the S3 node was still resolving: cancelled
    assert block_events(captured_logs) == []  # nothing logged against the S3 node
    # Resolved now: the node works (the cancellation left nothing broken behind).
    reactor.nameResolver.release()
    await slow.create(ORG, block_id, BLOCK)
    assert await slow.read(ORG, block_id) == BLOCK


@pytest_twisted.ensureDeferred
async def test_timeout_while_resolving_is_a_timeout(
    objectstore: ObjectStore, held: Any, captured_logs: list[dict[str, Any]]
) -> None:
    reactor, made = held
    store = S3BlockStore(objectstore.s3("node0"), reactor=reactor, timeout=SHORT_TIMEOUT)
    made.append(store)
    block_id = uuid.uuid4()
    with pytest.raises(BlockStoreError) as excinfo:
        await store.read(ORG, block_id)
    assert excinfo.value.reason == f"read: no answer within {SHORT_TIMEOUT:g} s"
    assert [event for event in block_events(captured_logs) if "DNS" in event] == []
    (logged,) = block_events(captured_logs)
    assert logged.endswith(f"read: no answer within {SHORT_TIMEOUT:g} s")


@pytest_twisted.ensureDeferred
async def test_caller_cancelling_while_resolving_gets_a_cancellation(objectstore: ObjectStore, held: Any) -> None:
    reactor, made = held
    store = S3BlockStore(objectstore.s3("node0"), reactor=reactor, timeout=30)
    made.append(store)
    reading = defer.Deferred.fromCoroutine(store.read(ORG, uuid.uuid4()))
    assert reactor.nameResolver.started == 1
    reading.cancel()
    with pytest.raises(defer.CancelledError):
        await reading
