"""Concurrent requests that race on one rule (docs/protocol/storage.md §3, "Concurrency requirements").

Each request goes over its own connection and all are sent before any reply is read. On
PostgreSQL they are spread over two server instances sharing the test's database, so only the
database (row locks, constraints) can keep them apart; in memory one server serializes them.
The outcome must be the same: exactly the allowed number of successes, the others refused
with the rule's status, and nothing half-written.
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import uuid4

import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer

from parsec.api import protocol
from tests import httpclient
from tests.api.certgen import LocalDevice, new_user_certificates, pki_submit_payload
from tests.backend_pki.common import accept_request, new_der_certificate, submit
from tests.orgs import Org, bootstrap_organization, create_organization, now
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

RACERS = 10


async def instances(server_factory: Any, server_storage: Any) -> list[Any]:
    """Two servers on one database (PostgreSQL), or one server (memory)."""
    count = 2 if server_storage.is_postgresql else 1
    return [await server_factory() for _ in range(count)]


async def connections(org: Org, servers: list[Any], device_id: str, count: int) -> list[WsClient]:
    clients = []
    for index in range(count):
        org.server = servers[index % len(servers)]
        clients.append(await org.connect(device_id))
    org.server = servers[0]
    return clients


async def race(clients: list[WsClient], name: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Send request i on client i, all at once, then collect the replies (schema-checked)."""
    for client, fields in zip(clients, requests, strict=True):
        client.send({"cmd": name, **fields})
    replies = await defer.gatherResults([defer.ensureDeferred(client.recv()) for client in clients])
    for reply in replies:
        protocol.validate_reply(protocol.AUTHENTICATED_COMMANDS[name], reply)
    for client in clients:
        await client.close()
    return list(replies)


def statuses(replies: list[dict[str, Any]]) -> Counter[str]:
    return Counter(reply["status"] for reply in replies)


async def human_find(org: Org, query: str | None = None) -> dict[str, Any]:
    client = await org.connect("alice@dev1")
    try:
        return await client.cmd("human_find", query=query, omit_revoked=False, omit_non_human=False,
                                page=1, per_page=100)
    finally:
        await client.close()


@ok
async def test_same_user_created_concurrently(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    org = await bootstrap_organization(servers[0])
    alice = org.devices["alice@dev1"]
    bob = LocalDevice.generate("bob@dev1", human_handle=("bob@example.com", "Bob"))
    # Ten different signed requests (own timestamps) creating the same user.
    requests = [
        new_user_certificates(alice.signing_key, alice.device_id, bob, timestamp=now()).as_request()
        for _ in range(RACERS)
    ]
    replies = await race(await connections(org, servers, "alice@dev1", RACERS), "user_create", requests)
    assert statuses(replies) == {"ok": 1, "already_exists": RACERS - 1}, replies
    assert {r.get("reason") for r in replies if r["status"] != "ok"} == {"User `bob` already exists"}
    # Exactly one bob, with one device.
    result = await human_find(org, "bob")
    assert result["total"] == 1, result
    org.devices["bob@dev1"] = bob
    client = await org.connect("alice@dev1")
    rep = await client.cmd("user_get", user_id="bob")
    assert rep["status"] == "ok" and len(rep["device_certificates"]) == 1
    await client.close()


@ok
async def test_same_human_handle_claimed_concurrently(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    org = await bootstrap_organization(servers[0])
    alice = org.devices["alice@dev1"]
    requests = [
        new_user_certificates(
            alice.signing_key,
            alice.device_id,
            LocalDevice.generate(f"user{index}@dev1", human_handle=("same@example.com", f"Same {index}")),
            timestamp=now(),
        ).as_request()
        for index in range(RACERS)
    ]
    replies = await race(await connections(org, servers, "alice@dev1", RACERS), "user_create", requests)
    assert statuses(replies) == {"ok": 1, "already_exists": RACERS - 1}, replies
    assert (await human_find(org, "same@example.com"))["total"] == 1


@ok
async def test_active_users_limit_under_concurrency(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    # Limit 3 with one existing user (alice): room for two more.
    org = await bootstrap_organization(servers[0], active_users_limit=3)
    alice = org.devices["alice@dev1"]
    requests = [
        new_user_certificates(
            alice.signing_key, alice.device_id, LocalDevice.generate(f"user{index}@dev1"), timestamp=now()
        ).as_request()
        for index in range(RACERS)
    ]
    replies = await race(await connections(org, servers, "alice@dev1", RACERS), "user_create", requests)
    assert statuses(replies) == {"ok": 2, "active_users_limit_reached": RACERS - 2}, replies
    rep = await httpclient.admin(servers[-1].port, "GET", "/administration/organizations/CoolOrg/stats")
    assert rep.json()["active_users"] == 3


@ok
async def test_concurrent_bootstraps(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    token = await create_organization(servers[0], "CoolOrg")
    requests = []
    for index in range(RACERS):
        root_key = SigningKey.generate()
        first = LocalDevice.generate(f"first{index}@dev1", profile="ADMIN")
        blobs = new_user_certificates(root_key, None, first, timestamp=now())
        requests.append(
            {
                "cmd": "organization_bootstrap",
                "bootstrap_token": token,
                "root_verify_key": bytes(root_key.verify_key),
                **blobs.as_request(),
            }
        )
    answers = await defer.gatherResults(
        [
            defer.ensureDeferred(httpclient.anonymous(servers[index % len(servers)].port, "CoolOrg", request))
            for index, request in enumerate(requests)
        ]
    )
    replies = [answer.msgpack() for answer in answers]
    assert statuses(replies) == {"ok": 1, "already_bootstrapped": RACERS - 1}, replies
    rep = await httpclient.admin(servers[-1].port, "GET", "/administration/organizations/CoolOrg/stats")
    assert rep.json()["users"] == 1


@ok
async def test_idempotent_invite_new_under_concurrency(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    org = await bootstrap_organization(servers[0])
    request = {"type": "USER", "claimer_email": "zack@example.com", "send_email": False}
    replies = await race(
        await connections(org, servers, "alice@dev1", RACERS), "invite_new", [request] * RACERS
    )
    assert statuses(replies) == {"ok": RACERS}, replies
    assert len({reply["token"] for reply in replies}) == 1
    client = await org.connect("alice@dev1")
    assert len((await client.cmd("invite_list"))["invitations"]) == 1
    await client.close()


@ok
async def test_pki_enrollment_accepted_once(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    org = await bootstrap_organization(servers[0])
    enrollment_id = uuid4()
    assert (await submit(servers[0], "CoolOrg", enrollment_id=enrollment_id))["status"] == "ok"
    alice = org.devices["alice@dev1"]
    # Each admin request creates a different user from the same enrollment.
    requests = [
        accept_request(alice, LocalDevice.generate(f"enrolled{index}@dev1"), enrollment_id)
        for index in range(RACERS)
    ]
    replies = await race(
        await connections(org, servers, "alice@dev1", RACERS), "pki_enrollment_accept", requests
    )
    assert statuses(replies) == {"ok": 1, "no_longer_available": RACERS - 1}, replies
    rep = await httpclient.admin(servers[-1].port, "GET", "/administration/organizations/CoolOrg/stats")
    assert rep.json()["users"] == 2


@ok
async def test_pki_submissions_of_one_certificate(server_factory, server_storage):
    servers = await instances(server_factory, server_storage)
    await bootstrap_organization(servers[0])
    certificate = new_der_certificate()
    answers = await defer.gatherResults(
        [
            defer.ensureDeferred(
                httpclient.anonymous(
                    servers[index % len(servers)].port,
                    "CoolOrg",
                    {
                        "cmd": "pki_enrollment_submit",
                        "enrollment_id": uuid4(),
                        "force": False,
                        "submitter_der_x509_certificate": certificate,
                        "submit_payload_signature": b"signature",
                        "submit_payload": pki_submit_payload(),
                    },
                )
            )
            for index in range(RACERS)
        ]
    )
    replies = [answer.msgpack() for answer in answers]
    assert statuses(replies) == {"ok": 1, "already_submitted": RACERS - 1}, replies
