"""Every handshake result for each kind (docs/protocol/handshake.md §4), over real TCP."""

from __future__ import annotations

import uuid

import pytest
import pytest_twisted
from nacl.signing import SigningKey

from parsec.api.codec import packb
from tests import httpclient
from tests.orgs import bootstrap_organization, create_organization
from tests.wsclient import ClosedError, WsClient

ok = pytest_twisted.ensureDeferred


async def answer(server, msg) -> dict:
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.send(msg)
    rep = await client.recv()
    if rep.get("result") != "ok":
        # After a failed handshake: TCP dropped without a Close frame.
        code, clean = await client.wait_closed()
        assert not clean
    return rep


@ok
async def test_challenge_content(server):
    client = await WsClient.connect(server.port)
    challenge = await client.challenge()
    assert challenge["handshake"] == "challenge"
    assert len(challenge["challenge"]) == 48
    assert challenge["supported_api_versions"] == [[1, 3], [2, 7], [3, 1]]
    assert challenge["ballpark_client_early_offset"] == 50.0
    assert challenge["ballpark_client_late_offset"] == 70.0
    assert challenge["backend_timestamp"].tzinfo is not None
    await client.close()


@pytest.mark.parametrize("api_version", [(2, 0), (2, 4), (2, 5), (2, 7), (3, 0), (3, 1), (3, 99)])
@ok
async def test_authenticated_ok_every_version(server, api_version):
    org = await bootstrap_organization(server)
    client = await org.connect("alice@dev1", api_version=api_version)
    assert await client.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}
    await client.close()


@ok
async def test_authenticated_failures(server):
    org = await bootstrap_organization(server)
    alice = org.devices["alice@dev1"]

    async def auth(organization_id="CoolOrg", device_id="alice@dev1", key=alice.signing_key,
                   rvk=org.root_verify_key, api_version=(2, 7), tamper=None):
        client = await WsClient.connect(server.port)
        challenge = (await client.challenge())["challenge"]
        if tamper == "old_format":
            signed = key.sign(challenge)
        elif tamper == "wrong_challenge":
            signed = key.sign(packb({"type": "signed_answer", "answer": b"x" * 48}))
        elif tamper == "garbage":
            signed = b"garbage"
        else:
            signed = key.sign(packb({"type": "signed_answer", "answer": challenge}))
        client.send({
            "handshake": "answer", "type": "AUTHENTICATED", "client_api_version": list(api_version),
            "organization_id": organization_id, "device_id": device_id, "rvk": rvk,
            "answer": bytes(signed),
        })
        rep = await client.recv()
        if rep["result"] != "ok":
            await client.wait_closed()
        else:
            await client.close()
        return rep

    bad_identity = {"handshake": "result", "result": "bad_identity", "help": "Invalid handshake information"}
    assert await auth(organization_id="Unknown") == bad_identity
    assert await auth(device_id="alice@unknown") == bad_identity
    assert await auth(device_id="zack@dev1") == bad_identity
    assert await auth(rvk=bytes(SigningKey.generate().verify_key)) == {
        "handshake": "result", "result": "rvk_mismatch",
        "help": "Root verify key for organization differs between client and server",
    }
    assert await auth(key=SigningKey.generate()) == {
        "handshake": "result", "result": "bad_protocol", "help": "Invalid answer signature"}
    assert await auth(tamper="garbage") == {
        "handshake": "result", "result": "bad_protocol", "help": "Invalid answer signature"}
    assert await auth(tamper="wrong_challenge") == {
        "handshake": "result", "result": "bad_protocol", "help": "Invalid returned challenge"}
    rep = await auth(tamper="old_format")
    assert rep["result"] == "bad_protocol"
    assert rep["help"].startswith("Invalid msgpack data")
    # A 2.4 client signs the raw challenge: the new format is refused.
    assert (await auth(api_version=(2, 4)))["help"] == "Invalid returned challenge"
    assert (await auth(api_version=(2, 4), tamper="old_format"))["result"] == "ok"


@ok
async def test_authenticated_revoked_and_expired(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    from tests.orgs import now

    alice = await org.connect("alice@dev1")
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    assert await alice.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    await alice.close()
    bob = org.devices["bob@dev1"]
    client = await WsClient.connect(server.port)
    rep = await client.handshake_authenticated("CoolOrg", "bob@dev1", bob.signing_key, org.root_verify_key)
    assert rep == {"handshake": "result", "result": "revoked_device", "help": "Device has been revoked"}
    await client.wait_closed()

    rep = await httpclient.admin(server.port, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": True})
    assert rep.status == 200
    client = await WsClient.connect(server.port)
    alice_dev = org.devices["alice@dev1"]
    rep = await client.handshake_authenticated("CoolOrg", "alice@dev1", alice_dev.signing_key, org.root_verify_key)
    assert rep == {"handshake": "result", "result": "organization_expired", "help": "Trial organization has expired"}
    await client.wait_closed()


@pytest.mark.parametrize(
    "msg, help",
    [
        ({"handshake": "foo", "client_api_version": [2, 7]}, "{'handshake': ['Invalid value, should be `answer`']}"),
        ({"handshake": "answer"}, "{'client_api_version': ['Missing data for required field.']}"),
        (
            {"handshake": "answer", "client_api_version": [4, 0], "type": "AUTHENTICATED"},
            "No overlap between client API versions {4.0} and backend API versions {1.3, 2.7, 3.1}",
        ),
        (
            {"handshake": "answer", "client_api_version": [0, 1]},
            "No overlap between client API versions {0.1} and backend API versions {1.3, 2.7, 3.1}",
        ),
        (
            {"handshake": "answer", "client_api_version": [1, 3], "type": "AUTHENTICATED", "organization_id": "Org"},
            "{'type': ['Unsupported value.']}",
        ),
        (
            {"handshake": "answer", "client_api_version": [1, 3], "type": "ADMINISTRATION", "organization_id": "Org"},
            "{'type': ['Unsupported value.']}",
        ),
        (
            {"handshake": "answer", "client_api_version": [2, 7], "type": "anonymous", "organization_id": "Org"},
            "{'type': ['Unsupported value.']}",
        ),
        (
            {"handshake": "answer", "client_api_version": [2, 7], "type": "INVITED", "organization_id": "Org",
             "invitation_type": "USER", "token": "not-a-uuid"},
            "{'token': ['Not an UUID']}",
        ),
    ],
)
@ok
async def test_bad_protocol(server, msg, help):
    assert await answer(server, msg) == {"handshake": "result", "result": "bad_protocol", "help": help}


@ok
async def test_bad_protocol_undecodable(server):
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.send_raw(b"\xc1")
    rep = await client.recv()
    assert rep["result"] == "bad_protocol"
    assert rep["help"].startswith("Invalid msgpack data")
    await client.wait_closed()
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.send_raw(packb([1, 2]))
    rep = await client.recv()
    assert rep == {"handshake": "result", "result": "bad_protocol", "help": "Invalid msgpack data: root must be a map"}
    await client.wait_closed()


@ok
async def test_text_frame_during_handshake(server):
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.send_raw(b"hello", binary=False)
    assert await client.recv() == {"status": "invalid_msg_format", "reason": "Invalid message format"}
    code, clean = await client.wait_closed()
    assert code == 1000


@ok
async def test_invited_handshake(server):
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    rep = await alice.cmd("invite_new", type="DEVICE", send_email=False)
    assert rep["status"] == "ok", rep
    token = rep["token"]

    async def invited(organization_id="CoolOrg", invitation_type="DEVICE", tok=token):
        client = await WsClient.connect(server.port)
        rep = await client.handshake_invited(organization_id, invitation_type, tok)
        if rep["result"] == "ok":
            assert await client.cmd("ping", ping="p") == {"status": "ok", "pong": "p"}
            await client.close()
        else:
            await client.wait_closed()
        return rep

    assert await invited() == {"handshake": "result", "result": "ok"}
    assert await invited(organization_id="Unknown") == {
        "handshake": "result", "result": "bad_identity", "help": "Invalid handshake information"}
    assert await invited(invitation_type="USER") == {
        "handshake": "result", "result": "bad_identity", "help": "Invalid handshake information"}
    assert await invited(tok=uuid.uuid4()) == {
        "handshake": "result", "result": "bad_identity", "help": "Invalid handshake: Invitation not found"}
    assert await alice.cmd("invite_delete", token=token, reason="CANCELLED") == {"status": "ok"}
    assert await invited() == {
        "handshake": "result", "result": "bad_identity", "help": "Invalid handshake: Invitation already deleted"}
    await alice.close()
    await httpclient.admin(server.port, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": True})
    assert await invited() == {
        "handshake": "result", "result": "organization_expired", "help": "Trial organization has expired"}


@ok
async def test_anonymous_v1_handshake(server, server_factory):
    org = await bootstrap_organization(server)
    client = await WsClient.connect(server.port)
    assert await client.handshake_anonymous_v1("CoolOrg") == {"handshake": "result", "result": "ok"}
    assert await client.cmd("ping", ping="v1") == {"status": "ok", "pong": "v1"}
    # Only ping and organization_bootstrap exist on this connection type.
    assert await client.cmd("user_get", user_id="alice") == {"status": "unknown_command", "reason": "Unknown command"}
    await client.close()

    client = await WsClient.connect(server.port)
    assert await client.handshake_anonymous_v1("CoolOrg", rvk=org.root_verify_key) == {"handshake": "result", "result": "ok"}
    await client.close()
    client = await WsClient.connect(server.port)
    rep = await client.handshake_anonymous_v1("CoolOrg", rvk=bytes(SigningKey.generate().verify_key))
    assert rep["result"] == "rvk_mismatch"
    await client.wait_closed()
    client = await WsClient.connect(server.port)
    assert (await client.handshake_anonymous_v1("Unknown"))["result"] == "bad_identity"
    await client.wait_closed()
    # Not bootstrapped yet: any given rvk mismatches the (null) stored key.
    await create_organization(server, "Fresh")
    client = await WsClient.connect(server.port)
    assert (await client.handshake_anonymous_v1("Fresh", rvk=org.root_verify_key))["result"] == "rvk_mismatch"
    await client.wait_closed()
    await httpclient.admin(server.port, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": True})
    client = await WsClient.connect(server.port)
    assert (await client.handshake_anonymous_v1("CoolOrg"))["result"] == "organization_expired"
    await client.wait_closed()


@ok
async def test_spontaneous_bootstrap_v1_handshake_creates_org(server_factory):
    from parsec.config import BackendConfig

    server = await server_factory(backend=BackendConfig(spontaneous_organization_bootstrap=True))
    client = await WsClient.connect(server.port)
    assert await client.handshake_anonymous_v1("Brand_New") == {"handshake": "result", "result": "ok"}
    await client.close()
    rep = await httpclient.admin(server.port, "GET", "/administration/organizations/Brand_New")
    assert rep.status == 200 and rep.json()["is_bootstrapped"] is False


@ok
async def test_disconnect_before_answer(server):
    client = await WsClient.connect(server.port)
    await client.challenge()
    client.proto.transport.loseConnection()
    with pytest.raises(ClosedError):
        await client.recv()
