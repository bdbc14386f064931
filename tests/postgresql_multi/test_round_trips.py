"""Round trips of the organization, user, invitation and PKI storages (one per request, except
the conduit and the bootstrap), counted on the connections of a pool, plus a storage-level walk through each
method (the wire-level suite covers their behaviour against memory's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.backend.conduit import FIRST_STEP
from parsec.backend.models import Device, User
from parsec.backend.storage import (
    AlreadyBootstrappedError,
    AlreadyExistsError,
    NotFoundError,
    PkiAcceptance,
    PkiEnrollment,
)
from parsec.storage.postgresql.invite import PgInviteStorage
from parsec.storage.postgresql.organization import PgOrganizationStorage
from parsec.storage.postgresql.pki import PgPkiStorage
from parsec.storage.postgresql.user import PgUserStorage
from tests.support import CountingPool

ok = pytest_twisted.ensureDeferred

NOW = datetime(2024, 6, 1, tzinfo=UTC)
ORG = "RoundTrips"


def user(user_id: str, email: str | None = None, certifier: str | None = "alice@dev1", profile: str = "STANDARD") -> User:
    return User(
        user_id=user_id,
        profile=profile,
        user_certificate=f"uc {user_id}".encode(),
        redacted_user_certificate=f"ruc {user_id}".encode(),
        user_certifier=certifier,
        created_on=NOW,
        human_handle=(email, email.split("@")[0].title()) if email else None,
        public_key=b"pk",
    )


def device(device_id: str, certifier: str | None = "alice@dev1") -> Device:
    return Device(
        device_id=device_id,
        verify_key=b"vk",
        device_certificate=f"dc {device_id}".encode(),
        redacted_device_certificate=f"rdc {device_id}".encode(),
        device_certifier=certifier,
        created_on=NOW,
        device_label=None,
    )


@pytest_twisted.async_yield_fixture
async def pool(database: str) -> Any:
    # One connection: a prepared statement is PREPAREd once, on the first call.
    pool = CountingPool(database, min_connections=1, max_connections=1, max_connection_attempts=1)
    await pool.start()
    yield pool
    await pool.close()


@ok
async def test_round_trips_per_method(pool: CountingPool) -> None:
    orgs = PgOrganizationStorage(pool)
    users = PgUserStorage(pool)
    invites = PgInviteStorage(pool)
    pki = PgPkiStorage(pool)
    trips = pool.trips

    # ---- organizations
    assert await trips(orgs.create(ORG, "token", 3, True, NOW)) == (1, None)
    assert (await trips(orgs.get(ORG)))[0] == 2  # PREPARE (first use on this connection) + EXECUTE
    assert (await trips(orgs.get(ORG)))[0] == 1
    assert (await trips(orgs.create_if_missing(ORG, "", NOW, None, True)))[0] == 1
    assert await trips(orgs.update(ORG, active_users_limit=None)) == (1, None)
    alice, alice_dev = user("alice", "alice@example.com", None, "ADMIN"), device("alice@dev1", None)
    # Two: the token is read and compared in constant time, then the bootstrap is written.
    assert await trips(orgs.bootstrap(ORG, "token", b"rvk", alice, alice_dev, NOW)) == (2, None)
    count, error = await trips(orgs.bootstrap(ORG, "token", b"rvk", alice, alice_dev, NOW))
    assert count == 1 and isinstance(error, AlreadyBootstrappedError)
    count, stats = await trips(orgs.stats(ORG, NOW))
    assert count == 1 and stats.users == 1 and stats.active_users == 1

    # ---- users: the handshake lookup is one statement joining organization, user_, device
    before = len(pool.sent)
    identity = await users.get_authenticated_identity(ORG, "alice@dev1")
    lookup = pool.sent[before:]
    assert len(lookup) == 2 and lookup[0].startswith("PREPARE")  # first use on this connection
    assert all(table in lookup[0] for table in ("FROM device", "JOIN user_", "JOIN organization"))
    assert identity.user.human_handle == ("alice@example.com", "Alice")
    assert (await trips(users.get_authenticated_identity(ORG, "alice@dev1")))[0] == 1
    assert await trips(users.create_user(ORG, user("bob", "bob@example.com"), device("bob@dev1"), NOW)) == (1, None)
    count, error = await trips(users.create_user(ORG, user("bob"), device("bob@dev9"), NOW))
    assert count == 1 and isinstance(error, AlreadyExistsError) and error.reason == "User `bob` already exists"
    assert await trips(users.create_device(ORG, device("bob@dev2", "bob@dev1"))) == (1, None)
    count, error = await trips(users.create_device(ORG, device("nobody@dev1")))
    assert count == 1 and isinstance(error, NotFoundError)
    assert await trips(users.revoke_user(ORG, "bob", b"revoked", "alice@dev1", NOW)) == (1, None)
    count, bob = await trips(users.get_user(ORG, "bob"))
    assert count == 1 and bob.revoked_on == NOW
    count, chain = await trips(users.get_user_with_trustchain(ORG, "bob"))
    assert count == 1
    assert [d.device_id for d in chain.devices] == ["bob@dev1", "bob@dev2"]
    assert [d.device_id for d in chain.trustchain_devices] == ["alice@dev1", "bob@dev1"]
    assert [u.user_id for u in chain.trustchain_users] == ["alice", "bob"]
    count, (found, total) = await trips(users.find_humans(ORG, "EXAMPLE", False, False, 1, 10, NOW))
    assert count == 1 and total == 2 and [r.user_id for r in found] == ["alice", "bob"]
    assert await trips(users.is_email_used_by_active_user(ORG, "bob@example.com", NOW)) == (1, False)

    # ---- invitations
    count, invitation = await trips(invites.new(ORG, "alice", None, "DEVICE", None, NOW))
    assert count == 1
    token = invitation.token
    assert (await trips(invites.new(ORG, "alice", None, "DEVICE", None, NOW)))[1].token == token  # idempotent
    assert (await trips(invites.info(ORG, token)))[0] == 2  # PREPARE + EXECUTE
    assert (await trips(invites.info(ORG, token)))[0] == 1
    count, listed = await trips(invites.list(ORG, "alice"))
    assert count == 1 and [i.token for i in listed] == [token]
    count, ctx = await trips(invites.conduit_talk(ORG, token, "alice", FIRST_STEP, b"greeter key"))
    assert count == 2  # BEGIN + SELECT ... FOR UPDATE, then UPDATE + COMMIT
    assert await trips(invites.conduit_listen(ORG, token, "alice", ctx)) == (1, (None, False))  # peer silent
    count, claimer_ctx = await trips(invites.conduit_talk(ORG, token, None, FIRST_STEP, b"claimer key"))
    assert count == 2
    # The claimer spoke second: it waits for the greeter to advance the conduit.
    assert await trips(invites.conduit_listen(ORG, token, None, claimer_ctx)) == (1, (None, False))
    # The greeter spoke first: it advances the conduit (read, then locked read + write).
    assert await trips(invites.conduit_listen(ORG, token, "alice", ctx)) == (3, (b"claimer key", True))
    assert await trips(invites.conduit_listen(ORG, token, None, claimer_ctx)) == (1, (b"greeter key", False))
    assert await trips(invites.delete(ORG, "alice", token, NOW, "FINISHED")) == (1, None)

    # ---- PKI
    enrollment = PkiEnrollment(uuid4(), b"x509", b"signature", b"payload", NOW)
    assert await trips(pki.submit(ORG, enrollment, False, None, NOW)) == (1, None)
    count, info = await trips(pki.info(ORG, enrollment.enrollment_id))
    assert count == 1 and info.status == "SUBMITTED"
    count, submitted = await trips(pki.list_submitted(ORG))
    assert count == 1 and [e.enrollment_id for e in submitted] == [enrollment.enrollment_id]
    acceptance = PkiAcceptance("alice@dev1", b"accepter x509", b"signature", b"accept payload", NOW)
    count, result = await trips(
        pki.accept(ORG, enrollment.enrollment_id, acceptance, user("carl"), device("carl@dev1"), NOW)
    )
    assert (count, result) == (1, None)
    rejected = PkiEnrollment(uuid4(), b"other x509", b"signature", b"payload", NOW + timedelta(seconds=1))
    assert (await trips(pki.submit(ORG, rejected, False, None, NOW)))[0] == 1
    assert await trips(pki.reject(ORG, rejected.enrollment_id, NOW)) == (1, None)


@ok
async def test_text_with_nul(pool: CountingPool) -> None:
    """PostgreSQL text cannot hold NUL: compared values match nothing, stored ones are refused
    (answered `bad_message` by the server), and no database round trip fails."""
    from parsec.backend.storage import UnstorableValueError

    orgs, users, invites = PgOrganizationStorage(pool), PgUserStorage(pool), PgInviteStorage(pool)
    await orgs.create(ORG, "token", None, True, NOW)
    with pytest.raises(NotFoundError):
        await orgs.bootstrap(ORG, "tok\x00en", b"rvk", user("alice", None, None), device("alice@dev1", None), NOW)
    await orgs.bootstrap(ORG, "token", b"rvk", user("alice", None, None, "ADMIN"), device("alice@dev1", None), NOW)
    assert await users.find_humans(ORG, "a\x00", False, False, 1, 10, NOW) == ([], 0)
    assert await users.is_email_used_by_active_user(ORG, "a\x00@example.com", NOW) is False
    with pytest.raises(UnstorableValueError) as raised:
        await users.create_user(ORG, user("bob", "b\x00b@example.com"), device("bob@dev1"), NOW)
    assert raised.value.field == "user_certificate"
    with pytest.raises(UnstorableValueError):
        await invites.new(ORG, "alice", None, "USER", "z\x00@example.com", NOW)
    # Huge pages are empty, not an overflow.
    assert await users.find_humans(ORG, None, False, False, 2**62, 100, NOW) == ([], 1)
