"""Hostile bytes on a websocket: random bytes, truncated and padded messages, nesting far
beyond any recursion limit, corrupted ext payloads, lying length headers (msgpack level);
then hostile frames written by hand (websocket level).

msgpack level, on an authenticated connection: the oracle of `tests.fuzz.common` (an
undecodable message gets `invalid_msg_format` + Close(1000), a decodable one a proper reply
and the connection lives on).

Websocket level: text frames get `invalid_msg_format` + Close(1000) (docs/protocol/transport.md §3);
protocol violations end the connection (docs/protocol/transport.md §6 says `invalid_msg_format` +
Close(1000) there too, as the reference was seen doing; Autobahn drops the TCP connection
instead, which no genuine client can notice: accepted here, either way); pings get pongs; a
valid request split in fragments, with pings in between, is served. Never a server
traceback, and the server keeps serving.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest_twisted

from parsec.api import protocol
from parsec.api.codec import packb, unpackb
from tests.fuzz import mpack
from tests.fuzz.common import INVALID_MSG_FORMAT, Session, build_world, record, where, ws_exchange
from tests.fuzz.gen import POISON_TIMESTAMPS, Gen, cases, rng_for
from tests.fuzz.wsraw import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, RawWs, frame
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

SPECS = protocol.AUTHENTICATED_COMMANDS


def nest(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"\x91" * depth + b"\xc0"
    if kind == "map":
        return b"\x81\xa1k" * depth + b"\xc0"
    # alternate arrays and maps
    return b"\x91\x81\xa1k" * (depth // 2) + b"\xc0"


def hostile_payloads(gen: Gen, world: Any) -> list[tuple[str, bytes]]:
    """(label, payload) pairs, a fresh draw per call."""
    rng = gen.rng
    spec = rng.choice(list(SPECS.values()))
    valid = packb({"cmd": spec.name, **gen.baseline(spec.req)})
    field = rng.choice(["ping", "realm_id", "user_id", "type", "batch", "cmd", "wait", "blob"])
    deep_kind = rng.choice(["array", "map", "mixed"])
    uuid_ext = b"\xd8\x02" + world.realm_id.bytes
    out: list[tuple[str, bytes]] = [
        ("random bytes", rng.randbytes(rng.choice([0, 1, 2, 5, 16, 64, 300]))),
        ("random after a map header", bytes([0x80 | rng.randrange(16)]) + rng.randbytes(rng.randint(0, 40))),
        ("truncated", valid[: rng.randrange(len(valid))]),
        ("trailing bytes", valid + rng.choice([b"\x00", b"\xc0", valid, rng.randbytes(3)])),
        ("root not a map", mpack.pack(rng.choice([[], [valid], 1, "cmd", None, b"x", 1.5]))),
        ("10 000 nested at the root", nest(10_000, deep_kind)),
        ("10 000 nested in a field", b"\x82\xa3cmd" + mpack.pack(spec.name) + mpack.pack(field) + nest(10_000, deep_kind)),
        ("nested at the decoder's limit", b"\x82\xa3cmd" + mpack.pack(spec.name) + mpack.pack(field) + nest(rng.choice([1000, 1022, 1023, 1024]), deep_kind)),
        ("nested as the cmd", b"\x81\xa3cmd" + nest(rng.choice([500, 1022, 5000]), deep_kind)),
        ("nested as a map key", b"\x82\xa3cmd\xa4ping" + b"\x81" + nest(rng.choice([3, 900]), "array") + b"\xc0"),
        # ext payload corruption: UUID of every wrong size, datetime not a float64 / not finite
        ("uuid ext short", b"\x82\xa3cmd\xaerealm_status\xa8realm_id" + b"\xc7\x0f\x02" + world.realm_id.bytes[:15]),
        ("uuid ext long", b"\x82\xa3cmd\xaerealm_status\xa8realm_id" + b"\xc7\x11\x02" + world.realm_id.bytes + b"\x00"),
        ("uuid ext lying length", b"\x82\xa3cmd\xaerealm_status\xa8realm_id" + b"\xc9\xff\xff\xff\xf0\x02" + world.realm_id.bytes),
        ("uuid ext cut", b"\x82\xa3cmd\xaerealm_status\xa8realm_id" + uuid_ext[: rng.randrange(2, len(uuid_ext))]),
        ("datetime ext bad size", b"\x81\xa9timestamp" + mpack.pack(mpack.Ext(1, rng.randbytes(rng.choice([0, 4, 7, 9, 16]))))),
        ("datetime ext not a datetime", b"\x81\xa9timestamp" + mpack.pack(mpack.datetime_ext(rng.choice(POISON_TIMESTAMPS)))),
        ("msgpack timestamp ext bad size", b"\x81\xa1t" + mpack.pack(mpack.Ext(-1, rng.randbytes(rng.choice([0, 3, 5, 13]))))),
        ("bit flip", _flip(valid, rng.randrange(len(valid)), rng.randrange(8))),
        # lying length headers: parsing must fail fast, without allocating what they claim
        ("str32 of 4 GiB", b"\x81\xa4ping\xdb\xff\xff\xff\xff" + b"x" * 10),
        ("bin32 of 4 GiB", b"\x81\xa4blob\xc6\xff\xff\xff\xff" + b"x" * 10),
        ("array32 of 4G items", b"\x81\xa5batch\xdd\xff\xff\xff\xff" + b"\xc0" * 10),
        ("map32 of 4G entries", b"\xdf\xff\xff\xff\xff" + b"\xc0" * 10),
        ("bin just over 1 MiB", b"\x82\xa3cmd\xacblock_create\xa5block\xc6" + struct.pack(">I", 1024 * 1024 + 1) + bytes(1024 * 1024 + 1)),
        ("invalid utf-8 str", b"\x82\xa3cmd\xa4ping\xa4ping" + rng.choice([b"\xa1\xff", b"\xa3\xed\xa0\x80", b"\xa2\xc3\x28"])),
        ("reserved type 0xc1", b"\x81\xa4ping\xc1"),
        ("unhashable key", b"\x82\xa3cmd\xa4ping" + rng.choice([b"\x91\x01", b"\x81\x01\x02"]) + b"\xc0"),
    ]
    if rng.random() < 0.1:
        # Many small items in a list field: the validator must cope (and answer bad_message).
        count = rng.choice([10_000, 200_000])
        body = {"cmd": "vlob_maintenance_save_reencryption_batch", "realm_id": world.realm_id, "encryption_revision": 2}
        out.append(("huge list", _with_field(body, "batch", b"\xdd" + struct.pack(">I", count) + b"\xc0" * count)))
    return out


def _flip(data: bytes, index: int, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[index] ^= 1 << bit
    return bytes(flipped)


def _with_field(body: dict[str, Any], name: str, encoded_value: bytes) -> bytes:
    encoded = packb(body)
    assert len(body) < 15
    return bytes([0x80 | (len(body) + 1)]) + encoded[1:] + mpack.pack(name) + encoded_value


@ok
async def test_hostile_msgpack(server):
    world = await build_world(server)
    name = "hostile-msgpack"
    gen = Gen(rng_for(name), world.known)

    async def connect() -> WsClient:
        return await world.org.connect("alice@dev1")

    session = Session(connect)
    case = 0
    try:
        for _ in range(cases(12)):
            for label, payload in hostile_payloads(gen, world):
                case += 1
                await ws_exchange(session, SPECS, payload, where(name, case, (label, payload[:100])), ping_tag=f"t{case}")
    finally:
        await session.close()
    assert session.reconnections > 1
    client = await world.org.connect("alice@dev1")
    rep = await client.cmd("realm_status", realm_id=world.realm_id)
    assert rep["status"] == "ok", rep
    await client.close()


# ---- websocket level ----------------------------------------------------------------------------


async def raw_session(server: Any, world: Any, gen: Gen) -> tuple[RawWs, bool]:
    """A raw websocket past the challenge, and past the authenticated handshake half the time."""
    ws = await RawWs.connect(server.port)
    challenge_frame = await ws.next_frame()
    assert challenge_frame is not None and challenge_frame.opcode == OP_BINARY
    if not gen.chance(0.5):
        return ws, False
    alice = world.org.devices["alice@dev1"]
    challenge = unpackb(challenge_frame.payload)["challenge"]
    answer = {
        "handshake": "answer",
        "type": "AUTHENTICATED",
        "client_api_version": [2, 7],
        "organization_id": world.organization_id,
        "device_id": "alice@dev1",
        "rvk": world.org.root_verify_key,
        "answer": bytes(alice.signing_key.sign(packb({"type": "signed_answer", "answer": challenge}))),
    }
    ws.write(frame(OP_BINARY, packb(answer)))
    result = await ws.next_frame()
    assert result is not None and unpackb(result.payload) == {"handshake": "result", "result": "ok"}
    return ws, True


def request_frames(gen: Gen, payload: bytes) -> list[bytes]:
    """A valid binary message split in fragments (some empty), with pings in between."""
    cuts = sorted(gen.rng.randint(0, len(payload)) for _ in range(gen.rng.randint(1, 4)))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames = []
    for index, part in enumerate(parts):
        frames.append(frame(OP_BINARY if index == 0 else OP_CONT, part, fin=index == len(parts) - 1))
        if gen.chance(0.3):
            frames.append(frame(OP_PING, b"mid"))
    return frames


VIOLATIONS = {
    "unmasked": lambda g: frame(OP_BINARY, packb({"cmd": "ping", "ping": "x"}), mask=False),
    "reserved bits": lambda g: frame(OP_BINARY, b"\x80", rsv=g.rng.randint(1, 7)),
    "reserved opcode": lambda g: frame(g.rng.choice([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), b"x"),
    "long control frame": lambda g: frame(OP_PING, b"p" * 126),
    "fragmented control frame": lambda g: frame(OP_PING, b"p", fin=False),
    "orphan continuation": lambda g: frame(OP_CONT, b"\x80"),
    "new message inside a fragmented one": lambda g: frame(OP_BINARY, b"\x81", fin=False) + frame(OP_BINARY, b"\x80"),
    "length with the top bit set": lambda g: frame(OP_BINARY, b"", length=2**63 + 5),
    "oversized frame header": lambda g: frame(OP_BINARY, b"\x00" * 16, length=2**40),
    "frame above the message limit": lambda g: frame(OP_BINARY, b"", length=16 * 1024 * 1024 + 1),
    "close with a bad code": lambda g: frame(OP_CLOSE, struct.pack(">H", g.rng.choice([0, 999, 1004, 1005, 1006, 1015, 2000, 5000]))),
    "close with one byte": lambda g: frame(OP_CLOSE, b"\x03"),
    "close with a bad reason": lambda g: frame(OP_CLOSE, struct.pack(">H", 1000) + b"\xff\xfe"),
    "non-minimal length": lambda g: b"\x82\xfe\x00\x05" + b"\x00\x00\x00\x00" + b"\x81\xa1a\xa1b",
}


@ok
async def test_hostile_frames(server):
    world = await build_world(server)
    name = "hostile-frames"
    gen = Gen(rng_for(name), world.known)
    for case in range(cases(100)):
        ws, ready = await raw_session(server, world, gen)
        choice = gen.rng.choice(["text", "violation", "violation", "ping", "fragments", "garbage", "abandon"])
        context = where(name, case, (choice, ready))
        if choice == "text":
            ws.write(frame(OP_TEXT, gen.rng.choice([b"", b"{}", b"\xff\xfe", "é".encode(), packb({"cmd": "ping", "ping": "x"})])))
            reply = await ws.next_frame()
            assert reply is not None and reply.opcode == OP_BINARY, f"{context} -> {reply!r}"
            assert unpackb(reply.payload) == INVALID_MSG_FORMAT, context
            close = await ws.next_frame()
            assert close is not None and close.opcode == OP_CLOSE, f"{context} -> {close!r}"
            assert close.payload[:2] == struct.pack(">H", 1000), f"{context} -> {close!r}"
        elif choice == "violation":
            label = gen.rng.choice(sorted(VIOLATIONS))
            context = where(name, case, (label, ready))
            ws.write(VIOLATIONS[label](gen))
            # The server ends the connection (a Close frame first or not); answer a Close
            # frame as a well-behaved client would, so the close handshake can complete.
            outcome = "dropped"
            while True:
                got = await ws.next_frame()
                if got is None:
                    break
                if got.opcode == OP_CLOSE:
                    outcome = f"close {struct.unpack('>H', got.payload[:2])[0] if len(got.payload) >= 2 else None}"
                    ws.write(frame(OP_CLOSE, got.payload[:2]))
                else:
                    outcome = f"frame {got.opcode} then " + outcome
            assert await ws.wait_lost(), f"{context} -> connection still open"
            record(f"ws {label}", outcome)
        elif choice == "ping":
            data = gen.rng.randbytes(gen.rng.randint(0, 125))
            ws.write(frame(OP_PING, data))
            pong = await ws.next_frame()
            assert pong is not None and pong.opcode == OP_PONG and pong.payload == data, f"{context} -> {pong!r}"
        elif choice == "fragments":
            if not ready:
                ws.abort()
                continue
            for chunk in request_frames(gen, packb({"cmd": "ping", "ping": "frag"})):
                ws.write(chunk)
            while True:
                got = await ws.next_frame()
                assert got is not None, f"{context} -> connection lost"
                if got.opcode == OP_BINARY:
                    assert unpackb(got.payload) == {"status": "ok", "pong": "frag"}, context
                    break
                assert got.opcode == OP_PONG, f"{context} -> {got!r}"
        elif choice == "garbage":
            ws.write(gen.rng.randbytes(gen.rng.randint(1, 300)))
            # Whatever that parses as: a reply, a close, or the server waiting for more.
            await ws.wait_lost(timeout=0.2)
        # "abandon": hang up in the middle of a frame
        else:
            ws.write(frame(OP_BINARY, b"\x82\xa3cmd", length=100)[: gen.rng.randint(1, 12)])
        ws.abort()
        await ws.wait_lost()
    client = await world.org.connect("alice@dev1")
    assert await client.cmd("ping", ping="end") == {"status": "ok", "pong": "end"}
    await client.close()
