"""`invite.status_changed` events (docs/protocol/events.md §4, docs/protocol/invitations.md §4)."""

from __future__ import annotations

import pytest_twisted

from tests.backend_invite.conftest import Conn, InviteEnv, until

ok = pytest_twisted.ensureDeferred


async def next_event(conn: Conn) -> dict:
    rep = await conn.cmd("events_listen", wait=True)
    assert rep["status"] == "ok", rep
    return rep


def status_changed(token, invitation_status: str) -> dict:
    return {"status": "ok", "event": "invite.status_changed", "token": token, "invitation_status": invitation_status}


@ok
async def test_status_changed_events(org: InviteEnv) -> None:
    alice1 = await org.connect("alice@dev1")
    alice2 = await org.connect("alice@dev2")
    bob = await org.connect("bob@dev1")
    for conn in (alice1, alice2, bob):
        assert await conn.cmd("events_subscribe") == {"status": "ok"}

    # New invitation: IDLE, to every subscribed device of the greeter (the author included).
    token = await org.new_invitation(alice1, "USER")
    assert await next_event(alice1) == status_changed(token, "IDLE")
    assert await next_event(alice2) == status_changed(token, "IDLE")

    # Claimer connects: READY; leaves: IDLE.
    claimer = await org.claimer(token, "USER")
    assert await next_event(alice2) == status_changed(token, "READY")
    assert (await alice2.cmd("invite_list"))["invitations"][0]["status"] == "READY"
    await claimer.close()
    assert await next_event(alice2) == status_changed(token, "IDLE")
    assert (await alice2.cmd("invite_list"))["invitations"][0]["status"] == "IDLE"

    # Reusing the invitation publishes IDLE again.
    assert await org.new_invitation(alice2, "USER") == token
    assert await next_event(alice2) == status_changed(token, "IDLE")

    # Deletion: DELETED, then IDLE when the (closed) claimer connection ends.
    claimer = await org.claimer(token, "USER")
    assert await next_event(alice2) == status_changed(token, "READY")
    assert await alice2.cmd("invite_delete", token=token, reason="CANCELLED") == {"status": "ok"}
    assert await next_event(alice2) == status_changed(token, "DELETED")
    await claimer.expect_closed_without_reply()
    assert await next_event(alice2) == status_changed(token, "IDLE")
    assert await alice2.cmd("invite_list") == {"status": "ok", "invitations": []}

    # alice1 got the same sequence (it was not listening meanwhile: queued).
    expected = ["READY", "IDLE", "IDLE", "READY", "DELETED", "IDLE"]
    for invitation_status in expected:
        assert await next_event(alice1) == status_changed(token, invitation_status)
    assert await alice1.cmd("events_listen", wait=False) == {"status": "no_events"}
    # Other users get nothing.
    assert await bob.cmd("events_listen", wait=False) == {"status": "no_events"}


@ok
async def test_device_invitation_events_and_other_greeters(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    bob = await org.connect("bob@dev1")
    assert await alice.cmd("events_subscribe") == {"status": "ok"}
    assert await bob.cmd("events_subscribe") == {"status": "ok"}
    bob_token = await org.new_invitation(bob, "DEVICE")
    assert await next_event(bob) == status_changed(bob_token, "IDLE")
    claimer = await org.claimer(bob_token, "DEVICE")
    assert await next_event(bob) == status_changed(bob_token, "READY")
    await claimer.close()
    assert await next_event(bob) == status_changed(bob_token, "IDLE")
    await until(lambda: not org.component._online, "claimer gone")
    assert await alice.cmd("events_listen", wait=False) == {"status": "no_events"}


@ok
async def test_waiting_listener_is_woken(org: InviteEnv) -> None:
    alice1 = await org.connect("alice@dev1")
    alice2 = await org.connect("alice@dev2")
    assert await alice2.cmd("events_subscribe") == {"status": "ok"}
    alice2.send("events_listen", wait=True)
    token = await org.new_invitation(alice1, "DEVICE")
    assert await alice2.recv() == status_changed(token, "IDLE")
