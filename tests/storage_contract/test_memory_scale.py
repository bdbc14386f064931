"""What a call costs the memory storage must not grow with the data of other users, realms and
invitations: the lines of `parsec/storage/memory/` that each call of `client_day` runs are
counted (`sys.settrace`; every call completes without yielding), before and after the
organization is filled with other users, their realms, vlobs, blocks, messages, invitations
and PKI enrollments. They must not grow. (The same day on PostgreSQL counts the rows its
statements read: tests/postgresql_realm/test_plans.py.)
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType
from typing import Any
from uuid import uuid4

import pytest_twisted

import parsec.storage.memory
from parsec.backend.storage import PkiEnrollment
from tests.storage_contract.client_day import client_day
from tests.storage_contract.conftest import World, make_user, memory_backend, new_organization

ok = pytest_twisted.ensureDeferred

MEMORY_STORAGE = str(Path(parsec.storage.memory.__file__).parent)
NOISE_USERS = 300  # each with an e-mail, an invitation (and a deleted one), two PKI enrollments
NOISE_REALMS = 600  # theirs, bob reading them, each with 2 vlobs of 2 versions and a block


class LineCounter:
    """Lines of the memory storage run while `count` awaits a call."""

    def __init__(self) -> None:
        self.lines = 0

    def _in_storage(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            self.lines += 1
        return self._in_storage

    def _any(self, frame: FrameType, event: str, arg: Any) -> Any:
        return self._in_storage if frame.f_code.co_filename.startswith(MEMORY_STORAGE) else None

    async def count(self, coro: Any) -> tuple[Any, int]:
        previous = sys.gettrace()
        self.lines = 0
        sys.settrace(self._any)
        try:
            result = await coro
        finally:
            sys.settrace(previous)
        return result, self.lines


async def fill(world: World) -> None:
    org = world.org
    for i in range(NOISE_USERS):
        user, device = make_user(f"n{i}", email=f"n{i}@example.com")
        await world.user.create_user(org, user, device, world.ts())
        await world.invite.new(org, f"n{i}", None, "DEVICE", None, world.ts())
        gone = await world.invite.new(org, f"n{i}", None, "USER", f"guest{i}@example.com", world.ts())
        await world.invite.delete(org, f"n{i}", gone.token, world.ts(), "CANCELLED")
        for index in range(2):
            enrollment = PkiEnrollment(uuid4(), f"noise {i} {index}".encode(), b"s", b"p", world.ts())
            await world.pki.submit(org, enrollment, False, None, world.ts())
            await world.pki.reject(org, enrollment.enrollment_id, world.ts())
    for i in range(NOISE_REALMS):
        owner = f"n{i % NOISE_USERS}"
        realm_id = await world.create_realm(f"{owner}@dev1")
        await world.share(realm_id, f"{owner}@dev1", "bob", "READER")
        for _ in range(2):
            vlob_id = await world.create_vlob(f"{owner}@dev1", realm_id)
            await world.vlob.update(org, f"{owner}@dev1", 1, vlob_id, 2, world.ts(), b"v2")
        block_id = uuid4()
        held = await world.block.claim_create(org, f"{owner}@dev1", realm_id, block_id, world.ts(), 300.0)
        await world.block.record_create(org, f"{owner}@dev1", realm_id, block_id, 1, world.ts(), held)


async def day(world: World, counter: LineCounter) -> dict[str, int]:
    costs: dict[str, int] = {}

    async def call(name: str, coro: Any) -> Any:
        result, costs[name] = await counter.count(coro)
        return result

    await client_day(world, call)
    return costs


@ok
async def test_calls_run_no_more_lines_as_other_data_grows() -> None:
    backend = memory_backend()
    world = World(backend, await new_organization(backend, "Scale"))
    await world.add_user("bob@dev1")
    counter = LineCounter()
    await day(world, counter)  # first use of every path
    # Two days without the noise: what the day's own data (alice's messages...) adds.
    first = await day(world, counter)
    before = await day(world, counter)
    await fill(world)
    after = await day(world, counter)

    grown = {
        name: (first[name], before[name], after[name])
        for name in before
        if after[name] - before[name] > max(before[name] - first[name], 0)
    }
    assert not grown, grown
    assert all(lines > 0 for lines in before.values()), before
