"""Workspace scenarios driven through the real parsec-cloud 2.10.0 client API.

Runs inside the client virtualenv. Usage:

    python workspace_scenario.py SCENARIO --addr parsec://127.0.0.1:P?no_ssl=true \
        --org ORG --workdir DIR --result result.json

SCENARIO is one of:
  files         alice writes 0 B / 1 KiB / 600 KiB / 3 MiB files and a nested folder, syncs;
                a second device of alice (claimed through a device invitation) logs in FRESH
                and reads everything back; it then writes a file and alice's first device is
                notified and reads it.
  sharing       bob joins through a user invitation; alice shares a workspace with him as
                CONTRIBUTOR (bob is notified), bob reads and writes (alice is notified), then
                alice makes him READER: his writes are refused by the client and, sent as raw
                commands, by the server; he can still read.
  reencryption  alice re-encrypts a shared workspace in several batches; afterwards a fresh
                login of bob and alice's own core read every file, and new writes work.

Every observation goes to the --result JSON file; the pytest side asserts on it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import uuid
from typing import Any

import trio
from _clientlib import (
    STEP_TIMEOUT,
    EventRecorder,
    Result,
    base_arg_parser,
    create_and_bootstrap,
    entry_name,
    init_new_user_storage,
    invite_and_claim_device,
    invite_and_claim_user,
    log,
    logged_core,
    make_config,
    run_scenario,
    wait_until,
)
from parsec.api.protocol import BlockID, RealmID, VlobID
from parsec.core.backend_connection import backend_authenticated_cmds_factory
from parsec.core.core_events import CoreEvent
from parsec.core.fs.exceptions import FSError
from parsec.core.fs.workspacefs import WorkspaceFS
from parsec.core.logged_core import LoggedCore
from parsec.core.types import EntryID, LocalDevice, WorkspaceRole

KIB = 1024
MIB = 1024 * KIB
FILE_SIZES = {"/empty.bin": 0, "/one-kib.bin": KIB, "/600-kib.bin": 600 * KIB, "/three-mib.bin": 3 * MIB}
NESTED_FILE = "/sub/dir/nested.txt"
NOTIFICATION_TIMEOUT = 15.0  # "within seconds": generous bound, the report gives the real delay

WATCHED_EVENTS = [
    CoreEvent.BACKEND_MESSAGE_RECEIVED,
    CoreEvent.BACKEND_REALM_VLOBS_UPDATED,
    CoreEvent.BACKEND_REALM_ROLES_UPDATED,
    CoreEvent.BACKEND_REALM_MAINTENANCE_STARTED,
    CoreEvent.BACKEND_REALM_MAINTENANCE_FINISHED,
    CoreEvent.SHARING_UPDATED,
    CoreEvent.FS_ENTRY_REMOTE_CHANGED,
    CoreEvent.FS_ENTRY_DOWNSYNCED,
]


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_files() -> dict[str, bytes]:
    files = {path: os.urandom(size) for path, size in FILE_SIZES.items()}
    files[NESTED_FILE] = b"nested file content\n"
    return files


async def write_files(workspace: WorkspaceFS, files: dict[str, bytes]) -> None:
    for path, data in files.items():
        parent = path.rsplit("/", 1)[0]
        if parent:
            await workspace.mkdir(parent, parents=True, exist_ok=True)
        await workspace.write_bytes(path, data)


async def read_digests(workspace: WorkspaceFS, paths: list[str]) -> dict[str, str]:
    return {path: digest(await workspace.read_bytes(path)) for path in paths}


async def sync_all(core: LoggedCore, workspace: WorkspaceFS | None = None) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        if workspace is not None:
            await workspace.sync()
        await core.user_fs.sync()


async def find_workspace(core: LoggedCore, name: str) -> WorkspaceFS:
    """Fetch the remote user manifest and open the named workspace."""
    with trio.fail_after(STEP_TIMEOUT):
        await core.user_fs.sync()
    entry = core.find_workspace_from_name(entry_name(name))
    workspace = core.user_fs.get_workspace(entry.id)
    with trio.fail_after(STEP_TIMEOUT):
        await workspace.sync()
    return workspace


async def open_synced(core: LoggedCore, workspace_id: EntryID) -> WorkspaceFS:
    """Open a workspace and pull its remote state (what the sync monitor would do soon)."""
    workspace = core.user_fs.get_workspace(workspace_id)
    with trio.fail_after(STEP_TIMEOUT):
        await workspace.sync()
    return workspace


def role_of(core: LoggedCore, workspace_id: EntryID) -> str | None:
    entry = core.user_fs.get_user_manifest().get_workspace_entry(workspace_id)
    if entry is None or entry.role is None:
        return None
    return entry.role.value


async def bootstrap_alice(args: argparse.Namespace, result: Result) -> tuple[Any, LocalDevice]:
    result.step("create organization (admin REST) and bootstrap it")
    config = make_config(args.workdir, "alice-1")
    _, alice1 = await create_and_bootstrap(
        args.addr, args.org, args.admin_token, "alice@example.com", "Alice", "alice-1"
    )
    await init_new_user_storage(config, alice1)
    result["alice_user_id"] = str(alice1.user_id)
    return config, alice1


# --------------------------------------------------------------------------------------------
async def scenario_files(args: argparse.Namespace, result: Result) -> None:
    config1, alice1 = await bootstrap_alice(args, result)
    files = random_files()
    result["written"] = {path: digest(data) for path, data in files.items()}
    result["written_sizes"] = {path: len(data) for path, data in files.items()}

    async with logged_core(config1, alice1) as core1:
        events1 = EventRecorder(core1, WATCHED_EVENTS)

        result.step("device invitation: alice-1 greets alice-2")
        alice2, seen = await invite_and_claim_device(core1, "alice-2")
        result["device_invitation"] = seen

        result.step("create workspace, write files, sync")
        workspace_id = await core1.user_fs.workspace_create(entry_name("docs"))
        workspace1 = core1.user_fs.get_workspace(workspace_id)
        await write_files(workspace1, files)
        await sync_all(core1, workspace1)
        result["alice1_read_back"] = await read_digests(workspace1, list(files))

        result.step("fresh login of alice-2 (never logged in, empty local storage)")
        async with logged_core(make_config(args.workdir, "alice-2"), alice2) as core2:
            workspace2 = await find_workspace(core2, "docs")
            result["alice2_workspace_id_matches"] = workspace2.workspace_id == workspace_id
            result["alice2_listing"] = sorted(str(p) for p in await workspace2.listdir("/"))
            result["alice2_read"] = await read_digests(workspace2, list(files))
            devices = await core2.get_user_devices_info()
            result["alice_devices"] = sorted(str(d.device_label) for d in devices)

            result.step("alice-2 writes; alice-1 must be notified by the server")
            mark = events1.mark()
            new_data = os.urandom(10 * KIB)
            result["from_device2_written"] = digest(new_data)
            await workspace2.write_bytes("/from-device-2.bin", new_data)
            synced_at = time.monotonic()
            await sync_all(core2, workspace2)
            await events1.wait_for(
                CoreEvent.BACKEND_REALM_VLOBS_UPDATED,
                mark,
                lambda kw: kw["realm_id"] == workspace_id,
                timeout=NOTIFICATION_TIMEOUT,
            )
            result["notification_delay_s"] = round(time.monotonic() - synced_at, 3)
            with trio.fail_after(STEP_TIMEOUT):
                await workspace1.sync()
            result["alice1_read_from_device2"] = digest(await workspace1.read_bytes("/from-device-2.bin"))
        result["alice1_events"] = events1.names()


# --------------------------------------------------------------------------------------------
async def raw_write_attempts(device: LocalDevice, workspace_id: EntryID, file_vlob: VlobID) -> dict[str, str]:
    """Send write commands directly (bypassing the client's local role check) and return the
    server's statuses, plus a read for comparison."""
    realm_id = RealmID(workspace_id.uuid)
    statuses: dict[str, str] = {}
    async with backend_authenticated_cmds_factory(
        addr=device.organization_addr, device_id=device.device_id, signing_key=device.signing_key
    ) as cmds:
        rep = await cmds.vlob_read(1, file_vlob)
        statuses["vlob_read"] = rep["status"]
        current_version = rep.get("version", 1)
        rep = await cmds.vlob_update(1, file_vlob, current_version + 1, device.timestamp(), b"reader-garbage")
        statuses["vlob_update"] = rep["status"]
        rep = await cmds.vlob_create(realm_id, 1, VlobID(uuid.uuid4()), device.timestamp(), b"reader-garbage")
        statuses["vlob_create"] = rep["status"]
        rep = await cmds.block_create(BlockID(uuid.uuid4()), realm_id, b"reader-garbage")
        statuses["block_create"] = rep["status"]
        rep = await cmds.realm_get_role_certificates(realm_id)
        statuses["realm_get_role_certificates"] = rep["status"]
    return statuses


async def scenario_sharing(args: argparse.Namespace, result: Result) -> None:
    config_a, alice = await bootstrap_alice(args, result)
    files = {"/hello.txt": b"hello bob\n", "/600-kib.bin": os.urandom(600 * KIB)}
    result["written"] = {path: digest(data) for path, data in files.items()}

    async with logged_core(config_a, alice) as core_a:
        events_a = EventRecorder(core_a, WATCHED_EVENTS)
        result.step("user invitation: alice greets bob (concurrent greeter/claimer)")
        bob, seen = await invite_and_claim_user(core_a, "bob@example.com", "Bob", "bob-laptop")
        result["user_invitation"] = seen
        config_b = make_config(args.workdir, "bob")
        await init_new_user_storage(config_b, bob)

        result.step("alice creates and fills a workspace")
        workspace_id = await core_a.user_fs.workspace_create(entry_name("shared"))
        workspace_a = core_a.user_fs.get_workspace(workspace_id)
        await write_files(workspace_a, files)
        await sync_all(core_a, workspace_a)

        async with logged_core(config_b, bob) as core_b:
            events_b = EventRecorder(core_b, WATCHED_EVENTS)

            result.step("share as CONTRIBUTOR; bob's core learns it from the server")
            shared_at = time.monotonic()
            await core_a.user_fs.workspace_share(workspace_id, bob.user_id, WorkspaceRole.CONTRIBUTOR)
            await wait_until(lambda: role_of(core_b, workspace_id) == "CONTRIBUTOR", NOTIFICATION_TIMEOUT)
            result["share_notification_delay_s"] = round(time.monotonic() - shared_at, 3)
            workspace_b = await open_synced(core_b, workspace_id)
            result["bob_roles_view"] = {
                str(user): role.value for user, role in (await workspace_b.get_user_roles()).items()
            }

            result.step("bob reads alice's files")
            result["bob_read"] = await read_digests(workspace_b, list(files))

            result.step("bob writes; alice is notified and reads it")
            bob_data = os.urandom(20 * KIB)
            result["bob_written"] = digest(bob_data)
            mark = events_a.mark()
            await workspace_b.write_bytes("/from-bob.bin", bob_data)
            await workspace_b.write_bytes("/hello.txt", b"hello alice, bob was here\n")
            synced_at = time.monotonic()
            await sync_all(core_b, workspace_b)
            await events_a.wait_for(
                CoreEvent.BACKEND_REALM_VLOBS_UPDATED,
                mark,
                lambda kw: kw["realm_id"] == workspace_id,
                timeout=NOTIFICATION_TIMEOUT,
            )
            result["vlobs_updated_notification_delay_s"] = round(time.monotonic() - synced_at, 3)
            with trio.fail_after(STEP_TIMEOUT):
                await workspace_a.sync()
            result["alice_read_from_bob"] = digest(await workspace_a.read_bytes("/from-bob.bin"))
            result["alice_read_hello"] = (await workspace_a.read_bytes("/hello.txt")).decode()

            result.step("alice downgrades bob to READER")
            mark_b = events_b.mark()
            await core_a.user_fs.workspace_share(workspace_id, bob.user_id, WorkspaceRole.READER)
            await events_b.wait_for(
                CoreEvent.BACKEND_REALM_ROLES_UPDATED,
                mark_b,
                lambda kw: kw["realm_id"] == workspace_id,
                timeout=NOTIFICATION_TIMEOUT,
            )
            await wait_until(lambda: role_of(core_b, workspace_id) == "READER", NOTIFICATION_TIMEOUT)
            workspace_b = core_b.user_fs.get_workspace(workspace_id)

            result.step("bob (READER) tries to write through the client")
            try:
                await workspace_b.write_bytes("/reader-attempt.txt", b"should not be written")
                await sync_all(core_b, workspace_b)
                result["reader_client_write"] = "accepted"
            except (FSError, OSError) as exc:
                result["reader_client_write"] = type(exc).__name__

            result.step("bob (READER) sends raw write commands to the server")
            hello_vlob = VlobID((await workspace_a.path_id("/hello.txt")).uuid)
            result["reader_raw_statuses"] = await raw_write_attempts(bob, workspace_id, hello_vlob)
            result["bob_read_as_reader"] = digest(await workspace_b.read_bytes("/from-bob.bin"))

            result.step("alice checks nothing from the reader reached the server")
            with trio.fail_after(STEP_TIMEOUT):
                await workspace_a.sync()
            result["alice_listing_after_reader"] = sorted(str(p) for p in await workspace_a.listdir("/"))
            result["bob_events"] = events_b.names()
        result["alice_events"] = events_a.names()


# --------------------------------------------------------------------------------------------
async def scenario_reencryption(args: argparse.Namespace, result: Result) -> None:
    config_a, alice = await bootstrap_alice(args, result)
    files = random_files()
    # a second version of one file, so that several vlob versions get re-encrypted
    files_v2 = {"/one-kib.bin": os.urandom(KIB)}
    expected = {**{p: digest(d) for p, d in files.items()}, **{p: digest(d) for p, d in files_v2.items()}}
    result["expected"] = expected

    async with logged_core(config_a, alice) as core_a:
        events_a = EventRecorder(core_a, WATCHED_EVENTS)
        result.step("user invitation for bob")
        bob, seen = await invite_and_claim_user(core_a, "bob@example.com", "Bob", "bob-desktop")
        result["user_invitation"] = seen
        await init_new_user_storage(make_config(args.workdir, "bob-1"), bob)

        result.step("alice creates, fills (two versions) and shares a workspace")
        workspace_id = await core_a.user_fs.workspace_create(entry_name("secret"))
        workspace_a = core_a.user_fs.get_workspace(workspace_id)
        await write_files(workspace_a, files)
        await sync_all(core_a, workspace_a)
        await write_files(workspace_a, files_v2)
        await sync_all(core_a, workspace_a)
        await core_a.user_fs.workspace_share(workspace_id, bob.user_id, WorkspaceRole.CONTRIBUTOR)
        result["revision_before"] = workspace_a.get_encryption_revision()

        async with logged_core(make_config(args.workdir, "bob-1"), bob) as core_b:
            await wait_until(lambda: role_of(core_b, workspace_id) == "CONTRIBUTOR", NOTIFICATION_TIMEOUT)
            events_b = EventRecorder(core_b, WATCHED_EVENTS)
            workspace_b = await open_synced(core_b, workspace_id)
            result["bob_read_before"] = await read_digests(workspace_b, list(expected))

            result.step("alice re-encrypts the workspace in small batches")
            mark = events_b.mark()
            job = await core_a.user_fs.workspace_start_reencryption(workspace_id)
            batches: list[tuple[int, int]] = []
            with trio.fail_after(STEP_TIMEOUT):
                while True:
                    total, done = await job.do_one_batch(size=3)
                    batches.append((total, done))
                    if total == done:
                        break
            result["reencryption_batches"] = batches
            # The author's own devices get no maintenance events (docs/protocol/events.md); the other
            # participant does.
            for event in (
                CoreEvent.BACKEND_REALM_MAINTENANCE_STARTED,
                CoreEvent.BACKEND_REALM_MAINTENANCE_FINISHED,
            ):
                kwargs = await events_b.wait_for(
                    event, mark, lambda kw: kw["realm_id"] == workspace_id, timeout=NOTIFICATION_TIMEOUT
                )
                result[f"bob_{event.value}"] = {"encryption_revision": kwargs["encryption_revision"]}

            def revision(core: LoggedCore) -> int:
                entry = core.user_fs.get_user_manifest().get_workspace_entry(workspace_id)
                return entry.encryption_revision if entry is not None else 0

            await wait_until(lambda: revision(core_a) == 2, NOTIFICATION_TIMEOUT)
            await wait_until(lambda: revision(core_b) == 2, NOTIFICATION_TIMEOUT)
            result["revision_after_alice"] = revision(core_a)
            result["revision_after_bob"] = revision(core_b)

            result.step("alice's running core reads everything and writes a new file")
            workspace_a = core_a.user_fs.get_workspace(workspace_id)
            result["alice_read_after"] = await read_digests(workspace_a, list(expected))
            post_data = os.urandom(700 * KIB)
            result["post_reencryption_written"] = digest(post_data)
            await workspace_a.write_bytes("/after-reencryption.bin", post_data)
            await sync_all(core_a, workspace_a)

            result.step("bob's running core reads the re-encrypted data")
            workspace_b = await open_synced(core_b, workspace_id)
            result["bob_running_read_new"] = digest(await workspace_b.read_bytes("/after-reencryption.bin"))

            result["bob_events"] = events_b.names()

        result.step("fresh login of bob (empty local storage) reads everything")
        async with logged_core(make_config(args.workdir, "bob-fresh"), bob) as core_fresh:
            workspace_f = await find_workspace(core_fresh, "secret")
            result["fresh_revision"] = workspace_f.get_encryption_revision()
            paths = [*expected, "/after-reencryption.bin"]
            result["fresh_read_after"] = await read_digests(workspace_f, paths)
            async with backend_authenticated_cmds_factory(
                addr=bob.organization_addr, device_id=bob.device_id, signing_key=bob.signing_key
            ) as cmds:
                rep = await cmds.realm_status(RealmID(workspace_id.uuid))
                result["realm_status"] = {k: str(v) for k, v in rep.items()}
        result["alice_events"] = events_a.names()


SCENARIOS = {"files": scenario_files, "sharing": scenario_sharing, "reencryption": scenario_reencryption}


def main() -> None:
    parser = base_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    scenario = parser.parse_known_args()[0].scenario
    log(f"scenario {scenario}")
    run_scenario(SCENARIOS[scenario], parser)


if __name__ == "__main__":
    main()
