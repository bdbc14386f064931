"""A msgpack encoder for hostile test messages, plus the decodability oracle of docs/protocol/transport.md §4.

The project codec only writes canonical msgpack. Fuzzing needs more: every legal but
non-minimal encoding (a 1 stored as uint64, a short str as str32, float32), ext values with
any code and payload, str values holding invalid UTF-8, and pre-encoded chunks spliced in
(deep nesting). `pack(value, rng)` writes the wire form of:

* None, bool, int (-2**63 .. 2**64-1), float, str, bytes, list/tuple, dict;
* `datetime` -> ext 1 (float64 seconds), `UUID` -> ext 2 (16 bytes);
* `Pairs(((k, v), ...))` -> a map with any keys, duplicates included;
* `Ext(code, data)` -> any ext; `F32(x)` -> float32; `BadStr(raw)` -> str header + raw bytes;
  `Raw(chunk)` -> the chunk verbatim.

With an `rng`, each header picks at random among the encodings able to hold the value.

`decodable(payload)` says whether a server must accept the bytes as a message, from the
spec's rules (root map, no trailing bytes, valid UTF-8 str, bin <= 1 MiB, ext 1 = 8 bytes of
a float64 giving a representable UTC instant, ext 2 = 16 bytes) and the limits of
parsec.limits (str bytes, array and map lengths, nesting depth of non-empty containers,
number of values), using the msgpack library as a plain parser. Ext -1 is msgpack's own timestamp type, which msgpack always parses (a
payload other than 4/8/12 valid bytes is a parse error, for the reference server too); the
other negative codes are reserved by msgpack and its `ExtType` refuses them, so they are
undecodable as well (again like the reference, whose ext hook builds an `ExtType`).
"""

from __future__ import annotations

import math
import random
import struct
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import attrs
import msgpack

from parsec.limits import DEFAULT as LIMITS

MAX_BIN = LIMITS.msgpack_bin_bytes
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@attrs.frozen
class Ext:
    code: int
    data: bytes


@attrs.frozen
class F32:
    value: float


@attrs.frozen
class BadStr:
    """A msgpack str whose payload is these raw bytes (usually invalid UTF-8)."""

    raw: bytes


@attrs.frozen
class Pairs:
    """A map given as (key, value) pairs: keys may repeat or be unhashable (list, map)."""

    items: tuple[tuple[Any, Any], ...]


@attrs.frozen
class Raw:
    """Already encoded msgpack, inserted as is."""

    chunk: bytes


def datetime_ext(ts: float) -> Ext:
    return Ext(1, struct.pack(">d", ts))


def _pick(rng: random.Random | None, options: list[bytes]) -> bytes:
    return options[0] if rng is None else rng.choice(options)


def _int(value: int, rng: random.Random | None) -> bytes:
    options: list[bytes] = []
    if 0 <= value <= 0x7F:
        options.append(bytes([value]))
    if -32 <= value < 0:
        options.append(struct.pack(">b", value))
    if value >= 0:
        for fmt, head, limit in ((">B", 0xCC, 0xFF), (">H", 0xCD, 0xFFFF), (">I", 0xCE, 0xFFFFFFFF), (">Q", 0xCF, 2**64 - 1)):
            if value <= limit:
                options.append(bytes([head]) + struct.pack(fmt, value))
    for fmt, head, bits in ((">b", 0xD0, 8), (">h", 0xD1, 16), (">i", 0xD2, 32), (">q", 0xD3, 64)):
        if -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
            options.append(bytes([head]) + struct.pack(fmt, value))
    if not options:
        raise ValueError(f"int out of msgpack range: {value}")
    return _pick(rng, options)


def _sized(length: int, fix: tuple[int, int] | None, heads: list[tuple[int, str]], rng: random.Random | None) -> bytes:
    """Header of a str/bin/array/map: `fix` = (base, max length) of the fix form."""
    options: list[bytes] = []
    if fix is not None and length <= fix[1]:
        options.append(bytes([fix[0] | length]))
    for head, fmt in heads:
        if length < 2 ** (8 * struct.calcsize(fmt)):
            options.append(bytes([head]) + struct.pack(fmt, length))
    return _pick(rng, options)


_STR_HEADS = [(0xD9, ">B"), (0xDA, ">H"), (0xDB, ">I")]
_BIN_HEADS = [(0xC4, ">B"), (0xC5, ">H"), (0xC6, ">I")]
_ARRAY_HEADS = [(0xDC, ">H"), (0xDD, ">I")]
_MAP_HEADS = [(0xDE, ">H"), (0xDF, ">I")]


def _ext(code: int, data: bytes, rng: random.Random | None) -> bytes:
    options: list[bytes] = []
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if len(data) in fixed:
        options.append(bytes([fixed[len(data)]]))
    for head, fmt in ((0xC7, ">B"), (0xC8, ">H"), (0xC9, ">I")):
        if len(data) < 2 ** (8 * struct.calcsize(fmt)):
            options.append(bytes([head]) + struct.pack(fmt, len(data)))
    return _pick(rng, options) + struct.pack(">b", code) + data


def pack(value: Any, rng: random.Random | None = None) -> bytes:
    out: list[bytes] = []
    _pack_into(value, rng, out)
    return b"".join(out)


def _pack_into(value: Any, rng: random.Random | None, out: list[bytes]) -> None:
    if value is None:
        out.append(b"\xc0")
    elif value is True:
        out.append(b"\xc3")
    elif value is False:
        out.append(b"\xc2")
    elif isinstance(value, int):
        out.append(_int(value, rng))
    elif isinstance(value, float):
        out.append(b"\xcb" + struct.pack(">d", value))
    elif isinstance(value, F32):
        out.append(b"\xca" + struct.pack(">f", value.value))
    elif isinstance(value, str):
        data = value.encode("utf8", "surrogatepass")
        out.append(_sized(len(data), (0xA0, 31), _STR_HEADS, rng) + data)
    elif isinstance(value, BadStr):
        out.append(_sized(len(value.raw), (0xA0, 31), _STR_HEADS, rng) + value.raw)
    elif isinstance(value, bytes | bytearray):
        out.append(_sized(len(value), None, _BIN_HEADS, rng) + bytes(value))
    elif isinstance(value, list | tuple):
        out.append(_sized(len(value), (0x90, 15), _ARRAY_HEADS, rng))
        for item in value:
            _pack_into(item, rng, out)
    elif isinstance(value, dict):
        out.append(_sized(len(value), (0x80, 15), _MAP_HEADS, rng))
        for key, item in value.items():
            _pack_into(key, rng, out)
            _pack_into(item, rng, out)
    elif isinstance(value, Pairs):
        out.append(_sized(len(value.items), (0x80, 15), _MAP_HEADS, rng))
        for key, item in value.items:
            _pack_into(key, rng, out)
            _pack_into(item, rng, out)
    elif isinstance(value, datetime):
        out.append(_ext(1, struct.pack(">d", value.timestamp()), rng))
    elif isinstance(value, UUID):
        out.append(_ext(2, value.bytes, rng))
    elif isinstance(value, Ext):
        out.append(_ext(value.code, value.data, rng))
    elif isinstance(value, Raw):
        out.append(value.chunk)
    else:
        raise TypeError(f"cannot pack {type(value).__name__}")


# --- oracle -----------------------------------------------------------------------------------


class _Undecodable(Exception):
    pass


def _valid_instant(ts: float) -> bool:
    if not math.isfinite(ts):
        return False
    try:
        EPOCH + timedelta(seconds=ts)
    except OverflowError:
        return False
    # datetime covers years 1..9999 (the generators never use fractions at the very ends).
    return -62135596800.0 <= ts <= 253402300799.0


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 1:
        if len(data) != 8 or not _valid_instant(struct.unpack(">d", data)[0]):
            raise _Undecodable()
    elif code == 2:
        if len(data) != 16:
            raise _Undecodable()
    return msgpack.ExtType(code, data)


def decodable(payload: bytes) -> bool:
    """True iff the spec says `payload` is a valid message (see the module docstring)."""
    try:
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_BIN,
            max_str_len=LIMITS.msgpack_str_bytes,
            max_array_len=LIMITS.msgpack_array_len,
            max_map_len=LIMITS.msgpack_map_len,
            max_ext_len=MAX_BIN,
            ext_hook=_ext_hook,
            timestamp=0,
        )
    except Exception:
        return False
    return isinstance(value, dict) and _within_limits(value)


def _within_limits(root: Any) -> bool:
    """Depth of non-empty containers <= msgpack_depth; values (keys included) <= msgpack_objects."""
    count = 0
    todo: list[tuple[Any, int]] = [(root, 1)]
    while todo:
        value, depth = todo.pop()
        count += 1
        if count > LIMITS.msgpack_objects:
            return False
        children: list[Any] = []
        if isinstance(value, dict):
            children = [item for pair in value.items() for item in pair]
        elif isinstance(value, (list, tuple)):
            children = list(value)
        if children:
            if depth > LIMITS.msgpack_depth:
                return False
            todo.extend((child, depth + 1) for child in children)
    return True

