"""Organization life cycle through the real client's CLI: create (admin REST API), bootstrap
(anonymous HTTP), status/stats (admin REST API), then authenticated commands (human_find)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

import pytest

from .flows import BOOTSTRAP_URL_RE, PASSWORD, bootstrap_organization, create_organization
from .harness import ADMIN_TOKEN, ClientHome, ServerProcess

pytestmark = pytest.mark.client


def _key_values(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\w+): (.*)$", output, re.MULTILINE))


def test_create_bootstrap_status_stats_and_find(
    parsec_server: ServerProcess, client: ClientHome, org_id: str
) -> None:
    admin = ("--addr", parsec_server.addr, "--administration-token", ADMIN_TOKEN)
    wire_offset = parsec_server.wire_log_offset()

    url = create_organization(client, parsec_server, org_id)
    match = BOOTSTRAP_URL_RE.search(f"Bootstrap organization url: {url}")
    assert match is not None
    assert int(match.group(2)) == parsec_server.port
    assert match.group(3) == org_id
    assert re.fullmatch(r"[0-9a-f]{64}", match.group(4)), "bootstrap token: 32 random bytes as hex"

    status = _key_values(client.cli("status_organization", org_id, *admin).stdout)
    assert status == {
        "active_users_limit": "None",
        "is_bootstrapped": "False",
        "is_expired": "False",
        "user_profile_outsider_allowed": "True",
    }

    device = bootstrap_organization(
        client, url, email="alice@example.com", label="Alice", device_label="alice-laptop"
    )
    devices = client.list_devices()
    assert [desc for _, desc in devices] == [f"{org_id}: Alice <alice@example.com> @ alice-laptop"]

    status = _key_values(client.cli("status_organization", org_id, *admin).stdout)
    assert status["is_bootstrapped"] == "True"
    assert status["is_expired"] == "False"

    stats = _key_values(client.cli("stats_organization", org_id, *admin).stdout)
    assert stats["users"] == "1"
    assert stats["active_users"] == "1"
    assert stats["realms"] == "0"
    assert stats["data_size"] == "0"
    assert stats["metadata_size"] == "0"
    # printed as a Python repr: [{'profile': <UserProfile.ADMIN: 'ADMIN'>, 'active': 1, ...}, ...]
    detail = ast.literal_eval(
        re.sub(r"<UserProfile\.\w+: ('\w+')>", r"\1", stats["users_per_profile_detail"])
    )
    assert {d["profile"]: (d["active"], d["revoked"]) for d in detail} == {
        "ADMIN": (1, 0),
        "STANDARD": (0, 0),
        "OUTSIDER": (0, 0),
    }

    auth = ("--device", device, "--password", PASSWORD)
    for query in ("alice@example.com", "alice"):
        found = client.cli("human_find", query, *auth).stdout
        assert re.search(r"^Alice <alice@example.com> - UserID: \w+$", found, re.MULTILINE), (query, found)
    assert "No human found!" in client.cli("human_find", "nobody-here", *auth).stdout

    if parsec_server.wire_log:
        # The client bootstraps over anonymous HTTP and silently falls back to the API v1
        # WebSocket on a 404 or unknown_command: make sure the fallback was not needed.
        wire = parsec_server.wire_summary_since(wire_offset)
        assert wire.http.get("POST /anonymous/<org> 200") == 1, wire.as_dict()
        assert "organization_bootstrap" not in wire.command_names, wire.as_dict()


def test_bootstrapped_organization_cannot_be_recreated_nor_rebootstrapped(
    parsec_server: ServerProcess, client_factory: Callable[[str], ClientHome], org_id: str
) -> None:
    first = client_factory("first")
    url = create_organization(first, parsec_server, org_id)
    bootstrap_organization(first, url)

    again = first.cli(
        "create_organization",
        org_id,
        "--addr",
        parsec_server.addr,
        "--administration-token",
        ADMIN_TOKEN,
        check=False,
    )
    assert again.returncode != 0
    assert "400" in again.stdout + again.stderr, again  # already_exists

    second = client_factory("second")
    replay = second.cli(
        "bootstrap_organization",
        url,
        "--human-label",
        "Mallory",
        "--human-email",
        "mallory@example.com",
        "--password",
        PASSWORD,
        input="mallory-pc\n",
        check=False,
    )
    assert replay.returncode != 0, replay
    assert second.list_devices() == []


def test_admin_api_rejects_bad_token_and_unknown_org(
    parsec_server: ServerProcess, client: ClientHome, org_id: str
) -> None:
    bad_token = client.cli(
        "create_organization",
        org_id,
        "--addr",
        parsec_server.addr,
        "--administration-token",
        "wrong",
        check=False,
    )
    assert bad_token.returncode != 0
    assert "403" in bad_token.stdout + bad_token.stderr, bad_token

    unknown = client.cli(
        "status_organization",
        org_id,
        "--addr",
        parsec_server.addr,
        "--administration-token",
        ADMIN_TOKEN,
        check=False,
    )
    assert unknown.returncode != 0
    assert "404" in unknown.stdout + unknown.stderr, unknown


def test_dedicated_server_with_extra_args(
    server_factory: Callable[..., ServerProcess], client: ClientHome, org_id: str
) -> None:
    """server_factory passes extra options to the server command line (the same path as
    PARSEC_INTEROP_SERVER_ARGS, used for --db/--blockstore runs)."""
    server = server_factory(
        extra_args=[
            "--organization-initial-active-users-limit",
            "3",
            "--organization-initial-user-profile-outsider-allowed",
            "false",
        ]
    )
    create_organization(client, server, org_id)
    status = _key_values(
        client.cli(
            "status_organization", org_id, "--addr", server.addr, "--administration-token", ADMIN_TOKEN
        ).stdout
    )
    assert status["active_users_limit"] == "3"
    assert status["user_profile_outsider_allowed"] == "False"
