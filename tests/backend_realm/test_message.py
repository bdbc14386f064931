"""message_get (docs/protocol/commands.md §7) and `message.received` (docs/protocol/events.md)."""

from __future__ import annotations

import pytest_twisted

ok = pytest_twisted.ensureDeferred


@ok
async def test_message_get(world):
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    bob2 = await world.connect("bob@dev2")
    carol = await world.connect("carol@dev1")
    assert await bob.cmd("message_get", offset=0) == {"status": "ok", "messages": []}
    await bob2.subscribe()
    realm_id = await world.create_realm(alice)
    stamps = []
    for index, role in enumerate(("READER", "CONTRIBUTOR", "MANAGER"), start=1):
        stamps.append(world.ts())
        await world.grant(alice, realm_id, "bob", role, timestamp=stamps[-1], message=f"m{index}".encode())
    expected = [
        {"count": i, "sender": "alice@dev1", "timestamp": stamps[i - 1], "body": f"m{i}".encode()} for i in (1, 2, 3)
    ]
    # Shared by every device of the user.
    for client in (bob, bob2):
        assert await client.cmd("message_get", offset=0) == {"status": "ok", "messages": expected}
    assert await bob.cmd("message_get", offset=1) == {"status": "ok", "messages": expected[1:]}
    assert await bob.cmd("message_get", offset=3) == {"status": "ok", "messages": []}
    assert await bob.cmd("message_get", offset=42) == {"status": "ok", "messages": []}
    # Other users have their own (empty) list.
    assert await carol.cmd("message_get", offset=0) == {"status": "ok", "messages": []}
    assert await alice.cmd("message_get", offset=0) == {"status": "ok", "messages": []}
    # The event index is the message's count.
    roles = ("READER", "CONTRIBUTOR", "MANAGER")
    events = []
    for index, role in enumerate(roles, start=1):
        events += [
            {"event": "realm.roles_updated", "realm_id": realm_id, "role": role},
            {"event": "message.received", "index": index},
        ]
    await world.expect_events(bob2, *events)


@ok
async def test_message_get_bad_message(world):
    bob = await world.connect("bob@dev1")
    rep = await bob.cmd("message_get", offset=-1)
    assert rep == {"status": "bad_message", "reason": "Invalid message.", "errors": {"offset": ["Invalid value."]}}
    rep = await bob.cmd("message_get")
    assert rep["status"] == "bad_message"
    rep = await bob.cmd("message_get", offset="0")
    assert rep["status"] == "bad_message"


@ok
async def test_messages_are_per_organization(world, other_org):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    await world.grant(alice, realm_id, "bob", "READER", message=b"hello bob")
    other_alice = await world.connect("alice@dev1", org=other_org)
    await other_org.new_user("alice@dev1", "bob@dev1")
    other_bob = await world.connect("bob@dev1", org=other_org)
    assert await other_bob.cmd("message_get", offset=0) == {"status": "ok", "messages": []}
    assert (await other_alice.cmd("message_get", offset=0))["messages"] == []
