"""Messages never grow past what `message_get` can send (README.rst, Limits; issue: 17 role
changes carrying 1 MiB messages made every `message_get` of the victim exceed the websocket
limit, for good).

* one message is at most `message_bytes` (`bad_message`);
* a user has at most `pending_messages` unread messages, `pending_message_bytes` of bodies:
  the role change or re-encryption start that would add one more gets `not_allowed` with a
  reason, and writes nothing;
* a message is unread until the user's devices ask `message_get` for an offset past it;
* a reply holds at most as much (from an older offset: the first ones).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest_twisted

from parsec.limits import DEFAULT as LIMITS
from tests.backend_realm.conftest import World, world_with_limits

ok = pytest_twisted.ensureDeferred

FULL = {"status": "not_allowed", "reason": "The recipient has too many unread messages"}
SMALL = {"pending_messages": 3, "pending_message_bytes": 1000}


@pytest_twisted.async_yield_fixture
async def small_world(server_factory):
    """The `world` of conftest on a server whose unread bounds are SMALL."""
    world = await world_with_limits(server_factory, **SMALL)
    await world.org.new_device("bob@dev1", "dev2")
    yield world
    await world.close_clients()


async def toggle(world: World, alice: Any, realm_id: Any, message: bytes, roles: list[str]) -> dict[str, Any]:
    """Change bob's role (READER <-> CONTRIBUTOR), sending `message`."""
    role = "CONTRIBUTOR" if roles[-1] == "READER" else "READER"
    rep = await world.share(alice, realm_id, "bob", role, message=message)
    if rep == {"status": "ok"}:
        roles.append(role)
    return rep


def bodies(rep: dict[str, Any]) -> list[bytes]:
    assert rep["status"] == "ok", rep
    return [m["body"] for m in rep["messages"]]


@ok
async def test_message_size(world):
    alice = await world.connect("alice@dev1")
    realm_id = await world.create_realm(alice)
    limit = LIMITS.message_bytes
    rep = await world.share(alice, realm_id, "bob", "READER", message=b"m" * (limit + 1))
    assert rep == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"recipient_message": [f"Longer than maximum length {limit}."]},
    }
    await world.grant(alice, realm_id, "bob", "READER", message=b"m" * limit)
    rep = await alice.cmd(
        "realm_start_reencryption_maintenance",
        realm_id=realm_id,
        encryption_revision=2,
        timestamp=world.ts(),
        per_participant_message={"alice": b"ok", "bob": b"m" * (limit + 1)},
    )
    assert rep["status"] == "bad_message" and "per_participant_message" in rep["errors"], rep


@ok
async def test_unread_messages_are_bounded_in_count(small_world):
    world = small_world
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    bob2 = await world.connect("bob@dev2")
    realm_id = await world.create_realm(alice)
    roles = ["READER"]
    await world.grant(alice, realm_id, "bob", "READER", message=b"1")
    assert await toggle(world, alice, realm_id, b"2", roles) == {"status": "ok"}
    assert await toggle(world, alice, realm_id, b"3", roles) == {"status": "ok"}
    # Full: refused, and nothing written (no role change either).
    assert await toggle(world, alice, realm_id, b"4", roles) == FULL
    assert len((await alice.cmd("realm_get_role_certificates", realm_id=realm_id))["certificates"]) == 4
    # A change without message is not concerned.
    assert await toggle(world, alice, realm_id, b"", roles) == {"status": "ok"}
    # Listing from an offset marks what comes before it read; bob's other device sees the same.
    assert bodies(await bob.cmd("message_get", offset=0)) == [b"1", b"2", b"3"]
    assert await toggle(world, alice, realm_id, b"4", roles) == FULL
    assert bodies(await bob2.cmd("message_get", offset=2)) == [b"3"]
    assert await toggle(world, alice, realm_id, b"4", roles) == {"status": "ok"}
    assert await toggle(world, alice, realm_id, b"5", roles) == {"status": "ok"}
    assert await toggle(world, alice, realm_id, b"6", roles) == FULL
    # An older offset does not move the mark back.
    assert bodies(await bob.cmd("message_get", offset=0)) == [b"1", b"2", b"3"]  # at most 3
    assert await toggle(world, alice, realm_id, b"6", roles) == FULL
    assert bodies(await bob.cmd("message_get", offset=5)) == []
    assert await toggle(world, alice, realm_id, b"6", roles) == {"status": "ok"}


@ok
async def test_unread_messages_are_bounded_in_bytes(small_world):
    world = small_world
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    roles = ["READER"]
    await world.grant(alice, realm_id, "bob", "READER", message=b"a" * 600)
    assert await toggle(world, alice, realm_id, b"b" * 401, roles) == FULL
    assert await toggle(world, alice, realm_id, b"b" * 400, roles) == {"status": "ok"}
    assert bodies(await bob.cmd("message_get", offset=2)) == []
    assert await toggle(world, alice, realm_id, b"c" * 1000, roles) == {"status": "ok"}
    # From offset 0 the reply stops before going over the size bound.
    assert bodies(await bob.cmd("message_get", offset=0)) == [b"a" * 600, b"b" * 400]
    # A reply always holds at least one message.
    assert bodies(await bob.cmd("message_get", offset=2)) == [b"c" * 1000]


@ok
async def test_reencryption_start_refused_when_a_participant_is_full(small_world):
    world = small_world
    alice = await world.connect("alice@dev1")
    bob = await world.connect("bob@dev1")
    realm_id = await world.create_realm(alice)
    roles = ["READER"]
    await world.grant(alice, realm_id, "bob", "READER", message=b"1")
    await toggle(world, alice, realm_id, b"2", roles)
    await toggle(world, alice, realm_id, b"3", roles)

    async def start() -> dict[str, Any]:
        return await alice.cmd(
            "realm_start_reencryption_maintenance",
            realm_id=realm_id,
            encryption_revision=2,
            timestamp=world.ts() + timedelta(milliseconds=1),
            per_participant_message={"alice": b"key", "bob": b"key"},
        )

    assert await start() == FULL
    status = await alice.cmd("realm_status", realm_id=realm_id)
    assert status["in_maintenance"] is False and status["encryption_revision"] == 1, status
    assert bodies(await bob.cmd("message_get", offset=3)) == []
    assert await start() == {"status": "ok"}
    assert bodies(await bob.cmd("message_get", offset=3)) == [b"key"]
