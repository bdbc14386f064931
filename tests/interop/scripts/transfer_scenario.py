"""Switching servers under the same client devices (parsec backend import / export).

Runs inside the client virtualenv. Usage:

    python transfer_scenario.py populate --addr ADDR --org PREFIX --workdir DIR --result r.json [--scope S]
    python transfer_scenario.py check --round N --addr ADDR --org PREFIX --workdir DIR --result r.json [--scope S]

`populate` (against the server being left) builds, with the real client:
  organization <PREFIX>A: alice (ADMIN) with a second device, bob (STANDARD), carol (OUTSIDER),
    dave (STANDARD, then revoked); workspace "shared" (bob CONTRIBUTOR, carol READER, dave
    MANAGER) with /doc.txt in three versions, a 600 KiB file, a nested file and a file of bob;
    workspace "secret" shared with bob, re-encrypted (revision 2) then written again;
    messages (the sharing and re-encryption messages); a pending user invitation and a
    pending device invitation; a PKI enrollment submitted;
  organization <PREFIX>B: eve and her workspace.
  With `--scope blocks` only alice, bob and "shared" (what a blockstore test needs).
Every device is saved in its own config directory (`DIR/<name>/config`, password file) and
keeps its local storage (`DIR/<name>/data`); the expectations go to `DIR/state.json`.

`check` (against the server taken over, `--round` 1, 2, ...) loads the SAME device files and
local storages and observes: every file's content, /doc.txt's history (each version read at
its time, the number of versions), roles, the re-encrypted workspace, the revoked user
refused, the pending invitations listed, the PKI enrollment, eve's organization; then new
writes: bob writes, alice's core is notified by the server and reads it; alice adds a version
to /doc.txt; round 1 claims the pending user invitation (erin) and shares the workspace with
her, round 2 claims the pending device invitation (alice-3); the others (alice-2, carol, and
these new ones, whose local storage starts empty) log in and read every file (blocks written
by both servers). What it writes or creates is added to state.json for the next round.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pendulum
import trio
from _clientlib import (
    STEP_TIMEOUT,
    EventRecorder,
    Result,
    base_arg_parser,
    create_and_bootstrap,
    entry_name,
    greet_and_claim_device,
    greet_and_claim_user,
    init_new_user_storage,
    invite_and_claim_device,
    invite_and_claim_user,
    log,
    logged_core,
    make_config,
    run_scenario,
    wait_until,
)
from parsec.api.data import PkiEnrollmentSubmitPayload, UserProfile
from parsec.api.protocol import DeviceLabel, InvitationToken, InvitationType, OrganizationID, RealmID
from parsec.core.backend_connection import BackendConnectionRefused, backend_authenticated_cmds_factory
from parsec.core.backend_connection.anonymous import pki_enrollment_info, pki_enrollment_submit
from parsec.core.core_events import CoreEvent
from parsec.core.fs import FsPath
from parsec.core.local_device import (
    list_available_devices,
    load_device_with_password,
    save_device_with_password_in_config,
)
from parsec.core.logged_core import LoggedCore
from parsec.core.types import (
    BackendAddr,
    BackendInvitationAddr,
    BackendPkiEnrollmentAddr,
    EntryID,
    LocalDevice,
    WorkspaceRole,
)
from parsec.crypto import PrivateKey, SigningKey

PASSWORD = "Interop-P@ssw0rd"
KIB = 1024
NOTIFICATION_TIMEOUT = 15.0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class State:
    """DIR/state.json: what the organizations hold, for the next phase to check."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "state.json"
        self.data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {
            "devices": {}, "workspaces": {}, "history": [], "pending": {}, "rounds": []
        }

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, sort_keys=True))

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()


def save_device(workdir: Path, state: State, name: str, device: LocalDevice) -> None:
    config_dir = workdir / name / "config"
    save_device_with_password_in_config(config_dir, device, PASSWORD)
    state["devices"] = {**state["devices"], name: {"device_id": str(device.device_id),
                                                   "org": str(device.organization_id)}}


def load_device(workdir: Path, name: str) -> LocalDevice:
    (available,) = list_available_devices(workdir / name / "config")
    return load_device_with_password(available.key_file_path, PASSWORD)


def config_of(workdir: Path, name: str) -> Any:
    return make_config(workdir, name)


async def write_synced(core: LoggedCore, workspace_id: EntryID, path: str, data: bytes) -> str:
    """Write, sync, and return the time after which this version is the current one."""
    workspace = core.user_fs.get_workspace(workspace_id)
    parent = path.rsplit("/", 1)[0]
    if parent:
        await workspace.mkdir(parent, parents=True, exist_ok=True)
    await workspace.write_bytes(path, data)
    with trio.fail_after(STEP_TIMEOUT):
        await workspace.sync()
        await core.user_fs.sync()
    await trio.sleep(0.01)
    return str(core.device.timestamp())


def record_file(state: State, workspace: str, path: str, data: bytes) -> None:
    workspaces = state["workspaces"]
    workspaces[workspace]["files"][path] = digest(data)
    state["workspaces"] = workspaces


# --------------------------------------------------------------------------------------------
async def populate(args: argparse.Namespace, result: Result) -> None:
    state = State(args.workdir)
    full = args.scope == "full"
    org_a, org_b = f"{args.org}A", f"{args.org}B"
    state["orgs"] = {"A": org_a, "B": org_b} if full else {"A": org_a}

    result.step(f"bootstrap {org_a} (alice)")
    _, alice = await create_and_bootstrap(args.addr, org_a, args.admin_token, "alice@example.com", "Alice", "alice-1")
    await init_new_user_storage(config_of(args.workdir, "alice-1"), alice)
    save_device(args.workdir, state, "alice-1", alice)

    async with logged_core(config_of(args.workdir, "alice-1"), alice) as core:
        result.step("alice's second device, bob, carol (outsider), dave")
        if full:
            alice2, _ = await invite_and_claim_device(core, "alice-2")
            save_device(args.workdir, state, "alice-2", alice2)
        people = [("bob", "Bob", UserProfile.STANDARD)]
        if full:
            people += [("carol", "Carol", UserProfile.OUTSIDER), ("dave", "Dave", UserProfile.STANDARD)]
        devices: dict[str, LocalDevice] = {}
        for name, label, profile in people:
            device, _ = await invite_and_claim_user(core, f"{name}@example.com", label, f"{name}-1", profile)
            await init_new_user_storage(config_of(args.workdir, name), device)
            save_device(args.workdir, state, name, device)
            devices[name] = device

        result.step("workspace 'shared': /doc.txt in three versions, other files, shared with several roles")
        shared = await core.user_fs.workspace_create(entry_name("shared"))
        state["workspaces"] = {"shared": {"id": shared.hex, "files": {}}}
        files = {"/big.bin": os.urandom(600 * KIB), "/sub/dir/nested.txt": b"nested\n"}
        for path, data in files.items():
            await write_synced(core, shared, path, data)
            record_file(state, "shared", path, data)
        history = []
        for n in range(1, 4):
            data = f"doc version {n}\n".encode() * n
            history.append([await write_synced(core, shared, "/doc.txt", data), digest(data)])
        record_file(state, "shared", "/doc.txt", data)
        state["history"] = history
        roles = {"bob": WorkspaceRole.CONTRIBUTOR}
        if full:
            roles.update(carol=WorkspaceRole.READER, dave=WorkspaceRole.MANAGER)
        for name, role in roles.items():
            await core.user_fs.workspace_share(shared, devices[name].user_id, role)
        state["roles"] = {str(devices[name].user_id): role.value for name, role in roles.items()} | {
            str(alice.user_id): "OWNER"
        }

        result.step("bob writes into 'shared'")
        async with logged_core(config_of(args.workdir, "bob"), devices["bob"]) as bob_core:
            await wait_until(lambda: bob_core.user_fs.get_user_manifest().get_workspace_entry(shared) is not None,
                             NOTIFICATION_TIMEOUT)
            data = os.urandom(20 * KIB)
            await write_synced(bob_core, shared, "/from-bob.bin", data)
            record_file(state, "shared", "/from-bob.bin", data)

        if not full:
            result["state"] = state.data
            return

        result.step("workspace 'secret': shared with bob, re-encrypted, written again")
        secret = await core.user_fs.workspace_create(entry_name("secret"))
        workspaces = state["workspaces"]
        workspaces["secret"] = {"id": secret.hex, "files": {}}
        state["workspaces"] = workspaces
        for path, data in {"/plans.txt": b"secret plans\n", "/keys.bin": os.urandom(3 * KIB)}.items():
            await write_synced(core, secret, path, data)
            record_file(state, "secret", path, data)
        await core.user_fs.workspace_share(secret, devices["bob"].user_id, WorkspaceRole.CONTRIBUTOR)
        job = await core.user_fs.workspace_start_reencryption(secret)
        with trio.fail_after(STEP_TIMEOUT):
            while True:
                total, done = await job.do_one_batch(size=2)
                if total == done:
                    break
        await wait_until(lambda: core.user_fs.get_user_manifest().get_workspace_entry(secret).encryption_revision == 2,
                         NOTIFICATION_TIMEOUT)
        data = os.urandom(5 * KIB)
        await write_synced(core, secret, "/after-reencryption.bin", data)
        record_file(state, "secret", "/after-reencryption.bin", data)

        result.step("dave revoked; a pending user invitation and a pending device invitation")
        await core.revoke_user(devices["dave"].user_id)
        user_invitation, _ = await core.new_user_invitation(email="erin@example.com", send_email=False)
        device_invitation, _ = await core.new_device_invitation(send_email=False)
        state["pending"] = {"user": user_invitation.token.hex, "device": device_invitation.token.hex}

    result.step("a PKI enrollment request (anonymous pki_enrollment_submit)")
    backend_addr = BackendAddr.from_url(args.addr)
    pki_addr = BackendPkiEnrollmentAddr.build(backend_addr, OrganizationID(org_a))
    enrollment_id = uuid.uuid4()
    payload = PkiEnrollmentSubmitPayload(
        verify_key=SigningKey.generate().verify_key,
        public_key=PrivateKey.generate().public_key,
        requested_device_label=DeviceLabel("pki-laptop"),
    ).dump()
    rep = await pki_enrollment_submit(
        pki_addr, enrollment_id, False, b"fake DER x509 " + os.urandom(64), "pki@example.com", b"signature", payload
    )
    result["pki_submit"] = rep["status"]
    state["pki"] = enrollment_id.hex
    rep = await pki_enrollment_info(pki_addr, enrollment_id)
    state["pki_submitted_on"] = str(rep["submitted_on"])

    result.step(f"bootstrap {org_b} (eve) and her workspace")
    _, eve = await create_and_bootstrap(args.addr, org_b, args.admin_token, "eve@example.com", "Eve", "eve-1")
    await init_new_user_storage(config_of(args.workdir, "eve"), eve)
    save_device(args.workdir, state, "eve", eve)
    async with logged_core(config_of(args.workdir, "eve"), eve) as core:
        workspace = await core.user_fs.workspace_create(entry_name("eve-ws"))
        workspaces = state["workspaces"]
        workspaces["eve-ws"] = {"id": workspace.hex, "files": {}, "owner": "eve"}
        state["workspaces"] = workspaces
        data = os.urandom(40 * KIB)
        await write_synced(core, workspace, "/eve.bin", data)
        record_file(state, "eve-ws", "/eve.bin", data)
    result["state"] = state.data


# --------------------------------------------------------------------------------------------
async def read_all(core: LoggedCore, workspace_id: EntryID, paths: list[str]) -> dict[str, str]:
    with trio.fail_after(STEP_TIMEOUT):
        await core.user_fs.sync()
    workspace = core.user_fs.get_workspace(workspace_id)
    with trio.fail_after(STEP_TIMEOUT):
        await workspace.sync()
    return {path: digest(await workspace.read_bytes(path)) for path in paths}


async def check(args: argparse.Namespace, result: Result) -> None:
    state = State(args.workdir)
    full = args.scope == "full"
    workspaces = state["workspaces"]
    shared = EntryID.from_hex(workspaces["shared"]["id"])
    alice = load_device(args.workdir, "alice-1")
    bob = load_device(args.workdir, "bob")

    result.step("alice logs in with her device file and local storage; reads everything and the history")
    async with logged_core(config_of(args.workdir, "alice-1"), alice) as core:
        events = EventRecorder(core, [CoreEvent.BACKEND_REALM_VLOBS_UPDATED])
        observed: dict[str, Any] = {}
        for name, info in workspaces.items():
            if info.get("owner") == "eve":
                continue
            observed[name] = await read_all(core, EntryID.from_hex(info["id"]), sorted(info["files"]))
        result["alice_read"] = observed
        workspace = core.user_fs.get_workspace(shared)
        result["history_read"] = [
            digest(await (await workspace.to_timestamped(pendulum.parse(at))).read_bytes("/doc.txt"))
            for at, _ in state["history"]
        ]
        versions, _ = await workspace.get_version_lister().list(FsPath("/doc.txt"))
        result["doc_versions"] = sorted({version.version for version in versions})
        result["roles"] = {str(user): role.value for user, role in (await workspace.get_user_roles()).items()}
        if full:
            secret = core.user_fs.get_workspace(EntryID.from_hex(workspaces["secret"]["id"]))
            result["secret_revision"] = secret.get_encryption_revision()
            invitations = await core.list_invitations()
            result["pending_invitations"] = sorted(
                (str(item["type"].value), item["token"].hex) for item in invitations
            )
            async with backend_authenticated_cmds_factory(
                addr=alice.organization_addr, device_id=alice.device_id, signing_key=alice.signing_key
            ) as cmds:
                rep = await cmds.pki_enrollment_list()
                result["pki_listed"] = [str(item["enrollment_id"].hex) for item in rep.get("enrollments", [])]
                rep = await cmds.realm_status(RealmID(EntryID.from_hex(workspaces["secret"]["id"]).uuid))
                result["secret_realm_status"] = {k: str(v) for k, v in rep.items()}

        result.step("bob logs in, writes; alice's core is notified by the server and reads it")
        async with logged_core(config_of(args.workdir, "bob"), bob) as bob_core:
            result["bob_read"] = await read_all(bob_core, shared, sorted(workspaces["shared"]["files"]))
            mark = events.mark()
            data = os.urandom(30 * KIB)
            path = f"/round-{args.round}-bob.bin"
            await write_synced(bob_core, shared, path, data)
            written_at = time.monotonic()
            await events.wait_for(CoreEvent.BACKEND_REALM_VLOBS_UPDATED, mark,
                                  lambda kw: kw["realm_id"].uuid == shared.uuid, timeout=NOTIFICATION_TIMEOUT)
            result["event_delay_s"] = round(time.monotonic() - written_at, 3)
            result["alice_read_bob_write"] = (await read_all(core, shared, [path]))[path] == digest(data)
            record_file(state, "shared", path, data)

        result.step("alice adds a version to /doc.txt")
        data = f"doc version after round {args.round}\n".encode()
        state["history"] = [*state["history"], [await write_synced(core, shared, "/doc.txt", data), digest(data)]]
        record_file(state, "shared", "/doc.txt", data)

        if full:
            backend_addr = BackendAddr.from_url(args.addr)
            if args.round == 1:
                result.step("erin claims the pending user invitation")
                addr = BackendInvitationAddr.build(backend_addr, alice.organization_id, InvitationType.USER,
                                                   InvitationToken.from_hex(state["pending"]["user"]))
                erin, seen = await greet_and_claim_user(core, addr, "erin@example.com", "Erin", "erin-1")
                result["claimed"] = seen
                await init_new_user_storage(config_of(args.workdir, "erin"), erin)
                save_device(args.workdir, state, "erin", erin)
                # shared with the newcomer: a role certificate and a message made by this server
                await core.user_fs.workspace_share(shared, erin.user_id, WorkspaceRole.READER)
                state["roles"] = {**state["roles"], str(erin.user_id): "READER"}
            elif args.round == 2:
                result.step("alice claims the pending device invitation")
                addr = BackendInvitationAddr.build(backend_addr, alice.organization_id, InvitationType.DEVICE,
                                                   InvitationToken.from_hex(state["pending"]["device"]))
                alice3, seen = await greet_and_claim_device(core, addr, "alice-3")
                result["claimed"] = seen
                save_device(args.workdir, state, "alice-3", alice3)

    if not full:
        state["rounds"] = [*state["rounds"], args.round]
        result["state"] = state.data
        return

    result.step("the others log in with their device files")
    logins: dict[str, Any] = {}
    for name in sorted(state["devices"]):
        if name in ("alice-1", "bob", "dave", "eve"):
            continue
        device = load_device(args.workdir, name)
        async with logged_core(config_of(args.workdir, name), device) as other:
            # (a new user or device first learns about the workspace from its messages)
            await wait_until(lambda: other.user_fs.get_user_manifest().get_workspace_entry(shared) is not None,
                             NOTIFICATION_TIMEOUT)
            logins[name] = await read_all(other, shared, sorted(workspaces["shared"]["files"]))
    result["logins"] = logins

    result.step("dave, revoked, is refused")
    # (the client logs the refused handshake as a WARNING with its traceback, which trio 0.20
    # cannot format on Python 3.11: this phase runs with --log-level ERROR)
    dave = load_device(args.workdir, "dave")
    try:
        async with backend_authenticated_cmds_factory(
            addr=dave.organization_addr, device_id=dave.device_id, signing_key=dave.signing_key
        ) as cmds:
            rep = await cmds.ping("hello")
            result["revoked_login"] = f"accepted: {rep}"
    except BackendConnectionRefused as exc:
        result["revoked_login"] = f"{type(exc).__name__}: {exc}"

    result.step("the PKI enrollment, as its submitter sees it")
    pki_addr = BackendPkiEnrollmentAddr.build(BackendAddr.from_url(args.addr), alice.organization_id)
    rep = await pki_enrollment_info(pki_addr, uuid.UUID(hex=state["pki"]))
    result["pki_info"] = {"status": rep["status"], "enrollment_status": str(rep["enrollment_status"].value),
                          "submitted_on": str(rep["submitted_on"])}

    result.step("eve (the other organization)")
    eve = load_device(args.workdir, "eve")
    async with logged_core(config_of(args.workdir, "eve"), eve) as eve_core:
        info = workspaces["eve-ws"]
        result["eve_read"] = await read_all(eve_core, EntryID.from_hex(info["id"]), sorted(info["files"]))
    state["rounds"] = [*state["rounds"], args.round]
    result["state"] = state.data
    log("check done")


PHASES = {"populate": populate, "check": check}


def main() -> None:
    parser = base_arg_parser(__doc__.splitlines()[0])
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--scope", choices=("full", "blocks"), default="full")
    phase = parser.parse_known_args()[0].phase
    log(f"phase {phase}")
    run_scenario(PHASES[phase], parser)


if __name__ == "__main__":
    main()
