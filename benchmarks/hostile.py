"""Hostile clients against a running server: what each attack costs, and a 1,000-client soak.

    .venv/bin/python benchmarks/hostile.py                    # every attack, then the soak
    .venv/bin/python benchmarks/hostile.py --only bomb,idle   # some attacks, no soak
    .venv/bin/python benchmarks/hostile.py --soak-only --soak-clients 1000 --soak-duration 60
    .venv/bin/python benchmarks/hostile.py --storage postgresql  # on a throwaway cluster

The script starts `<repo>/.venv/bin/twistd -n --pidfile= parsec --dev --port P` (extra options
with `--server-args`), bootstraps an organization, then plays each attack of the hostile-clients
issue for a bounded time while an honest client (a separate process, APIv1 anonymous
websocket) pings in a loop. Per attack it
prints the growth of the server's RSS (peak during the attack minus the RSS just before it,
sampled every 10 ms from /proc), the worst latency of the honest client's `ping` meanwhile, the
server CPU it cost, and the outcome (replies, close codes, refusals):

  handshake   10 sockets each answer the challenge with 3 MiB of nested empty lists, and one
              with a 3 KiB `type` (the error text must not echo it)
  bomb        200 POSTs of a ~1.2 KiB zlib bomb (1 MiB of msgpack once inflated) to
              /anonymous/<org>: organization_bootstrap on a bootstrapped organization, and on
              a fresh one with the right token (certificates inflated, capped); CPU per request
  idle        1,200 websockets from 5 loopback addresses that never answer the challenge
              (per-address cap: 429), then an honest handshake must still succeed
  bigreply    17 pki_enrollment_submit carrying 1 MiB certificates, then the admin's
              pki_enrollment_list (never a close 1011 / CRITICAL)
  pkiflood    100 anonymous pki_enrollment_submit whose certificate and signature are at the
              64 KiB limit: the organization's pending enrollments stop at their bound and the
              admin's pki_enrollment_list still fits in one message
  inbox       a realm owner sends a victim one role change with a 1 MiB message, then 200 with
              64 KiB messages: the victim's unread messages stop at their bound and its
              message_get still fits in one message
  pipeline    while invite_1_greeter_wait_peer waits: 24 requests of 8 MiB (the server stops
              reading once its pipeline is full)
  noread      200 pipelined block_read of a 1 MiB block from a client that never reads

and attacks found later (an audit of the finished work):

  fragments   one 2 MiB message sent in one-byte frames (13 MiB on the wire)
  pingflood   200,000 empty websocket pings in one write before any handshake, once read
              by the client and once never read (the pongs pile up)
  slowmsg     8 anonymous websockets announce a 16 MiB message; then 200 from one address
              each send all but the last byte of a message just under the anonymous limit
  adminflood  2,000 administration requests with a wrong token, 50 at a time; CPU per request
  xff         1,000 requests from the trusted proxy with a 7 KiB X-Forwarded-For of 700 hops
  listenchurn 20,000 events_listen(wait) each abandoned by a ping (RSS after the first 1,000)

Then the soak: `--soak-clients` authenticated websockets (spread over loopback addresses
127.0.1.1-127.0.1.10 so that the per-address cap holds) each loop on a realistic mix (vlob
create/update/read, 4 KiB block create/read, events_listen without wait, ping) with a random
pause of 0.5-1.5 s, for `--soak-duration` seconds; it prints requests, protocol errors (must be
0), the honest ping latency, and RSS after warm-up / at the end.

Everything runs on 127.0.0.1, every loop is bounded in count and time, and the server is
stopped at the end (also on Ctrl-C). Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import server_bench as sb  # noqa: E402
from nacl.signing import SigningKey  # noqa: E402

from parsec.api.codec import packb, unpackb  # noqa: E402
from tests.api.certgen import LocalDevice, new_user_certificates  # noqa: E402

SOURCES = [f"127.0.0.{i}" for i in range(1, 6)]  # the idle attack: 5 x the per-address cap
SOAK_SOURCES = [f"127.0.1.{i}" for i in range(1, 11)]  # the soak: 100 clients per address
HONEST = "127.0.2.1"
SLOW = "127.0.4.1"  # the slowmsg attack: one address, up to its cap
KiB = 1024
MiB = 1024 * KiB


# ---- measurements -------------------------------------------------------------------------


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Pinger:
    """The honest client: a separate process (its own event loop, so that the latencies are the
    server's, not this load generator's) pinging over an APIv1 anonymous websocket and printing
    one latency in ms per line."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self, port: int, organization_id: str) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--pinger", str(port), organization_id,
            stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
        )
        self._reader = asyncio.ensure_future(self._read())
        while not self.latencies and not self.errors:
            await asyncio.sleep(0.05)

    async def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        async for line in self._proc.stdout:
            text = line.decode().strip()
            try:
                self.latencies.append(float(text))
            except ValueError:
                self.errors.append(text)

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            await self._proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def pinger_main(port: int, organization_id: str) -> None:
    conn = await ws_connect(port, HONEST)
    await conn.recv()
    answer = {"handshake": "answer", "type": "anonymous", "client_api_version": [1, 3], "organization_id": organization_id}
    result = await conn.request(packb(answer))
    if result.get("result") != "ok":
        print(f"handshake: {result}", flush=True)
        return
    n = 0
    while True:
        n += 1
        start = time.perf_counter()
        try:
            rep = await asyncio.wait_for(conn.request(packb({"cmd": "ping", "ping": f"h{n}"})), 30)
        except Exception as exc:
            print(f"error: {exc!r}", flush=True)
            return
        if rep != {"status": "ok", "pong": f"h{n}"}:
            print(f"error: {rep}", flush=True)
            return
        print(f"{(time.perf_counter() - start) * 1000:.2f}", flush=True)
        await asyncio.sleep(0.005)


@dataclass
class Watch:
    """RSS peak, server CPU and the honest client's worst ping while an attack runs."""

    pid: int
    pinger: Pinger
    base_rss: int = 0
    peak_rss: int = 0
    worst_ping: float = 0.0  # seconds
    pings: int = 0
    cpu: float = 0.0
    _stop: bool = False

    async def _sample(self) -> None:
        while not self._stop:
            self.peak_rss = max(self.peak_rss, rss(self.pid))
            await asyncio.sleep(0.01)

    async def run(self, attack: Awaitable[str]) -> str:
        self.base_rss = self.peak_rss = rss(self.pid)
        cpu0 = sb.process_cpu(self.pid)
        first = len(self.pinger.latencies)
        sampler = asyncio.ensure_future(self._sample())
        try:
            outcome = await attack
        finally:
            self._stop = True
            await asyncio.gather(sampler, return_exceptions=True)
        self.cpu = sb.process_cpu(self.pid) - cpu0
        window = self.pinger.latencies[first:]
        self.pings = len(window)
        self.worst_ping = max(window, default=0.0) / 1000
        return outcome


# ---- clients ------------------------------------------------------------------------------


async def ws_connect(port: int, source: str = "127.0.0.1") -> sb.WsClientProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await asyncio.wait_for(
        loop.create_connection(lambda: sb.WsClientProtocol("127.0.0.1", port), "127.0.0.1", port, local_addr=(source, 0)),
        sb.CONNECT_TIMEOUT,
    )
    await asyncio.wait_for(proto.opened, sb.CONNECT_TIMEOUT)
    return proto


async def authenticated(port: int, org: sb.Organization, source: str = "127.0.0.1") -> sb.WsClientProtocol:
    return await authenticated_as(port, org, org.device, source)


async def authenticated_as(
    port: int, org: sb.Organization, device: LocalDevice, source: str = "127.0.0.1"
) -> sb.WsClientProtocol:
    conn = await ws_connect(port, source)
    challenge = await asyncio.wait_for(conn.recv(), sb.CONNECT_TIMEOUT)
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
    result = await asyncio.wait_for(conn.request(packb(answer)), sb.CONNECT_TIMEOUT)
    if result.get("result") != "ok":
        raise RuntimeError(f"handshake refused: {result}")
    return conn


async def closed(conn: sb.WsClientProtocol, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while not conn.closed and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return conn.close_reason if conn.closed else "still open"


async def http(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    return await asyncio.to_thread(sb.http_request, port, method, path, body, headers)


def realm_role_certificate(org: sb.Organization, realm_id: uuid.UUID) -> bytes:
    return org.device.realm_role_certificate(realm_id=realm_id, user_id=org.device.user_id, role="OWNER", timestamp=sb.now())


async def new_realm(conn: sb.WsClientProtocol, org: sb.Organization) -> uuid.UUID:
    realm_id = uuid.uuid4()
    rep = await conn.request(packb({"cmd": "realm_create", "role_certificate": realm_role_certificate(org, realm_id)}))
    assert rep == {"status": "ok"}, rep
    return realm_id


# ---- attacks ------------------------------------------------------------------------------


@dataclass
class Context:
    port: int
    pid: int
    org: sb.Organization
    pinger: Pinger


async def attack_handshake(ctx: Context) -> str:
    huge = packb({"handshake": "answer", "client_api_version": [2, 7], "type": [[]] * (3 * MiB)})
    conns = [await ws_connect(ctx.port) for _ in range(10)]
    for conn in conns:
        await conn.recv()
        conn._write_frame(0x2, huge)
    reasons = [await closed(conn) for conn in conns]
    echo = await ws_connect(ctx.port)
    await echo.recv()
    rep = await echo.request(packb({"handshake": "answer", "client_api_version": [2, 7], "type": "X" * 3000, "organization_id": "O"}))
    summary = ", ".join(sorted({r.split("(")[-1].rstrip(")") for r in reasons}))
    return f"10 x 3 MiB answers: {summary}; 3 KiB `type`: {rep['result']} with a {len(rep.get('help', ''))}-char help"


def bomb() -> bytes:
    inner = packb({"type": "user_certificate", "pad": [[]] * 1000}) + b"\x90" * MiB
    return zlib.compress(inner, 9)


async def attack_bomb(ctx: Context) -> str:
    attacker = SigningKey.generate()
    signed = bytes(attacker.sign(bomb()))
    request = {
        "cmd": "organization_bootstrap",
        "bootstrap_token": "x",
        "root_verify_key": bytes(attacker.verify_key),
        "user_certificate": signed,
        "device_certificate": b"d",
        "redacted_user_certificate": b"r",
        "redacted_device_certificate": b"r",
    }
    body = packb(request)
    statuses: dict[str, int] = {}
    cpu0 = sb.process_cpu(ctx.pid)
    count = 200
    for _ in range(count):
        status, raw = await http(ctx.port, "POST", f"/anonymous/{ctx.org.organization_id}", body)
        reply = unpackb(raw)["status"] if status == 200 else f"HTTP {status}"
        statuses[reply] = statuses.get(reply, 0) + 1
    per_request = (sb.process_cpu(ctx.pid) - cpu0) / count
    # A fresh organization with the right token: the certificates are inflated (capped).
    org_id = f"Bomb{random.randrange(10**9)}"
    status, raw = await http(
        ctx.port, "POST", "/administration/organizations", json.dumps({"organization_id": org_id}).encode(),
        {"Authorization": f"Bearer {sb.ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    token = json.loads(raw)["bootstrap_token"]
    cpu1 = sb.process_cpu(ctx.pid)
    fresh = None
    for _ in range(20):
        status, raw = await http(ctx.port, "POST", f"/anonymous/{org_id}", packb({**request, "bootstrap_token": token}))
        fresh = unpackb(raw)
    per_fresh = (sb.process_cpu(ctx.pid) - cpu1) / 20
    assert fresh is not None
    return (
        f"{len(body)}-byte request x {count}: {statuses}, {per_request * 1000:.2f} ms server CPU each; "
        f"fresh organization, right token: {fresh['status']} ({per_fresh * 1000:.2f} ms CPU each)"
    )


async def attack_idle(ctx: Context) -> str:
    opened: list[sb.WsClientProtocol] = []
    refused = 0
    for i in range(1200):
        try:
            conn = await ws_connect(ctx.port, SOURCES[i % len(SOURCES)])
            opened.append(conn)
        except Exception:
            refused += 1
    await asyncio.sleep(0.5)
    alive = sum(1 for c in opened if not c.closed)
    honest = await authenticated(ctx.port, ctx.org, HONEST)
    rep = await honest.request(packb({"cmd": "ping", "ping": "new"}))
    honest.close()
    for conn in opened:
        conn.close()
    return f"{alive} idle websockets held, {refused} refused (429); a new honest client: {rep['status']}"


async def attack_bigreply(ctx: Context) -> str:
    statuses: dict[str, int] = {}
    for _ in range(17):
        payload = zlib.compress(packb({"type": "pki_enrollment_submit_payload", "verify_key": bytes(32), "public_key": bytes(32), "requested_device_label": "x"}))
        request = {
            "cmd": "pki_enrollment_submit",
            "enrollment_id": uuid.uuid4(),
            "force": False,
            "submitter_der_x509_certificate": os.urandom(MiB - 4096),
            "submitter_der_x509_certificate_email": "a@b.c",
            "submit_payload_signature": b"s",
            "submit_payload": payload,
        }
        status, raw = await http(ctx.port, "POST", f"/anonymous/{ctx.org.organization_id}", packb(request))
        key = unpackb(raw).get("status", "?") if status == 200 else f"HTTP {status}"
        statuses[key] = statuses.get(key, 0) + 1
    admin = await authenticated(ctx.port, ctx.org)
    rep = await asyncio.wait_for(admin.request(packb({"cmd": "pki_enrollment_list"})), 60)
    after = await admin.request(packb({"cmd": "ping", "ping": "after"}))
    admin.close()
    listed = len(rep.get("enrollments", [])) if rep["status"] == "ok" else rep.get("reason", "")
    return f"submits: {statuses}; pki_enrollment_list: {rep['status']} ({listed}); then ping: {after['status']}"


async def attack_pkiflood(ctx: Context) -> str:
    statuses: dict[str, int] = {}
    payload = zlib.compress(packb({"type": "pki_enrollment_submit_payload", "verify_key": bytes(32), "public_key": bytes(32), "requested_device_label": "x"}))
    for _ in range(100):
        request = {
            "cmd": "pki_enrollment_submit",
            "enrollment_id": uuid.uuid4(),
            "force": False,
            "submitter_der_x509_certificate": os.urandom(64 * KiB),
            "submit_payload_signature": os.urandom(64 * KiB),
            "submit_payload": payload,
        }
        status, raw = await http(ctx.port, "POST", f"/anonymous/{ctx.org.organization_id}", packb(request))
        key = unpackb(raw).get("status", "?") if status == 200 else f"HTTP {status}"
        statuses[key] = statuses.get(key, 0) + 1
    admin = await authenticated(ctx.port, ctx.org)
    raw_reply = await asyncio.wait_for(admin.send_raw(packb({"cmd": "pki_enrollment_list"})), 60)
    rep = unpackb(raw_reply)
    admin.close()
    listed = len(rep.get("enrollments", [])) if rep["status"] == "ok" else rep.get("reason", "")
    return (
        f"submits: {statuses}; pki_enrollment_list: {rep['status']} ({listed} enrollments, "
        f"{len(raw_reply) / MiB:.1f} MiB)"
    )


async def attack_inbox(ctx: Context) -> str:
    org = ctx.org
    victim = LocalDevice.generate(f"victim{uuid.uuid4().hex[:8]}@dev1", profile="STANDARD")
    admin = await authenticated(ctx.port, org)
    blobs = new_user_certificates(org.device.signing_key, org.device.device_id, victim, timestamp=sb.now())
    rep = await admin.request(packb({"cmd": "user_create", **blobs.as_request()}))
    assert rep == {"status": "ok"}, rep
    realm_id = await new_realm(admin, org)
    statuses: dict[str, int] = {}
    role: str | None = None
    for index in range(201):
        new_role = "CONTRIBUTOR" if role == "READER" else "READER"
        cert = org.device.realm_role_certificate(
            realm_id=realm_id, user_id=victim.user_id, role=new_role, timestamp=sb.now()
        )
        message = os.urandom(MiB if index == 0 else 64 * KiB)
        rep = await admin.request(packb({"cmd": "realm_update_roles", "role_certificate": cert, "recipient_message": message}))
        if rep["status"] == "ok":
            role = new_role  # a refusal writes nothing: the same change is asked again
        key = f"{'1 MiB' if index == 0 else '64 KiB'}: {rep['status']}"
        statuses[key] = statuses.get(key, 0) + 1
    admin.close()
    conn = await authenticated_as(ctx.port, org, victim)
    raw_reply = await asyncio.wait_for(conn.send_raw(packb({"cmd": "message_get", "offset": 0})), 60)
    rep = unpackb(raw_reply)
    conn.close()
    got = len(rep.get("messages", [])) if rep["status"] == "ok" else rep.get("reason", "")
    return f"role changes: {statuses}; victim's message_get: {rep['status']} ({got} messages, {len(raw_reply) / MiB:.1f} MiB)"


async def attack_pipeline(ctx: Context) -> str:
    admin = await authenticated(ctx.port, ctx.org)
    rep = await admin.request(packb({"cmd": "invite_new", "type": "DEVICE", "send_email": False}))
    token = rep["token"]
    waiter = admin.send_raw(packb({"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": bytes(32)}))
    big = packb({"cmd": "ping", "ping": "p", **{f"b{i}": bytes(MiB - 64) for i in range(8)}})
    for _ in range(24):
        admin._write_frame(0x2, big)
    await asyncio.sleep(2.0)
    assert admin.transport is not None
    unsent = admin.transport.get_write_buffer_size()
    waiter.cancel()
    admin.close()
    return f"24 x {len(big) // MiB} MiB sent during a long-poll; {unsent // MiB} MiB still unread by the server after 2 s"


async def attack_noread(ctx: Context) -> str:
    conn = await authenticated(ctx.port, ctx.org)
    realm = await new_realm(conn, ctx.org)
    block_id = uuid.uuid4()
    rep = await conn.request(packb({"cmd": "block_create", "block_id": block_id, "realm_id": realm, "block": os.urandom(MiB - 1024)}))
    assert rep == {"status": "ok"}, rep
    assert conn.transport is not None
    conn.transport.pause_reading()
    request = packb({"cmd": "block_read", "block_id": block_id})
    for _ in range(200):
        conn._write_frame(0x2, request)
    await asyncio.sleep(3.0)
    conn.transport.resume_reading()
    got = 0
    try:
        while got < 200:
            reply = await asyncio.wait_for(conn.recv(), 30)
            got += reply.get("status") == "ok"
    except Exception:
        pass
    conn.close()
    return f"200 block_read of 1 MiB unread for 3 s; then all read back: {got}/200 ok"



# ---- attacks the issue did not list ------------------------------------------------------


async def anonymous_v1(port: int, organization_id: str, source: str = "127.0.0.1") -> sb.WsClientProtocol:
    """An APIv1 anonymous websocket: no account, only an organization's id (it is in every
    invitation link); after its handshake the full message limit applies."""
    conn = await ws_connect(port, source)
    await asyncio.wait_for(conn.recv(), sb.CONNECT_TIMEOUT)
    answer = {"handshake": "answer", "type": "anonymous", "client_api_version": [1, 3], "organization_id": organization_id}
    result = await asyncio.wait_for(conn.request(packb(answer)), sb.CONNECT_TIMEOUT)
    if result.get("result") != "ok":
        raise RuntimeError(f"anonymous handshake refused: {result}")
    return conn


_NO_MASK = b"\x00\x00\x00\x00"  # a zero masking key: the payload goes as it is


def one_byte_frames(message: bytes) -> bytes:
    """`message` as one websocket message fragmented into frames of one byte each."""
    last = len(message) - 1
    out = bytearray()
    for index, byte in enumerate(message):
        opcode = 0x2 if index == 0 else 0x0
        fin = 0x80 if index == last else 0x00
        out += bytes((fin | opcode, 0x81)) + _NO_MASK + bytes((byte,))
    return bytes(out)


async def attack_fragments(ctx: Context) -> str:
    size = 2 * MiB
    message = packb({"cmd": "organization_bootstrap", "pad": bytes(size - 64)})
    wire = one_byte_frames(message)
    conn = await anonymous_v1(ctx.port, ctx.org.organization_id)
    assert conn.transport is not None
    reply_waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    conn.waiters.append(reply_waiter)
    conn.transport.write(wire)
    try:
        reply = unpackb(await asyncio.wait_for(reply_waiter, 120))
        outcome = f"reply {reply.get('status')}"
    except Exception as exc:
        outcome = f"{conn.close_reason or exc!r}"
    conn.close()
    return f"one {len(message) // KiB} KiB message in {len(message)} one-byte frames ({len(wire) // MiB} MiB on the wire): {outcome}"


async def attack_pingflood(ctx: Context) -> str:
    count = 200_000
    pings = (bytes((0x89, 0x80)) + _NO_MASK) * count
    # Before any handshake: only a websocket upgrade.
    conn = await ws_connect(ctx.port)
    await asyncio.wait_for(conn.recv(), sb.CONNECT_TIMEOUT)  # the challenge
    assert conn.transport is not None
    conn.transport.write(pings)
    await asyncio.sleep(3.0)
    reading = f"read: {'closed: ' + conn.close_reason if conn.closed else 'open'}"
    conn.close()
    # The same, never reading the pongs.
    conn = await ws_connect(ctx.port)
    await asyncio.wait_for(conn.recv(), sb.CONNECT_TIMEOUT)
    assert conn.transport is not None
    conn.transport.pause_reading()
    conn.transport.write(pings)
    await asyncio.sleep(3.0)
    unsent = conn.transport.get_write_buffer_size()
    conn.close()
    return f"{count} pings before the handshake, pongs {reading}; pongs unread: {unsent // KiB} KiB of pings left unread by the server"


async def attack_slowmsg(ctx: Context) -> str:
    # 8 anonymous websockets announce a 16 MiB message (over unauthenticated_message_bytes).
    head16 = bytes((0x82, 0x80 | 127)) + (16 * MiB).to_bytes(8, "big") + _NO_MASK
    big = [await anonymous_v1(ctx.port, ctx.org.organization_id, SOURCES[i % len(SOURCES)]) for i in range(8)]
    for conn in big:
        assert conn.transport is not None
        conn.transport.write(head16 + bytes(MiB))  # one write: nothing more is sent
    # 200 (the per-address cap) each send all but the last byte of a message just under it.
    size = MiB - KiB
    head = bytes((0x82, 0x80 | 127)) + size.to_bytes(8, "big") + _NO_MASK
    many = [await anonymous_v1(ctx.port, ctx.org.organization_id, SLOW) for _ in range(200)]
    for conn in many:
        assert conn.transport is not None
        conn.transport.write(head + bytes(size - 1))
        await asyncio.sleep(0.01)
    await asyncio.sleep(5.0)
    big_open = sum(1 for c in big if not c.closed)
    many_open = sum(1 for c in many if not c.closed)
    codes = sorted({str(c.close_reason) for c in many if c.closed})
    for conn in big + many:
        conn.close()
    return (
        f"8 anonymous websockets announce a 16 MiB message: {big_open} still open; 200 from one address "
        f"each hold {size // KiB} KiB but its last byte for 5 s: {many_open} held, {200 - many_open} closed "
        f"({', '.join(codes)[:80]})"
    )


async def raw_http(port: int, data: bytes, source: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def attack_adminflood(ctx: Context) -> str:
    count = 2000
    body = json.dumps({"organization_id": "Nope"}).encode()
    request = (
        b"POST /administration/organizations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    statuses: dict[str, int] = {}
    cpu0 = sb.process_cpu(ctx.pid)
    semaphore = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with semaphore:
            raw = await raw_http(ctx.port, request, SOURCES[i % len(SOURCES)])
        key = raw.split(b"\r\n", 1)[0].decode(errors="replace")[9:]
        statuses[key] = statuses.get(key, 0) + 1

    await asyncio.gather(*(one(i) for i in range(count)))
    per_request = (sb.process_cpu(ctx.pid) - cpu0) / count
    return f"{count} admin requests with a wrong token (50 at a time): {statuses}, {per_request * 1000:.2f} ms server CPU each"


PROXY = "127.0.3.1"  # the benchmark's server trusts this address as a reverse proxy


async def attack_xff(ctx: Context) -> str:
    hops = ",".join(f"10.{i // 250}.{i % 250}.1" for i in range(700))
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: " + hops.encode()[:7900] + b"\r\n\r\n"
    )
    count = 1000
    statuses: dict[str, int] = {}
    cpu0 = sb.process_cpu(ctx.pid)
    semaphore = asyncio.Semaphore(50)

    async def one() -> None:
        async with semaphore:
            raw = await raw_http(ctx.port, request, PROXY)
        key = raw.split(b"\r\n", 1)[0].decode(errors="replace")[9:]
        statuses[key] = statuses.get(key, 0) + 1

    await asyncio.gather(*(one() for _ in range(count)))
    per_request = (sb.process_cpu(ctx.pid) - cpu0) / count
    return (
        f"{count} requests from the trusted proxy, {len(request) // KiB} KiB head of ~{hops[:7900].count(',') + 1} "
        f"X-Forwarded-For hops: {statuses}, {per_request * 1000:.2f} ms server CPU each"
    )


async def attack_listenchurn(ctx: Context) -> str:
    conn = await authenticated(ctx.port, ctx.org)
    rep = await conn.request(packb({"cmd": "events_subscribe"}))
    assert rep["status"] == "ok", rep
    cycles = 20_000
    listen = packb({"cmd": "events_listen", "wait": True})
    ping = packb({"cmd": "ping", "ping": "c"})
    rss_after_warmup = 0
    for index in range(cycles):
        conn.send_only(listen)  # abandoned by the next message, without a reply
        rep = await conn.request(ping)
        if rep.get("status") != "ok":
            return f"cycle {index}: {rep}"
        if index == 1000:
            rss_after_warmup = rss(ctx.pid)
    growth = rss(ctx.pid) - rss_after_warmup
    conn.close()
    return f"{cycles} events_listen(wait) each abandoned by a ping: all answered; RSS +{growth / MiB:.1f} MiB after the first 1,000"


ATTACKS: dict[str, Callable[[Context], Awaitable[str]]] = {
    "handshake": attack_handshake,
    "bomb": attack_bomb,
    "idle": attack_idle,
    "bigreply": attack_bigreply,
    "pkiflood": attack_pkiflood,
    "inbox": attack_inbox,
    "pipeline": attack_pipeline,
    "noread": attack_noread,
    "fragments": attack_fragments,
    "pingflood": attack_pingflood,
    "slowmsg": attack_slowmsg,
    "adminflood": attack_adminflood,
    "xff": attack_xff,
    "listenchurn": attack_listenchurn,
}


# ---- soak ---------------------------------------------------------------------------------


@dataclass
class SoakStats:
    requests: int = 0
    stored: int = 0  # bytes of blobs and blocks the clients made the server keep
    errors: list[str] = field(default_factory=list)


async def soak_client(conn: sb.WsClientProtocol, realm: uuid.UUID, stats: SoakStats, stop_at: float) -> None:
    vlob_id = uuid.uuid4()
    version = 0
    blocks: list[uuid.UUID] = []

    async def call(msg: dict[str, Any], expect: tuple[str, ...] = ("ok",)) -> dict[str, Any]:
        rep = await asyncio.wait_for(conn.request(packb(msg)), 60)
        stats.requests += 1
        if rep.get("status") not in expect:
            stats.errors.append(f"{msg['cmd']}: {rep.get('status')} {rep.get('reason', '')}")
        return rep

    await call({"cmd": "vlob_create", "realm_id": realm, "encryption_revision": 1, "vlob_id": vlob_id, "timestamp": sb.now(), "blob": os.urandom(512)})
    version = 1
    await call({"cmd": "events_subscribe"})
    while time.monotonic() < stop_at:
        await asyncio.sleep(random.uniform(0.5, 1.5))
        r = random.random()
        if r < 0.3:
            await call({"cmd": "vlob_read", "encryption_revision": 1, "vlob_id": vlob_id, "timestamp": None, "version": None})
        elif r < 0.5:
            version += 1
            await call({"cmd": "vlob_update", "encryption_revision": 1, "vlob_id": vlob_id, "timestamp": sb.now(), "version": version, "blob": os.urandom(512)})
            stats.stored += 512
        elif r < 0.6:
            block_id = uuid.uuid4()
            await call({"cmd": "block_create", "block_id": block_id, "realm_id": realm, "block": os.urandom(4096)})
            blocks.append(block_id)
            stats.stored += 4096
        elif r < 0.7 and blocks:
            await call({"cmd": "block_read", "block_id": random.choice(blocks)})
        elif r < 0.85:
            await call({"cmd": "events_listen", "wait": False}, expect=("ok", "no_events"))
        else:
            await call({"cmd": "ping", "ping": "soak"})


async def soak(ctx: Context, clients: int, duration: float) -> None:
    print(f"soak: {clients} authenticated clients over {len(SOAK_SOURCES)} loopback addresses, {duration:.0f} s")
    conns: list[sb.WsClientProtocol] = []
    for i in range(clients):
        conns.append(await authenticated(ctx.port, ctx.org, SOAK_SOURCES[i % len(SOAK_SOURCES)]))
    realms = [await new_realm(conns[0], ctx.org) for _ in range(10)]
    stats = SoakStats()
    warm = rss(ctx.pid)
    samples: list[int] = []
    stop_at = time.monotonic() + duration
    watch = Watch(ctx.pid, ctx.pinger)

    async def sampler() -> None:
        while time.monotonic() < stop_at:
            samples.append(rss(ctx.pid))
            await asyncio.sleep(1.0)

    cpu0 = sb.process_cpu(ctx.pid)
    started = time.monotonic()

    async def load() -> str:
        results = await asyncio.gather(
            sampler(), *(soak_client(c, realms[i % len(realms)], stats, stop_at) for i, c in enumerate(conns)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures[:5]:
            stats.errors.append(f"client failed: {failure!r}")
        return ""

    await watch.run(load())
    elapsed = time.monotonic() - started
    cpu = sb.process_cpu(ctx.pid) - cpu0
    errors = stats.errors
    third = max(1, len(samples) // 3)
    print(
        f"  {stats.requests} requests ({stats.requests / elapsed:.0f}/s), protocol errors: {len(errors)}, "
        f"server CPU {cpu / elapsed * 100:.0f} %"
    )
    print(
        f"  honest ping: worst {watch.worst_ping * 1000:.0f} ms over {watch.pings} pings; "
        f"RSS {warm / MiB:.0f} MiB after connecting, {min(samples[:third]) / MiB:.0f}-{max(samples[:third]) / MiB:.0f} MiB "
        f"in the first third, {min(samples[-third:]) / MiB:.0f}-{max(samples[-third:]) / MiB:.0f} MiB in the last third "
        f"(data stored meanwhile: {stats.stored / MiB:.0f} MiB of blobs and blocks)"
    )
    for error in errors[:5]:
        print(f"    {error}")
    for conn in conns:
        conn.close()


# ---- main ---------------------------------------------------------------------------------


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(args: argparse.Namespace) -> int:
    raise_fd_limit()
    port = sb.free_port()
    work_dir = Path(tempfile.mkdtemp(prefix="parsec-hostile-"))
    log_path = work_dir / "server.log"
    cluster = None
    storage: list[str] = []
    if args.storage == "postgresql":
        from tests.pg_cluster import start_cluster

        cluster = start_cluster(work_dir / "pg")
        storage = ["--db", cluster.dsn, "--blockstore", "POSTGRESQL"]
        subprocess.run([str(REPO / ".venv/bin/parsec"), "backend", "migrate", "--db", cluster.dsn],
                       check=True, stdout=subprocess.DEVNULL)
    spec = sb.ServerSpec(
        "ours",
        [str(REPO / ".venv/bin/twistd"), "-n", "--pidfile=", "parsec", "--dev", "--port", str(port), *storage,
         "--trusted-proxy", f"{PROXY}/32", *args.server_args.split()],
        None,
    )
    server = sb.ServerProcess(spec, port, log_path, None)
    try:
        server.start()
        org = await asyncio.to_thread(sb.bootstrap_organization, port)
        pinger = Pinger()
        await pinger.start(port, org.organization_id)
        ctx = Context(port, server.pid, org, pinger)
        print(
            f"server pid {server.pid} on 127.0.0.1:{port} ({args.storage}), log {log_path}, "
            f"RSS {rss(server.pid) / MiB:.0f} MiB"
        )
        if not args.soak_only:
            print(f"{'attack':<10} {'RSS +MiB':>8} {'worst ping':>10} {'CPU s':>6}  outcome")
            selected = args.only.split(",") if args.only else list(ATTACKS)
            for name in selected:
                watch = Watch(server.pid, pinger)
                try:
                    outcome = await asyncio.wait_for(watch.run(ATTACKS[name](ctx)), 300)
                except Exception as exc:
                    outcome = f"FAILED: {exc!r}"
                if pinger.errors:
                    outcome += f" [honest client: {pinger.errors[0]}]"
                print(
                    f"{name:<10} {(watch.peak_rss - watch.base_rss) / MiB:>8.1f} {watch.worst_ping * 1000:>8.0f} ms "
                    f"{watch.cpu:>6.2f}  {outcome}",
                    flush=True,
                )
        if args.soak_only or not args.only:
            await soak(ctx, args.soak_clients, args.soak_duration)
        await pinger.stop()
        problems = [p for p in server.log_problems(10) if "CRITICAL" in p.upper() or "Traceback" in p]
        print(f"server log: {len(problems)} CRITICAL/traceback line(s)")
        for line in problems:
            print(f"    {line}")
        return 0
    finally:
        server.stop()
        if cluster is not None:
            cluster.destroy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="comma-separated attacks: " + ",".join(ATTACKS))
    parser.add_argument("--soak-only", action="store_true")
    parser.add_argument("--soak-clients", type=int, default=1000)
    parser.add_argument("--soak-duration", type=float, default=60.0)
    parser.add_argument("--server-args", default="", help="extra `twistd parsec` options")
    parser.add_argument(
        "--storage", choices=("memory", "postgresql"), default="memory",
        help="postgresql: the server on a throwaway PostgreSQL cluster (tests/pg_cluster.py), "
        "metadata and blocks in it (RSS and CPU are the server's, not PostgreSQL's)",
    )
    parser.add_argument("--pinger", nargs=2, metavar=("PORT", "ORG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pinger:
        asyncio.run(pinger_main(int(args.pinger[0]), args.pinger[1]))
        return 0
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
