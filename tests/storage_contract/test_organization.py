"""OrganizationStorage contract: creation and re-creation, spontaneous creation, updates (the
expiration event), bootstrap and its checks in order, stats."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.backend.models import Organization, OrganizationStats
from parsec.backend.storage import (
    ActiveUsersLimitReachedError,
    AlreadyBootstrappedError,
    AlreadyExistsError,
    NotFoundError,
)
from tests.storage_contract.conftest import EPOCH, Backend, World, make_device, make_user

ok = pytest_twisted.ensureDeferred


def _name() -> str:
    return f"Org{uuid4().hex[:12]}"


@ok
async def test_create_get_and_recreate(backend: Backend) -> None:
    orgs = backend.storage.organization
    org = _name()
    with pytest.raises(NotFoundError):
        await orgs.get(org)
    await orgs.create(org, "token1", 5, False, EPOCH)
    assert await orgs.get(org) == Organization(
        organization_id=org,
        bootstrap_token="token1",
        active_users_limit=5,
        user_profile_outsider_allowed=False,
        created_on=EPOCH,
    )
    # Not bootstrapped: created again from scratch (new token, configuration reset, not expired).
    await orgs.update(org, is_expired=True)
    later = EPOCH + timedelta(hours=1)
    await orgs.create(org, "token2", None, True, later)
    assert await orgs.get(org) == Organization(
        organization_id=org, bootstrap_token="token2", active_users_limit=None, created_on=later
    )
    alice, alice_dev1 = make_user("alice", "ADMIN", certifier=None)
    await orgs.bootstrap(org, "token2", b"rvk", alice, alice_dev1, later)
    with pytest.raises(AlreadyExistsError):
        await orgs.create(org, "token3", None, True, later)
    assert (await orgs.get(org)).bootstrap_token == "token2"
    # The largest limits are kept as given (or clamped to what msgpack can send back).
    big = _name()
    await orgs.create(big, "t", 2**70, True, EPOCH)
    assert (await orgs.get(big)).active_users_limit == 2**63 - 1


@ok
async def test_create_if_missing(backend: Backend) -> None:
    orgs = backend.storage.organization
    org = _name()
    created = await orgs.create_if_missing(org, "", EPOCH, 3, False)
    assert created == Organization(
        organization_id=org, bootstrap_token="", active_users_limit=3, user_profile_outsider_allowed=False,
        created_on=EPOCH,
    )
    # Existing: returned as it is, whatever the arguments.
    assert await orgs.create_if_missing(org, "other", EPOCH + timedelta(days=1), None, True) == created


@ok
async def test_update_and_its_event(world: World) -> None:
    orgs, org = world.organization, world.org
    assert await world.published(orgs.update(org, is_expired=True)) == (None, [("organization.expired", {})])
    assert (await orgs.get(org)).is_expired is True
    # Published whenever the field is set to true, not for other changes.
    assert await world.published(orgs.update(org, is_expired=True)) == (None, [("organization.expired", {})])
    assert await world.published(orgs.update(org, is_expired=False, active_users_limit=7)) == (None, [])
    after = await orgs.get(org)
    assert (after.is_expired, after.active_users_limit, after.user_profile_outsider_allowed) == (False, 7, True)
    await orgs.update(org, user_profile_outsider_allowed=False)
    await orgs.update(org, active_users_limit=None)
    after = await orgs.get(org)
    assert (after.is_expired, after.active_users_limit, after.user_profile_outsider_allowed) == (False, None, False)
    await orgs.update(org)  # nothing to change: still fine
    error, events = await world.published(orgs.update(_name(), is_expired=True))
    assert isinstance(error, NotFoundError) and events == []


@ok
async def test_bootstrap_checks_in_order(backend: Backend) -> None:
    orgs, users = backend.storage.organization, backend.storage.user
    alice, alice_dev1 = make_user("alice", "ADMIN", certifier=None, email="alice@example.com")
    with pytest.raises(NotFoundError):
        await orgs.bootstrap(_name(), "token", b"rvk", alice, alice_dev1, EPOCH)
    org = _name()
    await orgs.create(org, "token", 0, True, EPOCH)
    with pytest.raises(NotFoundError):  # wrong token, before the limit
        await orgs.bootstrap(org, "not the token", b"rvk", alice, alice_dev1, EPOCH)
    with pytest.raises(ActiveUsersLimitReachedError):
        await orgs.bootstrap(org, "token", b"rvk", alice, alice_dev1, EPOCH)
    with pytest.raises(NotFoundError):
        await users.get_user(org, "alice")
    await orgs.update(org, active_users_limit=1)
    bootstrapped_on = EPOCH + timedelta(minutes=1)
    await orgs.bootstrap(org, "token", b"rvk", alice, alice_dev1, bootstrapped_on)
    stored = await orgs.get(org)
    assert (stored.root_verify_key, stored.bootstrapped_on, stored.is_bootstrapped) == (b"rvk", bootstrapped_on, True)
    assert await users.get_user(org, "alice") == alice
    identity = await users.get_authenticated_identity(org, "alice@dev1")
    assert (identity.organization, identity.user, identity.device) == (stored, alice, alice_dev1)
    with pytest.raises(AlreadyBootstrappedError):  # before the token check
        await orgs.bootstrap(org, "not the token", b"rvk2", *make_user("bob"), EPOCH)


@ok
async def test_stats(world: World) -> None:
    org = world.org
    assert await world.organization.stats(org, EPOCH) == OrganizationStats(
        data_size=0,
        metadata_size=0,
        realms=0,
        users=4,
        active_users=4,
        users_per_profile_detail=[("ADMIN", 1, 0), ("STANDARD", 2, 0), ("OUTSIDER", 1, 0)],
    )
    realm_id = await world.create_realm("alice@dev1")
    await world.create_vlob("alice@dev1", realm_id, b"12345")
    block_id = uuid4()
    claim = await world.block.claim_create(org, "alice@dev1", realm_id, block_id, world.ts(), 300.0)
    await world.block.record_create(org, "alice@dev1", realm_id, block_id, 100, world.ts(), claim)
    await world.revoke("carol", world.ts(), "alice@dev1")
    await world.user.create_user(org, *make_user("olga", "OUTSIDER", created_on=world.ts()), world.ts())
    await world.user.create_device(org, make_device("olga@dev2"))
    stats = await world.organization.stats(org, world.ts())
    assert stats == OrganizationStats(
        data_size=100,
        metadata_size=5,
        realms=1,
        users=5,
        active_users=4,
        users_per_profile_detail=[("ADMIN", 1, 0), ("STANDARD", 1, 1), ("OUTSIDER", 2, 0)],
    )
    with pytest.raises(NotFoundError):
        await world.organization.stats(_name(), EPOCH)


@ok
async def test_reads_and_creations_publish_nothing(backend: Backend) -> None:
    world = World(backend, _name())
    orgs = backend.storage.organization
    for call in (
        orgs.create(world.org, "token", None, True, EPOCH),
        orgs.create_if_missing(world.org, "", EPOCH, None, True),
        orgs.get(world.org),
        orgs.bootstrap(world.org, "token", b"rvk", *make_user("alice", "ADMIN", certifier=None), EPOCH),
        orgs.stats(world.org, EPOCH),
    ):
        result, events = await world.published(call)
        assert not isinstance(result, Exception) and events == [], result
