"""Whole enrollment life cycles with one X.509 certificate (docs/protocol/commands.md §12 upstream tests)."""

from __future__ import annotations

from uuid import uuid4

import pytest_twisted

from tests.backend_pki.common import (
    accept,
    admin_cmd,
    info,
    new_der_certificate,
    new_local_device,
    revoke,
    submit,
)
from tests.orgs import bootstrap_organization

ok = pytest_twisted.ensureDeferred


@ok
async def test_full_cycles(server):
    """cancel / reject / cancel / accept / revoke, twice, with the same certificate and e-mail."""
    org = await bootstrap_organization(server)
    certificate = new_der_certificate()
    email = "zack@example.com"
    org_id = org.organization_id

    for round_ in range(2):
        first = uuid4()
        assert (await submit(server, org_id, enrollment_id=first, certificate=certificate, email=email))[
            "status"
        ] == "ok"
        # Cancelled by a forced resubmission.
        second = uuid4()
        assert (
            await submit(
                server, org_id, enrollment_id=second, certificate=certificate, email=email, force=True
            )
        )["status"] == "ok"
        assert (await info(server, org_id, first))["enrollment_status"] == "CANCELLED"
        # Rejected.
        assert await admin_cmd(org, "alice@dev1", "pki_enrollment_reject", enrollment_id=second) == {
            "status": "ok"
        }
        assert (await info(server, org_id, second))["enrollment_status"] == "REJECTED"
        # Submitted again (no force needed after a rejection), then cancelled again.
        third = uuid4()
        assert (await submit(server, org_id, enrollment_id=third, certificate=certificate, email=email))[
            "status"
        ] == "ok"
        fourth = uuid4()
        assert (
            await submit(
                server, org_id, enrollment_id=fourth, certificate=certificate, email=email, force=True
            )
        )["status"] == "ok"
        assert (await info(server, org_id, third))["enrollment_status"] == "CANCELLED"
        # Accepted.
        zack = new_local_device(f"zack{round_}@dev1", email=email)
        assert await accept(org, "alice@dev1", zack, fourth) == {"status": "ok"}
        assert (await info(server, org_id, fourth))["enrollment_status"] == "ACCEPTED"
        assert (await submit(server, org_id, certificate=certificate)) == {"status": "already_enrolled"}
        assert (await submit(server, org_id, certificate=new_der_certificate(), email=email)) == {
            "status": "email_already_used"
        }
        client = await org.connect(zack)
        await client.close()
        # Revoked: the certificate and the e-mail may enroll again.
        await revoke(org, "alice@dev1", zack.user_id)

    # Every enrollment of both rounds kept its final state.
    listed = await admin_cmd(org, "alice@dev1", "pki_enrollment_list")
    assert listed == {"status": "ok", "enrollments": []}
