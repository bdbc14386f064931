"""A claimer e-mail of any length the wire allows (parsec.limits: 64 KiB) is stored (the pending-invitation index hashes it)."""

from __future__ import annotations

import pytest_twisted

from tests.orgs import bootstrap_organization

ok = pytest_twisted.ensureDeferred


@ok
async def test_very_long_claimer_email(server):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    email = "\U0001f600" * 16000  # 64,000 bytes: far over the 2,704-byte btree row limit
    first = await alice.cmd("invite_new", type="USER", claimer_email=email, send_email=False)
    assert first["status"] == "ok"
    again = await alice.cmd("invite_new", type="USER", claimer_email=email, send_email=False)
    assert again == first
    await alice.close()
