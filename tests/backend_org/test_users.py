"""User and device commands (docs/protocol/commands.md §5.2-5.3, §6)."""

from __future__ import annotations

from datetime import timedelta

import pytest_twisted

from parsec.api import protocol
from tests import httpclient
from tests.api.certgen import LocalDevice, new_device_certificates, new_user_certificates
from tests.orgs import bootstrap_organization, now

ok = pytest_twisted.ensureDeferred


async def cmd(client, name, **fields):
    rep = await client.cmd(name, **fields)
    protocol.validate_reply(protocol.AUTHENTICATED_COMMANDS[name], rep)
    return rep


def new_user_req(author: LocalDevice, device: LocalDevice, **kw):
    return new_user_certificates(author.signing_key, author.device_id, device, timestamp=kw.pop("timestamp", now()), **kw).as_request()


@ok
async def test_user_create_rules(server):
    org = await bootstrap_organization(server)
    alice = org.devices["alice@dev1"]
    client = await org.connect(alice)
    bob = LocalDevice.generate("bob@dev1", human_handle=("bob@example.com", "Bob"))
    assert await cmd(client, "user_create", **new_user_req(alice, bob)) == {"status": "ok"}
    assert await cmd(client, "user_create", **new_user_req(alice, bob)) == {
        "status": "already_exists", "reason": "User `bob` already exists"}
    bob2 = LocalDevice.generate("bob2@dev1", human_handle=("bob@example.com", "Bobby"))
    assert await cmd(client, "user_create", **new_user_req(alice, bob2)) == {
        "status": "already_exists",
        "reason": "Human handle `Bobby <bob@example.com>` already corresponds to a non-revoked user"}
    # Signed by someone else.
    mallory = LocalDevice.generate("mallory@dev1")
    req = new_user_certificates(mallory.signing_key, alice.device_id, LocalDevice.generate("zack@dev1"), timestamp=now()).as_request()
    assert await cmd(client, "user_create", **req) == {
        "status": "invalid_certification",
        "reason": "Invalid certification data (Signature was forged or corrupt)."}
    # Old certificate.
    rep = await cmd(client, "user_create", **new_user_req(alice, LocalDevice.generate("zack@dev1"), timestamp=now() - timedelta(seconds=3601)))
    assert rep == {"status": "invalid_certification", "reason": "Invalid timestamp in certificate."}
    # Missing redacted field.
    req = new_user_req(alice, LocalDevice.generate("zack@dev1"))
    del req["redacted_device_certificate"]
    rep = await client.cmd("user_create", **req)
    assert rep == {"status": "bad_message", "reason": "Invalid message.",
                   "errors": {"redacted_device_certificate": ["Missing data for required field."]}}
    # After revocation the handle is free again.
    cert = alice.revoked_user_certificate(user_id="bob", timestamp=now())
    assert await cmd(client, "user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    assert await cmd(client, "user_create", **new_user_req(alice, bob2)) == {"status": "ok"}
    await client.close()


@ok
async def test_non_admin_refused_before_schema(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    bob = await org.connect("bob@dev1")
    for name in ("user_create", "user_revoke", "pki_enrollment_list"):
        bob.send({"cmd": name, "garbage": True})
        assert await bob.recv() == {"status": "not_allowed", "reason": "User `bob` is not admin"}
    # organization_stats validates first, then checks the profile.
    assert await cmd(bob, "organization_stats") == {"status": "not_allowed", "reason": "User `bob` is not admin"}
    await bob.close()


@ok
async def test_active_users_limit(server):
    org = await bootstrap_organization(server, active_users_limit=2)
    alice = org.devices["alice@dev1"]
    client = await org.connect(alice)
    assert await cmd(client, "user_create", **new_user_req(alice, LocalDevice.generate("bob@dev1"))) == {"status": "ok"}
    zack = LocalDevice.generate("zack@dev1")
    assert await cmd(client, "user_create", **new_user_req(alice, zack)) == {"status": "active_users_limit_reached"}
    await httpclient.admin(server.port, "PATCH", "/administration/organizations/CoolOrg", {"active_users_limit": 3})
    assert await cmd(client, "user_create", **new_user_req(alice, zack)) == {"status": "ok"}
    assert await cmd(client, "organization_config") == {
        "status": "ok", "user_profile_outsider_allowed": True, "active_users_limit": 3}
    await client.close()


@ok
async def test_outsider_not_allowed(server):
    org = await bootstrap_organization(server, user_profile_outsider_allowed=False)
    alice = org.devices["alice@dev1"]
    client = await org.connect(alice)
    rep = await cmd(client, "user_create", **new_user_req(alice, LocalDevice.generate("zoe@dev1", profile="OUTSIDER")))
    assert rep["status"] == "not_allowed"
    assert await cmd(client, "organization_config") == {
        "status": "ok", "user_profile_outsider_allowed": False, "active_users_limit": None}
    await client.close()


@ok
async def test_device_create(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "zoe@dev1", profile="OUTSIDER")
    zoe = org.devices["zoe@dev1"]
    client = await org.connect(zoe)
    dev2 = zoe.new_device("dev2", device_label="Second")
    cert, redacted = new_device_certificates(zoe, dev2, timestamp=now())
    assert await cmd(client, "device_create", device_certificate=cert, redacted_device_certificate=redacted) == {"status": "ok"}
    assert await cmd(client, "device_create", device_certificate=cert, redacted_device_certificate=redacted) == {
        "status": "already_exists", "reason": "Device `zoe@dev2` already exists"}
    other = LocalDevice.generate("alice@dev9")
    cert, redacted = new_device_certificates(zoe, other, timestamp=now())
    assert await cmd(client, "device_create", device_certificate=cert, redacted_device_certificate=redacted) == {
        "status": "bad_user_id", "reason": "Device must be handled by it own user."}
    dev3 = zoe.new_device("dev3", device_label="Third")
    cert, redacted = new_device_certificates(zoe, dev3, timestamp=now() - timedelta(seconds=3601))
    assert await cmd(client, "device_create", device_certificate=cert, redacted_device_certificate=redacted) == {
        "status": "invalid_certification", "reason": "Invalid timestamp in certification."}
    cert, _ = new_device_certificates(zoe, dev3, timestamp=now())
    assert await cmd(client, "device_create", device_certificate=cert, redacted_device_certificate=cert) == {
        "status": "invalid_data", "reason": "Redacted Device certificate must not contain a device_label field."}
    await client.close()
    org.devices[dev2.device_id] = dev2
    second = await org.connect(dev2)
    await second.close()


@ok
async def test_user_revoke(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1", profile="ADMIN")
    alice = org.devices["alice@dev1"]
    client = await org.connect(alice)
    assert await cmd(client, "user_revoke", revoked_user_certificate=alice.revoked_user_certificate(user_id="alice", timestamp=now())) == {
        "status": "not_allowed", "reason": "Cannot do self-revocation"}
    assert await cmd(client, "user_revoke", revoked_user_certificate=alice.revoked_user_certificate(user_id="nobody", timestamp=now())) == {
        "status": "not_found"}
    rep = await cmd(client, "user_revoke", revoked_user_certificate=alice.revoked_user_certificate(
        user_id="bob", timestamp=now() - timedelta(seconds=3601)))
    assert rep == {"status": "invalid_certification", "reason": "Invalid timestamp in certification."}
    cert = alice.revoked_user_certificate(user_id="bob", timestamp=now())
    assert await cmd(client, "user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    assert await cmd(client, "user_revoke", revoked_user_certificate=cert) == {
        "status": "already_revoked", "reason": "User `bob` already revoked"}
    rep = await cmd(client, "user_get", user_id="bob")
    assert rep["revoked_user_certificate"] == cert
    await client.close()


@ok
async def test_user_get_trustchain_and_redaction(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1", profile="ADMIN", human_handle=("bob@example.com", "Bob"))
    await org.new_user("bob@dev1", "carl@dev1", human_handle=("carl@example.com", "Carl"), device_label="Carl's PC")
    await org.new_user("alice@dev1", "zoe@dev1", profile="OUTSIDER")
    alice = await org.connect("alice@dev1")
    rep = await cmd(alice, "user_get", user_id="alice")
    assert rep["trustchain"] == {"devices": [], "users": [], "revoked_users": []}
    rep = await cmd(alice, "user_get", user_id="carl")
    # carl certified by bob@dev1, bob certified by alice@dev1 (root-certified).
    assert len(rep["trustchain"]["devices"]) == 2
    assert len(rep["trustchain"]["users"]) == 2
    full = rep["user_certificate"]
    assert await cmd(alice, "user_get", user_id="nobody") == {"status": "not_found"}
    await alice.close()
    zoe = await org.connect("zoe@dev1")
    rep = await cmd(zoe, "user_get", user_id="carl")
    assert rep["user_certificate"] != full
    from parsec.api.certificates import unsecure_load_device_certificate, unsecure_load_user_certificate

    assert unsecure_load_user_certificate(rep["user_certificate"]).human_handle is None
    assert unsecure_load_device_certificate(rep["device_certificates"][0]).device_label is None
    assert all(unsecure_load_user_certificate(c).human_handle is None for c in rep["trustchain"]["users"])
    zoe.send({"cmd": "human_find", "query": None})
    assert await zoe.recv() == {"status": "not_allowed", "reason": "Not allowed for user with OUTSIDER profile."}
    await zoe.close()


@ok
async def test_human_find(server):
    org = await bootstrap_organization(server, human_handle=("alice@example.com", "Alice"))
    for uid, label in (("bruce", "Bruce Wayne"), ("brucel", "Bruce Lee"), ("bron", "bruce.l Willis"), ("jung", "황정리")):
        await org.new_user("alice@dev1", f"{uid}@dev1", human_handle=(f"{uid}@example.com", label))
    await org.new_user("alice@dev1", "robot@dev1")
    client = await org.connect("alice@dev1")

    async def find(query=None, omit_revoked=False, omit_non_human=False, page=1, per_page=100):
        return await cmd(client, "human_find", query=query, omit_revoked=omit_revoked,
                         omit_non_human=omit_non_human, page=page, per_page=per_page)

    rep = await find("Bruce")
    assert [r["user_id"] for r in rep["results"]] == ["brucel", "bruce", "bron"]
    assert rep["total"] == 3
    assert [r["user_id"] for r in (await find("bruce.l"))["results"]] == ["bron"]
    assert [r["user_id"] for r in (await find("황"))["results"]] == ["jung"]
    assert (await find("robot"))["results"] == []
    everyone = await find()
    assert everyone["total"] == 6
    assert everyone["results"][-1] == {"user_id": "robot", "human_handle": None, "revoked": False}
    assert (await find(omit_non_human=True))["total"] == 5
    page2 = await find(page=2, per_page=3)
    assert page2["page"] == 2 and page2["per_page"] == 3 and len(page2["results"]) == 3 and page2["total"] == 6
    assert (await find(page=10, per_page=3))["results"] == []
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="bruce", timestamp=now())
    assert await cmd(client, "user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    assert {"user_id": "bruce", "human_handle": ["bruce@example.com", "Bruce Wayne"], "revoked": True} in (await find("Bruce"))["results"]
    assert [r["user_id"] for r in (await find("Bruce", omit_revoked=True))["results"]] == ["brucel", "bron"]
    for bad in ({"page": 0}, {"per_page": 0}, {"per_page": 101}):
        args = {"query": None, "omit_revoked": False, "omit_non_human": False, "page": 1, "per_page": 10, **bad}
        assert (await client.cmd("human_find", **args))["status"] == "bad_message"
    await client.close()


@ok
async def test_organization_stats(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1", profile="ADMIN")
    await org.new_user("alice@dev1", "carl@dev1")
    client = await org.connect("alice@dev1")
    rep = await cmd(client, "organization_stats")
    assert rep["users"] == 3 and rep["active_users"] == 3
    assert rep["users_per_profile_detail"] == [
        {"profile": "ADMIN", "active": 2, "revoked": 0},
        {"profile": "STANDARD", "active": 1, "revoked": 0},
        {"profile": "OUTSIDER", "active": 0, "revoked": 0},
    ]
    cert = org.devices["alice@dev1"].revoked_user_certificate(user_id="carl", timestamp=now())
    await cmd(client, "user_revoke", revoked_user_certificate=cert)
    rep = await cmd(client, "organization_stats")
    assert rep["active_users"] == 2 and rep["users"] == 3
    assert rep["users_per_profile_detail"][1] == {"profile": "STANDARD", "active": 0, "revoked": 1}
    await client.close()
    other = await bootstrap_organization(server, "OtherOrg")
    client = await other.connect("alice@dev1")
    assert (await cmd(client, "organization_stats"))["users"] == 1
    assert await cmd(client, "user_get", user_id="bob") == {"status": "not_found"}
    await client.close()
