"""`pki_enrollment_list`, `pki_enrollment_reject` and `pki_enrollment_accept` on authenticated
connections (docs/protocol/commands.md §12.3-12.5)."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer

from parsec.backend.bus import BackendEvent
from tests.api.certgen import OMIT, LocalDevice, pki_accept_payload
from tests.backend_pki.common import (
    accept,
    accept_request,
    admin_cmd,
    cmd,
    info,
    new_der_certificate,
    new_local_device,
    patch_organization,
    revoke,
    submit,
)
from tests.orgs import bootstrap_organization, now

ok = pytest_twisted.ensureDeferred

ADMIN_COMMANDS = ("pki_enrollment_list", "pki_enrollment_reject", "pki_enrollment_accept")


async def submitted(server, org, **kwargs):
    enrollment_id = uuid4()
    rep = await submit(server, org.organization_id, enrollment_id=enrollment_id, **kwargs)
    assert rep["status"] == "ok", rep
    return enrollment_id


# ---- profile ------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["STANDARD", "OUTSIDER"])
@ok
async def test_non_admin_refused_before_schema(server, profile):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1", profile=profile)
    enrollment_id = await submitted(server, org)
    client = await org.connect("bob@dev1")
    try:
        for name in ADMIN_COMMANDS:
            # Garbage request: the profile is checked first.
            rep = await cmd(client, name, enrollment_id="garbage", user_certificate=42)
            assert rep == {"status": "not_allowed", "reason": "User `bob` is not admin"}
        rep = await cmd(client, "pki_enrollment_reject", enrollment_id=enrollment_id)
        assert rep == {"status": "not_allowed", "reason": "User `bob` is not admin"}
    finally:
        await client.close()
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"


# ---- list ---------------------------------------------------------------------------------


@ok
async def test_list(server):
    org = await bootstrap_organization(server)
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_list") == {"status": "ok", "enrollments": []}

    certificate = new_der_certificate()
    enrollment_id = uuid4()
    before = now()
    rep = await submit(server, org.organization_id, enrollment_id=enrollment_id, certificate=certificate)
    listed = await admin_cmd(org, "alice@dev1", "pki_enrollment_list")
    assert listed == {
        "status": "ok",
        "enrollments": [
            {
                "enrollment_id": enrollment_id,
                "submitted_on": rep["submitted_on"],
                "submitter_der_x509_certificate": certificate,
                "submit_payload_signature": b"signature of the submit payload",
                "submit_payload": listed["enrollments"][0]["submit_payload"],
            }
        ],
    }
    assert listed["enrollments"][0]["submitted_on"] >= before

    second_id = await submitted(server, org)
    listed = await admin_cmd(org, "alice@dev1", "pki_enrollment_list")
    assert [e["enrollment_id"] for e in listed["enrollments"]] == [enrollment_id, second_id]


@ok
async def test_list_only_submitted_in_submission_order(server):
    org = await bootstrap_organization(server)
    other = await bootstrap_organization(server, "OtherOrg")
    certificate = new_der_certificate()
    cancelled = await submitted(server, org, certificate=certificate)
    ids = [await submitted(server, org) for _ in range(4)]
    replacing = await submitted(server, org, certificate=certificate, force=True)
    await submitted(server, other)
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=ids[1]) == {
        "status": "ok"
    }
    bob = new_local_device("bob@dev1")
    assert await accept(org, "alice@dev1", bob, ids[2]) == {"status": "ok"}
    listed = await admin_cmd(org, "alice@dev1", "pki_enrollment_list")
    assert [e["enrollment_id"] for e in listed["enrollments"]] == [ids[0], ids[3], replacing]
    assert cancelled not in [e["enrollment_id"] for e in listed["enrollments"]]


# ---- reject -------------------------------------------------------------------------------


@ok
async def test_reject(server):
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    submitted_on = (await info(server, org.organization_id, enrollment_id))["submitted_on"]
    before = now()
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id) == {
        "status": "ok"
    }
    rep = await info(server, org.organization_id, enrollment_id)
    assert rep == {
        "status": "ok",
        "enrollment_status": "REJECTED",
        "submitted_on": submitted_on,
        "rejected_on": rep["rejected_on"],
    }
    assert rep["rejected_on"] >= before
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id) == {
        "status": "no_longer_available",
        "reason": "",
    }
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_list") == {"status": "ok", "enrollments": []}


@ok
async def test_reject_unknown(server):
    org = await bootstrap_organization(server)
    other = await bootstrap_organization(server, "OtherOrg")
    foreign = await submitted(server, other)
    for enrollment_id in (uuid4(), foreign):
        rep = await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id)
        assert rep == {"status": "not_found", "reason": ""}
    assert (await info(server, other.organization_id, foreign))["enrollment_status"] == "SUBMITTED"


@ok
async def test_reject_after_accept_or_cancel(server):
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    cancelled = await submitted(server, org, certificate=certificate)
    accepted = await submitted(server, org, certificate=certificate, force=True)
    assert await accept(org, "alice@dev1", new_local_device("bob@dev1"), accepted) == {"status": "ok"}
    for enrollment_id in (cancelled, accepted):
        rep = await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id)
        assert rep == {"status": "no_longer_available", "reason": ""}


@ok
async def test_reject_bad_message(server):
    org = await bootstrap_organization(server)
    for fields in ({}, {"enrollment_id": "nope"}, {"enrollment_id": None}):
        rep = await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", **fields)
        assert rep["status"] == "bad_message"
        assert rep["reason"] == "Invalid message."
        assert "enrollment_id" in rep["errors"]


# ---- accept -------------------------------------------------------------------------------


@ok
async def test_accept(server):
    org = await bootstrap_organization(server)
    events = []
    server.app.bus.connect(events.append)
    enrollment_id = await submitted(server, org, email="bob@example.com")
    submitted_on = (await info(server, org.organization_id, enrollment_id))["submitted_on"]
    bob = new_local_device("bob@dev1", email="bob@example.com")
    before = now()
    assert await accept(org, "alice@dev1", bob, enrollment_id) == {"status": "ok"}

    rep = await info(server, org.organization_id, enrollment_id)
    assert rep == {
        "status": "ok",
        "enrollment_status": "ACCEPTED",
        "submitted_on": submitted_on,
        "accepted_on": rep["accepted_on"],
        "accepter_der_x509_certificate": b"accepter der certificate",
        "accept_payload_signature": b"accept payload signature",
        "accept_payload": pki_accept_payload(
            device_id="bob@dev1",
            device_label=bob.device_label,
            human_handle=bob.human_handle,
            profile="STANDARD",
        ),
    }
    assert rep["accepted_on"] >= before

    # Internal event for the user creation (in-process bus).
    created = [e for e in events if e.name == "user.created"]
    assert created == [BackendEvent("user.created", org.organization_id, {"user_id": "bob"})]

    # The new user can connect and is a regular member.
    client = await org.connect("bob@dev1")
    try:
        assert await client.cmd("ping", ping="hi") == {"status": "ok", "pong": "hi"}
    finally:
        await client.close()
    found = await admin_cmd(
        org,
        "alice@dev1",
        "human_find",
        query="bob@example.com",
        omit_revoked=True,
        omit_non_human=False,
        page=1,
        per_page=10,
    )
    assert found["results"] == [
        {"user_id": "bob", "human_handle": ["bob@example.com", "Bob"], "revoked": False}
    ]
    assert found["total"] == 1
    user = await admin_cmd(org, "alice@dev1", "user_get", user_id="bob")
    assert user["status"] == "ok"
    assert len(user["device_certificates"]) == 1

    # Twice -> no longer available.
    again = await accept(org, "alice@dev1", new_local_device("carl@dev1"), enrollment_id)
    assert again == {"status": "no_longer_available", "reason": ""}


@pytest.mark.parametrize("profile", ["ADMIN", "STANDARD", "OUTSIDER"])
@ok
async def test_accept_each_profile_without_human_handle(server, profile):
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    bob = LocalDevice.generate("bob@dev1", profile=profile)
    assert await accept(org, "alice@dev1", bob, enrollment_id) == {"status": "ok"}
    client = await org.connect("bob@dev1")
    await client.close()


@ok
async def test_accept_unknown(server):
    org = await bootstrap_organization(server)
    other = await bootstrap_organization(server, "OtherOrg")
    foreign = await submitted(server, other)
    for enrollment_id in (uuid4(), foreign):
        rep = await accept(org, "alice@dev1", new_local_device("bob@dev1"), enrollment_id)
        assert rep == {"status": "not_found", "reason": ""}


@ok
async def test_accept_outdated_or_rejected(server):
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    outdated = await submitted(server, org, certificate=certificate)
    await submitted(server, org, certificate=certificate, force=True)
    rejected = await submitted(server, org)
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=rejected) == {
        "status": "ok"
    }
    for enrollment_id in (outdated, rejected):
        rep = await accept(org, "alice@dev1", new_local_device("bob@dev1"), enrollment_id)
        assert rep == {"status": "no_longer_available", "reason": ""}
    # No user was created.
    assert (await admin_cmd(org, "alice@dev1", "user_get", user_id="bob")) == {"status": "not_found"}


@ok
async def test_accept_certificates_signed_by_someone_else(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "mallory@dev1", profile="ADMIN")
    enrollment_id = await submitted(server, org)
    bob = new_local_device("bob@dev1")
    for signing_key in (org.devices["mallory@dev1"].signing_key, SigningKey.generate()):
        rep = await accept(org, "alice@dev1", bob, enrollment_id, signing_key=signing_key)
        assert rep == {
            "status": "invalid_certification",
            "reason": "Invalid certification data (Signature was forged or corrupt).",
        }
    # Signed by mallory with mallory as author, sent by alice: wrong author.
    client = await org.connect("alice@dev1")
    try:
        fields = accept_request(org.devices["mallory@dev1"], bob, enrollment_id)
        rep = await cmd(client, "pki_enrollment_accept", **fields)
        assert rep["status"] == "invalid_certification"
    finally:
        await client.close()
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"


@ok
async def test_accept_invalid_data(server):
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    alice = org.devices["alice@dev1"]
    bob = new_local_device("bob@dev1")
    client = await org.connect("alice@dev1")
    try:
        # Device of another user.
        ts = now()
        other_device = accept_request(alice, LocalDevice.generate("carl@dev1"), enrollment_id, timestamp=ts)
        fields = accept_request(alice, bob, enrollment_id, timestamp=ts)
        fields["device_certificate"] = other_device["device_certificate"]
        fields["redacted_device_certificate"] = other_device["redacted_device_certificate"]
        rep = await cmd(client, "pki_enrollment_accept", **fields)
        assert rep == {"status": "invalid_data", "reason": "Device and User must have the same user ID."}

        # Different timestamps.
        later = accept_request(alice, bob, enrollment_id, timestamp=ts + timedelta(seconds=1))
        fields = accept_request(alice, bob, enrollment_id, timestamp=ts)
        fields["device_certificate"] = later["device_certificate"]
        fields["redacted_device_certificate"] = later["redacted_device_certificate"]
        rep = await cmd(client, "pki_enrollment_accept", **fields)
        assert rep == {
            "status": "invalid_data",
            "reason": "Device and User certificates must have the same timestamp.",
        }

        # Full certificate used as the redacted one.
        human = new_local_device("dave@dev1", email="dave@example.com")
        fields = accept_request(alice, human, enrollment_id)
        fields["redacted_user_certificate"] = fields["user_certificate"]
        rep = await cmd(client, "pki_enrollment_accept", **fields)
        assert rep == {
            "status": "invalid_data",
            "reason": "Redacted User certificate must not contain a human_handle field.",
        }

        # Outdated certificates.
        old = accept_request(alice, bob, enrollment_id, timestamp=now() - timedelta(seconds=3601))
        rep = await cmd(client, "pki_enrollment_accept", **old)
        assert rep == {"status": "invalid_certification", "reason": "Invalid timestamp in certificate."}
    finally:
        await client.close()
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"


@ok
async def test_accept_invalid_payload_data(server):
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    bob = new_local_device("bob@dev1")
    rep = await accept(org, "alice@dev1", bob, enrollment_id, accept_payload=b"junk")
    assert rep == {
        "status": "invalid_payload_data",
        "reason": "Error -3 while decompressing data: incorrect header check",
    }
    # Checked before the certificates and the enrollment.
    rep = await accept(
        org,
        "alice@dev1",
        bob,
        uuid4(),
        accept_payload=pki_accept_payload(profile="SUPERUSER"),
        signing_key=SigningKey.generate(),
    )
    assert rep["status"] == "invalid_payload_data"
    assert rep["reason"]


@ok
async def test_accept_bad_message(server):
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    bob = new_local_device("bob@dev1")
    rep = await accept(org, "alice@dev1", bob, enrollment_id, redacted_device_certificate=OMIT)
    assert rep == {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"redacted_device_certificate": ["Missing data for required field."]},
    }
    rep = await accept(org, "alice@dev1", bob, enrollment_id, accept_payload="text")
    assert rep["status"] == "bad_message"
    assert "accept_payload" in rep["errors"]


@ok
async def test_accept_check_order(server):
    org = await bootstrap_organization(server, active_users_limit=1)
    enrollment_id = await submitted(server, org)
    rejected = await submitted(server, org)
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=rejected) == {
        "status": "ok"
    }
    # Certificates are checked before the enrollment.
    rep = await accept(
        org, "alice@dev1", new_local_device("bob@dev1"), uuid4(), signing_key=SigningKey.generate()
    )
    assert rep["status"] == "invalid_certification"
    # Enrollment existence and state before the limit.
    rep = await accept(org, "alice@dev1", new_local_device("bob@dev1"), uuid4())
    assert rep == {"status": "not_found", "reason": ""}
    rep = await accept(org, "alice@dev1", new_local_device("bob@dev1"), rejected)
    assert rep == {"status": "no_longer_available", "reason": ""}
    # The limit before the user id.
    rep = await accept(org, "alice@dev1", LocalDevice.generate("alice@dev2"), enrollment_id)
    assert rep == {"status": "active_users_limit_reached"}


@ok
async def test_accept_active_users_limit(server):
    org = await bootstrap_organization(server)
    await patch_organization(server, org.organization_id, active_users_limit=1)
    enrollment_id = await submitted(server, org)
    bob = new_local_device("bob@dev1")
    assert await accept(org, "alice@dev1", bob, enrollment_id) == {"status": "active_users_limit_reached"}
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"
    await patch_organization(server, org.organization_id, active_users_limit=2)
    assert await accept(org, "alice@dev1", bob, enrollment_id) == {"status": "ok"}
    other = await submitted(server, org)
    rep = await accept(org, "alice@dev1", new_local_device("carl@dev1"), other)
    assert rep == {"status": "active_users_limit_reached"}


@ok
async def test_accept_human_handle_already_used_then_ok_after_revocation(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1", human_handle=("bob@example.com", "Bob"))
    # Submitted without e-mail (older client), so the submission itself passes.
    enrollment_id = await submitted(server, org)
    newbob = new_local_device("newbob@dev1", email="bob@example.com")
    rep = await accept(org, "alice@dev1", newbob, enrollment_id)
    assert rep == {"status": "already_exists", "reason": ""}
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"
    await revoke(org, "alice@dev1", "bob")
    assert await accept(org, "alice@dev1", newbob, enrollment_id) == {"status": "ok"}
    found = await admin_cmd(
        org,
        "alice@dev1",
        "human_find",
        query="bob@",
        omit_revoked=False,
        omit_non_human=True,
        page=1,
        per_page=10,
    )
    assert sorted((r["user_id"], r["revoked"]) for r in found["results"]) == [
        ("bob", True),
        ("newbob", False),
    ]


@ok
async def test_accept_user_id_already_used(server):
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    rep = await accept(org, "alice@dev1", LocalDevice.generate("alice@dev2"), enrollment_id)
    assert rep == {"status": "already_exists", "reason": ""}
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"


@ok
async def test_accept_outsider_refused_when_organization_disallows_it(server):
    org = await bootstrap_organization(server)
    await patch_organization(server, org.organization_id, user_profile_outsider_allowed=False)
    enrollment_id = await submitted(server, org)
    outsider = LocalDevice.generate("bob@dev1", profile="OUTSIDER")
    rep = await accept(org, "alice@dev1", outsider, enrollment_id)
    assert rep == {"status": "not_allowed", "reason": "Outsider profile is not allowed in this organization"}
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"
    # Other profiles are fine.
    assert await accept(org, "alice@dev1", LocalDevice.generate("bob@dev1"), enrollment_id) == {
        "status": "ok"
    }
    # And outsiders again once allowed.
    await patch_organization(server, org.organization_id, user_profile_outsider_allowed=True)
    other = await submitted(server, org)
    assert await accept(org, "alice@dev1", LocalDevice.generate("carl@dev1", profile="OUTSIDER"), other) == {
        "status": "ok"
    }


@ok
async def test_concurrent_accepts(server):
    """Steps 5-9 are atomic: one acceptance wins, the others find the enrollment gone."""
    org = await bootstrap_organization(server)
    enrollment_id = await submitted(server, org)
    alice = org.devices["alice@dev1"]
    clients = [await org.connect("alice@dev1") for _ in range(6)]
    try:
        for i, client in enumerate(clients):
            client.send(
                {
                    "cmd": "pki_enrollment_accept",
                    **accept_request(alice, new_local_device(f"user{i}@dev1"), enrollment_id),
                }
            )
        replies = await defer.gatherResults([defer.ensureDeferred(client.recv()) for client in clients])
    finally:
        for client in clients:
            await client.close()
    assert sorted(r["status"] for r in replies) == ["no_longer_available"] * 5 + ["ok"]
    users = await admin_cmd(
        org,
        "alice@dev1",
        "human_find",
        query=None,
        omit_revoked=False,
        omit_non_human=False,
        page=1,
        per_page=100,
    )
    assert users["total"] == 2


@ok
async def test_concurrent_accepts_with_the_same_user(server):
    # Two enrollments accepted concurrently as the same new user: one user only.
    org = await bootstrap_organization(server)
    first, second = await submitted(server, org), await submitted(server, org)
    alice = org.devices["alice@dev1"]
    clients = [await org.connect("alice@dev1") for _ in range(2)]
    try:
        for client, enrollment_id in zip(clients, (first, second), strict=True):
            client.send(
                {
                    "cmd": "pki_enrollment_accept",
                    **accept_request(
                        alice, new_local_device("bob@dev1", email="bob@example.com"), enrollment_id
                    ),
                }
            )
        replies = await defer.gatherResults([defer.ensureDeferred(client.recv()) for client in clients])
    finally:
        for client in clients:
            await client.close()
    assert sorted(r["status"] for r in replies) == ["already_exists", "ok"]
    states = sorted(
        [(await info(server, org.organization_id, i))["enrollment_status"] for i in (first, second)]
    )
    assert states == ["ACCEPTED", "SUBMITTED"]
