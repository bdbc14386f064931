"""Two `twistd parsec` processes on one database behave as one server (docs/protocol/events.md §6).

A client on instance A hears what is done through instance B (`realm.vlobs_updated`,
`pinged`, `invite.status_changed`), an invitation's greeter and claimer talk through
different instances, and racing writes through A and B are settled by the database.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import pytest_twisted
from twisted.internet import defer

from tests.orgs import Org, bootstrap_organization, now
from tests.postgresql_multi.conftest import connect
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


async def two_instances(servers: Any, database: str) -> tuple[Any, Any, Org]:
    a = await servers.start(database)
    b = await servers.start(database)
    org = await bootstrap_organization(a)
    await org.new_device("alice@dev1", "dev2")
    await org.new_user("alice@dev1", "bob@dev1")
    return a, b, org


async def subscribed(org: Org, server: Any, device_id: str) -> WsClient:
    client = await connect(org, server, device_id)
    assert await client.cmd("events_subscribe") == {"status": "ok"}
    return client


async def next_event(client: WsClient) -> dict[str, Any]:
    rep = await client.cmd("events_listen", wait=True)
    assert rep["status"] == "ok", rep
    return {key: value for key, value in rep.items() if key != "status"}


async def create_realm(client: WsClient, org: Org, device_id: str) -> UUID:
    realm_id = uuid4()
    cert = org.devices[device_id].realm_role_certificate(
        realm_id=realm_id, user_id=device_id.split("@")[0], role="OWNER", timestamp=now()
    )
    assert await client.cmd("realm_create", role_certificate=cert) == {"status": "ok"}
    return realm_id


@ok
async def test_events_cross_instances(servers, database):
    a, b, org = await two_instances(servers, database)
    alice_on_a = await subscribed(org, a, "alice@dev1")
    bob_on_b = await connect(org, b, "bob@dev1")
    alice2_on_b = await connect(org, b, "alice@dev2")

    # pinged: from B to A.
    assert await bob_on_b.cmd("ping", ping="through the database") == {"status": "ok", "pong": "through the database"}
    assert await next_event(alice_on_a) == {"event": "pinged", "ping": "through the database"}

    # realm.vlobs_updated: alice's realm shared with bob, bob writes through B.
    realm_id = await create_realm(alice2_on_b, org, "alice@dev2")
    assert await next_event(alice_on_a) == {"event": "realm.roles_updated", "realm_id": realm_id, "role": "OWNER"}
    cert = org.devices["alice@dev2"].realm_role_certificate(
        realm_id=realm_id, user_id="bob", role="CONTRIBUTOR", timestamp=now()
    )
    rep = await alice2_on_b.cmd("realm_update_roles", role_certificate=cert, recipient_message=None)
    assert rep == {"status": "ok"}
    vlob_id = uuid4()
    rep = await bob_on_b.cmd(
        "vlob_create", realm_id=realm_id, encryption_revision=1, vlob_id=vlob_id, timestamp=now(), blob=b"v1"
    )
    assert rep == {"status": "ok"}
    assert await next_event(alice_on_a) == {
        "event": "realm.vlobs_updated",
        "realm_id": realm_id,
        "checkpoint": 1,
        "src_id": vlob_id,
        "src_version": 1,
    }

    # invite.status_changed: alice's invitation (created on A), claimer connected to B.
    token = (await alice_on_a.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    assert await next_event(alice_on_a) == {"event": "invite.status_changed", "token": token, "invitation_status": "IDLE"}
    claimer = await WsClient.connect(b.port)
    assert (await claimer.handshake_invited("CoolOrg", "DEVICE", token))["result"] == "ok"
    assert await next_event(alice_on_a) == {"event": "invite.status_changed", "token": token, "invitation_status": "READY"}
    await claimer.close()
    assert await next_event(alice_on_a) == {"event": "invite.status_changed", "token": token, "invitation_status": "IDLE"}

    for client in (alice_on_a, bob_on_b, alice2_on_b):
        await client.close()


@ok
async def test_revocation_through_b_closes_connections_on_a(servers, database):
    a, b, org = await two_instances(servers, database)
    bob_on_a = await connect(org, a, "bob@dev1")
    alice_on_b = await connect(org, b, "alice@dev1")
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    assert await alice_on_b.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    code, _ = await bob_on_a.wait_closed()
    assert code == 1000
    await alice_on_b.close()


async def _both(greeter: WsClient, greeter_req: dict[str, Any], claimer: WsClient, claimer_req: dict[str, Any]) -> tuple[
    dict[str, Any], dict[str, Any]
]:
    greeter.send(greeter_req)
    claimer.send(claimer_req)
    replies = await defer.gatherResults(
        [defer.ensureDeferred(greeter.recv()), defer.ensureDeferred(claimer.recv())]
    )
    return replies[0], replies[1]


@ok
async def test_invitation_conduit_across_instances(servers, database):
    a, b, org = await two_instances(servers, database)
    greeter = await connect(org, a, "alice@dev1")
    token = (await greeter.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    claimer = await WsClient.connect(b.port)
    assert (await claimer.handshake_invited("CoolOrg", "DEVICE", token))["result"] == "ok"

    g, c = await _both(
        greeter, {"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": b"G" * 32},
        claimer, {"cmd": "invite_1_claimer_wait_peer", "claimer_public_key": b"C" * 32},
    )
    assert g == {"status": "ok", "claimer_public_key": b"C" * 32}
    assert c == {"status": "ok", "greeter_public_key": b"G" * 32}

    greeter.send({"cmd": "invite_2a_greeter_get_hashed_nonce", "token": token})
    claimer.send({"cmd": "invite_2a_claimer_send_hashed_nonce", "claimer_hashed_nonce": b"hashed"})
    assert await greeter.recv() == {"status": "ok", "claimer_hashed_nonce": b"hashed"}
    # The claimer's 2a goes on waiting for the greeter's nonce, sent by the greeter's 2b.
    greeter.send({"cmd": "invite_2b_greeter_send_nonce", "token": token, "greeter_nonce": b"gnonce"})
    assert await claimer.recv() == {"status": "ok", "greeter_nonce": b"gnonce"}
    claimer.send({"cmd": "invite_2b_claimer_send_nonce", "claimer_nonce": b"cnonce"})
    assert await greeter.recv() == {"status": "ok", "claimer_nonce": b"cnonce"}
    assert await claimer.recv() == {"status": "ok"}

    g, c = await _both(
        greeter, {"cmd": "invite_3a_greeter_wait_peer_trust", "token": token},
        claimer, {"cmd": "invite_3a_claimer_signify_trust"},
    )
    assert g == {"status": "ok"} and c == {"status": "ok"}
    g, c = await _both(
        greeter, {"cmd": "invite_3b_greeter_signify_trust", "token": token},
        claimer, {"cmd": "invite_3b_claimer_wait_peer_trust"},
    )
    assert g == {"status": "ok"} and c == {"status": "ok"}
    g, c = await _both(
        greeter, {"cmd": "invite_4_greeter_communicate", "token": token, "payload": b"to claimer"},
        claimer, {"cmd": "invite_4_claimer_communicate", "payload": b"to greeter"},
    )
    assert g == {"status": "ok", "payload": b"to greeter"}
    assert c == {"status": "ok", "payload": b"to claimer"}
    await greeter.close()
    await claimer.close()


@ok
async def test_racing_vlob_updates_through_both_instances(servers, database):
    a, b, org = await two_instances(servers, database)
    alice_on_a = await connect(org, a, "alice@dev1")
    alice2_on_b = await connect(org, b, "alice@dev2")
    realm_id = await create_realm(alice_on_a, org, "alice@dev1")
    vlob_id = uuid4()
    rep = await alice_on_a.cmd(
        "vlob_create", realm_id=realm_id, encryption_revision=1, vlob_id=vlob_id, timestamp=now(), blob=b"v1"
    )
    assert rep == {"status": "ok"}
    winners: list[bytes] = [b"v1"]
    for version in range(2, 12):
        replies = {}
        for name, client in (("a", alice_on_a), ("b", alice2_on_b)):
            client.send(
                {
                    "cmd": "vlob_update",
                    "encryption_revision": 1,
                    "vlob_id": vlob_id,
                    "version": version,
                    "timestamp": now(),
                    "blob": f"{name}{version}".encode(),
                }
            )
        replies["a"], replies["b"] = await defer.gatherResults(
            [defer.ensureDeferred(alice_on_a.recv()), defer.ensureDeferred(alice2_on_b.recv())]
        )
        statuses = sorted(rep["status"] for rep in replies.values())
        assert statuses == ["bad_version", "ok"], (version, replies)
        winner = next(name for name, rep in replies.items() if rep["status"] == "ok")
        winners.append(f"{winner}{version}".encode())
    # The history is exactly the winners', readable through either instance.
    for version, blob in enumerate(winners, start=1):
        for client in (alice_on_a, alice2_on_b):
            rep = await client.cmd(
                "vlob_read", encryption_revision=1, vlob_id=vlob_id, version=version, timestamp=None
            )
            assert rep["status"] == "ok" and rep["blob"] == blob, (version, rep)
    rep = await alice2_on_b.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0)
    assert rep == {"status": "ok", "current_checkpoint": 11, "changes": {vlob_id: 11}}
    await alice_on_a.close()
    await alice2_on_b.close()
