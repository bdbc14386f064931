"""events_subscribe / events_listen with the realm events (docs/protocol/events.md)."""

from __future__ import annotations

import pytest_twisted

ok = pytest_twisted.ensureDeferred


@ok
async def test_listen_without_wait(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    await alice2.subscribe()
    assert await alice2.cmd("events_listen", wait=False) == {"status": "no_events"}
    realm_id = await world.create_realm(alice)
    # The in-memory bus delivers before the reply; other buses may need a moment, so wait
    # for the event once, then the queue is empty again.
    assert await alice2.next_event() == {"event": "realm.roles_updated", "realm_id": realm_id, "role": "OWNER"}
    assert await alice2.cmd("events_listen", wait=False) == {"status": "no_events"}


@ok
async def test_listen_waits_for_the_event(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    await alice2.subscribe()
    alice2.send("events_listen", wait=True)
    realm_id = await world.create_realm(alice)
    assert await alice2.recv() == {
        "status": "ok",
        "event": "realm.roles_updated",
        "realm_id": realm_id,
        "role": "OWNER",
    }


@ok
async def test_new_request_cancels_listen_without_reply(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    await alice2.subscribe()
    alice2.send("events_listen", wait=True)
    # The next request is answered; the listen never is.
    alice2.send("ping", ping="hi")
    alice2.forget()
    assert await alice2.recv() == {"status": "ok", "pong": "hi"}
    # The event produced afterwards stays queued for the next listen.
    realm_id = await world.create_realm(alice)
    await world.expect_events(alice2, {"event": "realm.roles_updated", "realm_id": realm_id, "role": "OWNER"})


@ok
async def test_events_before_subscription_are_not_delivered(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    await world.create_realm(alice)
    await alice2.subscribe()
    await world.sync(alice2)


@ok
async def test_resubscribe_changes_nothing(world):
    alice = await world.connect("alice@dev1")
    alice2 = await world.connect("alice@dev2")
    await alice2.subscribe()
    realm_id = await world.create_realm(alice)
    await alice2.subscribe()
    vlob_id = await world.create_vlob(alice, realm_id)
    await world.expect_events(
        alice2,
        {"event": "realm.roles_updated", "realm_id": realm_id, "role": "OWNER"},
        {"event": "realm.vlobs_updated", "realm_id": realm_id, "checkpoint": 1, "src_id": vlob_id, "src_version": 1},
    )


@ok
async def test_watched_realms_follow_roles(world):
    """Realms where the user had a role at subscription, gained later, or lost."""
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    bob2 = await world.connect("bob@dev2")
    old_realm = await world.create_realm(alice)
    await world.grant(alice, old_realm, "bob", "READER")
    await bob2.subscribe()
    # Already a member when subscribing.
    v1 = await world.create_vlob(alice, old_realm)
    await world.expect_events(
        bob2,
        {"event": "realm.vlobs_updated", "realm_id": old_realm, "checkpoint": 1, "src_id": v1, "src_version": 1},
    )
    # A realm created by bob's other device after the subscription.
    new_realm = await world.create_realm(bob)
    v2 = await world.create_vlob(bob, new_realm)
    await world.expect_events(
        bob2,
        {"event": "realm.roles_updated", "realm_id": new_realm, "role": "OWNER"},
        {"event": "realm.vlobs_updated", "realm_id": new_realm, "checkpoint": 1, "src_id": v2, "src_version": 1},
    )
    # A realm shared after the subscription.
    shared = await world.create_realm(alice)
    await world.grant(alice, shared, "bob", "READER")
    v3 = await world.create_vlob(alice, shared)
    await world.expect_events(
        bob2,
        {"event": "realm.roles_updated", "realm_id": shared, "role": "READER"},
        {"event": "realm.vlobs_updated", "realm_id": shared, "checkpoint": 1, "src_id": v3, "src_version": 1},
    )
    # Access removed: no more vlob nor maintenance events from that realm.
    await world.grant(alice, old_realm, "bob", None)
    await world.create_vlob(alice, old_realm)
    rep = await alice.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=old_realm,
        encryption_revision=2,
        timestamp=world.ts(),
        per_participant_message={"alice": b""},
    )
    assert rep == {"status": "ok"}
    await world.expect_events(bob2, {"event": "realm.roles_updated", "realm_id": old_realm, "role": None})


@ok
async def test_events_stay_in_their_organization(world, other_org):
    """Same user and device ids in two organizations: nothing crosses."""
    alice2 = await world.connect("alice@dev2")
    bob = await world.connect("bob@dev1")
    await alice2.subscribe()
    await bob.subscribe()
    await other_org.new_device("alice@dev1", "dev2")
    await other_org.new_user("alice@dev1", "bob@dev1")
    other_alice = await world.connect("alice@dev1", org=other_org)
    other_alice2 = await world.connect("alice@dev2", org=other_org)
    await other_alice2.subscribe()
    realm_id = await world.create_realm(other_alice)
    await world.grant(other_alice, realm_id, "bob", "READER", message=b"hi")
    vlob_id = await world.create_vlob(other_alice, realm_id)
    rep = await other_alice.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=2,
        timestamp=world.ts(),
        per_participant_message={"alice": b"", "bob": b""},
    )
    assert rep == {"status": "ok"}
    # The other organization's own device did hear them ...
    assert await other_alice2.next_event() == {"event": "realm.roles_updated", "realm_id": realm_id, "role": "OWNER"}
    assert (await other_alice2.next_event())["src_id"] == vlob_id
    # ... this organization's homonyms did not.
    await world.sync(alice2)
    await world.sync(bob)
