"""Workspaces through the real client's Python API (scripts/workspace_scenario.py runs in
the client venv; these tests assert on the observations it reports).

They store blocks, so they run on every storage variant (memory, pg, pg-s3, pg-swift,
pg-raid5); on the object-store variants they also check that the blocks landed in the
variant's containers."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .harness import ClientHome, CliResult, ServerProcess
from .variants import ALL_VARIANTS, PG_RAID5, ServerVariant

pytestmark = [pytest.mark.client, pytest.mark.interop_variants(*ALL_VARIANTS)]

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def run_scenario(
    client: ClientHome, server: ServerProcess, variant: ServerVariant, org_id: str, scenario: str
) -> dict[str, Any]:
    proc, result = client.run_script(
        "workspace_scenario.py",
        scenario,
        "--addr",
        server.addr,
        "--org",
        org_id,
        "--workdir",
        str(client.root / "work"),
    )
    assert proc.returncode == 0 and result.get("ok"), _explain(proc, result)
    _check_stored_objects(variant, org_id)
    return result


def _check_stored_objects(variant: ServerVariant, org_id: str) -> None:
    """On the object-store variants, the organization's blocks are objects named
    `<org>/<block uuid>` in the variant's containers; RAID5 puts a piece of every block on
    each of its three nodes (two data chunks and the parity)."""
    stored = variant.stored_objects(org_id)
    if not stored:
        return
    block_key = re.compile(
        rf"{re.escape(org_id)}/[0-9a-f]{{8}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{4}}-[0-9a-f]{{12}}"
    )
    print(f"[{variant.name}] objects of {org_id}: {({c: len(n) for c, n in stored.items()})}")
    for container, names in stored.items():
        assert names, f"no block of {org_id} in {container!r} ({variant.name})"
        assert all(block_key.fullmatch(name) for name in names), (container, names[:5])
    if variant.name == PG_RAID5:
        node_names = list(stored.values())
        assert all(names == node_names[0] for names in node_names), {c: len(n) for c, n in stored.items()}


def _explain(proc: CliResult, result: dict[str, Any]) -> str:
    return (
        f"scenario failed after steps {result.get('steps')}\nerror: {result.get('error')}\n"
        f"{result.get('traceback', '')}\n--- script stderr ---\n{proc.stderr[-6000:]}"
    )


def test_files_roundtrip_through_fresh_device(
    parsec_server: ServerProcess, interop_variant: ServerVariant, client: ClientHome, org_id: str
) -> None:
    r = run_scenario(client, parsec_server, interop_variant, org_id, "files")

    assert r["written_sizes"] == {
        "/empty.bin": 0,
        "/one-kib.bin": 1024,
        "/600-kib.bin": 600 * 1024,
        "/three-mib.bin": 3 * 1024 * 1024,
        "/sub/dir/nested.txt": 20,
    }
    assert r["written"]["/empty.bin"] == EMPTY_SHA256
    # the device invitation's SAS codes agree on both sides
    inv = r["device_invitation"]
    assert inv["greeter.greeter_sas"] == inv["claimer.greeter_sas"]
    assert inv["greeter.claimer_sas"] == inv["claimer.claimer_sas"]
    assert inv["new_device_label"] == "alice-2"
    assert r["alice_devices"] == ["alice-1", "alice-2"]

    # the second device, logged in with an empty local storage, reads everything back
    assert r["alice2_workspace_id_matches"] is True
    assert r["alice2_listing"] == ["/600-kib.bin", "/empty.bin", "/one-kib.bin", "/sub", "/three-mib.bin"]
    assert r["alice2_read"] == r["written"]
    assert r["alice1_read_back"] == r["written"]

    # a change made on device 2 is pushed by the server to device 1, which then reads it
    # (the script waits for the event under a 15 s safety bound; the delay is only reported)
    print(f"device-2 change notified to device 1 after {r['notification_delay_s']} s")
    assert "backend.realm.vlobs_updated" in r["alice1_events"]
    assert r["alice1_read_from_device2"] == r["from_device2_written"]


def test_sharing_contributor_then_reader(
    parsec_server: ServerProcess, interop_variant: ServerVariant, client: ClientHome, org_id: str
) -> None:
    r = run_scenario(client, parsec_server, interop_variant, org_id, "sharing")

    inv = r["user_invitation"]
    assert inv["claimer.claimer_email"] == "bob@example.com"
    assert inv["claimer.greeter_human_handle"] == "Alice <alice@example.com>"
    assert inv["greeter.greeter_sas"] == inv["claimer.greeter_sas"]
    assert inv["greeter.claimer_sas"] == inv["claimer.claimer_sas"]
    assert inv["claimer.greeter_sas_in_choices"] and inv["greeter.claimer_sas_in_choices"]
    assert inv["greeter.requested_human_handle"] == "Bob <bob@example.com>"
    assert inv["new_human_handle"] == "Bob <bob@example.com>"
    assert inv["new_profile"] == "STANDARD"

    # sharing reaches bob's running core through the server's message.received event
    print(f"share seen by bob after {r['share_notification_delay_s']} s")
    assert "backend.message.received" in r["bob_events"]
    assert r["bob_roles_view"] == {r["alice_user_id"]: "OWNER", inv["new_user_id"]: "CONTRIBUTOR"}
    assert r["bob_read"] == r["written"]

    # bob (CONTRIBUTOR) writes, alice is notified and reads his data
    print(f"bob's change notified to alice after {r['vlobs_updated_notification_delay_s']} s")
    assert "backend.realm.vlobs_updated" in r["alice_events"]
    assert r["alice_read_from_bob"] == r["bob_written"]
    assert r["alice_read_hello"] == "hello alice, bob was here\n"

    # bob downgraded to READER: the role change event arrives, writes are refused
    assert "backend.realm.roles_updated" in r["bob_events"]
    assert r["reader_client_write"] == "FSReadOnlyError"
    assert r["reader_raw_statuses"] == {
        "vlob_read": "ok",
        "vlob_update": "not_allowed",
        "vlob_create": "not_allowed",
        "block_create": "not_allowed",
        "realm_get_role_certificates": "ok",
    }
    assert r["bob_read_as_reader"] == r["bob_written"]
    assert "/reader-attempt.txt" not in r["alice_listing_after_reader"]


def test_reencryption_keeps_data_readable(
    parsec_server: ServerProcess, interop_variant: ServerVariant, client: ClientHome, org_id: str
) -> None:
    r = run_scenario(client, parsec_server, interop_variant, org_id, "reencryption")

    assert r["revision_before"] == 1
    batches = r["reencryption_batches"]
    total = batches[-1][0]
    # 5 files + 3 folders (root, /sub, /sub/dir) + a second version of one file -> at least
    # 9 vlob versions; the script asks for 3 per batch, so several batches are needed
    assert total >= 9, batches
    assert len(batches) >= 3, batches
    assert [done for _, done in batches] == sorted(done for _, done in batches)
    assert batches[-1][1] == total

    # bob (the other participant) is told about the maintenance by the server
    assert r["bob_backend.realm.maintenance_started"] == {"encryption_revision": 2}
    assert r["bob_backend.realm.maintenance_finished"] == {"encryption_revision": 2}
    assert r["revision_after_alice"] == 2 and r["revision_after_bob"] == 2

    assert r["bob_read_before"] == r["expected"]
    assert r["alice_read_after"] == r["expected"]
    assert r["bob_running_read_new"] == r["post_reencryption_written"]
    # a fresh login of bob (nothing cached) reads every file through the new key
    assert r["fresh_revision"] == 2
    assert r["fresh_read_after"] == {
        **r["expected"],
        "/after-reencryption.bin": r["post_reencryption_written"],
    }
    assert r["realm_status"]["encryption_revision"] == "2"
    assert r["realm_status"]["in_maintenance"] == "False"
