"""A subscriber that does not listen cannot make the server hold its events without bound
(README.rst, Limits; issue: multi-MiB pings sat in every subscriber's queue, bounded by count
only). The queue is bounded in count (`event_queue_events`) and in bytes
(`event_queue_bytes`); beyond, new events are dropped, the oldest kept in order."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor, task

from tests.backend_realm.conftest import World, world_with_limits

ok = pytest_twisted.ensureDeferred

QUEUE = {"event_queue_events": 5, "event_queue_bytes": 4096}


@pytest_twisted.async_yield_fixture
async def small_queues(server_factory):
    world = await world_with_limits(server_factory, **QUEUE)
    yield world
    await world.close_clients()


def subscription(world: World, device_id: str) -> Any:
    (sub,) = [
        sub
        for sub in world.app.events._by_org[world.org.organization_id].values()
        if sub.ctx.device_id == device_id
    ]
    return sub


async def listen_read(sub: Any) -> None:
    """Until the server has read the `events_listen` just sent (its waiter is set)."""
    for _ in range(500):
        if sub.waiter is not None:
            return
        await task.deferLater(reactor, 0.01, lambda: None)


async def drain(client: Any) -> list[str]:
    pings = []
    while True:
        rep = await client.cmd("events_listen", wait=False)
        if rep["status"] == "no_events":
            return pings
        pings.append(rep["ping"])


@ok
async def test_queue_bounded_in_bytes(small_queues):
    world = small_queues
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    await bob.subscribe()
    texts = [f"{index}:" + "x" * 1000 for index in range(4)]
    for text in texts:
        assert await alice.cmd("ping", ping=text) == {"status": "ok", "pong": text}
    await world.settle()
    sub = subscription(world, "bob@dev1")
    assert 0 < sub.queued_bytes <= QUEUE["event_queue_bytes"]
    kept = await drain(bob)
    assert kept == texts[: len(kept)] and len(kept) == 3  # 3 pings of ~1 KiB fit in 4 KiB
    assert sub.queued_bytes == 0
    # Room again: new events are queued.
    assert await alice.cmd("ping", ping="after") == {"status": "ok", "pong": "after"}
    await world.settle()
    assert await drain(bob) == ["after"]


@ok
async def test_queue_bounded_in_count(small_queues):
    world = small_queues
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    await bob.subscribe()
    for index in range(12):
        assert (await alice.cmd("ping", ping=str(index)))["status"] == "ok"
    await world.settle()
    assert len(subscription(world, "bob@dev1").queue) == QUEUE["event_queue_events"]
    assert await drain(bob) == [str(index) for index in range(QUEUE["event_queue_events"])]


@ok
async def test_an_idle_subscription_holds_no_queue(small_queues):
    # An idle listener keeps neither an empty queue nor a coroutine (parsec.backend.events):
    # the queue exists while events wait, and a cancelled listen is skipped by the next event.
    world = small_queues
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    await bob.subscribe()
    sub = subscription(world, "bob@dev1")
    assert sub.queue is None
    assert (await alice.cmd("ping", ping="one"))["status"] == "ok"
    await world.settle()
    assert len(sub.queue) == 1
    assert await drain(bob) == ["one"]
    assert sub.queue is None and sub.queued_bytes == 0
    bob.send("events_listen", wait=True)
    await listen_read(sub)
    assert sub.waiter is not None and not sub.waiter.called
    bob.send("ping", ping="cancels the listen")
    bob.forget()
    assert await bob.recv() == {"status": "ok", "pong": "cancels the listen"}
    assert (await alice.cmd("ping", ping="two"))["status"] == "ok"
    await world.settle()
    assert await drain(bob) == ["two"]


@ok
async def test_an_idle_listener_keeps_autobahn_dict_in_its_small_table(small_queues):
    # An idle connection's largest object is the protocol's instance dict, which Autobahn fills
    # with some seventy attributes; ours are in slots (parsec.web.websocket). A dict's table of
    # 128 entries holds up to 85 keys: one more doubles it, 1.6 KB more per connection
    # (benchmarks/server_bench.py, idle). An attribute added past that must go in the slots.
    world = small_queues
    bob = await world.connect("bob@dev1")
    await bob.subscribe()
    bob.send("events_listen", wait=True)
    sub = subscription(world, "bob@dev1")
    await listen_read(sub)
    (proto,) = [p for p in world.server.service.ws_factory.connections if p._ctx is sub.ctx]
    assert len(proto.__dict__) <= 85, sorted(proto.__dict__)
