"""Helpers for the scripts that drive the real parsec-cloud 2.10.0 client API.

This module runs INSIDE the client virtualenv (tests/interop/install-client-venv.sh), where
`parsec` is the reference client package, not our server. It is imported by the scenario
scripts of this directory, never by pytest.

Conventions shared with tests/interop/harness.py:
* progress goes to stderr (captured by the test, shown on failure);
* the outcome is written as JSON to the file given by `--result`, so the test can assert
  on observations (digests, statuses, event delays) with readable pytest messages.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from enum import Enum
from pathlib import Path
from typing import Any

import trio
from parsec.api.data import EntryName, UserProfile
from parsec.api.protocol import DeviceLabel, HumanHandle, OrganizationID
from parsec.core import logged_core_factory
from parsec.core.backend_connection import BackendConnStatus, backend_invited_cmds_factory
from parsec.core.cli.create_organization import create_organization_req
from parsec.core.config import CoreConfig, config_factory
from parsec.core.fs.storage.user_storage import user_storage_non_speculative_init
from parsec.core.invite import bootstrap_organization, claimer_retrieve_info
from parsec.core.logged_core import LoggedCore
from parsec.core.types import BackendAddr, BackendInvitationAddr, BackendOrganizationBootstrapAddr, LocalDevice
from parsec.logging import configure_logging

ADMIN_TOKEN = "s3cr3t"
STEP_TIMEOUT = 30.0  # safety bound for one protocol exchange, not a performance target

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.2f}s] {message}", file=sys.stderr, flush=True)


def base_arg_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--addr", required=True, help="parsec://127.0.0.1:PORT?no_ssl=true")
    parser.add_argument("--org", required=True, help="organization id to create")
    parser.add_argument("--workdir", required=True, type=Path, help="scratch directory")
    parser.add_argument("--result", required=True, type=Path, help="where to write the JSON result")
    parser.add_argument("--admin-token", default=ADMIN_TOKEN)
    parser.add_argument("--log-level", default="WARNING", help="client log level (to stderr)")
    return parser


class Result:
    """Observations collected by a scenario, written as JSON whatever happens."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"ok": False, "steps": []}

    def step(self, name: str) -> None:
        log(f"step: {name}")
        self.data["steps"].append(name)
        self.flush()

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.flush()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def flush(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))
        tmp.replace(self.path)


def format_exception_chain(exc: BaseException) -> str:
    """traceback.format_exc() without the traceback module's exception formatting, which
    trio 0.20 monkeypatches in a way that breaks on Python 3.11 for chained exceptions."""
    parts: list[str] = []
    current: BaseException | None = exc
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(
            "Traceback (most recent call last):\n"
            + "".join(traceback.format_tb(current.__traceback__))
            + f"{type(current).__module__}.{type(current).__qualname__}: {current}\n"
        )
        current = current.__cause__ or current.__context__
    return "\n-- caused by / while handling --\n".join(reversed(parts))


def run_scenario(
    main: Callable[[argparse.Namespace, Result], Awaitable[None]], parser: argparse.ArgumentParser
) -> None:
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    configure_logging(log_level=args.log_level, log_format="CONSOLE", log_stream=sys.stderr)
    result = Result(args.result)
    try:
        trio.run(main, args, result)
    except BaseException as exc:  # noqa: B036 - report everything, including trio.TooSlowError
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = format_exception_chain(exc)
        log(result["traceback"])
        sys.exit(1)
    result["ok"] = True
    log("scenario finished")


def make_config(workdir: Path, name: str) -> CoreConfig:
    """A core config whose every directory lives under `workdir/name` (nothing in $HOME)."""
    root = workdir / name
    return config_factory(
        config_dir=root / "config",
        data_base_dir=root / "data",
        mountpoint_base_dir=root / "mnt",
        mountpoint_enabled=False,
        backend_max_cooldown=2,
        telemetry_enabled=False,
        gui_check_version_at_startup=False,
        environ={},
    )


async def create_and_bootstrap(
    addr: str, org: str, admin_token: str, email: str, label: str, device_label: str
) -> tuple[BackendOrganizationBootstrapAddr, LocalDevice]:
    """Create an organization through the admin REST API, then bootstrap it (first user)."""
    backend_addr = BackendAddr.from_url(addr)
    organization_id = OrganizationID(org)
    token = await create_organization_req(organization_id, backend_addr, admin_token)
    bootstrap_addr = BackendOrganizationBootstrapAddr.build(backend_addr, organization_id, token)
    device = await bootstrap_organization(
        bootstrap_addr,
        human_handle=HumanHandle(email=email, label=label),
        device_label=DeviceLabel(device_label),
    )
    return bootstrap_addr, device


async def init_new_user_storage(config: CoreConfig, device: LocalDevice) -> None:
    """The first device of a brand new user knows there is no remote user manifest yet."""
    await user_storage_non_speculative_init(data_base_dir=config.data_base_dir, device=device)


@asynccontextmanager
async def logged_core(config: CoreConfig, device: LocalDevice) -> AsyncIterator[LoggedCore]:
    """Log in and wait until the core is connected and listening to events."""
    async with logged_core_factory(config, device) as core:
        with trio.fail_after(STEP_TIMEOUT):
            while core.backend_status != BackendConnStatus.READY:
                if core.backend_status in (BackendConnStatus.REFUSED, BackendConnStatus.CRASHED):
                    raise RuntimeError(f"backend connection {core.backend_status}: {core.backend_status_exc}")
                await trio.sleep(0.02)
        yield core


async def invite_and_claim_user(
    greeter: LoggedCore,
    email: str,
    label: str,
    device_label: str,
    profile: UserProfile = UserProfile.STANDARD,
) -> tuple[LocalDevice, dict[str, Any]]:
    """Run a user invitation end to end: the greeter (a logged core) and the claimer
    (an invited connection) talk through the server concurrently, as two people would."""
    invitation_addr, email_sent = await greeter.new_user_invitation(email=email, send_email=False)
    device, seen = await greet_and_claim_user(greeter, invitation_addr, email, label, device_label, profile)
    seen["email_sent"] = str(email_sent)
    return device, seen


async def greet_and_claim_user(
    greeter: LoggedCore,
    invitation_addr: BackendInvitationAddr,
    email: str,
    label: str,
    device_label: str,
    profile: UserProfile = UserProfile.STANDARD,
) -> tuple[LocalDevice, dict[str, Any]]:
    """Greet and claim an existing user invitation, concurrently."""
    seen: dict[str, Any] = {"token": invitation_addr.token.hex}
    claimed: dict[str, LocalDevice] = {}

    async def greet() -> None:
        ctx = await greeter.start_greeting_user(invitation_addr.token)
        seen["greeter.greeter_sas"] = str(ctx.greeter_sas)
        ctx = await ctx.do_wait_peer_trust()
        seen["greeter.claimer_sas"] = str(ctx.claimer_sas)
        seen["greeter.claimer_sas_in_choices"] = ctx.claimer_sas in ctx.generate_claimer_sas_choices(size=3)
        ctx = await ctx.do_signify_trust()
        ctx = await ctx.do_get_claim_requests()
        seen["greeter.requested_human_handle"] = str(ctx.requested_human_handle)
        seen["greeter.requested_device_label"] = str(ctx.requested_device_label)
        await ctx.do_create_new_user(
            author=greeter.device,
            device_label=ctx.requested_device_label,
            human_handle=ctx.requested_human_handle,
            profile=profile,
        )

    async def claim() -> None:
        async with backend_invited_cmds_factory(addr=invitation_addr) as cmds:
            ctx = await claimer_retrieve_info(cmds)
            seen["claimer.claimer_email"] = ctx.claimer_email
            seen["claimer.greeter_human_handle"] = str(ctx.greeter_human_handle)
            ctx = await ctx.do_wait_peer()
            seen["claimer.greeter_sas"] = str(ctx.greeter_sas)
            seen["claimer.greeter_sas_in_choices"] = ctx.greeter_sas in ctx.generate_greeter_sas_choices(
                size=3
            )
            ctx = await ctx.do_signify_trust()
            seen["claimer.claimer_sas"] = str(ctx.claimer_sas)
            ctx = await ctx.do_wait_peer_trust()
            claimed["device"] = await ctx.do_claim_user(
                requested_device_label=DeviceLabel(device_label),
                requested_human_handle=HumanHandle(email=email, label=label),
            )

    with trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(greet)
            nursery.start_soon(claim)
    device = claimed["device"]
    seen["new_user_id"] = str(device.user_id)
    seen["new_device_id"] = str(device.device_id)
    seen["new_profile"] = device.profile.value
    seen["new_human_handle"] = str(device.human_handle)
    return device, seen


async def invite_and_claim_device(
    greeter: LoggedCore, device_label: str
) -> tuple[LocalDevice, dict[str, Any]]:
    """Run a device invitation end to end (new device for the greeter's own user)."""
    invitation_addr, email_sent = await greeter.new_device_invitation(send_email=False)
    device, seen = await greet_and_claim_device(greeter, invitation_addr, device_label)
    seen["email_sent"] = str(email_sent)
    return device, seen


async def greet_and_claim_device(
    greeter: LoggedCore, invitation_addr: BackendInvitationAddr, device_label: str
) -> tuple[LocalDevice, dict[str, Any]]:
    """Greet and claim an existing device invitation, concurrently."""
    seen: dict[str, Any] = {"token": invitation_addr.token.hex}
    claimed: dict[str, LocalDevice] = {}

    async def greet() -> None:
        ctx = await greeter.start_greeting_device(invitation_addr.token)
        seen["greeter.greeter_sas"] = str(ctx.greeter_sas)
        ctx = await ctx.do_wait_peer_trust()
        seen["greeter.claimer_sas"] = str(ctx.claimer_sas)
        ctx = await ctx.do_signify_trust()
        ctx = await ctx.do_get_claim_requests()
        seen["greeter.requested_device_label"] = str(ctx.requested_device_label)
        await ctx.do_create_new_device(author=greeter.device, device_label=ctx.requested_device_label)

    async def claim() -> None:
        async with backend_invited_cmds_factory(addr=invitation_addr) as cmds:
            ctx = await claimer_retrieve_info(cmds)
            ctx = await ctx.do_wait_peer()
            seen["claimer.greeter_sas"] = str(ctx.greeter_sas)
            ctx = await ctx.do_signify_trust()
            seen["claimer.claimer_sas"] = str(ctx.claimer_sas)
            ctx = await ctx.do_wait_peer_trust()
            claimed["device"] = await ctx.do_claim_device(requested_device_label=DeviceLabel(device_label))

    with trio.fail_after(STEP_TIMEOUT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(greet)
            nursery.start_soon(claim)
    device = claimed["device"]
    seen["new_device_id"] = str(device.device_id)
    seen["new_device_label"] = str(device.device_label)
    return device, seen


def entry_name(name: str) -> EntryName:
    return EntryName(name)


class EventRecorder:
    """Records the events a logged core's event bus emits, to wait for and report them."""

    def __init__(self, core: LoggedCore, events: list[Enum]) -> None:
        self.records: list[tuple[float, str, dict[str, Any]]] = []
        self._changed = trio.Event()
        for event in events:
            core.event_bus.connect(event, self._on_event)

    def _on_event(self, event: Enum, **kwargs: Any) -> None:
        self.records.append((time.monotonic(), event.value, kwargs))
        self._changed.set()
        self._changed = trio.Event()

    def mark(self) -> int:
        return len(self.records)

    async def wait_for(
        self,
        event: Enum,
        since: int,
        predicate: Callable[[dict[str, Any]], bool] = lambda kwargs: True,
        timeout: float = STEP_TIMEOUT,
    ) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while True:
                for _, name, kwargs in self.records[since:]:
                    if name == event.value and predicate(kwargs):
                        return kwargs
                await self._changed.wait()

    def names(self) -> list[str]:
        return sorted({name for _, name, _ in self.records})


async def wait_until(
    predicate: Callable[[], bool], timeout: float = STEP_TIMEOUT, poll: float = 0.05
) -> float:
    """Wait (bounded) until `predicate()` holds; return how long it took, for the report."""
    start = time.monotonic()
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(poll)
    return time.monotonic() - start
