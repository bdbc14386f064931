"""`pki_enrollment.updated` reaches the ADMINs of the enrollment's organization only
(docs/protocol/events.md §4, docs/protocol/DECISIONS.md)."""

from __future__ import annotations

from uuid import uuid4

import pytest_twisted

from tests.backend_pki.common import accept, admin_cmd, cmd, new_der_certificate, new_local_device, submit
from tests.orgs import bootstrap_organization

ok = pytest_twisted.ensureDeferred

UPDATED = {"status": "ok", "event": "pki_enrollment.updated"}
NO_EVENTS = {"status": "no_events"}


async def subscribed(org, device):
    client = await org.connect(device)
    assert await cmd(client, "events_subscribe") == {"status": "ok"}
    return client


async def listen(client, *, wait):
    return await cmd(client, "events_listen", wait=wait)


@ok
async def test_events_to_admins_of_the_same_organization_only(server):
    org = await bootstrap_organization(server)
    other = await bootstrap_organization(server, "OtherOrg")
    await org.new_user("alice@dev1", "admin2@dev1", profile="ADMIN")
    await org.new_user("alice@dev1", "bob@dev1", profile="STANDARD")
    await org.new_user("alice@dev1", "olive@dev1", profile="OUTSIDER")

    admin = await subscribed(org, "alice@dev1")
    admin2 = await subscribed(org, "admin2@dev1")
    standard = await subscribed(org, "bob@dev1")
    outsider = await subscribed(org, "olive@dev1")
    foreign_admin = await subscribed(other, "alice@dev1")
    try:

        async def expect(count):
            # The memory bus delivers synchronously: once every ADMIN got its events, the
            # others would have got theirs too.
            for client in (admin, admin2):
                for _ in range(count):
                    assert await listen(client, wait=True) == UPDATED
                assert await listen(client, wait=False) == NO_EVENTS
            for client in (standard, outsider, foreign_admin):
                assert await listen(client, wait=False) == NO_EVENTS

        certificate = new_der_certificate()
        first = uuid4()
        assert (await submit(server, org.organization_id, enrollment_id=first, certificate=certificate))[
            "status"
        ] == "ok"
        await expect(1)

        # Forced resubmission: one event for the cancellation, one for the submission.
        second = uuid4()
        rep = await submit(
            server, org.organization_id, enrollment_id=second, certificate=certificate, force=True
        )
        assert rep["status"] == "ok"
        await expect(2)

        # Reject.
        assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=second) == {
            "status": "ok"
        }
        await expect(1)

        # Accept.
        third = uuid4()
        assert (await submit(server, org.organization_id, enrollment_id=third))["status"] == "ok"
        await expect(1)
        assert await accept(org, "alice@dev1", new_local_device("carl@dev1"), third) == {"status": "ok"}
        await expect(1)

        # Another organization's enrollments are not announced here.
        assert (await submit(server, other.organization_id))["status"] == "ok"
        assert await listen(foreign_admin, wait=True) == UPDATED
        for client in (admin, admin2, standard, outsider):
            assert await listen(client, wait=False) == NO_EVENTS
    finally:
        for client in (admin, admin2, standard, outsider, foreign_admin):
            await client.close()


@ok
async def test_no_event_for_refused_operations(server):
    org = await bootstrap_organization(server, human_handle=("alice@example.com", "Alice"))
    certificate = new_der_certificate()
    enrollment_id = uuid4()
    assert (await submit(server, org.organization_id, enrollment_id=enrollment_id, certificate=certificate))[
        "status"
    ] == "ok"
    admin = await subscribed(org, "alice@dev1")
    try:
        refused = [
            await submit(server, org.organization_id, certificate=certificate),
            await submit(server, org.organization_id, enrollment_id=enrollment_id),
            await submit(server, org.organization_id, email="alice@example.com"),
            await submit(
                server, org.organization_id, certificate=certificate, force=True, email="alice@example.com"
            ),
            await submit(server, org.organization_id, payload=b"junk"),
            await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=uuid4()),
            await accept(org, "alice@dev1", new_local_device("alice@dev2"), enrollment_id),
            await accept(org, "alice@dev1", new_local_device("bob@dev1"), uuid4()),
        ]
        assert all(rep["status"] != "ok" for rep in refused), refused
        assert await listen(admin, wait=False) == NO_EVENTS
        # A successful operation afterwards produces exactly its own event.
        assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id) == {
            "status": "ok"
        }
        assert await listen(admin, wait=True) == UPDATED
        assert await listen(admin, wait=False) == NO_EVENTS
    finally:
        await admin.close()


@ok
async def test_waiting_admin_is_woken_by_a_submission(server):
    org = await bootstrap_organization(server)
    admin = await subscribed(org, "alice@dev1")
    try:
        admin.send({"cmd": "events_listen", "wait": True})
        assert (await submit(server, org.organization_id))["status"] == "ok"
        assert await admin.recv() == UPDATED
    finally:
        await admin.close()
