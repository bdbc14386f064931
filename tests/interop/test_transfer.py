"""Taking over an upstream deployment and handing it back, with the real client and the real
upstream server (parsec-cloud 2.10.0, both from the client virtualenv).

1. The upstream server runs on a fresh PostgreSQL database migrated by itself, blocks in S3
   on the loopback object store (or in its POSTGRESQL blockstore); the real client populates
   it (scripts/transfer_scenario.py `populate`: two organizations, users and devices, a
   revoked user, an outsider, workspaces shared with several roles, files with several
   versions, a re-encrypted workspace, messages, pending user and device invitations, a PKI
   enrollment). The upstream server stops.
2. `parsec backend import` copies its database into an empty one.
3. Our server starts on it, same blockstore, same address: the same device files and local
   storages log in and find everything (`check --round 1`), new writes are seen by another
   user through events, the pending user invitation is claimed.
4. `parsec backend export` copies our database into a fresh upstream database.
5. The upstream server starts on it, same address: the same devices, plus the one created on
   our server, find everything again (`check --round 2`) and claim the device invitation.

Blockstores: S3 runs the whole scenario. The RAID5 (S3 + Swift + S3 nodes) and POSTGRESQL
runs use the smaller `blocks` scope (one organization, one shared workspace, bob's reads and
writes): what they add is blocks written by one server and read by the other, in the RAID5
layout, or travelling in `block_data` with the database.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.objectstore import INTEROP_RAID5_CONTAINERS, INTEROP_S3_BUCKET, ObjectStore

from .harness import ClientHome, HarnessError, ServerProcess, free_loopback_port
from .variants import PgDatabases

pytestmark = [pytest.mark.client, pytest.mark.postgresql]

PARSEC = str(Path(sys.executable).parent / "parsec")
TRANSFER_TIMEOUT = 300


@contextmanager
def serving(server: ServerProcess, port: int) -> Iterator[ServerProcess]:
    server.start(port=port)
    try:
        yield server
    finally:
        server.stop()


def run_phase(client: ClientHome, server: ServerProcess, org: str, scope: str, *args: str) -> dict[str, Any]:
    proc, result = client.run_script(
        "transfer_scenario.py", *args, "--scope", scope, "--addr", server.addr, "--org", org,
        "--workdir", str(client.root / "work"), "--log-level", "ERROR", timeout=300,
    )
    if proc.returncode != 0 or not result.get("ok"):
        raise HarnessError(
            f"{args[0]} failed after steps {result.get('steps')}\nerror: {result.get('error')}\n"
            f"{result.get('traceback', '')}\n--- script stderr ---\n{proc.stderr[-6000:]}\n"
            f"--- {server.describe()} ---\n{server.output_tail()}"
        )
    return result


def transfer(command: str, *args: str) -> str:
    proc = subprocess.run([PARSEC, "backend", command, *args], capture_output=True, text=True,
                          timeout=TRANSFER_TIMEOUT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{command} failed\n{proc.stdout}\n{proc.stderr}"
    assert proc.stderr == ""
    assert f"{command.capitalize()} done:" in proc.stdout and "verified, committed" in proc.stdout
    assert "DIFFERENT" not in proc.stdout
    print(proc.stdout)
    return proc.stdout


def verified_rows(output: str, check: str) -> int:
    match = re.search(rf"^  {re.escape(check)} +([\d,]+) +([\d,]+) +equal$", output, re.MULTILINE)
    assert match is not None, (check, output)
    assert match.group(1) == match.group(2)
    return int(match.group(1).replace(",", ""))


def device_files(workdir: Path) -> dict[str, str]:
    """SHA-256 of every file of every device's config directory (the key files)."""
    return {
        str(path.relative_to(workdir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(workdir.glob("*/config/**/*"))
        if path.is_file()
    }


def assert_clean_log(server: ServerProcess) -> None:
    output = server.output_path.read_text(errors="replace")
    assert "Traceback" not in output and "CRITICAL" not in output, server.output_tail(200)


def check_round(result: dict[str, Any], before: dict[str, Any], scope: str) -> None:
    """What every `check` round must have observed, whichever server it ran against; `before`
    is the state the round started from (what populate or the previous round left)."""
    expected = {name: info["files"] for name, info in before["workspaces"].items() if info.get("owner") != "eve"}
    # every file of every workspace, through alice's device file and local storage
    assert result["alice_read"] == expected
    # /doc.txt read as it was at the time of each of its versions, and every version listed
    assert result["history_read"] == [sha for _, sha in before["history"]]
    # (the file's first manifest version is the empty placeholder of its creation, not listed)
    versions = result["doc_versions"]
    assert versions == list(range(versions[0], versions[0] + len(before["history"]))), versions
    assert result["roles"] == before["roles"]
    assert result["bob_read"] == before["workspaces"]["shared"]["files"]
    # a write of bob reaches alice's running core through the server's event
    assert result["alice_read_bob_write"] is True
    print(f"bob's write notified to alice after {result['event_delay_s']} s")
    if scope != "full":
        return
    assert result["secret_revision"] == 2
    assert result["secret_realm_status"]["encryption_revision"] == "2"
    assert result["secret_realm_status"]["in_maintenance"] == "False"
    assert "revoked" in result["revoked_login"].lower(), result["revoked_login"]
    assert result["pki_info"] == {
        "status": "ok", "enrollment_status": "SUBMITTED", "submitted_on": before["pki_submitted_on"]
    }
    assert before["pki"] in result["pki_listed"]
    assert result["eve_read"] == before["workspaces"]["eve-ws"]["files"]
    # carol (OUTSIDER, READER), alice's second device, and the user and device made during the
    # rounds (empty local storages) read the shared workspace as it is now
    for name, read in result["logins"].items():
        assert read == result["state"]["workspaces"]["shared"]["files"], name


@pytest.mark.parametrize(
    "blockstore",
    [
        pytest.param("s3", marks=pytest.mark.objectstore),
        pytest.param("raid5", marks=pytest.mark.objectstore),
        pytest.param("postgresql"),
    ],
)
def test_same_devices_on_our_server_after_import_and_on_upstream_after_export(
    blockstore: str,
    request: pytest.FixtureRequest,
    client_venv: Path,
    interop_pg: PgDatabases,
    client_factory: Callable[[str], ClientHome],
    tmp_path: Path,
    org_id: str,
) -> None:
    scope = "full" if blockstore == "s3" else "blocks"
    store: ObjectStore | None = None
    if blockstore == "s3":
        store = request.getfixturevalue("objectstore")
        blockstore_args = ["--blockstore", store.s3_param(INTEROP_S3_BUCKET)]
    elif blockstore == "raid5":
        store = request.getfixturevalue("objectstore")
        node0, node1, node2 = INTEROP_RAID5_CONTAINERS
        blockstore_args = [
            "--blockstore", f"RAID5:0:{store.s3_param(node0)}",
            "--blockstore", f"RAID5:1:{store.swift_param(node1)}",
            "--blockstore", f"RAID5:2:{store.s3_param(node2)}",
        ]
    else:
        blockstore_args = ["--blockstore", "POSTGRESQL"]
    containers = {"s3": (INTEROP_S3_BUCKET,), "raid5": INTEROP_RAID5_CONTAINERS}.get(blockstore, ())
    port = free_loopback_port()
    client = client_factory("client")
    workdir = client.root / "work"

    # 1. the upstream deployment, populated by the real client
    upstream_db = interop_pg.new_database("reference")
    with serving(ServerProcess("reference", tmp_path / "upstream", client_venv,
                               ["--db", upstream_db, *blockstore_args]), port) as server:
        populated = run_phase(client, server, org_id, scope, "populate")
    state = populated["state"]
    if scope == "full":
        assert populated["pki_submit"] == "ok"
    keys_before = device_files(workdir)
    assert len(keys_before) == len(state["devices"])
    def stored_objects() -> set[tuple[str, str]]:
        assert store is not None
        return {(c, name) for c in containers for name in store.object_names(c, prefix=f"{org_id}A/")}

    objects_before = stored_objects() if store else set()

    # 2. import into an empty database
    ours_db = interop_pg.cluster.create_database(f"transfer_ours_{uuid.uuid4().hex[:12]}")
    output = transfer("import", "--from", upstream_db, "--db", ours_db)
    assert verified_rows(output, "vlob atoms (every version's blob)") > 0
    assert verified_rows(output, "users (certificates, revocations, humans, message counts)") == len(
        {device["device_id"].split("@")[0] + device["org"] for device in state["devices"].values()}
    )
    if scope == "full":
        assert verified_rows(output, "messages") > 0
        assert verified_rows(output, "PKI enrollments") == 1
        assert verified_rows(output, "invitations") >= 2 + 4  # two pending, four claimed
    in_database = verified_rows(output, "block data (POSTGRESQL blockstore)")
    assert in_database == (verified_rows(output, "blocks") if blockstore == "postgresql" else 0)

    # 3. our server on the imported database, same blockstore, same address
    ours = ServerProcess("ours", tmp_path / "ours", None, ["--db", ours_db, *blockstore_args])
    with serving(ours, port) as server:
        round1 = run_phase(client, server, org_id, scope, "check", "--round", "1")
    assert_clean_log(ours)
    check_round(round1, state, scope)
    if scope == "full":
        assert round1["pending_invitations"] == sorted(
            [["USER", state["pending"]["user"]], ["DEVICE", state["pending"]["device"]]]
        )
        assert round1["claimed"]["claimer.claimer_email"] == "erin@example.com"
        assert round1["claimed"]["new_human_handle"] == "Erin <erin@example.com>"
        assert set(round1["logins"]) == {"alice-2", "carol", "erin"}
        assert round1["state"]["roles"][round1["claimed"]["new_user_id"]] == "READER"
    if store is not None:
        # the upstream's blocks stayed where they were; ours went next to them, same layout
        assert objects_before and objects_before < stored_objects()

    # 4. export into a fresh upstream database
    back_db = interop_pg.new_database("reference")
    output = transfer("export", "--db", ours_db, "--to", back_db)
    assert verified_rows(output, "vlob atoms (every version's blob)") > 0

    # 5. the upstream server again, same address, same devices (and the one made on ours)
    with serving(ServerProcess("reference", tmp_path / "upstream-back", client_venv,
                               ["--db", back_db, *blockstore_args]), port) as server:
        round2 = run_phase(client, server, org_id, scope, "check", "--round", "2")
    check_round(round2, round1["state"], scope)
    if scope == "full":
        assert round2["pending_invitations"] == [["DEVICE", state["pending"]["device"]]]
        assert set(round2["logins"]) == {"alice-2", "alice-3", "carol", "erin"}
        assert round2["claimed"]["new_device_label"] == "alice-3"

    # the device files the upstream server created were never touched
    keys_after = device_files(workdir)
    assert {path: sha for path, sha in keys_after.items() if path in keys_before} == keys_before
