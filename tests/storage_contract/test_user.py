"""UserStorage contract: the handshake lookup, user and device creation (checks in order,
events), revocation, the trustchain, human_find and the e-mail check."""

from __future__ import annotations

from datetime import timedelta

import attrs
import pytest
import pytest_twisted

from parsec.backend.models import HumanFindResult
from parsec.backend.storage import (
    ActiveUsersLimitReachedError,
    AlreadyExistsError,
    AlreadyRevokedError,
    NotFoundError,
)
from tests.storage_contract.conftest import EPOCH, World, make_device, make_user

ok = pytest_twisted.ensureDeferred


@ok
async def test_authenticated_identity(world: World) -> None:
    identity = await world.user.get_authenticated_identity(world.org, "bob@dev2")
    assert identity.organization == await world.organization.get(world.org)
    assert identity.user == await world.user.get_user(world.org, "bob")
    assert identity.device == make_device("bob@dev2")
    for org, device_id in ((world.org, "bob@dev3"), (world.org, "nobody@dev1"), ("NoSuchOrg", "bob@dev1")):
        with pytest.raises(NotFoundError):
            await world.user.get_authenticated_identity(org, device_id)


@ok
async def test_create_user_checks_in_order_and_event(world: World) -> None:
    users, org = world.user, world.org
    now = world.ts()
    dan, dan_dev1 = make_user("dan", email="dan@example.com")
    assert await world.published(users.create_user(org, dan, dan_dev1, now)) == (
        None,
        [("user.created", {"user_id": "dan"})],
    )
    assert await users.get_user(org, "dan") == dan
    # Limit first, then the user id, the human handle (held by a user not revoked at `now`),
    # the device id; a refused creation writes and publishes nothing.
    await world.organization.update(org, active_users_limit=5)
    error, events = await world.published(users.create_user(org, *make_user("dan"), now))
    assert isinstance(error, ActiveUsersLimitReachedError) and events == []
    await world.organization.update(org, active_users_limit=None)
    error, events = await world.published(users.create_user(org, *make_user("dan"), now))
    assert isinstance(error, AlreadyExistsError) and events == []
    assert error.reason == "User `dan` already exists"
    eve, _ = make_user("eve", email="dan@example.com")
    with pytest.raises(AlreadyExistsError) as raised:
        await users.create_user(org, eve, make_device("eve@dev1"), now)
    assert raised.value.reason == "Human handle `Dan <dan@example.com>` already corresponds to a non-revoked user"
    with pytest.raises(AlreadyExistsError) as raised:
        await users.create_user(org, make_user("eve")[0], make_device("dan@dev1"), now)
    assert raised.value.reason == "Device `dan@dev1` already exists"
    with pytest.raises(NotFoundError):
        await users.get_user(org, "eve")

    # The human handle is free again once its user is revoked (as of `now`).
    await world.revoke("dan", now + timedelta(seconds=10), "alice@dev1")
    with pytest.raises(AlreadyExistsError):
        await users.create_user(org, eve, make_device("eve@dev1"), now)
    await users.create_user(org, eve, make_device("eve@dev1"), now + timedelta(seconds=10))
    assert await users.get_user(org, "eve") == eve


@ok
async def test_create_device_and_event(world: World) -> None:
    users, org = world.user, world.org
    device = make_device("carol@dev2", certifier="carol@dev1")
    assert await world.published(users.create_device(org, device)) == (
        None,
        [("device.created", {"device_id": "carol@dev2"})],
    )
    assert (await users.get_authenticated_identity(org, "carol@dev2")).device == device
    error, events = await world.published(users.create_device(org, device))
    assert isinstance(error, AlreadyExistsError) and events == []
    assert error.reason == "Device `carol@dev2` already exists"
    with pytest.raises(NotFoundError):  # the user vanished
        await users.create_device(org, make_device("nobody@dev1"))


@ok
async def test_revoke_user_and_event(world: World) -> None:
    users, org = world.user, world.org
    revoked_on = world.ts()
    assert await world.published(users.revoke_user(org, "bob", b"revoked bob", "alice@dev2", revoked_on)) == (
        None,
        [("user.revoked", {"user_id": "bob", "revoked_on": revoked_on})],
    )
    bob = await users.get_user(org, "bob")
    assert (bob.revoked_on, bob.revoked_user_certificate, bob.revoked_user_certifier) == (
        revoked_on,
        b"revoked bob",
        "alice@dev2",
    )
    assert bob.is_revoked(revoked_on) and not bob.is_revoked(revoked_on - timedelta(microseconds=1))
    error, events = await world.published(users.revoke_user(org, "bob", b"again", "alice@dev1", world.ts()))
    assert isinstance(error, AlreadyRevokedError) and events == []
    assert (await users.get_user(org, "bob")).revoked_user_certificate == b"revoked bob"
    with pytest.raises(NotFoundError):
        await users.revoke_user(org, "nobody", b"x", "alice@dev1", world.ts())
    with pytest.raises(NotFoundError):
        await users.get_user(org, "nobody")


@ok
async def test_user_with_trustchain(world: World) -> None:
    users, org = world.user, world.org
    # bob@dev1 certifies frank; alice@dev2 certifies frank's second device; frank is revoked by
    # carol@dev1 (certified by alice@dev1, as everyone else).
    frank, frank_dev1 = make_user("frank", certifier="bob@dev1", created_on=world.ts())
    await users.create_user(org, frank, frank_dev1, world.ts())
    await users.create_device(org, make_device("frank@dev2", certifier="alice@dev2", created_on=world.ts()))
    await world.revoke("frank", world.ts(), "carol@dev1")
    result = await users.get_user_with_trustchain(org, "frank")
    assert result.user == await users.get_user(org, "frank")
    assert [d.device_id for d in result.devices] == ["frank@dev1", "frank@dev2"]
    assert sorted(d.device_id for d in result.trustchain_devices) == [
        "alice@dev1",
        "alice@dev2",
        "bob@dev1",
        "carol@dev1",
    ]
    assert sorted(u.user_id for u in result.trustchain_users) == ["alice", "bob", "carol"]
    # The revoker of a user of the chain is in the chain too (ruth, who revokes bob).
    await world.add_user("ruth@dev1")
    await world.revoke("bob", world.ts(), "ruth@dev1")
    result = await users.get_user_with_trustchain(org, "frank")
    assert sorted(d.device_id for d in result.trustchain_devices) == [
        "alice@dev1",
        "alice@dev2",
        "bob@dev1",
        "carol@dev1",
        "ruth@dev1",
    ]
    assert sorted(u.user_id for u in result.trustchain_users) == ["alice", "bob", "carol", "ruth"]
    # alice was certified by the root: her chain is empty.
    alice = await users.get_user_with_trustchain(org, "alice")
    assert [d.device_id for d in alice.devices] == ["alice@dev1", "alice@dev2"]
    assert sorted(d.device_id for d in alice.trustchain_devices) == ["alice@dev1"]  # certified dev2
    assert [u.user_id for u in alice.trustchain_users] == ["alice"]
    with pytest.raises(NotFoundError):
        await users.get_user_with_trustchain(org, "nobody")


@ok
async def test_find_humans(world: World) -> None:
    users, org = world.user, world.org
    now = world.ts()
    for user_id, email, label in (
        ("h1", "zed@example.com", "anna Smith"),
        ("h2", "anna@example.com", "Bob Jones"),
        ("h3", "x@other.org", "Émile Zola"),
        ("h4", "y@other.org", "Zoé Anna"),
    ):
        user, device = make_user(user_id, email=email)
        await users.create_user(org, attrs.evolve(user, human_handle=(email, label)), device, now)
    await world.revoke("h2", now, "alice@dev1")
    await world.revoke("h4", now + timedelta(days=1), "alice@dev1")  # not yet

    async def find(query, omit_revoked=False, omit_non_human=False, page=1, per_page=100):
        found, total = await users.find_humans(org, query, omit_revoked, omit_non_human, page, per_page, now)
        return [(r.user_id, r.revoked) for r in found], total

    # Humans by lower-cased label then user id, then the non-humans by id (no query only).
    assert await find(None) == (
        [
            ("h1", False),
            ("h2", True),
            ("h4", False),
            ("h3", False),
            ("alice", False),
            ("bob", False),
            ("carol", False),
            ("zoe", False),
        ],
        8,
    )
    assert await find(None, omit_non_human=True) == ([("h1", False), ("h2", True), ("h4", False), ("h3", False)], 4)
    assert await find(None, omit_revoked=True, omit_non_human=True) == (
        [("h1", False), ("h4", False), ("h3", False)],
        3,
    )
    # A query matches label or e-mail, case-insensitively (case folding), never a non-human.
    assert await find("ANNA") == ([("h1", False), ("h2", True), ("h4", False)], 3)
    assert await find("other.ORG") == ([("h4", False), ("h3", False)], 2)
    assert await find("émile") == ([("h3", False)], 1)
    assert await find("nobody") == ([], 0)
    # Pages: the total counts every match.
    assert await find(None, page=2, per_page=3) == ([("h3", False), ("alice", False), ("bob", False)], 8)
    assert await find(None, page=4, per_page=3) == ([], 8)
    assert await find("anna", page=2, per_page=2) == ([("h4", False)], 3)
    result, _ = await users.find_humans(org, "smith", False, False, 1, 10, now)
    assert result == [HumanFindResult("h1", ("zed@example.com", "anna Smith"), False)]


@ok
async def test_is_email_used_by_active_user(world: World) -> None:
    users, org = world.user, world.org
    await users.create_user(org, *make_user("gus", email="gus@example.com"), EPOCH)
    assert await users.is_email_used_by_active_user(org, "gus@example.com", EPOCH) is True
    assert await users.is_email_used_by_active_user(org, "GUS@example.com", EPOCH) is False  # exact match
    assert await users.is_email_used_by_active_user(org, "nobody@example.com", EPOCH) is False
    revoked_on = world.ts()
    await world.revoke("gus", revoked_on, "alice@dev1")
    assert await users.is_email_used_by_active_user(org, "gus@example.com", revoked_on - timedelta(seconds=1))
    assert await users.is_email_used_by_active_user(org, "gus@example.com", revoked_on) is False


@ok
async def test_reads_publish_nothing(world: World) -> None:
    users, org = world.user, world.org
    for call in (
        users.get_authenticated_identity(org, "bob@dev1"),
        users.get_user(org, "bob"),
        users.get_user_with_trustchain(org, "bob"),
        users.find_humans(org, None, False, False, 1, 10, EPOCH),
        users.is_email_used_by_active_user(org, "x@example.com", EPOCH),
    ):
        result, events = await world.published(call)
        assert not isinstance(result, Exception) and events == [], result
