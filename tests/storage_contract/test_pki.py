"""PkiStorage contract: the state transitions an enrollment goes through, the order of the
submission checks, failed acceptances writing nothing, and the events of each write."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.backend.storage import (
    ActiveUsersLimitReachedError,
    AlreadyEnrolledError,
    AlreadyExistsError,
    AlreadySubmittedError,
    EmailAlreadyUsedError,
    EnrollmentIdAlreadyUsedError,
    NoLongerAvailableError,
    NotFoundError,
    PkiAcceptance,
    PkiEnrollment,
)
from tests.storage_contract.conftest import EPOCH, World, make_user, new_organization

ok = pytest_twisted.ensureDeferred

NOW = EPOCH
UPDATED = ("pki_enrollment.updated", {})


def enrollment(certificate: bytes = b"cert", on: datetime = NOW) -> PkiEnrollment:
    return PkiEnrollment(
        enrollment_id=uuid4(),
        submitter_der_x509_certificate=certificate,
        submit_payload_signature=b"sig",
        submit_payload=b"payload",
        submitted_on=on,
    )


def acceptance(on: datetime = NOW) -> PkiAcceptance:
    return PkiAcceptance(
        accepter="alice@dev1",
        accepter_der_x509_certificate=b"acert",
        accept_payload_signature=b"asig",
        accept_payload=b"apayload",
        accepted_on=on,
    )


@ok
async def test_submit_cancel_reject_accept(world: World) -> None:
    pki, org = world.pki, world.org
    first = enrollment()
    assert await world.published(pki.submit(org, first, False, None, NOW)) == (None, [UPDATED])
    with pytest.raises(EnrollmentIdAlreadyUsedError):
        await pki.submit(org, first, True, None, NOW)
    error, events = await world.published(pki.submit(org, enrollment(), False, None, NOW))
    assert isinstance(error, AlreadySubmittedError) and events == []
    assert error.submitted_on == NOW

    later = NOW + timedelta(seconds=5)
    second = enrollment(on=later)
    # Forced: the previous one is cancelled (one event per enrollment written).
    assert await world.published(pki.submit(org, second, True, None, later)) == (
        first.enrollment_id,
        [UPDATED, UPDATED],
    )
    cancelled = await pki.info(org, first.enrollment_id)
    assert (cancelled.status, cancelled.cancelled_on) == ("CANCELLED", later)
    assert [e.enrollment_id for e in await pki.list_submitted(org)] == [second.enrollment_id]

    assert await world.published(pki.reject(org, second.enrollment_id, later)) == (None, [UPDATED])
    assert (await pki.info(org, second.enrollment_id)).status == "REJECTED"
    error, events = await world.published(pki.reject(org, second.enrollment_id, later))
    assert isinstance(error, NoLongerAvailableError) and events == []
    with pytest.raises(NotFoundError):
        await pki.reject(org, uuid4(), later)
    with pytest.raises(NotFoundError):
        await pki.info(org, uuid4())

    third = enrollment()
    assert await pki.submit(org, third, False, None, NOW) is None
    user, device = make_user("paul", email="paul@example.com")
    assert await world.published(pki.accept(org, third.enrollment_id, acceptance(), user, device, NOW)) == (
        None,
        [("user.created", {"user_id": "paul"}), UPDATED],
    )
    accepted = await pki.info(org, third.enrollment_id)
    assert (accepted.status, accepted.accepter, accepted.accepted_device) == (
        "ACCEPTED",
        "alice@dev1",
        "paul@dev1",
    )
    assert (accepted.accepted_on, accepted.accept_payload) == (NOW, b"apayload")
    assert await world.user.get_user(org, "paul") == user
    with pytest.raises(AlreadyEnrolledError):
        await pki.submit(org, enrollment(), True, None, NOW)
    with pytest.raises(EmailAlreadyUsedError):
        await pki.submit(org, enrollment(b"other"), False, "paul@example.com", NOW)

    await world.user.revoke_user(org, "paul", b"rev", "alice@dev1", NOW)
    assert await pki.submit(org, enrollment(), False, "paul@example.com", NOW) is None


@ok
async def test_accepted_user_revoked_in_the_future_still_enrolled(world: World) -> None:
    pki, org = world.pki, world.org
    sub = enrollment()
    await pki.submit(org, sub, False, None, NOW)
    await pki.accept(org, sub.enrollment_id, acceptance(), *make_user("paul"), NOW)
    await world.user.revoke_user(org, "paul", b"rev", "alice@dev1", NOW + timedelta(seconds=30))
    with pytest.raises(AlreadyEnrolledError):
        await pki.submit(org, enrollment(), False, None, NOW)
    assert await pki.submit(org, enrollment(), False, None, NOW + timedelta(seconds=30)) is None


@ok
async def test_accept_failures_write_nothing(world: World) -> None:
    pki, org = world.pki, world.org
    # alice, bob, carol and zoe are active: the limit is reached.
    await world.organization.update(org, active_users_limit=4)
    bob = await world.user.get_user(org, "bob")
    sub = enrollment()
    await pki.submit(org, sub, False, None, NOW)
    carl, carl_device = make_user("carl")
    error, events = await world.published(pki.accept(org, sub.enrollment_id, acceptance(), carl, carl_device, NOW))
    assert isinstance(error, ActiveUsersLimitReachedError) and events == []
    await world.organization.update(org, active_users_limit=None)
    with pytest.raises(AlreadyExistsError):
        await pki.accept(org, sub.enrollment_id, acceptance(), *make_user("bob"), NOW)
    assert await world.user.get_user(org, "bob") == bob  # untouched
    assert (await pki.info(org, sub.enrollment_id)).status == "SUBMITTED"
    with pytest.raises(NotFoundError):
        await world.user.get_user(org, "carl")
    await pki.accept(org, sub.enrollment_id, acceptance(), carl, carl_device, NOW)
    with pytest.raises(NoLongerAvailableError):
        await pki.accept(org, sub.enrollment_id, acceptance(), *make_user("dave"), NOW)
    with pytest.raises(NotFoundError):
        await pki.accept(org, uuid4(), acceptance(), *make_user("erin"), NOW)


@ok
async def test_info_and_list_per_organization(world: World) -> None:
    other = await new_organization(world.backend)
    sub = enrollment()
    await world.pki.submit(world.org, sub, False, None, NOW)
    with pytest.raises(NotFoundError):
        await world.pki.info(other, sub.enrollment_id)
    assert await world.pki.list_submitted(other) == []
    # Same id and certificate in another organization: independent.
    assert await world.pki.submit(other, sub, False, None, NOW) is None
