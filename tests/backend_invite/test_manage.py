"""invite_new / invite_delete / invite_list / invite_info (docs/protocol/commands.md §8.1-8.4)."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted

from tests.backend_invite.conftest import InviteEnv, until
from tests.orgs import bootstrap_organization, now
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


# ---- invite_new --------------------------------------------------------------------------------


@ok
async def test_new_device_and_user_invitations(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    assert rep["status"] == "ok" and set(rep) == {"status", "token"}
    assert isinstance(rep["token"], uuid.UUID)
    rep2 = await alice.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=False)
    assert rep2["status"] == "ok" and set(rep2) == {"status", "token"}
    assert rep2["token"] != rep["token"]


@ok
@pytest.mark.parametrize("device_id", ["bob@dev1", "olivia@dev1"])
async def test_only_admin_invites_users(org: InviteEnv, device_id: str) -> None:
    conn = await org.connect(device_id)
    rep = await conn.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=False)
    assert rep == {"status": "not_allowed"}
    # ... even with send_email (the profile is checked before anything is sent)
    rep = await conn.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=True)
    assert rep == {"status": "not_allowed"}
    assert await conn.cmd("invite_list") == {"status": "ok", "invitations": []}
    # Any profile may invite a new device of its own.
    rep = await conn.cmd("invite_new", type="DEVICE", send_email=False)
    assert rep["status"] == "ok"


@ok
async def test_invite_new_validates_before_the_profile_check(org: InviteEnv) -> None:
    bob = await org.connect("bob@dev1")
    rep = await bob.cmd("invite_new", type="USER", send_email=False)  # no claimer_email
    assert rep["status"] == "bad_message"
    rep = await bob.cmd("invite_new", type="FOO", send_email=False)
    assert rep["status"] == "bad_message"
    assert rep["errors"] == {"type": ["Unsupported value: FOO"]}
    rep = await bob.cmd("invite_new", send_email=False)
    assert rep["errors"] == {"type": ["Missing data for required field."]}


@ok
async def test_already_member(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    for email in ("bob@example.com", "alice@example.com"):
        rep = await alice.cmd("invite_new", type="USER", claimer_email=email, send_email=False)
        assert rep == {"status": "already_member"}
    assert await alice.cmd("invite_list") == {"status": "ok", "invitations": []}

    # Once bob is revoked, his e-mail can be invited again.
    cert = org.org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    assert await alice.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    rep = await alice.cmd("invite_new", type="USER", claimer_email="bob@example.com", send_email=False)
    assert rep["status"] == "ok"
    [item] = (await alice.cmd("invite_list"))["invitations"]
    assert item["token"] == rep["token"] and item["claimer_email"] == "bob@example.com"


@ok
async def test_invite_new_is_idempotent(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    alice2 = await org.connect("alice@dev2")
    device = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    user = await alice.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=False)
    other_user = await alice.cmd("invite_new", type="USER", claimer_email="zoe@example.com", send_email=False)
    listed = (await alice.cmd("invite_list"))["invitations"]

    # Same (greeter user, type, e-mail): same token, same created_on, from any of the user's devices.
    assert (await alice2.cmd("invite_new", type="DEVICE", send_email=False))["token"] == device["token"]
    rep = await alice2.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=False)
    assert rep["token"] == user["token"]
    assert (await alice.cmd("invite_list"))["invitations"] == listed
    assert other_user["token"] not in (device["token"], user["token"])

    # Another user gets its own DEVICE invitation.
    bob = await org.connect("bob@dev1")
    assert (await bob.cmd("invite_new", type="DEVICE", send_email=False))["token"] != device["token"]

    # After deletion, a new token is issued.
    assert await alice.cmd("invite_delete", token=device["token"], reason="FINISHED") == {"status": "ok"}
    assert await alice.cmd("invite_delete", token=user["token"], reason="CANCELLED") == {"status": "ok"}
    new_device = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    new_user = await alice.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=False)
    assert new_device["token"] != device["token"]
    assert new_user["token"] != user["token"]
    tokens = [item["token"] for item in (await alice.cmd("invite_list"))["invitations"]]
    assert tokens == [other_user["token"], new_device["token"], new_user["token"]]


@ok
async def test_device_invitation_email_without_human_handle(server) -> None:
    organization = await bootstrap_organization(server, human_handle=None)
    env = InviteEnv(server, organization)
    alice = await env.connect("alice@dev1")
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=True)
    assert rep == {"status": "not_available"}
    # Nothing was created.
    assert await alice.cmd("invite_list") == {"status": "ok", "invitations": []}
    # Without e-mail it works.
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    assert rep["status"] == "ok"
    await env.close_all()


@ok
async def test_email_sent_only_with_send_email(org: InviteEnv, monkeypatch, tmp_path) -> None:
    # The default test server uses `--email-host MOCKED`: e-mails are written to temp files.
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    alice = await org.connect("alice@dev1")
    rep = await alice.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=False)
    assert set(rep) == {"status", "token"}
    rep = await alice.cmd("invite_new", type="USER", claimer_email="zack@example.com", send_email=True)
    assert set(rep) == {"status", "token", "email_sent"}
    assert rep["email_sent"] == "SUCCESS"
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=True)
    assert rep["email_sent"] == "SUCCESS"
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    assert set(rep) == {"status", "token"}
    assert len(list(tmp_path.glob("tmp-email-folder-*/tmp-email-*.html"))) == 2


# ---- invite_delete -----------------------------------------------------------------------------


@ok
async def test_invite_delete(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    token = await org.new_invitation(alice, "USER")
    keep = await org.new_invitation(alice, "DEVICE")
    assert await alice.cmd("invite_delete", token=token, reason="CANCELLED") == {"status": "ok"}
    assert [i["token"] for i in (await alice.cmd("invite_list"))["invitations"]] == [keep]
    assert await alice.cmd("invite_delete", token=token, reason="FINISHED") == {"status": "already_deleted"}
    assert await alice.cmd("invite_delete", token=uuid.uuid4(), reason="ROTTEN") == {"status": "not_found"}
    # Deleted invitations refuse the invited handshake.
    client = await WsClient.connect(org.server.port)
    rep = await client.handshake_invited("CoolOrg", "USER", token)
    assert rep == {"handshake": "result", "result": "bad_identity", "help": "Invalid handshake: Invitation already deleted"}
    await client.wait_closed()


@ok
async def test_invite_delete_bad_reason(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    token = await org.new_invitation(alice)
    rep = await alice.cmd("invite_delete", token=token, reason="FOO")
    assert rep["status"] == "bad_message"
    assert rep["errors"] == {"reason": ["Invalid role `FOO`"]}


@ok
async def test_invite_delete_other_user_or_organization(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    alice2 = await org.connect("alice@dev2")
    bob = await org.connect("bob@dev1")
    alice_token = await org.new_invitation(alice, "USER")
    bob_token = await org.new_invitation(bob)

    # Another user of the organization: not found.
    assert await bob.cmd("invite_delete", token=alice_token, reason="CANCELLED") == {"status": "not_found"}
    assert await alice.cmd("invite_delete", token=bob_token, reason="CANCELLED") == {"status": "not_found"}

    # Another organization: not found.
    other = await bootstrap_organization(org.server, "OtherOrg")
    other_env = InviteEnv(org.server, other)
    mallory = await other_env.connect("alice@dev1")
    assert await mallory.cmd("invite_delete", token=alice_token, reason="CANCELLED") == {"status": "not_found"}
    other_token = await other_env.new_invitation(mallory)
    assert await alice.cmd("invite_delete", token=other_token, reason="CANCELLED") == {"status": "not_found"}

    # Nothing was deleted; another device of the greeter user may delete.
    assert await alice2.cmd("invite_delete", token=alice_token, reason="CANCELLED") == {"status": "ok"}
    assert await bob.cmd("invite_delete", token=bob_token, reason="CANCELLED") == {"status": "ok"}
    assert await mallory.cmd("invite_delete", token=other_token, reason="CANCELLED") == {"status": "ok"}
    await other_env.close_all()


@ok
async def test_invite_delete_closes_the_claimer_connections(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    token = await org.new_invitation(alice, "USER")
    claimer1 = await org.claimer(token, "USER")
    claimer2 = await org.claimer(token, "USER")
    assert (await claimer1.cmd("invite_info"))["status"] == "ok"
    assert await alice.cmd("invite_delete", token=token, reason="FINISHED") == {"status": "ok"}
    await claimer1.expect_closed_without_reply()
    await claimer2.expect_closed_without_reply()


# ---- invite_list -------------------------------------------------------------------------------


@ok
async def test_invite_list(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    assert await alice.cmd("invite_list") == {"status": "ok", "invitations": []}
    t1 = await org.new_invitation(alice, "DEVICE")
    t2 = await org.new_invitation(alice, "USER", claimer_email="zack@example.com")
    t3 = await org.new_invitation(alice, "USER", claimer_email="zoe@example.com")
    bob = await org.connect("bob@dev1")
    await org.new_invitation(bob, "DEVICE")

    rep = await alice.cmd("invite_list")
    items = rep["invitations"]
    assert [i["token"] for i in items] == [t1, t2, t3]
    assert [i["created_on"] for i in items] == sorted(i["created_on"] for i in items)
    assert items[0] == {"type": "DEVICE", "token": t1, "created_on": items[0]["created_on"], "status": "IDLE"}
    assert items[1] == {
        "type": "USER",
        "token": t2,
        "created_on": items[1]["created_on"],
        "claimer_email": "zack@example.com",
        "status": "IDLE",
    }
    assert items[2]["claimer_email"] == "zoe@example.com"
    # The other device of the same user sees the same list; bob only his own.
    alice2 = await org.connect("alice@dev2")
    assert await alice2.cmd("invite_list") == rep
    assert [i["type"] for i in (await bob.cmd("invite_list"))["invitations"]] == ["DEVICE"]


@ok
async def test_invite_list_ready_while_claimer_connected(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    t_user = await org.new_invitation(alice, "USER")
    t_device = await org.new_invitation(alice, "DEVICE")

    async def statuses() -> dict:
        return {i["token"]: i["status"] for i in (await alice.cmd("invite_list"))["invitations"]}

    claimer = await org.claimer(t_user, "USER")
    # READY is set when the handshake succeeds (the claimer's first reply proves it is done).
    assert (await claimer.cmd("ping", ping="x")) == {"status": "ok", "pong": "x"}
    # With PostgreSQL the READY event comes back through NOTIFY, asynchronously.
    await until(lambda: ("CoolOrg", t_user) in org.component._online, "claimer seen")
    assert await statuses() == {t_user: "READY", t_device: "IDLE"}
    await claimer.close()
    await until(lambda: ("CoolOrg", t_user) not in org.component._online, "claimer gone")
    assert await statuses() == {t_user: "IDLE", t_device: "IDLE"}


# ---- invite_info -------------------------------------------------------------------------------


@ok
async def test_invite_info(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    bob = await org.connect("bob@dev1")
    t_user = await org.new_invitation(alice, "USER", claimer_email="zack@example.com")
    t_device = await org.new_invitation(bob, "DEVICE")

    claimer = await org.claimer(t_user, "USER")
    assert await claimer.cmd("invite_info") == {
        "status": "ok",
        "type": "USER",
        "claimer_email": "zack@example.com",
        "greeter_user_id": "alice",
        "greeter_human_handle": ["alice@example.com", "Alicey McAliceFace"],
    }
    claimer = await org.claimer(t_device, "DEVICE")
    assert await claimer.cmd("invite_info") == {
        "status": "ok",
        "type": "DEVICE",
        "greeter_user_id": "bob",
        "greeter_human_handle": ["bob@example.com", "Bob"],
    }


@ok
async def test_invite_info_greeter_without_human_handle(server) -> None:
    organization = await bootstrap_organization(server, human_handle=None)
    env = InviteEnv(server, organization)
    alice = await env.connect("alice@dev1")
    token = await env.new_invitation(alice, "USER", claimer_email="zack@example.com")
    claimer = await env.claimer(token, "USER")
    assert await claimer.cmd("invite_info") == {
        "status": "ok",
        "type": "USER",
        "claimer_email": "zack@example.com",
        "greeter_user_id": "alice",
        "greeter_human_handle": None,
    }
    await env.close_all()


@ok
async def test_invited_connection_command_set(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    token = await org.new_invitation(alice)
    claimer = await org.claimer(token)
    # Greeter commands do not exist on an invited connection, and the reverse.
    claimer.client.send({"cmd": "invite_list"})
    assert await claimer.client.recv() == {"status": "unknown_command", "reason": "Unknown command"}
    alice.client.send({"cmd": "invite_info"})
    assert await alice.client.recv() == {"status": "unknown_command", "reason": "Unknown command"}
