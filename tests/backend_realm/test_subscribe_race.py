"""`events_subscribe` loads the user's realms while role changes keep coming (issue: on
PostgreSQL a role removed while the realms loaded was re-added by the stale load, and the
former member kept receiving that realm's events)."""

from __future__ import annotations

from typing import Any

import pytest_twisted

ok = pytest_twisted.ensureDeferred


@ok
async def test_role_removed_while_the_realms_load(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "CONTRIBUTOR")
    await world.settle()

    realms = world.app.storage.realm
    load = realms.get_realms_for_user
    events = world.app.events

    async def stale_load(organization_id: str, user_id: str) -> Any:
        loaded = await load(organization_id, user_id)
        assert realm_id in loaded  # the load saw bob's role...
        # ... which is removed before the load's result is used, its event routed.
        await world.grant(alice, realm_id, "bob", None)
        await world.settle()
        return loaded

    realms.get_realms_for_user = stale_load
    try:
        await bob.subscribe()
    finally:
        del realms.get_realms_for_user
    sub = events._by_org[world.org.organization_id][_conn_id(world, bob)]
    assert realm_id not in sub.realms
    assert await bob.next_event() == {"event": "realm.roles_updated", "realm_id": realm_id, "role": None}
    # The realm's activity no longer reaches bob: the next event is the sync ping.
    await world.create_vlob(alice, realm_id)
    await world.settle()
    await world.sync(bob)


@ok
async def test_role_granted_while_the_realms_load(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    realms = world.app.storage.realm
    load = realms.get_realms_for_user

    async def stale_load(organization_id: str, user_id: str) -> Any:
        loaded = await load(organization_id, user_id)
        assert realm_id not in loaded
        await world.grant(alice, realm_id, "bob", "READER")
        await world.settle()
        return loaded

    realms.get_realms_for_user = stale_load
    try:
        await bob.subscribe()
    finally:
        del realms.get_realms_for_user
    assert await bob.next_event() == {"event": "realm.roles_updated", "realm_id": realm_id, "role": "READER"}
    vlob_id = await world.create_vlob(alice, realm_id)
    event = await bob.next_event()
    assert event["event"] == "realm.vlobs_updated" and event["src_id"] == vlob_id, event


def _conn_id(world: Any, client: Any) -> int:
    """The server-side connection id of `client` (its only subscribed connection)."""
    subs = world.app.events._by_org[world.org.organization_id]
    (conn_id,) = [cid for cid, sub in subs.items() if sub.ctx.device_id == client.device_id]
    return int(conn_id)
