"""Two clients through a reverse proxy in front of two server instances (tests/ops/test_nginx_client.py).

Runs inside the client virtualenv. Usage:

    python proxy_scenario.py --addr parsec://127.0.0.1:A --addr-b parsec://127.0.0.1:B \
        --org ORG --workdir DIR --result result.json

`--addr` (alice) and `--addr-b` (bob) are two ports of the proxy, each in front of a different
instance (the other as backup). The client trusts the proxy's certificate through SSL_CAFILE.

1. alice creates and bootstraps the organization, invites bob; bob's device is told to use
   `--addr-b`. Alice shares a workspace with bob and writes in it: bob's core learns both from
   the server (sharing, then realm.vlobs_updated) and reads the file: each change crossed from
   one instance to the other;
2. the script writes `<workdir>/ready-for-stop` and waits for `<workdir>/stopped` (the test
   stops alice's instance with SIGTERM meanwhile);
3. alice's core reconnects by itself (through the proxy, to the other instance); she writes
   and syncs again; bob is notified and reads it.

Every observation (backend statuses of both cores, delays, digests) goes to --result.
"""

from __future__ import annotations

import hashlib
import os
import time
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
    invite_and_claim_user,
    log,
    logged_core,
    make_config,
    run_scenario,
    wait_until,
)
from parsec.core.backend_connection import BackendConnStatus
from parsec.core.core_events import CoreEvent
from parsec.core.types import BackendAddr, BackendOrganizationAddr, WorkspaceRole

STOP_TIMEOUT = 60.0
NOTIFICATION_TIMEOUT = 20.0


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StatusLog:
    """The backend connection statuses a core goes through, with their times."""

    def __init__(self, core: Any) -> None:
        self.changes: list[tuple[float, str]] = []
        core.event_bus.connect(CoreEvent.BACKEND_CONNECTION_CHANGED, self._changed)

    def _changed(self, event: Any, status: Any, status_exc: Any = None, **kwargs: Any) -> None:
        self.changes.append((time.monotonic(), str(getattr(status, "name", status))))

    def names(self) -> list[str]:
        return [name for _, name in self.changes]


async def sync(workspace: Any) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        await workspace.sync()


async def write_and_read(
    writer: Any, reader: Any, reader_events: EventRecorder, mark: Any, path: str, size: int
) -> tuple[float, bool]:
    """`writer` writes `size` random bytes at `path` and syncs; once `reader_events` has the
    workspace's `vlobs_updated` (after `mark`), `reader` syncs and reads the file back.
    Returns the notification's delay after the write and whether the bytes read are those
    written."""
    data = os.urandom(size)
    await writer.write_bytes(path, data)
    written_at = time.monotonic()
    await sync(writer)
    await reader_events.wait_for(
        CoreEvent.BACKEND_REALM_VLOBS_UPDATED, mark, lambda kw: kw["realm_id"] == writer.workspace_id,
        timeout=NOTIFICATION_TIMEOUT,
    )  # fmt: skip
    delay = round(time.monotonic() - written_at, 3)
    await sync(reader)
    return delay, digest(await reader.read_bytes(path)) == digest(data)


async def main(args: Any, result: Result) -> None:
    result.step("alice creates and bootstraps the organization (through the proxy, port A)")
    config_a = make_config(args.workdir, "alice")
    _, alice = await create_and_bootstrap(args.addr, args.org, args.admin_token, "alice@example.com", "Alice", "alice-laptop")
    await init_new_user_storage(config_a, alice)
    result["alice_device"] = str(alice.device_id)

    async with logged_core(config_a, alice) as core_a:
        statuses_a = StatusLog(core_a)
        events_a = EventRecorder(core_a, [CoreEvent.BACKEND_REALM_VLOBS_UPDATED])
        result.step("alice invites bob; bob's device uses port B")
        bob, _ = await invite_and_claim_user(core_a, "bob@example.com", "Bob", "bob-laptop")
        root_verify_key = bob.organization_addr.root_verify_key
        bob = bob.evolve(
            organization_addr=BackendOrganizationAddr.build(
                BackendAddr.from_url(args.addr_b), bob.organization_addr.organization_id, root_verify_key
            )
        )
        result["bob_device"] = str(bob.device_id)
        config_b = make_config(args.workdir, "bob")
        await init_new_user_storage(config_b, bob)

        workspace_id = await core_a.user_fs.workspace_create(entry_name("shared"))
        workspace_a = core_a.user_fs.get_workspace(workspace_id)
        first = os.urandom(300 * 1024)
        await workspace_a.write_bytes("/first.bin", first)
        await sync(workspace_a)
        with trio.fail_after(STEP_TIMEOUT):
            await core_a.user_fs.sync()

        async with logged_core(config_b, bob) as core_b:
            statuses_b = StatusLog(core_b)
            events_b = EventRecorder(core_b, [CoreEvent.BACKEND_REALM_VLOBS_UPDATED])

            result.step("alice shares the workspace: bob's core hears it from the other instance")
            shared_at = time.monotonic()
            await core_a.user_fs.workspace_share(workspace_id, bob.user_id, WorkspaceRole.CONTRIBUTOR)

            def bob_has_it() -> bool:
                entry = core_b.user_fs.get_user_manifest().get_workspace_entry(workspace_id)
                return entry is not None and entry.role is not None

            await wait_until(bob_has_it, NOTIFICATION_TIMEOUT)
            result["share_delay_s"] = round(time.monotonic() - shared_at, 3)
            workspace_b = core_b.user_fs.get_workspace(workspace_id)
            await sync(workspace_b)
            result["bob_read_first"] = digest(await workspace_b.read_bytes("/first.bin")) == digest(first)

            result.step("alice writes: bob is notified through the other instance")
            result["vlobs_updated_delay_s"], result["bob_read_second"] = await write_and_read(
                workspace_a, workspace_b, events_b, events_b.mark(), "/second.bin", 100 * 1024
            )

            result.step("waiting for the test to stop alice's instance")
            (args.workdir / "ready-for-stop").write_text("1")
            with trio.fail_after(STOP_TIMEOUT):
                while not (args.workdir / "stopped").exists():
                    await trio.sleep(0.05)
            stopped_at = time.monotonic()

            result.step("alice's core reconnects by itself")
            await wait_until(
                lambda: statuses_a.changes and core_a.backend_status == BackendConnStatus.READY,
                NOTIFICATION_TIMEOUT,
            )
            result["alice_ready_again_s"] = round(time.monotonic() - stopped_at, 3)

            result.step("alice writes again; bob is notified and reads it")
            mark_a = events_a.mark()
            result["vlobs_updated_after_stop_delay_s"], result["bob_read_third"] = await write_and_read(
                workspace_a, workspace_b, events_b, events_b.mark(), "/third.bin", 100 * 1024
            )

            result.step("bob writes; alice (now on bob's instance) is notified")
            _, result["alice_read_fourth"] = await write_and_read(
                workspace_b, workspace_a, events_a, mark_a, "/fourth.bin", 10 * 1024
            )
            result["bob_statuses"] = statuses_b.names()
        result["alice_statuses"] = statuses_a.names()
    log("done")


if __name__ == "__main__":
    parser = base_arg_parser("alice and bob through a reverse proxy, two instances")
    parser.add_argument("--addr-b", required=True, help="bob's address (the proxy's other port)")
    run_scenario(main, parser)
