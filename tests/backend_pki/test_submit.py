"""`pki_enrollment_submit` and `pki_enrollment_info` over `POST /anonymous/<org>` (docs/protocol/commands.md §12.1-12.2)."""

from __future__ import annotations

import zlib
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.api.codec import packb
from tests import httpclient
from tests.api.certgen import OMIT, pki_submit_payload
from tests.backend_pki.common import (
    accept,
    admin_cmd,
    info,
    new_der_certificate,
    new_local_device,
    patch_organization,
    revoke,
    submit,
    submit_request,
)
from tests.orgs import bootstrap_organization, now

ok = pytest_twisted.ensureDeferred


@ok
async def test_submit_ok_then_info_submitted(server):
    org = await bootstrap_organization(server)
    enrollment_id = uuid4()
    before = now()
    rep = await submit(server, org.organization_id, enrollment_id=enrollment_id, email="zack@example.com")
    after = now()
    assert rep.keys() == {"status", "submitted_on"}
    assert rep["status"] == "ok"
    assert before <= rep["submitted_on"] <= after
    assert await info(server, org.organization_id, enrollment_id) == {
        "status": "ok",
        "enrollment_status": "SUBMITTED",
        "submitted_on": rep["submitted_on"],
    }


@ok
async def test_info_unknown(server):
    org = await bootstrap_organization(server)
    assert await info(server, org.organization_id, uuid4()) == {"status": "not_found", "reason": ""}


@ok
async def test_info_is_per_organization(server):
    org = await bootstrap_organization(server)
    other = await bootstrap_organization(server, "OtherOrg")
    enrollment_id = uuid4()
    assert (await submit(server, org.organization_id, enrollment_id=enrollment_id))["status"] == "ok"
    assert await info(server, other.organization_id, enrollment_id) == {"status": "not_found", "reason": ""}


@ok
async def test_resubmit_same_certificate(server):
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    first_id = uuid4()
    first = await submit(server, org.organization_id, enrollment_id=first_id, certificate=certificate)
    assert first["status"] == "ok"

    # Not forced: refused, with the pending enrollment's submission date.
    rep = await submit(server, org.organization_id, certificate=certificate)
    assert rep == {"status": "already_submitted", "submitted_on": first["submitted_on"]}
    assert (await info(server, org.organization_id, first_id))["enrollment_status"] == "SUBMITTED"

    # Forced: the previous enrollment is cancelled.
    second_id = uuid4()
    second = await submit(
        server, org.organization_id, enrollment_id=second_id, certificate=certificate, force=True
    )
    assert second["status"] == "ok"
    assert await info(server, org.organization_id, first_id) == {
        "status": "ok",
        "enrollment_status": "CANCELLED",
        "submitted_on": first["submitted_on"],
        "cancelled_on": second["submitted_on"],
    }
    assert (await info(server, org.organization_id, second_id))["enrollment_status"] == "SUBMITTED"
    listed = await admin_cmd(org, "alice@dev1", "pki_enrollment_list")
    assert [e["enrollment_id"] for e in listed["enrollments"]] == [second_id]

    # Only the latest enrollment of a certificate counts.
    rep = await submit(server, org.organization_id, certificate=certificate)
    assert rep == {"status": "already_submitted", "submitted_on": second["submitted_on"]}


@ok
async def test_force_without_previous_submission_is_a_plain_submission(server):
    org = await bootstrap_organization(server)
    assert (await submit(server, org.organization_id, force=True))["status"] == "ok"


@ok
async def test_different_certificates_do_not_collide(server):
    org = await bootstrap_organization(server)
    assert (await submit(server, org.organization_id))["status"] == "ok"
    assert (await submit(server, org.organization_id))["status"] == "ok"


@pytest.mark.parametrize("force", [False, True])
@ok
async def test_enrollment_id_reuse(server, force):
    org = await bootstrap_organization(server)
    enrollment_id = uuid4()
    certificate = new_der_certificate()
    assert (await submit(server, org.organization_id, enrollment_id=enrollment_id, certificate=certificate))[
        "status"
    ] == "ok"
    # Same id, same certificate or another one, forced or not.
    for cert in (certificate, new_der_certificate()):
        rep = await submit(
            server, org.organization_id, enrollment_id=enrollment_id, certificate=cert, force=force
        )
        assert rep == {"status": "enrollment_id_already_used"}
    # The id check comes before everything else, even for a rejected enrollment.
    assert (await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id)) == {
        "status": "ok"
    }
    rep = await submit(server, org.organization_id, enrollment_id=enrollment_id, force=force)
    assert rep == {"status": "enrollment_id_already_used"}


@ok
async def test_same_id_and_certificate_in_another_organization(server):
    org = await bootstrap_organization(server)
    other = await bootstrap_organization(server, "OtherOrg")
    enrollment_id = uuid4()
    certificate = new_der_certificate()
    for organization_id in (org.organization_id, other.organization_id):
        rep = await submit(server, organization_id, enrollment_id=enrollment_id, certificate=certificate)
        assert rep["status"] == "ok"


@ok
async def test_email_already_used(server):
    org = await bootstrap_organization(server, human_handle=("alice@example.com", "Alice"))
    rep = await submit(server, org.organization_id, email="alice@example.com")
    assert rep == {"status": "email_already_used"}
    # Exact e-mail match only (no substring, no case folding).
    for email in ("lice@example.com", "alice@example.co", "ALICE@example.com", "alice"):
        assert (await submit(server, org.organization_id, email=email))["status"] == "ok", email


@ok
async def test_email_of_a_revoked_user_is_free(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1", human_handle=("bob@example.com", "Bob"))
    assert await submit(server, org.organization_id, email="bob@example.com") == {
        "status": "email_already_used"
    }
    await revoke(org, "alice@dev1", "bob")
    assert (await submit(server, org.organization_id, email="bob@example.com"))["status"] == "ok"


@ok
async def test_email_of_another_organization_is_free(server):
    await bootstrap_organization(server, human_handle=("alice@example.com", "Alice"))
    other = await bootstrap_organization(server, "OtherOrg", human_handle=("admin@other.com", "Admin"))
    assert (await submit(server, other.organization_id, email="alice@example.com"))["status"] == "ok"


@pytest.mark.parametrize("email", [OMIT, None, ""], ids=["absent", "nil", "empty"])
@ok
async def test_no_email(server, email):
    # Clients < 2.8.3 send no e-mail field: no e-mail check at all.
    org = await bootstrap_organization(server)
    assert (await submit(server, org.organization_id, email=email))["status"] == "ok"


@ok
async def test_already_enrolled_then_ok_after_revocation(server):
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    enrollment_id = uuid4()
    assert (await submit(server, org.organization_id, enrollment_id=enrollment_id, certificate=certificate))[
        "status"
    ] == "ok"
    bob = new_local_device("bob@dev1", email="bob@example.com")
    assert await accept(org, "alice@dev1", bob, enrollment_id) == {"status": "ok"}

    for force in (False, True):
        rep = await submit(server, org.organization_id, certificate=certificate, force=force)
        assert rep == {"status": "already_enrolled"}

    await revoke(org, "alice@dev1", "bob")
    assert (await submit(server, org.organization_id, certificate=certificate))["status"] == "ok"


@ok
async def test_already_enrolled_checked_before_email(server):
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    enrollment_id = uuid4()
    await submit(server, org.organization_id, enrollment_id=enrollment_id, certificate=certificate)
    bob = new_local_device("bob@dev1", email="bob@example.com")
    assert await accept(org, "alice@dev1", bob, enrollment_id) == {"status": "ok"}
    rep = await submit(server, org.organization_id, certificate=certificate, email="bob@example.com")
    assert rep == {"status": "already_enrolled"}


@ok
async def test_submit_after_reject(server):
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    enrollment_id = uuid4()
    await submit(server, org.organization_id, enrollment_id=enrollment_id, certificate=certificate)
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=enrollment_id) == {
        "status": "ok"
    }
    assert (await submit(server, org.organization_id, certificate=certificate))["status"] == "ok"


@ok
async def test_failed_forced_submission_cancels_nothing(server):
    # A forced submission refused for its e-mail leaves the pending enrollment untouched.
    org = await bootstrap_organization(server, human_handle=("alice@example.com", "Alice"))
    certificate = new_der_certificate()
    first_id = uuid4()
    await submit(server, org.organization_id, enrollment_id=first_id, certificate=certificate)
    rep = await submit(
        server, org.organization_id, certificate=certificate, force=True, email="alice@example.com"
    )
    assert rep == {"status": "email_already_used"}
    assert (await info(server, org.organization_id, first_id))["enrollment_status"] == "SUBMITTED"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"not zlib at all", "Error -3 while decompressing data: incorrect header check"),
        (zlib.compress(b"\xc1"), None),
        (zlib.compress(packb({"type": "pki_enrollment_submit_payload"})), None),
        (pki_submit_payload(type="pki_enrollment_answer_payload"), None),
        (pki_submit_payload(verify_key=b"short"), None),
        (pki_submit_payload(requested_device_label=None), None),
    ],
    ids=["not-zlib", "not-msgpack", "missing-fields", "wrong-type", "bad-key", "nil-label"],
)
@ok
async def test_invalid_payload_data(server, payload, reason):
    org = await bootstrap_organization(server)
    enrollment_id = uuid4()
    rep = await submit(server, org.organization_id, enrollment_id=enrollment_id, payload=payload)
    assert rep["status"] == "invalid_payload_data"
    assert rep.keys() == {"status", "reason"}
    if reason is not None:
        assert rep["reason"] == reason
    else:
        assert rep["reason"]
    # Nothing stored.
    assert await info(server, org.organization_id, enrollment_id) == {"status": "not_found", "reason": ""}


@ok
async def test_payload_checked_before_enrollment_id(server):
    org = await bootstrap_organization(server)
    enrollment_id = uuid4()
    await submit(server, org.organization_id, enrollment_id=enrollment_id)
    rep = await submit(server, org.organization_id, enrollment_id=enrollment_id, payload=b"junk")
    assert rep["status"] == "invalid_payload_data"


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"enrollment_id": OMIT}, "enrollment_id"),
        ({"enrollment_id": "not an uuid"}, "enrollment_id"),
        ({"force": OMIT}, "force"),
        ({"force": "yes"}, "force"),
        ({"submitter_der_x509_certificate": OMIT}, "submitter_der_x509_certificate"),
        ({"submitter_der_x509_certificate": "text"}, "submitter_der_x509_certificate"),
        ({"submit_payload_signature": None}, "submit_payload_signature"),
        ({"submit_payload": OMIT}, "submit_payload"),
        ({"submitter_der_x509_certificate_email": 42}, "submitter_der_x509_certificate_email"),
    ],
)
@ok
async def test_submit_bad_message(server, overrides, field):
    org = await bootstrap_organization(server)
    rep = await httpclient.anonymous(server.port, org.organization_id, submit_request(**overrides))
    body = rep.msgpack()
    assert body["status"] == "bad_message"
    assert body["reason"] == "Invalid message."
    assert field in body["errors"]


@ok
async def test_info_bad_message(server):
    org = await bootstrap_organization(server)
    for msg in ({"cmd": "pki_enrollment_info"}, {"cmd": "pki_enrollment_info", "enrollment_id": 42}):
        rep = (await httpclient.anonymous(server.port, org.organization_id, msg)).msgpack()
        assert rep["status"] == "bad_message"
        assert "enrollment_id" in rep["errors"]


@ok
async def test_unknown_organization(server):
    for msg in (submit_request(), {"cmd": "pki_enrollment_info", "enrollment_id": uuid4()}):
        rep = await httpclient.anonymous(server.port, "UnknownOrg", msg)
        assert (rep.status, rep.msgpack()) == (404, {})


@ok
async def test_expired_organization_still_served(server):
    # docs/protocol/transport.md §5: no expiration check on the anonymous route.
    org = await bootstrap_organization(server)
    await patch_organization(server, org.organization_id, is_expired=True)
    enrollment_id = uuid4()
    assert (await submit(server, org.organization_id, enrollment_id=enrollment_id))["status"] == "ok"
    assert (await info(server, org.organization_id, enrollment_id))["enrollment_status"] == "SUBMITTED"


@ok
async def test_not_served_on_authenticated_connections(server):
    org = await bootstrap_organization(server)
    client = await org.connect("alice@dev1")
    try:
        for name in ("pki_enrollment_submit", "pki_enrollment_info"):
            rep = await client.cmd(name, **{k: v for k, v in submit_request().items() if k != "cmd"})
            assert rep["status"] == "unknown_command"
    finally:
        await client.close()
