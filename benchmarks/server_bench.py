"""Whole-server throughput and latency: this server against the reference, in memory and on PostgreSQL.

    .venv/bin/python benchmarks/server_bench.py                       # both servers, memory + PostgreSQL
    .venv/bin/python benchmarks/server_bench.py --storage memory --server ours --duration 3
    .venv/bin/python benchmarks/server_bench.py --dsn postgresql://user@127.0.0.1:5432/postgres

For every (storage, server) pair the script starts the server as a subprocess on a free loopback
port (ours: `<repo>/.venv/bin/twistd -n --pidfile= parsec --dev --port P`; the reference:
`<repo>/.client-venv/bin/parsec backend run --dev --port P`; on PostgreSQL both get `--db DSN
--blockstore POSTGRESQL` after `parsec backend migrate --db DSN`), creates an organization with the
administration API (token `s3cr3t` of --dev), bootstraps it over `POST /anonymous/<org>`, opens
authenticated websockets (API 2.7 signed answer) as its first device, then runs one timed phase per
workload, every connection looping on its requests (closed loop, one request in flight each). All
the servers of a storage are up together and each phase runs `--rounds` times, servers alternating,
the best round being reported (a burst of someone else's load then spoils one round of each server
rather than one server's figures):

  ping       `ping`
  vlob       `vlob_create` + `vlob_update` + `vlob_read` (latest), one realm per connection
  block4k    `block_create` + `block_read` of 4 KiB blocks
  block512k  `block_create` + `block_read` of 512 KiB blocks

It prints requests/s and latency percentiles per command, the CPU used by the server, the load
generator and PostgreSQL during each measured window, and a comparison table (ours / reference)
with requests/s and requests per CPU-second of server (+ PostgreSQL). The defaults (2 rounds of
1 s warm-up + 3 s, both servers, both storages) take about 2.5 minutes.

Load generator: this process, asyncio and a minimal websocket client (masking through autobahn's
native masker when present), in its own process. The CPU used during each measured window is
printed for the server, the load generator, PostgreSQL and every other process of the machine: a
load generator close to 100 % means the figures measure it rather than the server, and "other"
load (someone else's jobs) skews the comparison (phases above `--max-background` are flagged).
`--pin` puts the server on CPU 0 and the load generator on CPU 1, for an otherwise idle machine.

PostgreSQL: `--dsn` names an existing cluster on which the script may create and drop databases
(one fresh database per server run); without it, a throwaway cluster is started with
`tests/pg_cluster.py` (PostgreSQL server binaries needed), with pg_stat_statements loaded when
installed: the SQL statements per request are then printed too (`--pg-top N` also lists the N
statements that cost PostgreSQL the most time per server). Block phases default to 4 connections:
the reference deadlocks for good with 7 or more concurrent `block_create` on PostgreSQL (its pool
holds 7 connections and each upload needs two).

Everything runs on 127.0.0.1, every phase is bounded in time (a request that gets no answer for
`--stall-timeout` seconds aborts the phase and is reported), and every process started is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import functools
import http.client
import json
import os
import random
import resource
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.api.certgen` and `tests.pg_cluster`

from nacl.signing import SigningKey  # noqa: E402

from parsec.api.codec import packb, unpackb  # noqa: E402
from tests.api.certgen import LocalDevice, new_user_certificates  # noqa: E402

try:  # native XOR masking, shipped with autobahn (a server dependency)
    from autobahn.nvx._xormasker import create_xor_masker as _native_masker
except ImportError:  # pragma: no cover - depends on how autobahn was built
    _native_masker = None

ADMIN_TOKEN = "s3cr3t"
ORG_ID = "BenchOrg"
PHASES = ("ping", "vlob", "block4k", "block512k")
PHASE_COMMANDS = {
    "ping": ("ping",),
    "vlob": ("vlob_create", "vlob_update", "vlob_read"),
    "block4k": ("block_create", "block_read"),
    "block512k": ("block_create", "block_read"),
}
TARGETS = {"memory": 1.5, "postgresql": 5.0}
START_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0


def now() -> datetime:
    return datetime.now(tz=UTC)


# ---------------------------------------------------------------------------------------------
# Minimal websocket client (RFC 6455 client side: masked frames out, unmasked frames in)
# ---------------------------------------------------------------------------------------------


def _mask_small(data: bytes, key: bytes) -> bytes:
    size = len(data)
    pad = (key * ((size >> 2) + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(size, "little")


def mask(data: bytes, key: bytes) -> bytes:
    if _native_masker is not None and len(data) > 512:
        return bytes(_native_masker(key, len(data)).process(data))
    return _mask_small(data, key)


def frame(opcode: int, payload: bytes) -> tuple[bytes, bytes]:
    """(header, masked payload) of one final frame."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    key = random.getrandbits(32).to_bytes(4, "big")
    return head + key, mask(payload, key)


class ConnectionClosed(Exception):
    pass


class WsClientProtocol(asyncio.Protocol):
    """One websocket; `request()` sends a msgpack map and returns the decoded reply map."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters: deque[asyncio.Future[bytes]] = deque()
        self.inbox: deque[bytes] = deque()
        self.fragments: list[bytes] = []
        self.closed = False
        self.close_reason = ""

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            (
                f"GET /ws HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status_line = bytes(buf[: buf.find(b"\r\n")])
            if status_line.split(b" ")[1:2] != [b"101"]:
                self._fail(f"websocket upgrade refused: {status_line!r}")
                return
            del buf[: end + 4]
            self.upgraded = True
            if not self.opened.done():
                self.opened.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            masked = b1 & 0x80
            if masked:
                head += 4
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            if masked:
                payload = mask(payload, bytes(buf[pos + head - 4 : pos + head]))
            pos += head + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(self.close_reason or f"connection lost ({exc or 'closed by server'})")

    # --- internals ----------------------------------------------------------------------------

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (0x0, 0x1, 0x2):
            if not fin:
                self.fragments.append(payload)
                return
            if self.fragments:
                self.fragments.append(payload)
                payload = b"".join(self.fragments)
                self.fragments.clear()
            while self.waiters:
                waiter = self.waiters.popleft()
                if not waiter.done():  # a cancelled request (aborted phase) is skipped
                    waiter.set_result(payload)
                    return
            self.inbox.append(payload)
        elif opcode == 0x8:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
            self.close_reason = f"closed by server (websocket close {code})"
            self._write_frame(0x8, payload[:2])
            assert self.transport is not None
            self.transport.close()
        elif opcode == 0x9:
            self._write_frame(0xA, payload)

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        if not self.opened.done():
            self.opened.set_exception(ConnectionClosed(reason))
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectionClosed(reason))
        if self.transport is not None:
            self.transport.close()

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        head, body = frame(opcode, payload)
        if len(body) < 4096:
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    # --- API ------------------------------------------------------------------------------------

    def send_raw(self, payload: bytes) -> asyncio.Future[bytes]:
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        if self.closed:
            waiter.set_exception(ConnectionClosed(self.close_reason))
            return waiter
        if self.inbox:
            waiter.set_result(self.inbox.popleft())
        else:
            self.waiters.append(waiter)
        self._write_frame(0x2, payload)
        return waiter

    async def recv(self) -> dict[str, Any]:
        if self.inbox:
            return unpackb(self.inbox.popleft())
        if self.closed:
            raise ConnectionClosed(self.close_reason)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        return unpackb(await waiter)

    async def request(self, payload: bytes) -> dict[str, Any]:
        return unpackb(await self.send_raw(payload))

    def close(self) -> None:
        if self.closed or self.transport is None:
            return
        self._write_frame(0x8, (1000).to_bytes(2, "big"))
        self.closed = True
        self.transport.close()


async def ws_connect(port: int) -> WsClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: WsClientProtocol("127.0.0.1", port), "127.0.0.1", port),
        CONNECT_TIMEOUT,
    )
    await asyncio.wait_for(proto.opened, CONNECT_TIMEOUT)
    return proto


async def authenticated_connection(port: int, org: Organization) -> WsClientProtocol:
    conn = await ws_connect(port)
    challenge = await asyncio.wait_for(conn.recv(), CONNECT_TIMEOUT)
    signed = org.device.signing_key.sign(packb({"type": "signed_answer", "answer": challenge["challenge"]}))
    answer = {
        "handshake": "answer",
        "type": "AUTHENTICATED",
        "client_api_version": [2, 7],
        "organization_id": org.organization_id,
        "device_id": org.device.device_id,
        "rvk": bytes(org.root_key.verify_key),
        "answer": bytes(signed),
    }
    result = await asyncio.wait_for(conn.request(packb(answer)), CONNECT_TIMEOUT)
    if result.get("result") != "ok":
        conn.close()
        raise RuntimeError(f"handshake refused: {result}")
    return conn


# ---------------------------------------------------------------------------------------------
# HTTP set-up: organization creation and bootstrap
# ---------------------------------------------------------------------------------------------


def http_request(
    port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CONNECT_TIMEOUT)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@dataclass
class Organization:
    organization_id: str
    root_key: SigningKey
    device: LocalDevice


def bootstrap_organization(port: int) -> Organization:
    status, body = http_request(
        port,
        "POST",
        "/administration/organizations",
        json.dumps({"organization_id": ORG_ID}).encode(),
        {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    if status != 200:
        raise RuntimeError(f"organization creation: HTTP {status} {body[:200]!r}")
    token = json.loads(body)["bootstrap_token"]
    root_key = SigningKey.generate()
    device = LocalDevice.generate(
        "bench@dev1", profile="ADMIN", human_handle=("bench@example.com", "Bench"), device_label="bench"
    )
    blobs = new_user_certificates(root_key, None, device, timestamp=now())
    request = {
        "cmd": "organization_bootstrap",
        "bootstrap_token": token,
        "root_verify_key": bytes(root_key.verify_key),
        **blobs.as_request(),
    }
    status, body = http_request(
        port, "POST", f"/anonymous/{ORG_ID}", packb(request), {"Content-Type": "application/msgpack"}
    )
    reply = unpackb(body) if body else {}
    if status != 200 or reply.get("status") != "ok":
        raise RuntimeError(f"organization_bootstrap: HTTP {status} {reply}")
    return Organization(ORG_ID, root_key, device)


# ---------------------------------------------------------------------------------------------
# CPU accounting (Linux /proc)
# ---------------------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def postgres_cpu(postmaster: int | None) -> float:
    """CPU seconds of a PostgreSQL server (the postmaster and its children), or of every live
    `postgres` process of the machine when the postmaster is unknown (an external `--dsn`)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if postmaster is None:
            wanted = stat[stat.find("(") + 1 : stat.rfind(")")] == "postgres"
        else:
            wanted = int(entry.name) == postmaster or fields[1] == str(postmaster)
        if wanted:
            total += (int(fields[11]) + int(fields[12])) / _TICKS
    return total


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine, all cores summed (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = stat.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuSample:
    server: float
    client: float
    postgres: float
    machine: float
    wall: float
    statements: tuple[int, int] | None


@dataclass
class Probes:
    """What to sample at both ends of a measured window."""

    server_pid: int
    postgres_cpu: Callable[[], float] | None = None
    statements: Callable[[], tuple[int, int] | None] | None = None


def sample_cpu(probes: Probes) -> CpuSample:
    return CpuSample(
        process_cpu(probes.server_pid),
        self_cpu(),
        probes.postgres_cpu() if probes.postgres_cpu is not None else 0.0,
        machine_cpu(),
        time.perf_counter(),
        probes.statements() if probes.statements is not None else None,
    )


# ---------------------------------------------------------------------------------------------
# Load phases
# ---------------------------------------------------------------------------------------------


@dataclass
class CommandStats:
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class PhaseResult:
    phase: str
    connections: int
    duration: float
    commands: dict[str, CommandStats]
    cpu: dict[str, float] = field(default_factory=dict)  # percent of one CPU
    anomalies: list[str] = field(default_factory=list)
    skipped: str | None = None
    statements_per_request: tuple[float, float] | None = None  # (all, without BEGIN/COMMIT...)

    def rate(self, command: str | None = None) -> float:
        if self.duration <= 0:
            return 0.0
        if command is None:
            return sum(len(s.latencies) for s in self.commands.values()) / self.duration
        return len(self.commands[command].latencies) / self.duration

    def per_cpu_second(self) -> float:
        """Requests per CPU-second of server + PostgreSQL: the cost of a request, far less
        sensitive than req/s to other jobs sharing the machine."""
        used = (self.cpu.get("server", 0.0) + self.cpu.get("postgres", 0.0)) / 100
        return self.rate() / used if used > 0 else float("nan")


class PhaseAborted(Exception):
    pass


class Phase:
    """Runs one workload on a set of connections for warmup + duration seconds."""

    def __init__(
        self, name: str, conns: list[WsClientProtocol], realms: list[uuid.UUID], args: argparse.Namespace
    ) -> None:
        self.name = name
        self.conns = conns
        self.realms = realms
        self.args = args
        self.stats = {cmd: CommandStats() for cmd in PHASE_COMMANDS[name]}
        self.window_start = 0.0
        self.window_end = 0.0
        self.last_progress = 0.0
        self.anomalies: list[str] = []
        self.unknown_command = False
        self.block = os.urandom(512 * 1024 if name == "block512k" else 4096)
        self.blob = os.urandom(args.vlob_size)

    async def timed(self, conn: WsClientProtocol, cmd: str, payload: bytes) -> dict[str, Any] | None:
        """Send one request; record its latency when it lies in the window. None = not ok."""
        started = time.perf_counter()
        try:
            reply = await conn.request(payload)
        except ConnectionClosed as exc:
            self.stats[cmd].errors[f"connection: {exc}"] += 1
            raise PhaseAborted(str(exc)) from None
        done = time.perf_counter()
        self.last_progress = done
        status = reply.get("status")
        if status == "unknown_command":
            self.unknown_command = True
            raise PhaseAborted(f"{cmd}: unknown_command")
        if started >= self.window_start and done <= self.window_end:
            if status == "ok":
                self.stats[cmd].latencies.append(done - started)
            else:
                self.stats[cmd].errors[f"{status} {reply.get('reason', '')}".strip()] += 1
        elif status != "ok":
            self.stats[cmd].errors[f"{status} {reply.get('reason', '')} (outside window)"] += 1
        return reply if status == "ok" else None

    async def loop_ping(self, conn: WsClientProtocol, index: int) -> None:
        payload = packb({"cmd": "ping", "ping": f"bench-{index}"})
        while time.perf_counter() < self.window_end:
            await self.timed(conn, "ping", payload)

    async def loop_vlob(self, conn: WsClientProtocol, index: int) -> None:
        realm_id = self.realms[index]
        blob = self.blob
        while time.perf_counter() < self.window_end:
            vlob_id = uuid.uuid4()
            created = await self.timed(
                conn,
                "vlob_create",
                packb(
                    {
                        "cmd": "vlob_create",
                        "realm_id": realm_id,
                        "encryption_revision": 1,
                        "vlob_id": vlob_id,
                        "timestamp": now(),
                        "blob": blob,
                    }
                ),
            )
            if created is None:
                continue
            updated = await self.timed(
                conn,
                "vlob_update",
                packb(
                    {
                        "cmd": "vlob_update",
                        "encryption_revision": 1,
                        "vlob_id": vlob_id,
                        "timestamp": now(),
                        "version": 2,
                        "blob": blob,
                    }
                ),
            )
            read = await self.timed(
                conn,
                "vlob_read",
                packb(
                    {
                        "cmd": "vlob_read",
                        "encryption_revision": 1,
                        "vlob_id": vlob_id,
                        "version": None,
                        "timestamp": None,
                    }
                ),
            )
            expected = 2 if updated is not None else 1
            if read is not None and (read.get("version") != expected or read.get("blob") != blob):
                self.stats["vlob_read"].errors[f"wrong content (version {read.get('version')})"] += 1

    async def loop_block(self, conn: WsClientProtocol, index: int) -> None:
        realm_id = self.realms[index]
        block = self.block
        while time.perf_counter() < self.window_end:
            block_id = uuid.uuid4()
            created = await self.timed(
                conn,
                "block_create",
                packb({"cmd": "block_create", "block_id": block_id, "realm_id": realm_id, "block": block}),
            )
            if created is None:
                continue
            read = await self.timed(conn, "block_read", packb({"cmd": "block_read", "block_id": block_id}))
            if read is not None and read.get("block") != block:
                self.stats["block_read"].errors["wrong content"] += 1

    async def watchdog(self, tasks: list[asyncio.Task[None]]) -> None:
        stall = self.args.stall_timeout
        while True:
            await asyncio.sleep(0.5)
            if time.perf_counter() - self.last_progress > stall:
                self.anomalies.append(
                    f"stall: no reply for {stall:.0f} s with {len(tasks)} requests in flight; phase aborted"
                )
                for task in tasks:
                    task.cancel()
                return

    async def run(self, probes: Probes) -> PhaseResult:
        args = self.args
        body: Callable[[WsClientProtocol, int], Awaitable[None]] = {
            "ping": self.loop_ping,
            "vlob": self.loop_vlob,
            "block4k": self.loop_block,
            "block512k": self.loop_block,
        }[self.name]
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        self.last_progress = start
        self.window_start = start + args.warmup
        self.window_end = self.window_start + args.duration
        samples: list[CpuSample] = []
        delay = self.window_start - time.perf_counter()
        timers = [
            loop.call_later(delay, lambda: samples.append(sample_cpu(probes))),
            loop.call_later(delay + args.duration, lambda: samples.append(sample_cpu(probes))),
        ]
        tasks = [asyncio.ensure_future(body(conn, i)) for i, conn in enumerate(self.conns)]
        dog = asyncio.ensure_future(self.watchdog(tasks))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        dog.cancel()
        for timer in timers:
            timer.cancel()
        result = PhaseResult(self.name, len(self.conns), args.duration, self.stats, anomalies=self.anomalies)
        if self.unknown_command:
            result.skipped = "not implemented (unknown_command)"
            return result
        aborted = Counter(
            str(r) or type(r).__name__
            for r in results
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        )
        for reason, count in aborted.items():
            result.anomalies.append(f"{count} connection(s) aborted: {reason}")
        if len(samples) == 2:
            first, last = samples
            wall = last.wall - first.wall
            result.cpu = {
                "server": 100 * (last.server - first.server) / wall,
                "client": 100 * (last.client - first.client) / wall,
                "postgres": 100 * (last.postgres - first.postgres) / wall,
            }
            # Whatever else ran on the machine meanwhile (other users' jobs): it skews the figures.
            others = 100 * (last.machine - first.machine) / wall - sum(result.cpu.values())
            result.cpu["other"] = max(0.0, others)
            requests = sum(len(s.latencies) + sum(s.errors.values()) for s in self.stats.values())
            if first.statements is not None and last.statements is not None and requests:
                result.statements_per_request = (
                    (last.statements[0] - first.statements[0]) / requests,
                    (last.statements[1] - first.statements[1]) / requests,
                )
            if others > args.max_background:
                result.anomalies.append(
                    f"background load: other processes used {others:.0f}% of a core during the window "
                    f"(machine has {os.cpu_count()} cores); figures are skewed"
                )
        else:
            result.duration = max(0.0, min(time.perf_counter(), self.window_end) - self.window_start)
        for cmd, stats in self.stats.items():
            for status, count in stats.errors.items():
                result.anomalies.append(f"{cmd}: {count} x {status}")
        return result


# ---------------------------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerSpec:
    name: str  # "ours" | "reference"
    run: list[str]
    migrate: list[str] | None


def server_spec(args: argparse.Namespace, name: str, port: int, dsn: str | None) -> ServerSpec:
    storage = ["--db", dsn, "--blockstore", "POSTGRESQL"] if dsn else []
    if name == "ours":
        run = [
            str(args.ours_bin / "twistd"),
            "-n",
            "--pidfile=",
            "parsec",
            "--dev",
            "--port",
            str(port),
            *storage,
            *shlex.split(args.ours_args),
        ]
        migrate = [str(args.ours_bin / "parsec"), "backend", "migrate", "--db", dsn] if dsn else None
    else:
        run = [
            str(args.ref_bin / "parsec"),
            "backend",
            "run",
            "--dev",
            "--port",
            str(port),
            *storage,
            *shlex.split(args.ref_args),
        ]
        migrate = [str(args.ref_bin / "parsec"), "backend", "migrate", "--db", dsn] if dsn else None
    return ServerSpec(name, run, migrate)


_RUNNING: set[ServerProcess] = set()  # killed at exit if a crash skipped the normal stop


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_RUNNING):
        server.stop()


class ServerProcess:
    def __init__(self, spec: ServerSpec, port: int, log_path: Path, pin: int | None) -> None:
        self.spec = spec
        self.port = port
        self.log_path = log_path
        self.pin = pin
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.spec.run,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),
                start_new_session=True,
            )
        _RUNNING.add(self)
        if self.pin is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {self.pin})
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _ = http_request(self.port, "GET", "/")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.spec.name} did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}"
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        _RUNNING.discard(self)
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def log_problems(self, limit: int = 5) -> list[str]:
        """Tracebacks and error lines the server logged."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        found: list[str] = []
        lowered_keys = ("traceback", "error", "critical", "unhandled", "exception")
        for line in text.splitlines():
            lowered = line.lower()
            if any(key in lowered for key in lowered_keys) and "status=" not in lowered:
                found.append(line.strip()[:200])
        problems = found[:limit]
        if len(found) > limit:
            problems.append(f"... {len(found) - limit} more such lines in {self.log_path}")
        return problems


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


class Databases:
    """Fresh databases for each server run, on `--dsn`'s cluster or on a throwaway one."""

    def __init__(self, args: argparse.Namespace, work_dir: Path) -> None:
        self.cluster: Any = None
        self.admin_dsn: str | None = args.dsn
        self.created: list[str] = []
        self.stats_conn: Any = None  # on the admin database, for pg_stat_statements
        if self.admin_dsn is None:
            from tests.pg_cluster import start_cluster

            self.cluster = start_cluster(work_dir / "pg")
            self.admin_dsn = self.cluster.dsn
            self._load_statement_stats()
        self._open_statement_stats(create=self.cluster is not None)

    def _load_statement_stats(self) -> None:
        """Preload pg_stat_statements in the throwaway cluster (one restart), when installed."""
        from tests.pg_cluster import find_bindir

        if not (find_bindir().parent / "lib" / "pg_stat_statements.so").exists():
            return
        with open(self.cluster.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.max = 10000\n")
        self.cluster.stop()
        self.cluster.start()

    def _open_statement_stats(self, *, create: bool) -> None:
        """Statement counting, if pg_stat_statements is usable (never created on a `--dsn`)."""
        import psycopg2

        try:
            conn = psycopg2.connect(self.admin_dsn, connect_timeout=10)
        except psycopg2.Error:
            return
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                if create:
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                cursor.execute("SELECT count(*) FROM pg_stat_statements")
        except psycopg2.Error:
            conn.close()
            return
        self.stats_conn = conn

    def statements(self, dsn: str) -> tuple[int, int] | None:
        """(all statements, statements other than transaction control) run so far in the
        database of `dsn`, or None without pg_stat_statements."""
        if self.stats_conn is None:
            return None
        with self.stats_conn.cursor() as cursor:
            cursor.execute(
                "SELECT coalesce(sum(s.calls), 0), coalesce(sum(s.calls) FILTER (WHERE s.query !~* "
                "'^\\s*(begin|commit|rollback|end|start|savepoint|release)\\M'), 0) "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s",
                (dsn.rsplit("/", 1)[1],),
            )
            total, work = cursor.fetchone()
        return int(total), int(work)

    def top_statements(self, dsn: str, limit: int) -> list[str]:
        """The statements that took the most PostgreSQL time in the database of `dsn`."""
        if self.stats_conn is None or limit <= 0:
            return []
        with self.stats_conn.cursor() as cursor:
            cursor.execute(
                "SELECT s.calls, s.total_exec_time, s.rows, regexp_replace(s.query, '\\s+', ' ', 'g') "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
                "ORDER BY s.total_exec_time DESC LIMIT %s",
                (dsn.rsplit("/", 1)[1], limit),
            )
            return [
                f"{calls:8} calls {total_ms:9.0f} ms {1000 * total_ms / calls if calls else 0:7.0f} us/call "
                f"{rows:8} rows  {query[:150]}"
                for calls, total_ms, rows, query in cursor.fetchall()
            ]

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_dsn, connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def new(self, name: str) -> str:
        name = f"bench_{name}_{os.getpid()}"
        self._admin(f'DROP DATABASE IF EXISTS "{name}"')
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        self.created.append(name)
        assert self.admin_dsn is not None
        base, _, _ = self.admin_dsn.partition("?")
        return base.rsplit("/", 1)[0] + "/" + name

    def cpu(self) -> float:
        """CPU seconds used so far by the PostgreSQL server (see `postgres_cpu`)."""
        postmaster: int | None = None
        if self.cluster is not None:
            with contextlib.suppress(OSError, ValueError):
                postmaster = int((self.cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        return postgres_cpu(postmaster)

    def drop(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        with contextlib.suppress(Exception):
            self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def close(self) -> None:
        for name in list(self.created):
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if self.stats_conn is not None:
            with contextlib.suppress(Exception):
                self.stats_conn.close()
        if self.cluster is not None:
            self.cluster.destroy()


# ---------------------------------------------------------------------------------------------
# Running servers and rounds
# ---------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """Every round of every phase of one server on one storage."""

    server: str
    storage: str
    rounds: dict[str, list[PhaseResult]] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    error: str | None = None
    top_statements: list[str] = field(default_factory=list)

    def best(self, phase: str) -> PhaseResult | None:
        """The round with the highest throughput (the least disturbed by other jobs)."""
        done = [r for r in self.rounds.get(phase, []) if not r.skipped]
        if done:
            return max(done, key=lambda r: r.rate())
        skipped = self.rounds.get(phase, [])
        return skipped[0] if skipped else None


@dataclass
class Target:
    """A server under test, up for the whole storage section."""

    name: str
    storage: str
    server: ServerProcess
    result: RunResult
    dsn: str | None = None
    probes: Probes | None = None
    org: Organization | None = None
    broken: bool = False  # stalled or died: no more phases


async def open_connections(port: int, org: Organization, count: int) -> list[WsClientProtocol]:
    results = await asyncio.gather(
        *(authenticated_connection(port, org) for _ in range(count)), return_exceptions=True
    )
    conns = [r for r in results if isinstance(r, WsClientProtocol)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for conn in conns:
            conn.close()
        raise errors[0]
    return conns


async def create_realms(conns: list[WsClientProtocol], org: Organization) -> list[uuid.UUID]:
    realms = []
    for conn in conns:
        realm_id = uuid.uuid4()
        certificate = org.device.realm_role_certificate(
            realm_id=realm_id, user_id=org.device.user_id, role="OWNER", timestamp=now()
        )
        reply = await asyncio.wait_for(
            conn.request(packb({"cmd": "realm_create", "role_certificate": certificate})), CONNECT_TIMEOUT
        )
        if reply.get("status") != "ok":
            raise RuntimeError(f"realm_create: {reply.get('status')} {reply.get('reason', '')}")
        realms.append(realm_id)
    await asyncio.sleep(0.002)  # role timestamps strictly before the first vlob write
    return realms


async def start_target(
    args: argparse.Namespace, name: str, storage: str, databases: Databases | None, work_dir: Path
) -> Target:
    port = free_port()
    dsn = await asyncio.to_thread(databases.new, name) if databases is not None else None
    spec = server_spec(args, name, port, dsn)
    server = ServerProcess(spec, port, work_dir / f"{name}-{storage}.log", 0 if args.pin else None)
    target = Target(name, storage, server, RunResult(name, storage), dsn=dsn)

    started = time.monotonic()
    try:
        if spec.migrate is not None:
            migrated = await asyncio.to_thread(
                subprocess.run,
                spec.migrate,
                capture_output=True,
                text=True,
                timeout=120,
                stdin=subprocess.DEVNULL,
            )
            if migrated.returncode != 0:
                output = (migrated.stderr or migrated.stdout).strip()[-800:]
                raise RuntimeError(f"migrate failed ({migrated.returncode}): {output}")
        await asyncio.to_thread(server.start)
        target.probes = Probes(server.pid)
        if databases is not None and dsn is not None:
            target.probes.postgres_cpu = databases.cpu
            if databases.stats_conn is not None:
                target.probes.statements = functools.partial(databases.statements, dsn)
        target.org = await asyncio.to_thread(bootstrap_organization, port)
        print(
            f"  {name} up in {time.monotonic() - started:.1f} s (port {port}, pid {server.pid})", flush=True
        )
    except Exception as exc:
        target.result.error = f"{type(exc).__name__}: {exc}"
        target.broken = True
        print(f"  {name} unavailable: {target.result.error.splitlines()[0]}", flush=True)
    return target


async def run_phase(args: argparse.Namespace, target: Target, phase_name: str, round_no: int) -> None:
    assert target.org is not None
    result = target.result
    count = args.block_conns if phase_name.startswith("block") else args.conns
    label = f"    {phase_name:10} round {round_no + 1} {target.name:9}"
    conns: list[WsClientProtocol] = []
    try:
        conns = await open_connections(target.server.port, target.org, count)
        realms = await create_realms(conns, target.org) if phase_name != "ping" else []
    except Exception as exc:
        for conn in conns:
            conn.close()
        if "unknown_command" in str(exc):
            skipped = PhaseResult(
                phase_name, count, 0.0, {}, skipped="not implemented (realm_create: unknown_command)"
            )
            result.rounds.setdefault(phase_name, []).append(skipped)
            print(f"{label} skipped: realm_create answers unknown_command", flush=True)
            return
        result.anomalies.append(f"{phase_name}: set-up failed: {type(exc).__name__}: {exc}")
        print(f"{label} set-up failed: {exc}", flush=True)
        target.broken = True
        return
    assert target.probes is not None
    outcome = await Phase(phase_name, conns, realms, args).run(target.probes)
    for conn in conns:
        conn.close()
    result.rounds.setdefault(phase_name, []).append(outcome)
    print(f"{label} {describe_phase(outcome)}", flush=True)
    if any(a.startswith("stall") for a in outcome.anomalies):
        result.anomalies.append(f"{phase_name}: the server stalled; its later phases were skipped")
        target.broken = True
    elif target.server.proc is not None and target.server.proc.poll() is not None:
        result.anomalies.append(
            f"the server exited during {phase_name} (status {target.server.proc.returncode})"
        )
        target.broken = True
    await asyncio.sleep(0.2)  # let the server drop the closed connections


async def stop_target(args: argparse.Namespace, target: Target, databases: Databases | None) -> None:
    proc = target.server.proc
    if proc is not None and proc.poll() is not None and not target.result.error:
        target.result.anomalies.append(f"the server had exited (status {proc.returncode})")
    await asyncio.to_thread(target.server.stop)
    target.result.anomalies.extend(f"server log: {line}" for line in target.server.log_problems())
    if databases is not None and target.dsn is not None:
        with contextlib.suppress(Exception):
            target.result.top_statements = await asyncio.to_thread(
                databases.top_statements, target.dsn, args.pg_top
            )
        await asyncio.to_thread(databases.drop, target.dsn)


async def bench(args: argparse.Namespace) -> list[RunResult]:
    """Per storage: start every server, then run each phase round by round, servers alternating,
    so that a burst of foreign load hits one round of each rather than one server."""
    work_dir = Path(tempfile.mkdtemp(prefix="parsec-server-bench-"))
    runs: list[RunResult] = []
    try:
        for storage in args.storage:
            print(f"{storage}:", flush=True)
            databases: Databases | None = None
            if storage == "postgresql":
                try:
                    databases = await asyncio.to_thread(Databases, args, work_dir)
                except Exception as exc:
                    print(f"  no PostgreSQL: {type(exc).__name__}: {exc}", flush=True)
                    runs.extend(
                        RunResult(name, storage, error=f"no PostgreSQL: {type(exc).__name__}: {exc}")
                        for name in args.server
                    )
                    continue
            targets: list[Target] = []
            try:
                for name in args.server:
                    targets.append(await start_target(args, name, storage, databases, work_dir))
                for phase_name in args.phases:
                    for round_no in range(args.rounds):
                        for target in targets:
                            if not target.broken:
                                await run_phase(args, target, phase_name, round_no)
            finally:
                for target in targets:
                    await stop_target(args, target, databases)
                    runs.append(target.result)
                if databases is not None:
                    await asyncio.to_thread(databases.close)
    finally:
        if args.keep_logs:
            print(f"\nserver logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return runs


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def describe_phase(result: PhaseResult) -> str:
    if result.skipped:
        return f"skipped: {result.skipped}"
    parts = [f"{result.rate():8.0f} req/s"]
    if result.cpu:
        parts.append(
            f"cpu % server {result.cpu['server']:.0f}, client {result.cpu['client']:.0f}"
            + (f", postgres {result.cpu['postgres']:.0f}" if result.cpu["postgres"] else "")
            + f", other {result.cpu['other']:.0f}"
        )
    if result.statements_per_request is not None:
        parts.append(f"{result.statements_per_request[0]:.1f} SQL statements/request")
    problems = [a for a in result.anomalies if not a.startswith("background")]
    if problems:
        parts.append("; ".join(problems))
    return " | ".join(parts)


def print_run(run: RunResult) -> None:
    print(f"\n== {run.server} / {run.storage} (best of rounds) ==")
    if run.error:
        print(f"  unavailable: {run.error}")
    if run.rounds:
        print(
            f"  {'phase':10} {'command':13} {'conns':>5} {'requests':>9} {'req/s':>9} {'p50 ms':>8} "
            f"{'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>6}"
        )
    for phase_name, rounds in run.rounds.items():
        phase = run.best(phase_name)
        if phase is None:
            continue
        if phase.skipped:
            print(f"  {phase.phase:10} {'-':13} {phase.connections:5} skipped: {phase.skipped}")
            continue
        for cmd, stats in phase.commands.items():
            lat = sorted(stats.latencies)
            print(
                f"  {phase.phase:10} {cmd:13} {phase.connections:5} {len(lat):9} {phase.rate(cmd):9.0f} "
                f"{1000 * percentile(lat, 0.5):8.2f} {1000 * percentile(lat, 0.9):8.2f} "
                f"{1000 * percentile(lat, 0.99):8.2f} {1000 * (lat[-1] if lat else float('nan')):8.2f} "
                f"{sum(stats.errors.values()):6}"
            )
        rates = ", ".join(f"{r.rate():.0f}" for r in rounds if not r.skipped)
        print(
            f"  {'':10} all commands: {phase.rate():.0f} req/s (rounds: {rates}), "
            f"{phase.per_cpu_second():.0f} per CPU-second"
        )
        if phase.statements_per_request is not None:
            total, work = phase.statements_per_request
            print(f"  {'':10} SQL statements per request: {total:.1f} ({work:.1f} without BEGIN/COMMIT)")
        if phase.cpu:
            print(
                f"  {'':10} cpu, % of one core: server {phase.cpu['server']:.0f}, load generator "
                f"{phase.cpu['client']:.0f}, postgres {phase.cpu['postgres']:.0f}, "
                f"other processes {phase.cpu['other']:.0f}"
            )
    if run.top_statements:
        print("  statements with the most PostgreSQL time (whole run):")
        for line in run.top_statements:
            print(f"    {line}")
    anomalies = list(run.anomalies)
    for rounds in run.rounds.values():
        for number, phase in enumerate(rounds, 1):
            anomalies.extend(f"{phase.phase} round {number}: {a}" for a in phase.anomalies)
    for anomaly in anomalies:
        print(f"  ! {anomaly}")


def print_comparison(runs: list[RunResult]) -> None:
    by_key = {(r.server, r.storage): r for r in runs}
    for storage in ("memory", "postgresql"):
        ours = by_key.get(("ours", storage))
        ref = by_key.get(("reference", storage))
        if ours is None or ref is None:
            continue
        target = TARGETS[storage]
        print(f"\n== ours vs reference, {storage} (target: ours >= {target}x the reference's throughput) ==")
        if ours.error or ref.error:
            print(
                f"  not comparable: ours {(ours.error or 'ok').splitlines()[0]}; "
                f"reference {(ref.error or 'ok').splitlines()[0]}"
            )
            continue
        print(
            f"  {'phase / command':24} {'ours req/s':>11} {'ref req/s':>10} {'ratio':>7} "
            f"{'ours p50 ms':>12} {'ref p50 ms':>11} {'target':>7}"
        )
        for phase_name in PHASES:
            a = ours.best(phase_name)
            b = ref.best(phase_name)
            if a is None or b is None:
                if a is not None or b is not None:
                    print(f"  {phase_name:24} not measured on {'the reference' if a else 'ours'}")
                continue
            if a.skipped or b.skipped:
                print(f"  {phase_name:24} skipped: ours {a.skipped or 'ok'} / reference {b.skipped or 'ok'}")
                continue
            rows: list[tuple[str, float, float, float, float]] = []
            for cmd in PHASE_COMMANDS[phase_name]:
                la = sorted(a.commands[cmd].latencies)
                lb = sorted(b.commands[cmd].latencies)
                rows.append(
                    (
                        f"{phase_name} / {cmd}",
                        a.rate(cmd),
                        b.rate(cmd),
                        percentile(la, 0.5),
                        percentile(lb, 0.5),
                    )
                )
            if len(rows) > 1:
                rows.append((f"{phase_name} (all)", a.rate(), b.rate(), float("nan"), float("nan")))
            for label, ra, rb, pa, pb in rows:
                ratio = ra / rb if rb else float("inf")
                verdict = "ok" if ratio >= target else "MISSED"
                pa_text = f"{1000 * pa:12.2f}" if pa == pa else f"{'':12}"
                pb_text = f"{1000 * pb:11.2f}" if pb == pb else f"{'':11}"
                print(f"  {label:24} {ra:11.0f} {rb:10.0f} {ratio:6.2f}x {pa_text} {pb_text} {verdict:>7}")
        print_efficiency(ours, ref)


def print_efficiency(ours: RunResult, ref: RunResult) -> None:
    """Requests per CPU-second (server + PostgreSQL), per phase, best round of each."""
    rows = []
    for phase_name in PHASES:
        a = ours.best(phase_name)
        b = ref.best(phase_name)
        if a is None or b is None or a.skipped or b.skipped or not a.cpu or not b.cpu:
            continue
        rows.append((phase_name, a.per_cpu_second(), b.per_cpu_second()))
    if not rows:
        return
    what = "server + postgres" if ours.storage == "postgresql" else "server"
    print(f"\n  requests per CPU-second of {what} (cost per request, robust to other jobs):")
    print(f"    {'phase':22} {'ours':>11} {'reference':>10} {'ratio':>7}")
    for phase_name, ea, eb in rows:
        print(f"    {phase_name:22} {ea:11.0f} {eb:10.0f} {ea / eb if eb else float('inf'):6.2f}x")
    sql_rows = []
    for phase_name in PHASES:
        a = ours.best(phase_name)
        b = ref.best(phase_name)
        if a and b and a.statements_per_request and b.statements_per_request:
            sql_rows.append((phase_name, a.statements_per_request, b.statements_per_request))
    if sql_rows:
        print("\n  SQL statements per request, all (without BEGIN/COMMIT), from pg_stat_statements:")
        print(f"    {'phase':22} {'ours':>12} {'reference':>12}")
        for phase_name, (ta, wa), (tb, wb) in sql_rows:
            print(f"    {phase_name:22} {ta:5.1f} ({wa:4.1f}) {tb:5.1f} ({wb:4.1f})")


def to_json(runs: list[RunResult], args: argparse.Namespace) -> dict[str, Any]:
    def phase_json(p: PhaseResult) -> dict[str, Any]:
        commands = {}
        for cmd, stats in p.commands.items():
            lat = sorted(stats.latencies)
            commands[cmd] = {
                "requests": len(lat),
                "rate": p.rate(cmd),
                "p50_ms": 1000 * percentile(lat, 0.5) if lat else None,
                "p90_ms": 1000 * percentile(lat, 0.9) if lat else None,
                "p99_ms": 1000 * percentile(lat, 0.99) if lat else None,
                "errors": dict(stats.errors),
            }
        return {
            "connections": p.connections,
            "duration": p.duration,
            "rate": p.rate(),
            "per_cpu_second": p.per_cpu_second() if p.cpu else None,
            "sql_statements_per_request": p.statements_per_request,
            "commands": commands,
            "cpu_percent": p.cpu,
            "anomalies": p.anomalies,
            "skipped": p.skipped,
        }

    return {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "runs": [
            {
                "server": r.server,
                "storage": r.storage,
                "error": r.error,
                "anomalies": r.anomalies,
                "rounds": {name: [phase_json(p) for p in rounds] for name, rounds in r.rounds.items()},
            }
            for r in runs
        ],
    }


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )

    def choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
        def parse(text: str) -> list[str]:
            values = [v.strip() for v in text.split(",") if v.strip()]
            for value in values:
                if value not in allowed:
                    raise argparse.ArgumentTypeError(f"{value!r} not in {', '.join(allowed)}")
            return values

        return parse

    parser.add_argument(
        "--server",
        type=choices(("ours", "reference")),
        default=["ours", "reference"],
        help="servers to measure, comma-separated: ours,reference (default both; "
        "`--server reference` measures only the reference)",
    )
    parser.add_argument(
        "--storage",
        type=choices(("memory", "postgresql")),
        default=["memory", "postgresql"],
        help="memory,postgresql (default both)",
    )
    parser.add_argument(
        "--phases",
        type=choices(PHASES),
        default=list(PHASES),
        help=f"workloads, comma-separated (default {','.join(PHASES)})",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per phase (default 3)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="rounds per phase, servers alternating; the best round is reported (default 2)",
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)"
    )
    parser.add_argument(
        "--conns", type=int, default=16, help="websockets for ping and vlob phases (default 16)"
    )
    parser.add_argument(
        "--block-conns",
        type=int,
        default=4,
        help="websockets for block phases (default 4; the reference deadlocks on "
        "PostgreSQL from 7 concurrent block_create)",
    )
    parser.add_argument("--vlob-size", type=int, default=512, help="vlob blob bytes (default 512)")
    parser.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        help="abort a phase after this many seconds without any reply (default 10)",
    )
    parser.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL cluster where fresh databases may be created (default: a "
        "throwaway cluster from tests/pg_cluster.py)",
    )
    parser.add_argument(
        "--pg-top",
        type=int,
        default=0,
        help="print the N statements that took the most PostgreSQL time per server",
    )
    parser.add_argument("--ours-args", default="", help="extra arguments for our server (one string)")
    parser.add_argument(
        "--ref-args", default="", help="extra arguments for the reference server (one string)"
    )
    parser.add_argument("--ours-bin", type=Path, default=REPO / ".venv" / "bin", help="bin dir of our venv")
    parser.add_argument(
        "--ref-bin",
        type=Path,
        default=REPO / ".client-venv" / "bin",
        help="bin dir of the venv holding parsec-cloud 2.10.0",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to CPU 0 and the load generator to CPU 1 (only on an "
        "otherwise idle machine: a pinned process cannot flee other jobs)",
    )
    parser.add_argument(
        "--max-background",
        type=float,
        default=15.0,
        help="flag a phase when other processes used more than this %% of a core (default 15)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the server logs (path printed at the end)"
    )
    args = parser.parse_args(argv)
    if not 0.5 <= args.duration <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be in 0.5..120 and --warmup in 0..30")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be in 1..10")
    if not 1 <= args.conns <= 512 or not 1 <= args.block_conns <= 512:
        parser.error("--conns and --block-conns must be in 1..512")
    if not 0 <= args.vlob_size <= 1024 * 1024:
        parser.error("--vlob-size must be in 0..1048576")
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on `kill` as on Ctrl-C
    if args.pin:
        os.sched_setaffinity(0, {1})
    print(
        f"parsec server bench: {', '.join(args.server)} on {', '.join(args.storage)}; phases {', '.join(args.phases)}; "
        f"{args.rounds} x ({args.warmup:g} s warm-up + {args.duration:g} s) each; {args.conns} conns "
        f"({args.block_conns} for blocks); {os.cpu_count()} CPUs, "
        + ("server on CPU 0, load generator on CPU 1" if args.pin else "no CPU pinning"),
        flush=True,
    )
    started = time.monotonic()
    try:
        runs = asyncio.run(bench(args))
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({exc or 'Ctrl-C'}); servers stopped", file=sys.stderr)
        return 130
    for run in runs:
        print_run(run)
    print_comparison(runs)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(runs, args), indent=2, default=str))
    return 0 if all(r.error is None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
