"""Administration REST API (docs/protocol/admin-api.md), every route and error."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from parsec.config import BackendConfig
from tests import httpclient
from tests.httpclient import request
from tests.orgs import bootstrap_organization, create_organization

ok = pytest_twisted.ensureDeferred
JSON = "application/json;charset=utf-8"


async def admin(server, method, path, data=None, **kw):
    return await httpclient.admin(server.port, method, path, data, **kw)


@pytest.mark.parametrize("method, path", [
    ("POST", "/administration/organizations"),
    ("GET", "/administration/organizations/CoolOrg"),
    ("PATCH", "/administration/organizations/CoolOrg"),
    ("GET", "/administration/organizations/CoolOrg/stats"),
])
@ok
async def test_bad_token(server, method, path):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "bearer s3cr3t"},
                    {"Authorization": "Bearer  s3cr3t"}):
        rep = await request(server.port, method, path, body=b"garbage", headers=headers)
        assert rep.status == 403
        assert rep.json() == {"error": "not_allowed"}
        assert rep.headers["content-type"] == JSON


@ok
async def test_create_and_get(server):
    rep = await admin(server, "POST", "/administration/organizations", {"organization_id": "CoolOrg"})
    assert rep.status == 200
    token = rep.json()["bootstrap_token"]
    assert len(token) == 64 and int(token, 16) >= 0 and token == token.lower()
    rep = await admin(server, "GET", "/administration/organizations/CoolOrg")
    assert rep.status == 200
    assert rep.json() == {
        "is_bootstrapped": False, "is_expired": False,
        "user_profile_outsider_allowed": True, "active_users_limit": None,
    }
    assert rep.headers["content-type"] == JSON


@pytest.mark.parametrize("body, reason", [
    ({}, {"organization_id": ["Missing data for required field."]}),
    ({"organization_id": ""}, None),
    ({"organization_id": "a" * 33}, None),
    ({"organization_id": "My!Org"}, None),
    ({"organization_id": "Org", "active_users_limit": -1}, None),
    ({"organization_id": "Org", "active_users_limit": "foo"}, None),
    ({"organization_id": "Org", "user_profile_outsider_allowed": 42}, None),
    ({"organization_id": "Org", "user_profile_outsider_allowed": "foo"}, None),
    ({"organization_id": "Org", "user_profile_outsider_allowed": None}, {"user_profile_outsider_allowed": ["Field may not be null."]}),
    ([], {"_schema": ["Invalid input type."]}),
])
@ok
async def test_create_bad_data(server, body, reason):
    rep = await admin(server, "POST", "/administration/organizations", body)
    assert rep.status == 400
    assert rep.json()["error"] == "bad_data"
    if reason is not None:
        assert rep.json()["reason"] == reason


@ok
async def test_invalid_json(server):
    for body in (b"", b"{", b"\xff\xfe"):
        rep = await request(server.port, "POST", "/administration/organizations", body=body,
                            headers={"Authorization": "Bearer s3cr3t"})
        assert rep.status == 400
        assert rep.json() == {"error": "bad_data", "reason": "Invalid JSON"}


@ok
async def test_recreate(server):
    token1 = await create_organization(server, "CoolOrg", active_users_limit=3, user_profile_outsider_allowed=False)
    await admin(server, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": True})
    token2 = await create_organization(server, "CoolOrg")
    assert token1 != token2
    rep = await admin(server, "GET", "/administration/organizations/CoolOrg")
    assert rep.json() == {
        "is_bootstrapped": False, "is_expired": False,
        "user_profile_outsider_allowed": True, "active_users_limit": None,
    }
    await bootstrap_organization(server, "Booted")
    rep = await admin(server, "POST", "/administration/organizations", {"organization_id": "Booted"})
    assert (rep.status, rep.json()) == (400, {"error": "already_exists"})


@ok
async def test_server_defaults(server_factory):
    server = await server_factory(backend=BackendConfig(
        organization_initial_active_users_limit=5, organization_initial_user_profile_outsider_allowed=False))
    await create_organization(server, "CoolOrg")
    rep = await admin(server, "GET", "/administration/organizations/CoolOrg")
    assert rep.json()["active_users_limit"] == 5
    assert rep.json()["user_profile_outsider_allowed"] is False
    await create_organization(server, "Other", active_users_limit=None, user_profile_outsider_allowed=True)
    rep = await admin(server, "GET", "/administration/organizations/Other")
    assert rep.json()["active_users_limit"] is None


@ok
async def test_patch(server):
    await create_organization(server, "CoolOrg")
    rep = await admin(server, "PATCH", "/administration/organizations/CoolOrg",
                      {"user_profile_outsider_allowed": False, "active_users_limit": 10})
    assert (rep.status, rep.json()) == (200, {})
    rep = await admin(server, "GET", "/administration/organizations/CoolOrg")
    assert rep.json()["active_users_limit"] == 10
    assert rep.json()["user_profile_outsider_allowed"] is False
    rep = await admin(server, "PATCH", "/administration/organizations/CoolOrg", {"active_users_limit": None})
    assert rep.status == 200
    rep = await admin(server, "PATCH", "/administration/organizations/Unknown", {})
    assert (rep.status, rep.json()) == (404, {"error": "not_found"})
    rep = await admin(server, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": None})
    assert rep.status == 400
    rep = await admin(server, "PATCH", "/administration/organizations/CoolOrg", {"is_expired": "yes"})
    assert rep.status == 400


@ok
async def test_unknown_and_escaped_ids(server):
    await create_organization(server, "CéTACé")
    rep = await admin(server, "GET", "/administration/organizations/C%C3%A9TAC%C3%A9")
    assert rep.status == 200
    rep = await admin(server, "GET", "/administration/organizations/C%C3%A9TAC%C3")
    assert (rep.status, rep.json()) == (404, {"error": "not_found"})
    rep = await admin(server, "GET", "/administration/organizations/Bad!Id")
    assert (rep.status, rep.json()) == (404, {"error": "not_found"})
    rep = await admin(server, "GET", "/administration/organizations/Bad!Id/stats")
    assert (rep.status, rep.json()) == (404, {"error": "not_found"})


@ok
async def test_methods(server):
    for method, path in (("GET", "/administration/organizations"), ("DELETE", "/administration/organizations/X"),
                         ("POST", "/administration/organizations/X/stats")):
        rep = await admin(server, method, path)
        assert rep.status == 405
        assert rep.body == b""


@ok
async def test_stats(server):
    org = await bootstrap_organization(server)
    await org.new_user("alice@dev1", "bob@dev1")
    await org.new_user("alice@dev1", "zoe@dev1", profile="OUTSIDER")
    rep = await admin(server, "GET", "/administration/organizations/CoolOrg/stats")
    assert rep.status == 200
    assert rep.json() == {
        "data_size": 0, "metadata_size": 0, "realms": 0, "users": 3, "active_users": 3,
        "users_per_profile_detail": [
            {"profile": "ADMIN", "active": 1, "revoked": 0},
            {"profile": "STANDARD", "active": 1, "revoked": 0},
            {"profile": "OUTSIDER", "active": 1, "revoked": 0},
        ],
    }
    rep = await admin(server, "PATCH", "/administration/organizations/CoolOrg/stats", {})
    assert rep.status == 200 and rep.json()["users"] == 3
    rep = await request(server.port, "PATCH", "/administration/organizations/CoolOrg/stats", body=b"[]",
                        headers={"Authorization": "Bearer s3cr3t"})
    assert rep.status == 400
    rep = await admin(server, "GET", "/administration/organizations/Unknown/stats")
    assert (rep.status, rep.json()) == (404, {"error": "not_found"})
    assert json.loads(rep.body) == {"error": "not_found"}
