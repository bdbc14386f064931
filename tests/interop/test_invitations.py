"""Invitations through the real client's CLI: greeter and claimer run as two concurrent
processes on two "machines" (separate HOME dirs); the SAS codes one prints are selected at
the other's prompt, as two people would do."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from .flows import PASSWORD, greet_and_claim, invite, new_organization
from .harness import ADMIN_TOKEN, ClientHome, ServerProcess

pytestmark = pytest.mark.client

ClientFactory = Callable[[str], ClientHome]


def _invitations(client: ClientHome, device: str) -> list[tuple[str, str, str]]:
    """[(token, status, description)] from `list_invitations`."""
    out = client.cli("list_invitations", "--device", device, "--password", PASSWORD).stdout
    return re.findall(r"^([0-9a-f]{32})\t(\w+)\t(.+)$", out, re.MULTILINE)


def test_user_invitation(parsec_server: ServerProcess, client_factory: ClientFactory, org_id: str) -> None:
    alice_pc = client_factory("alice")
    bob_pc = client_factory("bob")
    org = new_organization(alice_pc, parsec_server, org_id)

    url, token = invite(alice_pc, org.device, "invite_user", "bob@example.com")
    assert _invitations(alice_pc, org.device) == [(token, "idle", "user (email=bob@example.com)")]

    greeter_out, claimer_out = greet_and_claim(
        alice_pc, org.device, bob_pc, url, kind="user", claimer_label="Bob", device_label="bob-phone"
    )
    assert "Invitation greeter: Alice <alice@example.com>" in claimer_out
    assert re.search(r"Saving device \w+", claimer_out), claimer_out

    # bob's machine now holds a working device of a new user
    [(bob_device, bob_desc)] = bob_pc.list_devices()
    assert bob_desc == f"{org_id}: Bob <bob@example.com> @ bob-phone"
    found = bob_pc.cli("human_find", "bob", "--device", bob_device, "--password", PASSWORD).stdout
    assert re.search(r"^Bob <bob@example.com> - UserID: \w+$", found, re.MULTILINE), found
    found = alice_pc.cli("human_find", "example.com", "--device", org.device, "--password", PASSWORD).stdout
    assert sorted(re.findall(r"^(\w+) <", found, re.MULTILINE)) == ["Alice", "Bob"], found

    # a finished invitation is no longer listed
    assert _invitations(alice_pc, org.device) == []
    stats = alice_pc.cli(
        "stats_organization", org_id, "--addr", parsec_server.addr, "--administration-token", ADMIN_TOKEN
    ).stdout
    assert re.search(r"^users: 2$", stats, re.MULTILINE), stats


def test_device_invitation(parsec_server: ServerProcess, client_factory: ClientFactory, org_id: str) -> None:
    laptop = client_factory("laptop")
    desktop = client_factory("desktop")
    org = new_organization(laptop, parsec_server, org_id)

    url, token = invite(laptop, org.device, "invite_device")
    assert _invitations(laptop, org.device) == [(token, "idle", "device")]

    greet_and_claim(laptop, org.device, desktop, url, kind="device", device_label="alice-desktop")

    [(new_device, desc)] = desktop.list_devices()
    assert desc == f"{org_id}: Alice <alice@example.com> @ alice-desktop"
    # the new device authenticates (human_find needs an authenticated connection)
    found = desktop.cli("human_find", "alice", "--device", new_device, "--password", PASSWORD).stdout
    assert re.search(r"^Alice <alice@example.com> - UserID: \w+$", found, re.MULTILINE), found
    assert _invitations(laptop, org.device) == []
    stats = laptop.cli(
        "stats_organization", org_id, "--addr", parsec_server.addr, "--administration-token", ADMIN_TOKEN
    ).stdout
    assert re.search(r"^users: 1$", stats, re.MULTILINE), stats


def test_list_and_cancel_invitations(
    parsec_server: ServerProcess, client_factory: ClientFactory, org_id: str
) -> None:
    admin_pc = client_factory("admin")
    org = new_organization(admin_pc, parsec_server, org_id)
    assert _invitations(admin_pc, org.device) == []

    user_url, user_token = invite(admin_pc, org.device, "invite_user", "carol@example.com")
    _, device_token = invite(admin_pc, org.device, "invite_device")
    assert sorted(_invitations(admin_pc, org.device)) == sorted(
        [(user_token, "idle", "user (email=carol@example.com)"), (device_token, "idle", "device")]
    )

    auth = ("--device", org.device, "--password", PASSWORD)
    out = admin_pc.cli("cancel_invitation", user_url, *auth).stdout  # by URL
    assert "Invitation deleted." in out
    assert _invitations(admin_pc, org.device) == [(device_token, "idle", "device")]
    admin_pc.cli("cancel_invitation", device_token, *auth)  # by token
    assert _invitations(admin_pc, org.device) == []

    again = admin_pc.cli("cancel_invitation", device_token, *auth, check=False)
    assert again.returncode != 0
    assert "already_deleted" in again.stdout + again.stderr, again

    # a cancelled invitation cannot be claimed (the invited handshake is refused)
    carol_pc = client_factory("carol")
    claim = carol_pc.cli("claim_invitation", user_url, "--password", PASSWORD, check=False, timeout=60)
    assert claim.returncode != 0, claim
    assert "Retrieving invitation info ✘" in claim.stdout, claim
    assert carol_pc.list_devices() == []
