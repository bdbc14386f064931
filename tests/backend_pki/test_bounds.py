"""Pending enrollments never grow past what `pki_enrollment_list` can send (README.rst,
Limits; issue: 17 anonymous submissions of ~1 MiB made every admin listing exceed the
websocket limit, for good).

* each submitted blob is at most `enrollment_payload_bytes` (`bad_message`);
* an organization has at most `pending_enrollments` SUBMITTED enrollments: beyond,
  `pki_enrollment_submit` gets `not_allowed` with a reason, until an ADMIN accepts or rejects
  some; a forced resubmission (which cancels its predecessor) is still accepted;
* so the listing of a full organization, every blob at its maximum, fits in one message.
"""

from __future__ import annotations

import os
from uuid import uuid4

import pytest_twisted

from parsec.limits import DEFAULT as LIMITS
from tests.backend_pki.common import admin_cmd, submit, submit_request
from tests.orgs import bootstrap_organization

ok = pytest_twisted.ensureDeferred

TOO_MANY = {"status": "not_allowed", "reason": "Too many pending enrollments in this organization"}


@ok
async def test_blob_sizes(server):
    org = await bootstrap_organization(server)
    limit = LIMITS.enrollment_payload_bytes
    for field in ("submitter_der_x509_certificate", "submit_payload_signature", "submit_payload"):
        rep = await submit(server, org.organization_id, **{field: os.urandom(limit + 1)})
        assert rep == {
            "status": "bad_message",
            "reason": "Invalid message.",
            "errors": {field: [f"Longer than maximum length {limit}."]},
        }
    rep = await submit(
        server,
        org.organization_id,
        certificate=os.urandom(limit),
        submit_payload_signature=os.urandom(limit),
    )
    assert rep["status"] == "ok", rep


@ok
async def test_pending_enrollments_are_bounded_and_listable(server):
    org = await bootstrap_organization(server)
    limit = LIMITS.pending_enrollments
    big = LIMITS.enrollment_payload_bytes
    first_certificate = os.urandom(big)
    ids = []
    for index in range(limit):
        enrollment_id = uuid4()
        rep = await submit(
            server,
            org.organization_id,
            enrollment_id=enrollment_id,
            certificate=first_certificate if index == 0 else os.urandom(big),
            submit_payload_signature=os.urandom(big),
        )
        assert rep["status"] == "ok", (index, rep)
        ids.append(enrollment_id)
    assert await submit(server, org.organization_id) == TOO_MANY

    # The full listing fits in one websocket message.
    listing = await admin_cmd(org, "alice@dev1", "pki_enrollment_list")
    assert listing["status"] == "ok"
    assert [e["enrollment_id"] for e in listing["enrollments"]] == ids

    # A forced resubmission replaces its predecessor: still accepted when full.
    rep = await submit(
        server, org.organization_id, certificate=first_certificate, force=True, submit_payload_signature=b"s"
    )
    assert rep["status"] == "ok", rep
    assert await submit(server, org.organization_id) == TOO_MANY

    # An ADMIN's decision frees a place.
    assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=ids[1]) == {"status": "ok"}
    rep = await submit(server, org.organization_id)
    assert rep["status"] == "ok", rep
    assert await submit(server, org.organization_id) == TOO_MANY
    # Other organizations are not concerned.
    other = await bootstrap_organization(server, "OtherOrg")
    rep = await submit(server, other.organization_id)
    assert rep["status"] == "ok", rep
    assert submit_request()["cmd"] == "pki_enrollment_submit"
