"""Whole-server cost per operation: this server against the reference and the machine's limits.

    .venv/bin/python benchmarks/server_bench.py                       # everything, ~15 min
    .venv/bin/python benchmarks/server_bench.py --quick               # 1 round, shorter windows
    .venv/bin/python benchmarks/server_bench.py --storage memory --server ours --workloads ping,vlob_update
    .venv/bin/python benchmarks/server_bench.py --dsn postgresql://user@127.0.0.1:5432/postgres

One run measures, side by side and interleaved, our server (`<repo>/.venv/bin/twistd -n
--pidfile= parsec --dev`), the reference (`<repo>/.client-venv/bin/parsec backend run --dev`,
parsec-cloud 2.10.0, see tests/interop/install-client-venv.sh) and two baselines of the same
machine, the same minutes:

  echo        benchmarks/echo_server.py: a bare Autobahn websocket answering a msgpack ping
              (what `ping` costs with nothing but the transport), and the memory of a bare
              Autobahn connection
  raw         benchmarks/raw_pg.py: psycopg2 INSERT and SELECT of 1 KiB rows, autocommit, with
              16 and with 7 connections (7 = our default pool), on the cluster of the run

Sections (`--storage`): `memory` (--dev), `postgresql` (`--db DSN --blockstore POSTGRESQL`,
one fresh database per server, migrated by its own `parsec backend migrate`), `s3` (ours on
PostgreSQL with an S3 blockstore: the loopback Swift + S3 of tests/objectstore_swift.py; block
workloads only). Within a section every server is up together and each workload runs `--rounds`
times, the servers alternating, so that a burst of someone else's load spoils one round of each
server rather than one server's figures; the round with the lowest CPU per operation is
reported (all rounds are in the JSON). Workloads (closed loop, one request in flight per
connection; an operation is one reply, one delivered event or one connection):

  idle                N (`--idle-conns`, 2,000) authenticated connections subscribed to events
                      and waiting in `events_listen`: server RSS growth per connection (echo:
                      bare websocket connections). Measured once, first, on a fresh server.
  ping                `ping`, 16 connections
  vlob_create         `vlob_create` of `--vlob-size` (1 KiB) blobs, one realm per connection
  vlob_update         `vlob_update` of each connection's own vlob, versions 2, 3, ...
  vlob_read           `vlob_read` (latest) of each connection's own vlob
  block_create_4k     `block_create` of 4 KiB blocks, `--block-conns` (4) connections
  block_create_512k   the same with 512 KiB blocks
  block_read_512k     `block_read` of a 512 KiB block (one per connection, read again and
                      again: ours keeps it in its block cache on PostgreSQL and S3; add
                      `--ours-args="--block-cache-size 0"` for a block not kept)
  uploads_512k_x16    `block_create` of 512 KiB blocks on 16 connections: peak server RSS
                      (not run on the reference on PostgreSQL: it deadlocks from 7 concurrent
                      block_create, its pool holding 7 connections and each upload needing two)
  events              `--event-pingers` (4) connections of one device ping; 16 connections of
                      another device of the same user wait in `events_listen`; an operation is
                      one `pinged` event delivered, its latency from the ping to the delivery
  connect             connect, websocket upgrade, authenticated handshake, close; 16 loops
  raw_insert_16 / raw_insert_7 / raw_select_16 / raw_select_7      (raw baseline only)
  raw_block_select_512k / raw_block_insert_512k   (raw baseline only, `--block-conns`): a
                      512 KiB bytea read and written by libpq in binary, the database's own
                      share of a block on the POSTGRESQL blockstore

Then, unless `--no-connections`, ours alone: `idle10k` (`--many-conns`, 10,000 idle
authenticated event listeners from 80 loopback addresses, while 16 clients ping: the ping p99
against the same server idle) and, unless `--no-scale`, `scale`: N instances (`--scale 1,2`)
of ours on one listening socket handed over by socket activation (`--listen
systemd:domain=INET:name=parsec`; reported as pending when the server has no `--listen`), on
PostgreSQL, with the ping and vlob_read workloads.

Printed per server and workload: operations/s, p50 and p99 latency, server CPU per operation
(µs), PostgreSQL's CPU per operation (µs, separately), peak server RSS during the phase, SQL
statements and commits per operation (PostgreSQL, from pg_stat_statements and
pg_stat_database), errors; then the ratios against the reference (its CPU per operation /
ours, server + PostgreSQL) and the checks of the performance issue's targets. The CPU of the
load generator (this process and the raw baseline's) and of every other process of the machine
is printed too: "other" is someone else's load, which skews rates far more than CPU per
operation; a phase where it exceeds `--max-background` % of a core is flagged, and the totals
are printed at the end. `--pin` puts servers and PostgreSQL on CPU 0, the load generator on
CPU 1 (only on an otherwise idle machine).

Everything runs on 127.0.0.1, every phase is bounded in time (a phase without any reply for
`--stall-timeout` seconds is aborted and reported), every process started is stopped (also on
Ctrl-C and SIGTERM). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import http.client
import itertools
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
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.api.certgen`, `tests.pg_cluster`, `tests.objectstore_swift`

from nacl.signing import SigningKey  # noqa: E402

from parsec.api.codec import packb, unpackb  # noqa: E402
from tests.api.certgen import LocalDevice, new_device_certificates, new_user_certificates  # noqa: E402

try:  # native XOR masking, shipped with autobahn (a server dependency)
    from autobahn.nvx._xormasker import create_xor_masker as _native_masker
except ImportError:  # pragma: no cover - depends on how autobahn was built
    _native_masker = None

ADMIN_TOKEN = "s3cr3t"
ORG_ID = "BenchOrg"
IDLE_ORG_ID = "BenchIdle"  # the idle listeners' organization: no event of the workloads reaches them
START_TIMEOUT = 60.0
CONNECT_TIMEOUT = 10.0
KiB = 1024
MiB = 1024 * KiB
S3_BUCKET = "bench"
# Source addresses of the many-connection phases: the server caps connections per address.
IDLE_SOURCES = [f"127.0.4.{i}" for i in range(1, 81)]
CONNECT_SOURCES = [f"127.0.5.{i}" for i in range(1, 41)]  # connect: TIME_WAIT spread over them, in turn
PER_SOURCE = 150  # below the server's default max_connections_per_address (200)

# Targets of the performance issue (ratio = the reference's CPU per operation / ours).
TARGET_RATIO = {"memory": 2.0, "postgresql": 8.0}
TARGET_BLOCK_READ = {"memory": 2.0, "postgresql": 5.0}
TARGET_PING_VS_ECHO = 0.85
TARGET_UPLOAD_RSS = 200 * MiB
TARGET_IDLE_BYTES = 10 * KiB
TARGET_VLOB_WRITE_VS_INSERT = 0.25
TARGET_MANY_CONNS_P99 = 1.20


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

    def send_only(self, payload: bytes) -> None:
        """Send a request whose reply is not awaited (e.g. an `events_listen` left waiting)."""
        if not self.closed:
            self._write_frame(0x2, payload)

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


async def ws_connect(port: int, source: str = "127.0.0.1") -> WsClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(
            lambda: WsClientProtocol("127.0.0.1", port), "127.0.0.1", port, local_addr=(source, 0)
        ),
        CONNECT_TIMEOUT,
    )
    await asyncio.wait_for(proto.opened, CONNECT_TIMEOUT)
    return proto


async def authenticated_connection(
    port: int, org: Organization, device: LocalDevice | None = None, source: str = "127.0.0.1"
) -> WsClientProtocol:
    device = device or org.device
    conn = await ws_connect(port, source)
    challenge = await asyncio.wait_for(conn.recv(), CONNECT_TIMEOUT)
    signed = device.signing_key.sign(packb({"type": "signed_answer", "answer": challenge["challenge"]}))
    answer = {
        "handshake": "answer",
        "type": "AUTHENTICATED",
        "client_api_version": [2, 7],
        "organization_id": org.organization_id,
        "device_id": device.device_id,
        "rvk": bytes(org.root_key.verify_key),
        "answer": bytes(signed),
    }
    result = await asyncio.wait_for(conn.request(packb(answer)), CONNECT_TIMEOUT)
    if result.get("result") != "ok":
        conn.close()
        raise RuntimeError(f"handshake refused: {result}")
    return conn


# ---------------------------------------------------------------------------------------------
# HTTP set-up: organization creation and bootstrap; a second device for the events workload
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
    other_device: LocalDevice | None = None  # same user, another device (events workload)


def bootstrap_organization(port: int, organization_id: str = ORG_ID) -> Organization:
    status, body = http_request(
        port,
        "POST",
        "/administration/organizations",
        json.dumps({"organization_id": organization_id}).encode(),
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
        port, "POST", f"/anonymous/{organization_id}", packb(request), {"Content-Type": "application/msgpack"}
    )
    reply = unpackb(body) if body else {}
    if status != 200 or reply.get("status") != "ok":
        raise RuntimeError(f"organization_bootstrap: HTTP {status} {reply}")
    return Organization(organization_id, root_key, device)


async def add_second_device(port: int, org: Organization) -> None:
    other = org.device.new_device("dev2", device_label="bench 2")
    certificate, redacted = new_device_certificates(org.device, other, timestamp=now())
    conn = await authenticated_connection(port, org)
    try:
        reply = await asyncio.wait_for(
            conn.request(
                packb(
                    {
                        "cmd": "device_create",
                        "device_certificate": certificate,
                        "redacted_device_certificate": redacted,
                    }
                )
            ),
            CONNECT_TIMEOUT,
        )
    finally:
        conn.close()
    if reply.get("status") != "ok":
        raise RuntimeError(f"device_create: {reply.get('status')} {reply.get('reason', '')}")
    org.other_device = other


# ---------------------------------------------------------------------------------------------
# CPU and memory accounting (Linux /proc)
# ---------------------------------------------------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 if gone."""
    return sum(process_times(pid))


def process_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), in seconds; zeros if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    return int(fields[11]) / _TICKS, int(fields[12]) / _TICKS


def rss(pid: int) -> int:
    """Resident set size of a process in bytes (0 if gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


_PAGE = os.sysconf("SC_PAGE_SIZE")


def postgres_cpu(postmaster: int | None) -> dict[int, float]:
    """CPU seconds of each process of a PostgreSQL server (the postmaster and its children), or
    of every live `postgres` process of the machine when the postmaster is unknown (a `--dsn`).
    Per process: a backend that exits between two samples must not take its whole past CPU out
    of the difference (`cpu_delta`)."""
    found: dict[int, float] = {}
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
            found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return found


def cpu_delta(first: dict[int, float], last: dict[int, float]) -> float:
    """CPU used between two `postgres_cpu` samples by the processes alive at the second (those
    that exited meanwhile are left out: a small undercount, never a negative figure)."""
    return sum(cpu - first.get(pid, 0.0) for pid, cpu in last.items())


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
    server_kernel: float  # the part of `server` spent in the kernel (stime)
    client: float
    postgres: dict[int, float]
    machine: float
    wall: float
    statements: tuple[int, int] | None
    commits: int | None


@dataclass
class Probes:
    """What to sample at both ends of a measured window."""

    server_pids: list[int]
    postgres_cpu: Callable[[], dict[int, float]] | None = None
    statements: Callable[[], tuple[int, int] | None] | None = None
    commits: Callable[[], int | None] | None = None
    client_pids: list[int] = field(default_factory=list)  # load generators besides this process


def sample_cpu(probes: Probes) -> CpuSample:
    times = [process_times(pid) for pid in probes.server_pids]
    return CpuSample(
        sum(user + system for user, system in times),
        sum(system for _, system in times),
        self_cpu() + sum(process_cpu(pid) for pid in probes.client_pids),
        probes.postgres_cpu() if probes.postgres_cpu is not None else {},
        machine_cpu(),
        time.perf_counter(),
        probes.statements() if probes.statements is not None else None,
        probes.commits() if probes.commits is not None else None,
    )


class RssWatch:
    """Peak RSS of the server processes (summed), sampled every 20 ms while running."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        value = sum(rss(pid) for pid in self.pids)
        self.peak = max(self.peak, value)
        return value

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self.sample()
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.sample()


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    workload: str
    connections: int
    duration: float
    ops: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds in the window, per party
    wall: float = 0.0  # length of the CPU window
    peak_rss: int = 0
    anomalies: list[str] = field(default_factory=list)
    skipped: str | None = None
    statements: tuple[int, int] | None = None  # (all, without transaction control)
    commits: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rate(self) -> float:
        return self.ops / self.duration if self.duration > 0 else 0.0

    def us_per_op(self, party: str) -> float:
        """CPU microseconds per operation of `party` (server, postgres, client, other)."""
        if not self.ops or party not in self.cpu:
            return float("nan")
        return 1e6 * self.cpu[party] / self.ops

    def total_us_per_op(self) -> float:
        """Server + PostgreSQL CPU per operation: what the comparisons use."""
        if not self.ops or "server" not in self.cpu:
            return float("nan")
        return 1e6 * (self.cpu["server"] + self.cpu.get("postgres", 0.0)) / self.ops

    def percent(self, party: str) -> float:
        return 100 * self.cpu.get(party, 0.0) / self.wall if self.wall > 0 else float("nan")

    def per_op(self, value: int | None) -> float | None:
        return None if value is None or not self.ops else value / self.ops


class PhaseAborted(Exception):
    pass


@dataclass
class RunResult:
    """Every round of every workload of one target (a server or a baseline) in one section."""

    target: str  # ours, reference, echo, raw
    storage: str  # memory, postgresql, s3, connections, scale-N
    rounds: dict[str, list[PhaseResult]] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    error: str | None = None
    top_statements: list[str] = field(default_factory=list)

    def best(self, workload: str) -> PhaseResult | None:
        """The round with the lowest server + PostgreSQL CPU per operation (the least disturbed
        by other jobs: a burst of foreign load raises the cost of context switches and caches,
        never lowers it); rounds without CPU figures, and the raw baseline, by rate."""
        done = [r for r in self.rounds.get(workload, []) if not r.skipped and r.ops]
        if done and self.target == "raw":
            # A ceiling of the machine: its fastest round (the raw baselines are compared by rate).
            return max(done, key=lambda r: r.rate())
        if done:
            measured = [r for r in done if r.total_us_per_op() == r.total_us_per_op()]
            if measured:
                return min(measured, key=lambda r: r.total_us_per_op())
            return max(done, key=lambda r: r.rate())
        rounds = self.rounds.get(workload, [])
        return rounds[0] if rounds else None

    def add(self, result: PhaseResult) -> None:
        self.rounds.setdefault(result.workload, []).append(result)


# ---------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    targets: tuple[str, ...]  # ours, reference, echo, raw
    storages: tuple[str, ...]
    conns: str  # the argument giving the connection count
    unit: str = "op"


PARSEC = ("ours", "reference")
ALL_STORAGES = ("memory", "postgresql")
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("idle", (*PARSEC, "echo"), ALL_STORAGES, "idle_conns", "connection"),
        Workload("ping", (*PARSEC, "echo"), ALL_STORAGES, "conns", "request"),
        Workload("vlob_create", PARSEC, ALL_STORAGES, "conns", "request"),
        Workload("vlob_update", PARSEC, ALL_STORAGES, "conns", "request"),
        Workload("vlob_read", PARSEC, ALL_STORAGES, "conns", "request"),
        Workload("block_create_4k", PARSEC, (*ALL_STORAGES, "s3"), "block_conns", "request"),
        # Reads before the 512 KiB creations, which fill the memory storage with blocks.
        Workload("block_read_512k", PARSEC, (*ALL_STORAGES, "s3"), "block_conns", "request"),
        Workload("block_create_512k", PARSEC, (*ALL_STORAGES, "s3"), "block_conns", "request"),
        Workload("uploads_512k_x16", PARSEC, ("postgresql", "s3"), "upload_conns", "request"),
        Workload("events", PARSEC, ALL_STORAGES, "conns", "event"),
        Workload("connect", PARSEC, ALL_STORAGES, "conns", "connection"),
        Workload("raw_insert_16", ("raw",), ("postgresql",), "16", "row"),
        Workload("raw_insert_7", ("raw",), ("postgresql",), "7", "row"),
        Workload("raw_select_16", ("raw",), ("postgresql",), "16", "row"),
        Workload("raw_select_7", ("raw",), ("postgresql",), "7", "row"),
        Workload("raw_block_select_512k", ("raw",), ("postgresql",), "block_conns", "row"),
        Workload("raw_block_insert_512k", ("raw",), ("postgresql",), "block_conns", "row"),
    )
}
# Not run: the reference deadlocks for good (see the module doc).
NOT_ON_REFERENCE = {("postgresql", "uploads_512k_x16"), ("s3", "uploads_512k_x16")}


def connection_count(workload: Workload, args: argparse.Namespace) -> int:
    if workload.conns.isdigit():
        return int(workload.conns)
    return int(getattr(args, workload.conns))


def sources(addresses: list[str]) -> Iterator[str]:
    """Source addresses for many connections, at most PER_SOURCE from each."""
    for address in addresses:
        for _ in range(PER_SOURCE):
            yield address
    raise RuntimeError("not enough loopback source addresses for that many connections")


class Phase:
    """One workload on one target for warm-up + duration seconds: the loops record the
    operations that complete inside the window; CPU is sampled at both ends of it."""

    def __init__(self, workload: Workload, args: argparse.Namespace, probes: Probes, duration: float | None = None):
        self.workload = workload
        self.args = args
        self.probes = probes
        self.duration = args.duration if duration is None else duration
        self.result = PhaseResult(workload.name, connection_count(workload, args), self.duration)
        self.window_start = 0.0
        self.window_end = 0.0
        self.last_progress = 0.0
        self.unknown_command = False
        self.samples: list[CpuSample] = []

    # --- recording ------------------------------------------------------------------------------

    def record(self, started: float, done: float, ok: bool, error: str = "") -> None:
        self.last_progress = done
        if self.window_start <= done <= self.window_end:
            if ok:
                self.result.ops += 1
                if started >= self.window_start:
                    self.result.latencies.append(done - started)
            else:
                self.result.errors[error] += 1
        elif not ok:
            self.result.errors[f"{error} (outside the window)"] += 1

    async def timed(self, conn: WsClientProtocol, cmd: str, payload: bytes) -> dict[str, Any] | None:
        """Send one request and record it. None = not ok."""
        started = time.perf_counter()
        try:
            reply = await conn.request(payload)
        except ConnectionClosed as exc:
            self.result.errors[f"{cmd}: connection: {exc}"] += 1
            raise PhaseAborted(str(exc)) from None
        status = reply.get("status")
        if status == "unknown_command":
            self.unknown_command = True
            raise PhaseAborted(f"{cmd}: unknown_command")
        self.record(started, time.perf_counter(), status == "ok", f"{cmd}: {status} {reply.get('reason', '')}".strip())
        return reply if status == "ok" else None

    @property
    def running(self) -> bool:
        return time.perf_counter() < self.window_end

    # --- the measured run -----------------------------------------------------------------------

    async def watchdog(self, tasks: list[asyncio.Future[Any]]) -> None:
        stall = self.args.stall_timeout
        while True:
            await asyncio.sleep(0.5)
            if time.perf_counter() - self.last_progress > stall:
                self.result.anomalies.append(
                    f"stall: no reply for {stall:.0f} s with {len(tasks)} loops running; phase aborted"
                )
                for task in tasks:
                    task.cancel()
                return

    async def run(self, loops: list[Callable[[], Awaitable[None]]], rss_pids: list[int]) -> PhaseResult:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        self.last_progress = start
        self.window_start = start + self.args.warmup
        self.window_end = self.window_start + self.duration
        delay = self.window_start - time.perf_counter()
        timers = [
            loop.call_later(delay, lambda: self.samples.append(sample_cpu(self.probes))),
            loop.call_later(delay + self.duration, lambda: self.samples.append(sample_cpu(self.probes))),
        ]
        with RssWatch(rss_pids) as watch:
            tasks = [asyncio.ensure_future(body()) for body in loops]
            dog = asyncio.ensure_future(self.watchdog(tasks))
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            dog.cancel()
        for timer in timers:
            timer.cancel()
        result = self.result
        result.peak_rss = watch.peak
        if self.unknown_command:
            result.skipped = "not implemented (unknown_command)"
            return result
        aborted = Counter(
            str(r) or type(r).__name__
            for r in outcomes
            if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
        )
        for reason, count in aborted.items():
            result.anomalies.append(f"{count} loop(s) aborted: {reason}")
        self.account(result)
        return result

    def account(self, result: PhaseResult) -> None:
        if len(self.samples) != 2:
            result.duration = max(0.0, min(time.perf_counter(), self.window_end) - self.window_start)
            return
        first, last = self.samples
        result.wall = last.wall - first.wall
        result.cpu = {
            "server": last.server - first.server,
            "client": last.client - first.client,
            "postgres": cpu_delta(first.postgres, last.postgres),
        }
        # Whatever else ran on the machine meanwhile (other users' jobs): it skews the figures.
        result.cpu["other"] = max(0.0, (last.machine - first.machine) - sum(result.cpu.values()))
        result.cpu["server_kernel"] = last.server_kernel - first.server_kernel  # part of "server"
        if first.statements is not None and last.statements is not None:
            s0, s1 = first.statements, last.statements
            result.statements = (s1[0] - s0[0], s1[1] - s0[1])
        if first.commits is not None and last.commits is not None:
            result.commits = last.commits - first.commits
        other = result.percent("other")
        if other > self.args.max_background:
            result.anomalies.append(
                f"background load: other processes used {other:.0f}% of a core during the window "
                f"(machine has {os.cpu_count()} cores)"
            )
        for error, count in result.errors.items():
            result.anomalies.append(f"{count} x {error}")


# --- Parsec workloads ------------------------------------------------------------------------


async def open_connections(
    port: int, org: Organization, count: int, device: LocalDevice | None = None, source_list: list[str] | None = None
) -> list[WsClientProtocol]:
    addresses = sources(source_list) if source_list else None
    results: list[WsClientProtocol | BaseException] = []
    for start in range(0, count, 100):  # in batches: a burst of handshakes is a workload of its own
        batch = range(start, min(count, start + 100))
        results.extend(
            await asyncio.gather(
                *(
                    authenticated_connection(port, org, device, next(addresses) if addresses else "127.0.0.1")
                    for _ in batch
                ),
                return_exceptions=True,
            )
        )
    conns = [r for r in results if isinstance(r, WsClientProtocol)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        for conn in conns:
            conn.close()
        raise errors[0]
    return conns


async def checked(conn: WsClientProtocol, request: dict[str, Any]) -> dict[str, Any]:
    reply = await asyncio.wait_for(conn.request(packb(request)), CONNECT_TIMEOUT)
    if reply.get("status") != "ok":
        raise RuntimeError(f"{request['cmd']}: {reply.get('status')} {reply.get('reason', '')}")
    return reply


async def create_realms(conns: list[WsClientProtocol], org: Organization) -> list[uuid.UUID]:
    realms = []
    for conn in conns:
        realm_id = uuid.uuid4()
        certificate = org.device.realm_role_certificate(
            realm_id=realm_id, user_id=org.device.user_id, role="OWNER", timestamp=now()
        )
        await checked(conn, {"cmd": "realm_create", "role_certificate": certificate})
        realms.append(realm_id)
    await asyncio.sleep(0.002)  # role timestamps strictly before the first vlob write
    return realms


def vlob_create_request(realm_id: uuid.UUID, vlob_id: uuid.UUID, blob: bytes) -> dict[str, Any]:
    return {
        "cmd": "vlob_create",
        "realm_id": realm_id,
        "encryption_revision": 1,
        "vlob_id": vlob_id,
        "timestamp": now(),
        "blob": blob,
    }


class ParsecLoad:
    """The loops of the Parsec workloads, on one server."""

    def __init__(self, phase: Phase, port: int, org: Organization, args: argparse.Namespace) -> None:
        self.phase = phase
        self.port = port
        self.org = org
        self.args = args
        self.conns: list[WsClientProtocol] = []
        self.blob = os.urandom(args.vlob_size)

    def close(self) -> None:
        for conn in self.conns:
            conn.close()

    async def prepare(self) -> list[Callable[[], Awaitable[None]]]:
        name = self.phase.workload.name
        count = self.phase.result.connections
        if name == "connect":
            # Each connection is closed before the next: the addresses can go round again (a
            # fast server used more than one round in a phase).
            addresses = itertools.cycle(CONNECT_SOURCES)
            return [functools_partial(self.loop_connect, addresses) for _ in range(count)]
        if name == "events":
            return await self.prepare_events(count)
        self.conns = await open_connections(self.port, self.org, count)
        if name == "ping":
            return [functools_partial(self.loop_ping, conn, i) for i, conn in enumerate(self.conns)]
        realms = await create_realms(self.conns, self.org)
        if name == "vlob_create":
            return [functools_partial(self.loop_vlob_create, c, r) for c, r in zip(self.conns, realms, strict=True)]
        if name in ("vlob_update", "vlob_read"):
            vlobs = []
            for conn, realm_id in zip(self.conns, realms, strict=True):
                vlob_id = uuid.uuid4()
                await checked(conn, vlob_create_request(realm_id, vlob_id, self.blob))
                vlobs.append(vlob_id)
            body = self.loop_vlob_update if name == "vlob_update" else self.loop_vlob_read
            return [functools_partial(body, c, v) for c, v in zip(self.conns, vlobs, strict=True)]
        size = 4 * KiB if name == "block_create_4k" else 512 * KiB
        block = os.urandom(size)
        if name == "block_read_512k":
            blocks = []
            for conn, realm_id in zip(self.conns, realms, strict=True):
                block_id = uuid.uuid4()
                await checked(conn, {"cmd": "block_create", "block_id": block_id, "realm_id": realm_id, "block": block})
                blocks.append(block_id)
            return [functools_partial(self.loop_block_read, c, b, block) for c, b in zip(self.conns, blocks, strict=True)]
        return [functools_partial(self.loop_block_create, c, r, block) for c, r in zip(self.conns, realms, strict=True)]

    async def loop_ping(self, conn: WsClientProtocol, index: int) -> None:
        payload = packb({"cmd": "ping", "ping": f"bench-{index}"})
        while self.phase.running:
            await self.phase.timed(conn, "ping", payload)

    async def loop_vlob_create(self, conn: WsClientProtocol, realm_id: uuid.UUID) -> None:
        while self.phase.running:
            await self.phase.timed(conn, "vlob_create", packb(vlob_create_request(realm_id, uuid.uuid4(), self.blob)))

    async def loop_vlob_update(self, conn: WsClientProtocol, vlob_id: uuid.UUID) -> None:
        version = 2
        while self.phase.running:
            request = {
                "cmd": "vlob_update",
                "encryption_revision": 1,
                "vlob_id": vlob_id,
                "timestamp": now(),
                "version": version,
                "blob": self.blob,
            }
            if await self.phase.timed(conn, "vlob_update", packb(request)) is not None:
                version += 1

    async def loop_vlob_read(self, conn: WsClientProtocol, vlob_id: uuid.UUID) -> None:
        payload = packb(
            {"cmd": "vlob_read", "encryption_revision": 1, "vlob_id": vlob_id, "version": None, "timestamp": None}
        )
        while self.phase.running:
            reply = await self.phase.timed(conn, "vlob_read", payload)
            if reply is not None and reply.get("blob") != self.blob:
                self.phase.result.errors["vlob_read: wrong content"] += 1

    async def loop_block_create(self, conn: WsClientProtocol, realm_id: uuid.UUID, block: bytes) -> None:
        while self.phase.running:
            payload = packb({"cmd": "block_create", "block_id": uuid.uuid4(), "realm_id": realm_id, "block": block})
            await self.phase.timed(conn, "block_create", payload)

    async def loop_block_read(self, conn: WsClientProtocol, block_id: uuid.UUID, block: bytes) -> None:
        payload = packb({"cmd": "block_read", "block_id": block_id})
        while self.phase.running:
            reply = await self.phase.timed(conn, "block_read", payload)
            if reply is not None and reply.get("block") != block:
                self.phase.result.errors["block_read: wrong content"] += 1

    async def loop_connect(self, addresses: Iterator[str]) -> None:
        phase = self.phase
        while phase.running:
            started = time.perf_counter()
            try:
                conn = await authenticated_connection(self.port, self.org, source=next(addresses, "127.0.0.1"))
            except (TimeoutError, ConnectionClosed, OSError, RuntimeError) as exc:
                phase.record(started, time.perf_counter(), False, f"connect: {type(exc).__name__}: {exc}"[:120])
                await asyncio.sleep(0.05)
                continue
            phase.record(started, time.perf_counter(), True)
            conn.close()

    async def prepare_events(self, listeners: int) -> list[Callable[[], Awaitable[None]]]:
        """Pingers of device 1, listeners of device 2 (subscribed before the first ping)."""
        assert self.org.other_device is not None
        pingers = await open_connections(self.port, self.org, self.args.event_pingers)
        listening = await open_connections(self.port, self.org, listeners, device=self.org.other_device)
        self.conns = pingers + listening
        for conn in listening:
            await checked(conn, {"cmd": "events_subscribe"})
        pending: dict[str, list[Any]] = {}  # ping text -> [sent at, deliveries missing, Event]
        listen = packb({"cmd": "events_listen", "wait": True})
        phase = self.phase

        async def listener(conn: WsClientProtocol) -> None:
            while True:
                try:
                    reply = await conn.request(listen)
                except ConnectionClosed:
                    return
                entry = pending.get(reply.get("ping", ""))
                if reply.get("status") != "ok" or reply.get("event") != "pinged" or entry is None:
                    phase.result.errors[f"events_listen: {reply.get('status')} {reply.get('event')}"] += 1
                    continue
                phase.record(entry[0], time.perf_counter(), True)
                entry[1] -= 1
                if entry[1] == 0:
                    entry[2].set()

        self.listener_tasks = [asyncio.ensure_future(listener(conn)) for conn in listening]

        async def pinger(conn: WsClientProtocol, index: int) -> None:
            count = 0
            try:
                while phase.running:
                    text = f"bench-{index}-{count}"
                    count += 1
                    entry = pending[text] = [time.perf_counter(), listeners, asyncio.Event()]
                    reply = await conn.request(packb({"cmd": "ping", "ping": text}))
                    if reply.get("status") != "ok":
                        phase.result.errors[f"ping: {reply.get('status')}"] += 1
                    try:
                        await asyncio.wait_for(entry[2].wait(), self.args.stall_timeout)
                    except TimeoutError:
                        phase.result.errors[f"events: {entry[1]} of {listeners} deliveries missing"] += 1
                    del pending[text]
            except ConnectionClosed as exc:
                raise PhaseAborted(str(exc)) from None

        return [functools_partial(pinger, conn, i) for i, conn in enumerate(pingers)]

    def finish(self) -> None:
        for task in getattr(self, "listener_tasks", []):
            task.cancel()
        self.close()


def functools_partial(fn: Callable[..., Awaitable[None]], *args: Any) -> Callable[[], Awaitable[None]]:
    return lambda: fn(*args)


# --- echo workloads --------------------------------------------------------------------------


async def echo_loops(phase: Phase, port: int) -> tuple[list[WsClientProtocol], list[Callable[[], Awaitable[None]]]]:
    conns = list(await asyncio.gather(*(ws_connect(port) for _ in range(phase.result.connections))))

    async def loop(conn: WsClientProtocol, index: int) -> None:
        payload = packb({"cmd": "ping", "ping": f"bench-{index}"})
        while phase.running:
            await phase.timed(conn, "ping", payload)

    return conns, [functools_partial(loop, conn, i) for i, conn in enumerate(conns)]


# --- idle connections ------------------------------------------------------------------------


async def settle(pid: int, seconds: float = 1.0) -> int:
    """The server's RSS once it stops moving (sampled for `seconds` after a short pause)."""
    await asyncio.sleep(0.5)
    values = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        values.append(rss(pid))
        await asyncio.sleep(0.1)
    return min(values) if values else rss(pid)


async def open_idle(target: Target, count: int) -> list[WsClientProtocol]:
    """`count` idle connections: Parsec ones subscribed and waiting in `events_listen`, bare
    websockets for the echo server."""
    addresses = sources(IDLE_SOURCES)
    if target.name == "echo":
        conns: list[WsClientProtocol] = []
        for start in range(0, count, 200):
            conns.extend(
                await asyncio.gather(*(ws_connect(target.port, next(addresses)) for _ in range(start, min(count, start + 200))))
            )
        return conns
    # Their own organization: the pings of the active clients are not events of theirs.
    assert target.idle_org is not None
    conns = await open_connections(target.port, target.idle_org, count, source_list=IDLE_SOURCES)
    subscribe = packb({"cmd": "events_subscribe"})
    listen = packb({"cmd": "events_listen", "wait": True})
    for start in range(0, count, 500):
        batch = conns[start : start + 500]
        replies = await asyncio.gather(*(asyncio.wait_for(c.request(subscribe), CONNECT_TIMEOUT) for c in batch))
        if any(r.get("status") != "ok" for r in replies):
            raise RuntimeError(f"events_subscribe: {replies[0]}")
        for conn in batch:
            conn.send_only(listen)
    return conns


async def measure_idle(target: Target, args: argparse.Namespace) -> PhaseResult:
    count = args.idle_conns
    result = PhaseResult("idle", count, 0.0)
    pid = target.pids[0]
    before = await settle(pid)
    started = time.perf_counter()
    conns: list[WsClientProtocol] = []
    try:
        conns = await open_idle(target, count)
        result.extra["open_seconds"] = time.perf_counter() - started
        after = await settle(pid)
        alive = sum(1 for c in conns if not c.closed)
        result.extra.update(rss_before=before, rss_after=after, alive=alive)
        result.ops = count
        result.peak_rss = after
        result.extra["bytes_per_connection"] = (after - before) / count
        if alive != count:
            result.anomalies.append(f"{count - alive} idle connection(s) closed by the server")
    except Exception as exc:
        result.skipped = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        for conn in conns:
            conn.close()
    await asyncio.sleep(1.0)  # let the server drop them
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
    name: str  # "ours" | "reference" | "echo"
    run: list[str]
    migrate: list[str] | None
    env: dict[str, str] | None = None
    pass_fds: tuple[int, ...] = ()


def server_spec(args: argparse.Namespace, name: str, port: int, dsn: str | None, blockstore: str | None = None) -> ServerSpec:
    storage = ["--db", dsn, "--blockstore", blockstore or "POSTGRESQL"] if dsn else []
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
    elif name == "reference":
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
    else:
        run = [str(args.ours_bin / "python"), str(REPO / "benchmarks" / "echo_server.py"), str(port)]
        migrate = None
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

    def launch(self) -> None:
        """Start the process without waiting for it to answer."""
        env = None if self.spec.env is None else {**os.environ, **self.spec.env}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.spec.run,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=tempfile.gettempdir(),
                start_new_session=True,
                env=env,
                pass_fds=self.spec.pass_fds,
            )
        _RUNNING.add(self)
        if self.pin is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.proc.pid, {self.pin})

    def wait_ready(self, port: int | None = None) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.spec.name} exited with status {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _ = http_request(port or self.port, "GET", "/")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.spec.name} did not answer within {START_TIMEOUT:.0f} s:\n{self.log_tail()}")

    def start(self) -> None:
        self.launch()
        self.wait_ready()

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
            self.proc.wait(timeout=20)
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
        self.admin_conn: Any = None  # pg_stat_database
        if self.admin_dsn is None:
            from tests.pg_cluster import start_cluster

            self.cluster = start_cluster(work_dir / "pg")
            self.admin_dsn = self.cluster.dsn
            self._configure_cluster(args.pg_conf)
            if args.pin:
                self.pin(0)
        self._open_statement_stats(create=self.cluster is not None)

    def pin(self, cpu: int) -> None:
        """Pin the postmaster (its backends inherit it when they fork)."""
        with contextlib.suppress(OSError, ValueError):
            postmaster = int((self.cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            os.sched_setaffinity(postmaster, {cpu})

    def _configure_cluster(self, settings: list[str]) -> None:
        """Preload pg_stat_statements in the throwaway cluster, when installed, and apply
        `--pg-conf` (one restart)."""
        from tests.pg_cluster import find_bindir

        lines = [f"{key.strip()} = {value.strip()}\n" for key, _, value in (s.partition("=") for s in settings)]
        if (find_bindir().parent / "lib" / "pg_stat_statements.so").exists():
            lines[:0] = [
                "shared_preload_libraries = 'pg_stat_statements'\n",
                "pg_stat_statements.max = 10000\n",
                "pg_stat_statements.track_utility = on\n",
            ]
        if not lines:
            return
        with open(self.cluster.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(lines)
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
        self.admin_conn = conn
        try:
            with conn.cursor() as cursor:
                if create:
                    cursor.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                cursor.execute("SELECT count(*) FROM pg_stat_statements")
        except psycopg2.Error:
            return
        self.stats_conn = conn

    def statements(self, dsn: str) -> tuple[int, int] | None:
        """(all statements, statements other than transaction control) run so far in the
        database of `dsn`, or None without pg_stat_statements. A PREPAREd statement counts once
        per EXECUTE (pg_stat_statements records its executions under the PREPARE text)."""
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

    def commits(self, dsn: str) -> int | None:
        """Transactions committed so far in the database of `dsn` (pg_stat_database; backends
        report at most once a second, which both ends of a window share)."""
        if self.admin_conn is None:
            return None
        with self.admin_conn.cursor() as cursor:
            cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (dsn.rsplit("/", 1)[1],))
            row = cursor.fetchone()
        return int(row[0]) if row else None

    def top_statements(self, dsn: str, limit: int) -> list[str]:
        """The statements that took the most PostgreSQL time in the database of `dsn`."""
        if self.stats_conn is None or limit <= 0:
            return []
        with self.stats_conn.cursor() as cursor:
            cursor.execute(
                "SELECT s.calls, s.total_exec_time, s.rows, s.shared_blks_read, s.shared_blks_written, "
                "regexp_replace(s.query, '\\s+', ' ', 'g') "
                "FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = %s "
                "ORDER BY s.total_exec_time DESC LIMIT %s",
                (dsn.rsplit("/", 1)[1], limit),
            )
            return [
                f"{calls:8} calls {total_ms:9.0f} ms {1000 * total_ms / calls if calls else 0:7.0f} us/call "
                f"{rows:8} rows {read / calls if calls else 0:5.2f} read {written / calls if calls else 0:5.2f} "
                f"written  {query[:150]}"
                for calls, total_ms, rows, read, written, query in cursor.fetchall()
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

    def cpu(self) -> dict[int, float]:
        """CPU seconds used so far by each PostgreSQL process (see `postgres_cpu`)."""
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
        if self.admin_conn is not None:
            with contextlib.suppress(Exception):
                self.admin_conn.close()
        if self.cluster is not None:
            self.cluster.destroy()


# ---------------------------------------------------------------------------------------------
# Targets: the servers and baselines of one section
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    """A server or baseline under test, up for a whole section."""

    name: str  # ours, reference, echo, raw
    storage: str
    result: RunResult
    servers: list[ServerProcess] = field(default_factory=list)
    port: int = 0
    dsn: str | None = None
    probes: Probes | None = None
    org: Organization | None = None
    idle_org: Organization | None = None  # for the idle connections
    broken: bool = False  # stalled or died: no more phases

    @property
    def pids(self) -> list[int]:
        return [server.pid for server in self.servers]


async def run_subprocess(command: list[str], timeout: float = 120) -> None:
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip()[-800:]
        raise RuntimeError(f"{command[0]} failed ({done.returncode}): {output}")


def database_probes(probes: Probes, databases: Databases | None, dsn: str | None) -> Probes:
    if databases is not None and dsn is not None:
        probes.postgres_cpu = databases.cpu
        probes.commits = lambda: databases.commits(dsn)
        if databases.stats_conn is not None:
            probes.statements = lambda: databases.statements(dsn)
    return probes


async def start_target(
    args: argparse.Namespace,
    name: str,
    storage: str,
    databases: Databases | None,
    work_dir: Path,
    blockstore: str | None = None,
) -> Target:
    target = Target(name, storage, RunResult(name, storage))
    started = time.monotonic()
    try:
        if name == "raw":
            assert databases is not None
            target.dsn = await asyncio.to_thread(databases.new, "raw")
            target.probes = database_probes(Probes([]), databases, target.dsn)
            print(f"  raw psycopg2 baseline ready (database {target.dsn.rsplit('/', 1)[1]})", flush=True)
            return target
        port = free_port()
        target.port = port
        dsn = None
        if databases is not None and name != "echo":
            dsn = target.dsn = await asyncio.to_thread(databases.new, f"{name}_{storage}")
        spec = server_spec(args, name, port, dsn, blockstore)
        server = ServerProcess(spec, port, work_dir / f"{name}-{storage}.log", 0 if args.pin else None)
        target.servers.append(server)
        if spec.migrate is not None:
            await run_subprocess(spec.migrate)
        await asyncio.to_thread(server.start)
        target.probes = database_probes(Probes([server.pid]), databases, dsn)
        if name != "echo":
            target.org = await asyncio.to_thread(bootstrap_organization, port)
            await add_second_device(port, target.org)
            target.idle_org = await asyncio.to_thread(bootstrap_organization, port, IDLE_ORG_ID)
        print(f"  {name} up in {time.monotonic() - started:.1f} s (port {port}, pid {server.pid})", flush=True)
    except Exception as exc:
        target.result.error = f"{type(exc).__name__}: {exc}"
        target.broken = True
        print(f"  {name} unavailable: {target.result.error.splitlines()[0]}", flush=True)
    return target


async def stop_target(args: argparse.Namespace, target: Target, databases: Databases | None) -> None:
    for server in target.servers:
        proc = server.proc
        if proc is not None and proc.poll() is not None and not target.result.error:
            target.result.anomalies.append(f"the server had exited (status {proc.returncode})")
        await asyncio.to_thread(server.stop)
        target.result.anomalies.extend(f"server log: {line}" for line in server.log_problems())
    if databases is not None and target.dsn is not None:
        with contextlib.suppress(Exception):
            target.result.top_statements = await asyncio.to_thread(databases.top_statements, target.dsn, args.pg_top)
        await asyncio.to_thread(databases.drop, target.dsn)


def label(target: Target, workload: str, round_no: int) -> str:
    return f"    {workload:18} round {round_no + 1} {target.name:9}"


async def run_raw(args: argparse.Namespace, target: Target, workload: Workload, round_no: int) -> None:
    assert target.dsn is not None and target.probes is not None
    mode = ("block_" if "block" in workload.name else "") + ("insert" if "insert" in workload.name else "select")
    row_bytes = 512 * KiB if "block" in workload.name else args.vlob_size
    conns = connection_count(workload, args)
    result = PhaseResult(workload.name, conns, args.duration)
    proc = await asyncio.create_subprocess_exec(
        str(args.ours_bin / "python"),
        str(REPO / "benchmarks" / "raw_pg.py"),
        target.dsn,
        mode,
        str(conns),
        str(args.warmup),
        str(args.duration),
        str(row_bytes),
        stdout=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    if args.pin:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(proc.pid, {1})
    probes = Probes([], target.probes.postgres_cpu, target.probes.statements, target.probes.commits, [proc.pid])
    samples: list[CpuSample] = []
    summary: dict[str, Any] = {}
    assert proc.stdout is not None
    try:
        deadline = args.warmup + args.duration + 60
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), deadline)).decode().strip()
            if not line:
                break
            if line in ("window-start", "window-end-mark"):
                samples.append(sample_cpu(probes))
            elif line.startswith("window-end "):
                summary = json.loads(line.split(" ", 1)[1])
        await asyncio.wait_for(proc.wait(), 30)
    except TimeoutError:
        proc.kill()
        result.anomalies.append("raw baseline did not finish in time")
    if "error" in summary or len(samples) != 2:
        result.skipped = str(summary.get("error", "raw baseline failed"))
    else:
        phase = Phase(workload, args, probes)
        phase.samples = samples
        result.ops = int(summary["ops"])
        result.latencies = [v for v in (summary["p50"], summary["p99"]) if v is not None]
        result.extra = {"p50": summary["p50"], "p99": summary["p99"]}
        for error in summary.get("errors", []):
            result.errors[error] += 1
        phase.account(result)
    target.result.add(result)
    print(f"{label(target, workload.name, round_no)} {describe_phase(result)}", flush=True)


async def run_phase(args: argparse.Namespace, target: Target, workload: Workload, round_no: int) -> None:
    if target.name == "raw":
        await run_raw(args, target, workload, round_no)
        return
    assert target.probes is not None
    text = label(target, workload.name, round_no)
    if (target.storage, workload.name) in NOT_ON_REFERENCE and target.name == "reference":
        if round_no == 0:
            target.result.add(
                PhaseResult(workload.name, 0, 0.0, skipped="not run: the reference deadlocks from 7 concurrent block_create")
            )
        return
    phase = Phase(workload, args, target.probes)
    load: ParsecLoad | None = None
    conns: list[WsClientProtocol] = []
    try:
        if target.name == "echo":
            conns, loops = await echo_loops(phase, target.port)
        else:
            assert target.org is not None
            load = ParsecLoad(phase, target.port, target.org, args)
            loops = await load.prepare()
    except Exception as exc:
        if load is not None:
            load.finish()
        for conn in conns:
            conn.close()
        if "unknown_command" in str(exc):
            target.result.add(PhaseResult(workload.name, 0, 0.0, skipped="not implemented (unknown_command)"))
            return
        target.result.anomalies.append(f"{workload.name}: set-up failed: {type(exc).__name__}: {exc}")
        print(f"{text} set-up failed: {exc}", flush=True)
        target.broken = True
        return
    try:
        outcome = await phase.run(loops, target.pids)
    finally:
        if load is not None:
            load.finish()
        for conn in conns:
            conn.close()
    target.result.add(outcome)
    print(f"{text} {describe_phase(outcome)}", flush=True)
    if any(a.startswith("stall") for a in outcome.anomalies):
        target.result.anomalies.append(f"{workload.name}: the server stalled; its later phases were skipped")
        target.broken = True
    elif any(server.proc is not None and server.proc.poll() is not None for server in target.servers):
        target.result.anomalies.append(f"the server exited during {workload.name}")
        target.broken = True
    await asyncio.sleep(0.3)  # let the server drop the closed connections


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


class ObjectStore:
    """The loopback Swift + S3 of tests/objectstore_swift.py, for the `s3` section."""

    def __init__(self, work_dir: Path) -> None:
        from tests.objectstore_swift import start_swift

        self.store = start_swift(work_dir / "swift", (S3_BUCKET,))
        env = self.store.env
        fields = (env["S3_ENDPOINT"], env["S3_REGION"], S3_BUCKET, env["S3_ACCESS_KEY"], env["S3_SECRET_KEY"])
        self.blockstore = "s3:" + ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields)

    def close(self) -> None:
        self.store.stop()


async def run_section(args: argparse.Namespace, storage: str, work_dir: Path) -> list[RunResult]:
    print(f"{storage}:", flush=True)
    names = [name for name in args.server]
    workloads = [WORKLOADS[w] for w in args.workloads if storage in WORKLOADS[w].storages]
    if storage == "memory" and any("echo" in w.targets for w in workloads) and "echo" in args.baselines:
        names.append("echo")
    if storage == "postgresql" and "raw" in args.baselines:
        names.append("raw")
    if storage == "s3":
        names = [n for n in names if n == "ours"]
    databases: Databases | None = None
    objectstore: ObjectStore | None = None
    targets: list[Target] = []
    try:
        if storage in ("postgresql", "s3"):
            databases = await asyncio.to_thread(Databases, args, work_dir)
        if storage == "s3":
            objectstore = await asyncio.to_thread(ObjectStore, work_dir)
        for name in names:
            blockstore = objectstore.blockstore if objectstore is not None else None
            targets.append(await start_target(args, name, storage, databases, work_dir, blockstore))
        for workload in workloads:
            if workload.name == "idle":
                for target in targets:
                    if target.name in workload.targets and not target.broken:
                        outcome = await measure_idle(target, args)
                        target.result.add(outcome)
                        print(f"{label(target, 'idle', 0)} {describe_idle(outcome)}", flush=True)
                continue
            for round_no in range(args.rounds):
                for target in targets:
                    if target.name in workload.targets and not target.broken:
                        await run_phase(args, target, workload, round_no)
    except Exception as exc:
        print(f"  {storage}: {type(exc).__name__}: {exc}", flush=True)
        if not targets:
            return [RunResult(name, storage, error=f"{type(exc).__name__}: {exc}") for name in names]
    finally:
        for target in targets:
            await stop_target(args, target, databases)
        if objectstore is not None:
            await asyncio.to_thread(objectstore.close)
        if databases is not None:
            await asyncio.to_thread(databases.close)
    return [target.result for target in targets]


async def run_connections(args: argparse.Namespace, work_dir: Path) -> list[RunResult]:
    """Ours alone, memory: ping p99 idle, then with `--many-conns` idle event listeners."""
    print(f"connections ({args.many_conns} idle authenticated event listeners while 16 clients ping):", flush=True)
    saved = args.ours_args
    # Room for the idle connections and the active ones (the default cap is 10,000).
    args.ours_args = f"{saved} --max-connections {args.many_conns + 200}"
    target = await start_target(args, "ours", "connections", None, work_dir)
    args.ours_args = saved
    try:
        if target.broken:
            return [target.result]
        for round_no in range(args.rounds):
            await run_phase(args, target, WORKLOADS["ping"], round_no)
        idle = await measure_many(args, target)
        target.result.add(idle)
    finally:
        await stop_target(args, target, None)
    return [target.result]


async def measure_many(args: argparse.Namespace, target: Target) -> PhaseResult:
    count = args.many_conns
    result = PhaseResult("idle10k", count, 0.0)
    pid = target.pids[0]
    before = await settle(pid)
    conns: list[WsClientProtocol] = []
    try:
        started = time.perf_counter()
        conns = await open_idle(target, count)
        after = await settle(pid)
        result.extra.update(
            rss_before=before,
            rss_after=after,
            bytes_per_connection=(after - before) / count,
            open_seconds=time.perf_counter() - started,
        )
        print(
            f"    {count} idle listeners open in {result.extra['open_seconds']:.1f} s, "
            f"{(after - before) / count / KiB:.1f} KiB each",
            flush=True,
        )
        for round_no in range(args.rounds):
            phase_count = len(target.result.rounds.get("ping", []))
            await run_phase(args, target, WORKLOADS["ping"], round_no)
            rounds = target.result.rounds["ping"]
            if len(rounds) > phase_count:
                busy = rounds.pop()
                busy.workload = "ping_with_idle"
                target.result.add(busy)
        alive = sum(1 for c in conns if not c.closed)
        result.extra["alive"] = alive
        result.ops = alive
        if alive != count:
            result.anomalies.append(f"{count - alive} idle connection(s) closed meanwhile")
    except Exception as exc:
        result.skipped = f"{type(exc).__name__}: {exc}"[:200]
    finally:
        for conn in conns:
            conn.close()
    return result


def listen_supported(args: argparse.Namespace) -> bool:
    try:
        out = subprocess.run(
            [str(args.ours_bin / "twistd"), "parsec", "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "--listen" in out


async def run_scale(args: argparse.Namespace, work_dir: Path) -> list[RunResult]:
    """N instances of ours on one listening socket (socket activation), on PostgreSQL."""
    print(f"scale (instances {','.join(map(str, args.scale))} on one socket, PostgreSQL):", flush=True)
    if not await asyncio.to_thread(listen_supported, args):
        result = RunResult("ours", "scale", error="pending: this build of the server has no --listen (socket activation)")
        print(f"  {result.error}", flush=True)
        return [result]
    databases = await asyncio.to_thread(Databases, args, work_dir)
    results: list[RunResult] = []
    try:
        dsn = await asyncio.to_thread(databases.new, "scale")
        await run_subprocess([str(args.ours_bin / "parsec"), "backend", "migrate", "--db", dsn])
        org: Organization | None = None
        for count in args.scale:
            target = Target("ours", f"scale-{count}", RunResult("ours", f"scale-{count}"), dsn=dsn)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(1024)
            target.port = listener.getsockname()[1]
            try:
                for index in range(count):
                    private = free_port()
                    # systemd's protocol: the socket is fd 3, LISTEN_FDS=1, LISTEN_PID = the
                    # server's own pid (hence the shell, which execs into it), its name in
                    # LISTEN_FDNAMES.
                    command = [
                        str(args.ours_bin / "twistd"), "-n", "--pidfile=", "parsec", "--dev",
                        "--listen", "systemd:domain=INET:name=parsec",
                        "--listen", f"tcp:{private}:interface=127.0.0.1",
                        "--db", dsn, "--blockstore", "POSTGRESQL", *shlex.split(args.ours_args),
                    ]
                    shell = (
                        f"export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=parsec; "
                        f"exec {shlex.join(command)} 3<&{listener.fileno()}"
                    )
                    spec = ServerSpec("ours", ["/bin/sh", "-c", shell], None, pass_fds=(listener.fileno(),))
                    server = ServerProcess(spec, private, work_dir / f"ours-scale-{count}-{index}.log", None)
                    target.servers.append(server)
                    await asyncio.to_thread(server.launch)
                for server in target.servers:
                    await asyncio.to_thread(server.wait_ready)
                target.probes = database_probes(Probes(target.pids), databases, dsn)
                if org is None:
                    org = await asyncio.to_thread(bootstrap_organization, target.port)
                    await add_second_device(target.port, org)
                target.org = org
                print(f"  {count} instance(s) up, pids {target.pids}", flush=True)
                for workload in ("ping", "vlob_read"):
                    for round_no in range(args.rounds):
                        if not target.broken:
                            await run_phase(args, target, WORKLOADS[workload], round_no)
            except Exception as exc:
                target.result.error = f"{type(exc).__name__}: {exc}"
                print(f"  {count} instance(s): {target.result.error.splitlines()[0]}", flush=True)
            finally:
                listener.close()
                for server in target.servers:
                    await asyncio.to_thread(server.stop)
                    target.result.anomalies.extend(f"server log: {line}" for line in server.log_problems())
            results.append(target.result)
    finally:
        await asyncio.to_thread(databases.close)
    return results


async def bench(args: argparse.Namespace) -> list[RunResult]:
    work_dir = Path(tempfile.mkdtemp(prefix="parsec-server-bench-"))
    runs: list[RunResult] = []
    try:
        for storage in args.storage:
            runs.extend(await run_section(args, storage, work_dir))
        if args.connections and "ours" in args.server:
            runs.extend(await run_connections(args, work_dir))
        if args.scale and "ours" in args.server:
            runs.extend(await run_scale(args, work_dir))
    finally:
        if args.keep_logs:
            print(f"\nserver logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    return runs


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def p50_p99(result: PhaseResult) -> tuple[float, float]:
    if "p50" in result.extra:  # raw baseline: computed by the child
        return (result.extra["p50"] or float("nan"), result.extra["p99"] or float("nan"))
    return percentile(result.latencies, 0.5), percentile(result.latencies, 0.99)


def describe_phase(result: PhaseResult) -> str:
    if result.skipped:
        return f"skipped: {result.skipped}"
    p50, p99 = p50_p99(result)
    parts = [f"{result.rate():8.0f}/s p50 {1000 * p50:6.2f} p99 {1000 * p99:6.2f} ms"]
    if result.cpu:
        parts.append(
            f"server {result.us_per_op('server'):6.0f} us/op ({result.us_per_op('server_kernel'):.0f} kernel)"
            + (f" + pg {result.us_per_op('postgres'):5.0f}" if result.cpu.get("postgres") else "")
            + f" | cpu% srv {result.percent('server'):.0f} gen {result.percent('client'):.0f}"
            + (f" pg {result.percent('postgres'):.0f}" if result.cpu.get("postgres") else "")
            + f" other {result.percent('other'):.0f}"
        )
    if result.peak_rss:
        parts.append(f"peak {result.peak_rss / MiB:.0f} MiB")
    problems = [a for a in result.anomalies if not a.startswith("background")]
    if problems:
        parts.append("; ".join(problems)[:300])
    return " | ".join(parts)


def describe_idle(result: PhaseResult) -> str:
    if result.skipped:
        return f"skipped: {result.skipped}"
    return (
        f"{result.connections} connections: {result.extra['bytes_per_connection'] / KiB:.1f} KiB each "
        f"(RSS {result.extra['rss_before'] / MiB:.0f} -> {result.extra['rss_after'] / MiB:.0f} MiB)"
        + ("; " + "; ".join(result.anomalies) if result.anomalies else "")
    )


def fmt(value: float | None, spec: str = ".0f", missing: str = "-") -> str:
    if value is None or value != value:
        return missing
    return format(value, spec)


def print_run(run: RunResult) -> None:
    print(f"\n== {run.target} / {run.storage} (round with the lowest CPU per operation) ==")
    if run.error:
        print(f"  unavailable: {run.error}")
    if run.rounds:
        print(
            f"  {'workload':18} {'conns':>5} {'ops/s':>8} {'p50 ms':>7} {'p99 ms':>8} {'srv us/op':>9} "
            f"{'(kernel)':>8} {'pg us/op':>8} {'peak MiB':>8} {'SQL/op':>6} {'commit/op':>9} {'errors':>6}"
        )
    for name in run.rounds:
        best = run.best(name)
        if best is None:
            continue
        if best.skipped:
            print(f"  {name:18} {best.connections:5} skipped: {best.skipped}")
            continue
        if name in ("idle", "idle10k"):
            print(f"  {name:18} {best.connections:5} {describe_idle(best)}")
            continue
        p50, p99 = p50_p99(best)
        sql = best.per_op(best.statements[0] if best.statements else None)
        commits = best.per_op(best.commits)
        print(
            f"  {name:18} {best.connections:5} {best.rate():8.0f} {1000 * p50:7.2f} {1000 * p99:8.2f} "
            f"{fmt(best.us_per_op('server')):>9} {fmt(best.us_per_op('server_kernel')):>8} "
            f"{fmt(best.us_per_op('postgres') if best.cpu.get('postgres') else None):>8} "
            f"{best.peak_rss / MiB:8.0f} {fmt(sql, '.2f'):>6} {fmt(commits, '.2f'):>9} {sum(best.errors.values()):6}"
        )
    if run.top_statements:
        print("  statements with the most PostgreSQL time (whole run):")
        for line in run.top_statements:
            print(f"    {line}")
    anomalies = list(run.anomalies)
    for rounds in run.rounds.values():
        for number, phase in enumerate(rounds, 1):
            anomalies.extend(f"{phase.workload} round {number}: {a}" for a in phase.anomalies)
    for anomaly in anomalies:
        print(f"  ! {anomaly}")


def find(runs: list[RunResult], target: str, storage: str) -> RunResult | None:
    for run in runs:
        if run.target == target and run.storage == storage and not run.error:
            return run
    return None


def print_comparison(runs: list[RunResult]) -> None:
    for storage in ("memory", "postgresql", "s3"):
        ours = find(runs, "ours", storage)
        ref = find(runs, "reference", storage)
        if ours is None or ref is None:
            continue
        target = TARGET_RATIO.get(storage)
        what = "server + PostgreSQL" if storage != "memory" else "server"
        print(
            f"\n== {storage}: the reference's CPU per operation / ours ({what}; target >= {target}x) =="
            if target
            else f"\n== {storage}: the reference's CPU per operation / ours ({what}) =="
        )
        print(
            f"  {'workload':18} {'ours us/op':>10} {'ref us/op':>10} {'ratio':>7} {'ours ops/s':>10} "
            f"{'ref ops/s':>10} {'ours p99':>9} {'ref p99':>9} {'verdict':>8}"
        )
        for name in WORKLOADS:
            a = ours.best(name)
            b = ref.best(name)
            if a is None or b is None or name == "idle":
                continue
            if a.skipped or b.skipped:
                print(f"  {name:18} skipped: ours {a.skipped or 'ok'} / reference {b.skipped or 'ok'}")
                continue
            ratio = b.total_us_per_op() / a.total_us_per_op()
            verdict = ("ok" if ratio >= target else "MISSED") if target else ""
            print(
                f"  {name:18} {fmt(a.total_us_per_op()):>10} {fmt(b.total_us_per_op()):>10} {fmt(ratio, '6.2f')}x "
                f"{a.rate():10.0f} {b.rate():10.0f} {1000 * p50_p99(a)[1]:8.2f} {1000 * p50_p99(b)[1]:8.2f} {verdict:>8}"
            )
        a, b = ours.best("idle"), ref.best("idle")
        if a and b and not a.skipped and not b.skipped:
            print(
                f"  {'idle':18} {a.extra['bytes_per_connection'] / KiB:9.1f} KiB {b.extra['bytes_per_connection'] / KiB:9.1f} KiB"
                " per idle authenticated connection"
            )


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("ok" if ok else "MISSED")


def print_targets(runs: list[RunResult]) -> None:
    """The performance issue's targets, each with its figures and verdict."""
    print("\n== targets ==")
    lines: list[str] = []
    for storage in ("memory", "postgresql"):
        ours, ref = find(runs, "ours", storage), find(runs, "reference", storage)
        if ours and ref:
            ratios = []
            for name in WORKLOADS:
                a, b = ours.best(name), ref.best(name)
                if a and b and not a.skipped and not b.skipped and name != "idle" and a.ops and b.ops:
                    ratios.append((b.total_us_per_op() / a.total_us_per_op(), name))
            if ratios:
                worst = min(ratios)
                lines.append(
                    f"{storage}: CPU per operation >= {TARGET_RATIO[storage]}x the reference on every workload: "
                    f"worst {worst[1]} {worst[0]:.2f}x -> {verdict(worst[0] >= TARGET_RATIO[storage])}"
                )
            a, b = ours.best("block_read_512k"), ref.best("block_read_512k")
            if a and b and a.ops and b.ops:
                ratio = b.total_us_per_op() / a.total_us_per_op()
                lines.append(
                    f"{storage}: block_read 512 KiB >= {TARGET_BLOCK_READ[storage]}x: {ratio:.2f}x -> "
                    f"{verdict(ratio >= TARGET_BLOCK_READ[storage])}"
                )
    ours, echo = find(runs, "ours", "memory"), find(runs, "echo", "memory")
    if ours and echo:
        a, b = ours.best("ping"), echo.best("ping")
        if a and b and a.ops and b.ops:
            rate_share = a.rate() / b.rate()
            cpu_share = b.us_per_op("server") / a.us_per_op("server")
            lines.append(
                f"ping at >= {TARGET_PING_VS_ECHO:.0%} of the bare echo: rate {a.rate():.0f}/s vs {b.rate():.0f}/s "
                f"= {rate_share:.0%}; CPU per ping {b.us_per_op('server'):.0f} us (echo) / {a.us_per_op('server'):.0f} us "
                f"(ours) = {cpu_share:.0%} -> {verdict(cpu_share >= TARGET_PING_VS_ECHO)} (by CPU, which other load "
                "skews least)"
            )
        a, b = ours.best("idle"), echo.best("idle")
        if a and b and not a.skipped and not b.skipped:
            lines.append(
                f"idle authenticated connection <= {TARGET_IDLE_BYTES // KiB} KiB: "
                f"{a.extra['bytes_per_connection'] / KiB:.1f} KiB (a bare Autobahn connection: "
                f"{b.extra['bytes_per_connection'] / KiB:.1f} KiB) -> "
                f"{verdict(a.extra['bytes_per_connection'] <= TARGET_IDLE_BYTES)}"
            )
    for storage in ("postgresql", "s3", "memory"):
        run = find(runs, "ours", storage)
        best = run.best("uploads_512k_x16") if run else None
        if best and best.peak_rss and not best.skipped:
            limit = f" < {TARGET_UPLOAD_RSS // MiB} MiB" if storage != "memory" else ""
            lines.append(
                f"{storage}: peak RSS during 16 concurrent 512 KiB uploads{limit}: {best.peak_rss / MiB:.0f} MiB"
                + (f" -> {verdict(best.peak_rss < TARGET_UPLOAD_RSS)}" if limit else "")
            )
    ours, raw = find(runs, "ours", "postgresql"), find(runs, "raw", "postgresql")
    if ours:
        for name in ("vlob_create", "vlob_update"):
            a = ours.best(name)
            if a is None or not a.ops:
                continue
            commits = a.per_op(a.commits)
            statements = a.statements
            text = f"postgresql {name}: {fmt(commits, '.2f')} commits per write"
            if statements:
                text += f", {a.per_op(statements[1]):.2f} statements per write"
            lines.append(text + f" -> {verdict(commits is not None and commits <= 1.05)}")
            if raw:
                for conns in (16, 7):
                    r = raw.best(f"raw_insert_{conns}")
                    if r and r.ops:
                        share = a.rate() / r.rate()
                        lines.append(
                            f"postgresql {name} at >= {TARGET_VLOB_WRITE_VS_INSERT:.0%} of raw INSERT ({conns} conns): "
                            f"{a.rate():.0f}/s vs {r.rate():.0f}/s = {share:.0%} -> "
                            f"{verdict(share >= TARGET_VLOB_WRITE_VS_INSERT)}; CPU per write {a.total_us_per_op():.0f} us "
                            f"vs per raw INSERT {r.us_per_op('postgres'):.0f} us (PostgreSQL) + "
                            f"{r.us_per_op('client'):.0f} us (psycopg2 client)"
                        )
    if ours and raw:
        # The database's own share of a 512 KiB block, from the raw binary baseline: what
        # no server on this blockstore can go below, whatever it does itself.
        ref = find(runs, "reference", "postgresql")
        for name, floor_name, verb in (
            ("block_read_512k", "raw_block_select_512k", "SELECT"),
            ("block_create_512k", "raw_block_insert_512k", "INSERT"),
        ):
            a, r = ours.best(name), raw.best(floor_name)
            b = ref.best(name) if ref else None
            if not (a and a.ops and r and r.ops):
                continue
            db_floor = r.us_per_op("postgres")
            text = (
                f"postgresql {name}: ours {a.total_us_per_op():.0f} us per block (server "
                f"{a.us_per_op('server'):.0f} + PostgreSQL {a.us_per_op('postgres'):.0f}); the database alone, "
                f"raw binary {verb}: {db_floor:.0f} us (+ {r.us_per_op('client'):.0f} us of libpq client)"
            )
            if b and b.ops:
                text += f"; the reference {b.total_us_per_op():.0f} us = {b.total_us_per_op() / db_floor:.1f}x that floor"
            lines.append(text)
    many = find(runs, "ours", "connections")
    if many:
        conns = many.best("idle10k")
        # The lowest p99 of the rounds of each (the same rule for both: one burst of foreign
        # load in a 3-second window decides a p99).
        idle_p99 = min((p50_p99(r)[1] for r in many.rounds.get("ping", []) if r.ops), default=float("nan"))
        busy_p99 = min((p50_p99(r)[1] for r in many.rounds.get("ping_with_idle", []) if r.ops), default=float("nan"))
        if conns and not conns.skipped and idle_p99 == idle_p99 and busy_p99 == busy_p99:
            ratio = busy_p99 / idle_p99
            lines.append(
                f"{conns.connections} idle listeners ({conns.extra['bytes_per_connection'] / KiB:.1f} KiB each), ping p99 "
                f"{1000 * busy_p99:.2f} ms vs {1000 * idle_p99:.2f} ms idle = {ratio:.2f}x "
                f"(target <= {TARGET_MANY_CONNS_P99:.2f}x, best round of each) -> {verdict(ratio <= TARGET_MANY_CONNS_P99)}"
            )
    scale = [r for r in runs if r.storage.startswith("scale")]
    for run in scale:
        if run.error:
            lines.append(f"{run.storage}: {run.error}")
            continue
        parts = []
        for name in ("ping", "vlob_read"):
            best = run.best(name)
            if best and best.ops:
                parts.append(f"{name} {best.rate():.0f}/s ({best.total_us_per_op():.0f} us CPU/op)")
        lines.append(f"{run.storage.replace('scale-', '')} instance(s) on one socket: " + ", ".join(parts))
    for line in lines:
        print(f"  {line}")


def print_background(runs: list[RunResult]) -> None:
    others = [
        phase.percent("other")
        for run in runs
        for rounds in run.rounds.values()
        for phase in rounds
        if phase.cpu and phase.wall
    ]
    if others:
        print(
            f"\nbackground load (other processes, % of one core, per measured window): median "
            f"{percentile(others, 0.5):.0f}, max {max(others):.0f}; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}"
        )


def to_json(runs: list[RunResult], args: argparse.Namespace) -> dict[str, Any]:
    def phase_json(p: PhaseResult) -> dict[str, Any]:
        p50, p99 = p50_p99(p)
        return {
            "connections": p.connections,
            "duration": p.duration,
            "ops": p.ops,
            "rate": p.rate(),
            "p50_ms": 1000 * p50 if p50 == p50 else None,
            "p99_ms": 1000 * p99 if p99 == p99 else None,
            "server_us_per_op": p.us_per_op("server"),
            "postgres_us_per_op": p.us_per_op("postgres"),
            "cpu_seconds": p.cpu,
            "peak_rss": p.peak_rss,
            "statements": p.statements,
            "commits": p.commits,
            "errors": dict(p.errors),
            "anomalies": p.anomalies,
            "skipped": p.skipped,
            "extra": p.extra,
        }

    return {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "machine": machine_description(),
        "runs": [
            {
                "target": r.target,
                "storage": r.storage,
                "error": r.error,
                "anomalies": r.anomalies,
                "rounds": {name: [phase_json(p) for p in rounds] for name, rounds in r.rounds.items()},
            }
            for r in runs
        ],
    }


def machine_description() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)

    def choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
        def parse(text: str) -> list[str]:
            values = [v.strip() for v in text.split(",") if v.strip()]
            for value in values:
                if value not in allowed:
                    raise argparse.ArgumentTypeError(f"{value!r} not in {', '.join(allowed)}")
            return values

        return parse

    parser.add_argument(
        "--server", type=choices(PARSEC), default=list(PARSEC), help="servers, comma-separated (default ours,reference)"
    )
    parser.add_argument(
        "--baselines", type=choices(("echo", "raw")), default=["echo", "raw"], help="echo,raw (default both; '' none)"
    )
    parser.add_argument(
        "--storage",
        type=choices(("memory", "postgresql", "s3")),
        default=["memory", "postgresql", "s3"],
        help="sections, comma-separated (default memory,postgresql,s3)",
    )
    parser.add_argument(
        "--workloads",
        type=choices(tuple(WORKLOADS)),
        default=list(WORKLOADS),
        help="comma-separated (default all: " + ",".join(WORKLOADS) + ")",
    )
    parser.add_argument("--duration", type=float, default=3.0, help="measured seconds per phase (default 3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each phase (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per workload, servers alternating (default 2)")
    parser.add_argument("--quick", action="store_true", help="1 round of 0.5 s + 2 s, 500 idle connections")
    parser.add_argument("--conns", type=int, default=16, help="connections of most workloads (default 16)")
    parser.add_argument("--block-conns", type=int, default=4, help="connections of block workloads (default 4)")
    parser.add_argument("--upload-conns", type=int, default=16, help="connections of uploads_512k_x16 (default 16)")
    parser.add_argument("--event-pingers", type=int, default=4, help="pinging connections of `events` (default 4)")
    parser.add_argument("--idle-conns", type=int, default=2000, help="connections of `idle` (default 2,000)")
    parser.add_argument("--vlob-size", type=int, default=1024, help="vlob blob and raw row bytes (default 1024)")
    parser.add_argument(
        "--no-connections", dest="connections", action="store_false", help="skip the 10,000-connection section"
    )
    parser.add_argument("--many-conns", type=int, default=10_000, help="idle listeners of `idle10k` (default 10,000)")
    parser.add_argument(
        "--scale",
        type=lambda text: [int(v) for v in text.split(",") if v.strip()],
        default=[1, 2],
        help="instance counts of the scaling section (default 1,2)",
    )
    parser.add_argument("--no-scale", dest="scale", action="store_const", const=[], help="skip the scaling section")
    parser.add_argument(
        "--stall-timeout", type=float, default=10.0, help="abort a phase after this long without a reply (default 10)"
    )
    parser.add_argument("--dsn", default=None, help="PostgreSQL cluster where databases may be created")
    parser.add_argument(
        "--pg-conf",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a postgresql.conf setting of the throwaway cluster (repeatable)",
    )
    parser.add_argument("--pg-top", type=int, default=0, help="print the N statements that cost PostgreSQL most")
    parser.add_argument("--ours-args", default="", help="extra arguments for our server (one string)")
    parser.add_argument("--ref-args", default="", help="extra arguments for the reference server (one string)")
    parser.add_argument("--ours-bin", type=Path, default=REPO / ".venv" / "bin", help="bin dir of our venv")
    parser.add_argument(
        "--ref-bin", type=Path, default=REPO / ".client-venv" / "bin", help="bin dir of the venv of parsec-cloud 2.10.0"
    )
    parser.add_argument("--pin", action="store_true", help="servers and PostgreSQL on CPU 0, load generator on CPU 1")
    parser.add_argument(
        "--max-background", type=float, default=15.0, help="flag a phase above this %% of a core of other load"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server logs (path printed at the end)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmup, args.duration = 1, 0.5, 2.0
        args.idle_conns = min(args.idle_conns, 500)
    if not 0.5 <= args.duration <= 120 or not 0 <= args.warmup <= 30:
        parser.error("--duration must be in 0.5..120 and --warmup in 0..30")
    if not 1 <= args.rounds <= 10:
        parser.error("--rounds must be in 1..10")
    for name in ("conns", "block_conns", "upload_conns", "event_pingers"):
        if not 1 <= getattr(args, name) <= 512:
            parser.error(f"--{name.replace('_', '-')} must be in 1..512")
    if not 1 <= args.idle_conns <= len(IDLE_SOURCES) * PER_SOURCE or not 1 <= args.many_conns <= len(IDLE_SOURCES) * PER_SOURCE:
        parser.error(f"--idle-conns and --many-conns must be in 1..{len(IDLE_SOURCES) * PER_SOURCE}")
    if not 0 <= args.vlob_size <= 1024 * 1024:
        parser.error("--vlob-size must be in 0..1048576")
    if args.pin and (os.cpu_count() or 1) < 2:
        args.pin = False
    return args


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers on `kill` as on Ctrl-C
    # The servers inherit the limit: 10,000 connections need more than the usual 1,024.
    raise_fd_limit(args.many_conns + args.idle_conns + 1024)
    if args.pin:
        os.sched_setaffinity(0, {1})
    print(
        f"parsec server bench {datetime.now().strftime('%Y-%m-%d %H:%M')}: {machine_description()}; "
        f"{', '.join(args.server)} + baselines {', '.join(args.baselines) or 'none'} on {', '.join(args.storage)}; "
        f"{args.rounds} x ({args.warmup:g} s warm-up + {args.duration:g} s) per workload; "
        + ("servers on CPU 0, load generator on CPU 1" if args.pin else "no CPU pinning")
        + f"; load average {' '.join(f'{v:.1f}' for v in os.getloadavg())}",
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
    print_targets(runs)
    print_background(runs)
    print(f"\ntotal time {time.monotonic() - started:.0f} s")
    if args.json is not None:
        args.json.write_text(json.dumps(to_json(runs, args), indent=2, default=str))
    return 0 if all(r.error is None or r.error.startswith("pending") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
