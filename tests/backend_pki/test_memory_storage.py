"""`MemoryPkiStorage` directly: each method runs without yielding to the reactor (which is
what makes its checks and writes atomic), and the state transitions it records."""

from __future__ import annotations

from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import uuid4

import pytest

from parsec.backend.bus import MemoryEventBus
from parsec.backend.models import Device, User
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
from parsec.storage.memory import build_memory_storage

T = TypeVar("T")
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ORG = "Org"


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a storage coroutine that must complete without ever suspending."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError("the storage method suspended (yielded to the reactor)")


def make_user(user_id: str, *, email: str | None = None) -> tuple[User, Device]:
    user = User(
        user_id=user_id,
        profile="STANDARD",
        user_certificate=b"uc",
        redacted_user_certificate=b"ruc",
        user_certifier="admin@dev1",
        created_on=NOW,
        human_handle=(email, "Someone") if email else None,
    )
    device = Device(
        device_id=f"{user_id}@dev1",
        verify_key=b"k" * 32,
        device_certificate=b"dc",
        redacted_device_certificate=b"rdc",
        device_certifier="admin@dev1",
        created_on=NOW,
    )
    return user, device


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
        accepter="admin@dev1",
        accepter_der_x509_certificate=b"acert",
        accept_payload_signature=b"asig",
        accept_payload=b"apayload",
        accepted_on=on,
    )


@pytest.fixture
def storage():
    storage = build_memory_storage(MemoryEventBus())
    run(storage.organization.create(ORG, "token", None, True, NOW))
    return storage


def test_submit_cancel_reject_accept(storage):
    pki = storage.pki
    first = enrollment()
    assert run(pki.submit(ORG, first, False, None, NOW)) is None
    with pytest.raises(EnrollmentIdAlreadyUsedError):
        run(pki.submit(ORG, first, True, None, NOW))
    with pytest.raises(AlreadySubmittedError) as exc:
        run(pki.submit(ORG, enrollment(), False, None, NOW))
    assert exc.value.submitted_on == NOW

    later = NOW + timedelta(seconds=5)
    second = enrollment(on=later)
    assert run(pki.submit(ORG, second, True, None, later)) == first.enrollment_id
    cancelled = run(pki.info(ORG, first.enrollment_id))
    assert (cancelled.status, cancelled.cancelled_on) == ("CANCELLED", later)
    assert [e.enrollment_id for e in run(pki.list_submitted(ORG))] == [second.enrollment_id]

    run(pki.reject(ORG, second.enrollment_id, later))
    assert run(pki.info(ORG, second.enrollment_id)).status == "REJECTED"
    with pytest.raises(NoLongerAvailableError):
        run(pki.reject(ORG, second.enrollment_id, later))
    with pytest.raises(NotFoundError):
        run(pki.reject(ORG, uuid4(), later))

    third = enrollment()
    assert run(pki.submit(ORG, third, False, None, NOW)) is None
    user, device = make_user("bob", email="bob@example.com")
    run(pki.accept(ORG, third.enrollment_id, acceptance(), user, device, NOW))
    accepted = run(pki.info(ORG, third.enrollment_id))
    assert (accepted.status, accepted.accepter, accepted.accepted_device) == (
        "ACCEPTED",
        "admin@dev1",
        "bob@dev1",
    )
    assert run(storage.user.get_user(ORG, "bob")) == user
    with pytest.raises(AlreadyEnrolledError):
        run(pki.submit(ORG, enrollment(), True, None, NOW))
    with pytest.raises(EmailAlreadyUsedError):
        run(pki.submit(ORG, enrollment(b"other"), False, "bob@example.com", NOW))

    run(storage.user.revoke_user(ORG, "bob", b"rev", "admin@dev1", NOW))
    assert run(pki.submit(ORG, enrollment(), False, "bob@example.com", NOW)) is None


def test_accepted_user_revoked_in_the_future_still_enrolled(storage):
    pki = storage.pki
    sub = enrollment()
    run(pki.submit(ORG, sub, False, None, NOW))
    user, device = make_user("bob")
    run(pki.accept(ORG, sub.enrollment_id, acceptance(), user, device, NOW))
    run(storage.user.revoke_user(ORG, "bob", b"rev", "admin@dev1", NOW + timedelta(seconds=30)))
    with pytest.raises(AlreadyEnrolledError):
        run(pki.submit(ORG, enrollment(), False, None, NOW))
    assert run(pki.submit(ORG, enrollment(), False, None, NOW + timedelta(seconds=30))) is None


def test_accept_failures_write_nothing(storage):
    pki = storage.pki
    run(storage.organization.update(ORG, active_users_limit=1))
    user, device = make_user("bob")
    run(storage.user.create_user(ORG, user, device, NOW))
    sub = enrollment()
    run(pki.submit(ORG, sub, False, None, NOW))
    carl, carl_device = make_user("carl")
    with pytest.raises(ActiveUsersLimitReachedError):
        run(pki.accept(ORG, sub.enrollment_id, acceptance(), carl, carl_device, NOW))
    run(storage.organization.update(ORG, active_users_limit=None))
    with pytest.raises(AlreadyExistsError):
        run(pki.accept(ORG, sub.enrollment_id, acceptance(), user, device, NOW))
    assert run(pki.info(ORG, sub.enrollment_id)).status == "SUBMITTED"
    with pytest.raises(NotFoundError):
        run(storage.user.get_user(ORG, "carl"))
    run(pki.accept(ORG, sub.enrollment_id, acceptance(), carl, carl_device, NOW))
    with pytest.raises(NoLongerAvailableError):
        run(pki.accept(ORG, sub.enrollment_id, acceptance(), *make_user("dave"), NOW))


def test_info_and_list_per_organization(storage):
    run(storage.organization.create("Other", "token", None, True, NOW))
    sub = enrollment()
    run(storage.pki.submit(ORG, sub, False, None, NOW))
    with pytest.raises(NotFoundError):
        run(storage.pki.info("Other", sub.enrollment_id))
    assert run(storage.pki.list_submitted("Other")) == []
    # Same id and certificate in another organization: independent.
    assert run(storage.pki.submit("Other", sub, False, None, NOW)) is None
