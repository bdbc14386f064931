"""organization_bootstrap on the anonymous HTTP route and on the APIv1 websocket (docs/protocol/commands.md §5.1)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest_twisted
from nacl.signing import SigningKey
from twisted.internet import defer, reactor
from twisted.web import resource
from twisted.web import server as web_server

from parsec.backend.organization import OrganizationComponent
from parsec.confidential import redact_url
from parsec.config import BackendConfig
from tests import httpclient
from tests.api.certgen import LocalDevice, new_user_certificates
from tests.orgs import bootstrap_organization, create_organization, now
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


def bootstrap_msg(token, root_key=None, device=None, timestamp=None, **overrides):
    root_key = root_key or SigningKey.generate()
    device = device or LocalDevice.generate(
        "alice@dev1", profile="ADMIN", human_handle=("alice@example.com", "Alicey McAliceFace"),
        device_label="My dev1 machine")
    blobs = new_user_certificates(root_key, None, device, timestamp=timestamp or now(), **overrides)
    return {
        "cmd": "organization_bootstrap", "bootstrap_token": token,
        "root_verify_key": bytes(root_key.verify_key), **blobs.as_request(),
    }


async def http_bootstrap(server, org, msg):
    rep = await httpclient.anonymous(server.port, org, msg)
    assert rep.status == 200
    return rep.msgpack()


@ok
async def test_bootstrap_errors(server):
    token = await create_organization(server, "CoolOrg")
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg("wrong")) == {"status": "not_found"}
    # Certificates signed by another key than the given root key.
    msg = bootstrap_msg(token)
    msg["root_verify_key"] = bytes(SigningKey.generate().verify_key)
    rep = await http_bootstrap(server, "CoolOrg", msg)
    assert rep == {"status": "invalid_certification",
                   "reason": "Invalid certification data (Signature was forged or corrupt)."}
    # Not an admin.
    device = LocalDevice.generate("alice@dev1", profile="STANDARD")
    rep = await http_bootstrap(server, "CoolOrg", bootstrap_msg(token, device=device))
    assert rep == {"status": "invalid_data", "reason": "Bootstrapping user must have admin profile."}
    # Timestamps differ.
    rep = await http_bootstrap(server, "CoolOrg", bootstrap_msg(
        token, device_overrides={"timestamp": now() + timedelta(seconds=1)}))
    assert rep == {"status": "invalid_data", "reason": "Device and user certificates must have the same timestamp."}
    # Out of the ballpark.
    old = now() - timedelta(seconds=3600)
    rep = await http_bootstrap(server, "CoolOrg", bootstrap_msg(token, timestamp=old))
    assert rep["status"] == "bad_timestamp"
    assert set(rep) == {"status", "ballpark_client_early_offset", "ballpark_client_late_offset",
                        "backend_timestamp", "client_timestamp"}
    assert rep["client_timestamp"] == old
    # Redacted certificate carrying the human handle.
    rep = await http_bootstrap(server, "CoolOrg", bootstrap_msg(
        token, redacted_user_overrides={"human_handle": ["alice@example.com", "Alice"]}))
    assert rep["status"] == "invalid_data"
    # Missing redacted certificates on the HTTP flavour.
    msg = bootstrap_msg(token)
    del msg["redacted_user_certificate"]
    assert (await http_bootstrap(server, "CoolOrg", msg))["status"] == "bad_message"
    # Nothing was stored: the organization is still bootstrappable.
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(token)) == {"status": "ok"}
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(token)) == {"status": "already_bootstrapped"}
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg("wrong")) == {"status": "already_bootstrapped"}


@ok
async def test_bootstrap_expired_org_over_http(server):
    token = await create_organization(server, "CoolOrg")
    await httpclient.admin(server.port, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": True})
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(token)) == {"status": "ok"}


@ok
async def test_bootstrap_limit_zero(server):
    token = await create_organization(server, "CoolOrg", active_users_limit=0)
    assert await http_bootstrap(server, "CoolOrg", bootstrap_msg(token)) == {"status": "active_users_limit_reached"}


@ok
async def test_concurrent_bootstraps(server):
    token = await create_organization(server, "CoolOrg")
    results = await defer.gatherResults(
        [defer.ensureDeferred(http_bootstrap(server, "CoolOrg", bootstrap_msg(token))) for _ in range(5)]
    )
    assert sorted(r["status"] for r in results) == ["already_bootstrapped"] * 4 + ["ok"]


@ok
async def test_apiv1_bootstrap(server):
    token = await create_organization(server, "CoolOrg")
    client = await WsClient.connect(server.port)
    assert (await client.handshake_anonymous_v1("CoolOrg"))["result"] == "ok"
    msg = bootstrap_msg(token)
    only_one = dict(msg)
    del only_one["redacted_device_certificate"]
    client.send(only_one)
    assert await client.recv() == {
        "status": "invalid_data", "reason": "Redacted user&device certificate muste be provided together"}
    with_none = dict(msg, redacted_user_certificate=None)
    client.send(with_none)
    assert (await client.recv())["status"] == "bad_message"
    legacy = dict(msg)
    del legacy["redacted_user_certificate"], legacy["redacted_device_certificate"]
    client.send(legacy)
    assert await client.recv() == {"status": "ok"}
    await client.close()
    # The first device can now connect.
    rep = await httpclient.admin(server.port, "GET", "/administration/organizations/CoolOrg")
    assert rep.json()["is_bootstrapped"] is True


@ok
async def test_spontaneous_bootstrap(server_factory):
    server = await server_factory(backend=BackendConfig(spontaneous_organization_bootstrap=True))
    assert await http_bootstrap(server, "NewOrg", bootstrap_msg("")) == {"status": "ok"}
    await create_organization(server, "Reserved")
    assert await http_bootstrap(server, "Reserved", bootstrap_msg("")) == {"status": "not_found"}
    rep = await httpclient.admin(server.port, "GET", "/administration/organizations/Reserved")
    assert rep.json()["is_bootstrapped"] is False
    # An organization created with an empty token (interrupted spontaneous bootstrap) works too.
    await server.app.component(OrganizationComponent).create("EmptyTok", bootstrap_token="")
    assert await http_bootstrap(server, "EmptyTok", bootstrap_msg("")) == {"status": "ok"}


class _Hook(resource.Resource):
    isLeaf = True

    def __init__(self, code: int = 200) -> None:
        super().__init__()
        self.calls: list[tuple[bytes, dict]] = []
        self.code = code

    def render_POST(self, request):
        self.calls.append((request.getHeader(b"content-type"), json.loads(request.content.read())))
        request.setResponseCode(self.code)
        return b"ok"


@ok
async def test_bootstrap_webhook(server_factory):
    hook = _Hook()
    port = reactor.listenTCP(0, web_server.Site(hook), interface="127.0.0.1")
    try:
        server = await server_factory(backend=BackendConfig(
            organization_bootstrap_webhook=f"http://127.0.0.1:{port.getHost().port}/webhook"))
        await bootstrap_organization(server, "NewOrg")
        assert hook.calls == [(
            b"application/json; charset=utf-8",
            {"organization_id": "NewOrg", "device_id": "alice@dev1", "device_label": "My dev1 machine",
             "human_email": "alice@example.com", "human_label": "Alicey McAliceFace"},
        )]
        # A failing webhook never blocks the bootstrap.
        hook.code = 500
        await bootstrap_organization(server, "Other")
    finally:
        await port.stopListening()


@ok
async def test_bootstrap_webhook_unreachable(server_factory, closed_port, captured_logs):
    url = f"http://127.0.0.1:{closed_port}/nope"
    server = await server_factory(backend=BackendConfig(organization_bootstrap_webhook=url))
    # The bootstrap succeeds (bootstrap_organization checks the `ok` reply)...
    await bootstrap_organization(server, "NewOrg")
    rep = await httpclient.admin(server.port, "GET", "/administration/organizations/NewOrg")
    assert rep.json()["is_bootstrapped"] is True
    # ... after the webhook was attempted, and its failure logged (a warning, no traceback;
    # the URL without its path, which may hold a credential).
    attempts = [e for e in captured_logs if e.get("log_format", "").startswith("Bootstrap webhook {url} failed")]
    assert [e["url"] for e in attempts] == [redact_url(url)]
    assert "refused" in attempts[0]["error"].lower()
