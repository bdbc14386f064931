"""msgpack encoding of every protocol message (docs/protocol/transport.md §4).

* datetime <-> ext type 1: 8 bytes, big-endian float64 seconds since the epoch (UTC);
* UUID <-> ext type 2: the 16 raw bytes (a payload of another size makes the
  whole message undecodable);
* other ext types decode to an opaque `msgpack.ExtType` that no schema field accepts;
* bin values are limited to 1 MiB; the root must be a map; no trailing bytes;
* before msgpack builds a single object, `scan` walks the headers and refuses a document
  over the limits of `parsec.limits` (str and bin bytes, array and map lengths, nesting
  depth, number of values): a hostile document costs at most `msgpack_objects` steps and
  allocates nothing.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, SafeUUID

import msgpack

from parsec import limits
from parsec.limits import DEFAULT as _LIMITS

MAX_BIN_LEN = _LIMITS.msgpack_bin_bytes
MAX_STR_LEN = _LIMITS.msgpack_str_bytes
MAX_ARRAY_LEN = _LIMITS.msgpack_array_len
MAX_MAP_LEN = _LIMITS.msgpack_map_len
MAX_DEPTH = _LIMITS.msgpack_depth
MAX_OBJECTS = _LIMITS.msgpack_objects
EXT_DATETIME = 1
EXT_UUID = 2
_DOUBLE = struct.Struct(">d")


class DecodeError(Exception):
    """The bytes are not a valid protocol message."""


def _over(limit: str, message: str) -> DecodeError:
    """The error of a document over the limit `limit` (counted: parsec.limits.hit)."""
    limits.hit(limit)
    return DecodeError(message)


def datetime_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


_new_object = object.__new__
_set_slot = object.__setattr__
_UNKNOWN_SAFETY = SafeUUID.unknown


def uuid_from_bytes(data: bytes) -> UUID:
    """`UUID(bytes=data)` for exactly 16 bytes, without `UUID.__init__`'s argument checks: a
    request carries several ids and the generic constructor was 3 % of a `vlob_create`
    (benchmarks/server_bench.py). Sets the same two slots `__init__` would."""
    value = _new_object(UUID)
    _set_slot(value, "int", int.from_bytes(data, "big"))
    _set_slot(value, "is_safe", _UNKNOWN_SAFETY)
    return value


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EXT_DATETIME:
        if len(data) != 8:
            raise DecodeError("Invalid datetime ext payload")
        try:
            return datetime_from_timestamp(_DOUBLE.unpack(data)[0])
        except (OverflowError, OSError, ValueError) as exc:
            raise DecodeError(f"Invalid datetime: {exc}") from exc
    if code == EXT_UUID:
        if len(data) != 16:
            raise DecodeError("Invalid UUID ext payload")
        return uuid_from_bytes(data)
    return msgpack.ExtType(code, data)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=UTC)
        return msgpack.ExtType(EXT_DATETIME, _DOUBLE.pack(obj.timestamp()))
    if isinstance(obj, UUID):
        return msgpack.ExtType(EXT_UUID, obj.bytes)
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"Cannot serialize {type(obj).__name__}")


def packb(data: Any) -> bytes:
    packed: bytes = msgpack.packb(data, default=_default, use_bin_type=True, datetime=False)
    return packed


class MessageTooLarge(ValueError):
    """Raised by a `pack_prefixed` prefix function to refuse the message (nothing is copied)."""


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(default=_default, use_bin_type=True, datetime=False, autoreset=False)


_packer = _new_packer()
# A buffer grown past this is dropped after use rather than kept for the next message.
_PACKER_KEEP = 2 * 1024 * 1024


def pack_prefixed(data: Any, prefix: Callable[[int], bytes]) -> bytes:
    """`prefix(size) + packb(data)` as one bytes object, `size` being the packed length.

    The message is packed into a buffer kept from one message to the next, then copied once,
    behind its prefix (e.g. a websocket frame header). `packb` then a concatenation would copy
    a 512 KiB block twice more and allocate fresh memory for each message (page faults): about
    30 % of the server CPU of a 512 KiB `block_read` (benchmarks/server_bench.py,
    block_read_512k). `prefix` may raise MessageTooLarge, then nothing is copied.
    """
    global _packer
    packer = _packer
    size = 0
    try:
        packer.pack(data)
        with packer.getbuffer() as view:
            size = len(view)
            framed: bytes = prefix(size) + view
            return framed
    finally:
        packer.reset()
        if size > _PACKER_KEEP:
            _packer = _new_packer()


# A bytes value from this size on is not copied into the packed message (`pack_pieces`).
SPLIT_BYTES = 64 * 1024
_BIN16 = struct.Struct("!BH")
_BIN32 = struct.Struct("!BI")


def _bin_header(size: int) -> bytes:
    if size < 256:
        return bytes((0xC4, size))
    if size < 65536:
        return _BIN16.pack(0xC5, size)
    return _BIN32.pack(0xC6, size)


def has_large_bytes(data: dict[str, Any], split: int = SPLIT_BYTES) -> bool:
    """Whether `pack_pieces` would split `data` (a plain loop: it runs for every reply)."""
    for value in data.values():
        if type(value) is bytes and len(value) >= split:
            return True
    return False


def pack_pieces(data: dict[str, Any], prefix: Callable[[int], bytes], split: int = SPLIT_BYTES) -> list[bytes]:
    """`pack_prefixed(data, prefix)` as pieces to be sent in order, each bytes value of `split`
    bytes or more being a piece of its own: the value itself, not a copy.

    Their concatenation is exactly `prefix(size) + packb(data)`. A 512 KiB `block_read` reply
    is then the frame header with the map's head, and the block: msgpack no longer copies the
    block into its buffer, nor the frame its buffer (the transport joins the pieces once, when
    it sends them): 2 copies of the block -> 1 (benchmarks/server_bench.py, block_read_512k).
    For a map without such a value, `pack_prefixed` costs less (one piece); see
    `has_large_bytes`.
    """
    if len(data) > 15:  # beyond a fixmap: not worth a case of its own
        return [pack_prefixed(data, prefix)]
    pieces: list[bytes] = []
    head = [bytes((0x80 | len(data),))]  # fixmap
    for key, value in data.items():
        if type(value) is bytes and len(value) >= split:
            head.append(packb(key))
            head.append(_bin_header(len(value)))
            pieces.append(b"".join(head))
            pieces.append(value)
            head = []
        else:
            head.append(packb(key))
            head.append(packb(value))
    if head:
        pieces.append(b"".join(head))
    pieces[0] = prefix(sum(len(piece) for piece in pieces)) + pieces[0]
    return pieces


# Headers of the msgpack format (https://github.com/msgpack/msgpack/blob/master/spec.md):
# first byte -> (kind, bytes of the length field, fixed payload size). Fix* forms are
# handled in `scan` itself.
_SCALAR, _STR, _BIN, _EXT, _ARRAY, _MAP, _INVALID = range(7)
_HEADERS: dict[int, tuple[int, int, int]] = {
    0xC0: (_SCALAR, 0, 0), 0xC1: (_INVALID, 0, 0), 0xC2: (_SCALAR, 0, 0), 0xC3: (_SCALAR, 0, 0),
    0xC4: (_BIN, 1, 0), 0xC5: (_BIN, 2, 0), 0xC6: (_BIN, 4, 0),
    0xC7: (_EXT, 1, 1), 0xC8: (_EXT, 2, 1), 0xC9: (_EXT, 4, 1),
    0xCA: (_SCALAR, 0, 4), 0xCB: (_SCALAR, 0, 8),
    0xCC: (_SCALAR, 0, 1), 0xCD: (_SCALAR, 0, 2), 0xCE: (_SCALAR, 0, 4), 0xCF: (_SCALAR, 0, 8),
    0xD0: (_SCALAR, 0, 1), 0xD1: (_SCALAR, 0, 2), 0xD2: (_SCALAR, 0, 4), 0xD3: (_SCALAR, 0, 8),
    0xD4: (_SCALAR, 0, 2), 0xD5: (_SCALAR, 0, 3), 0xD6: (_SCALAR, 0, 5), 0xD7: (_SCALAR, 0, 9),
    0xD8: (_SCALAR, 0, 17),
    0xD9: (_STR, 1, 0), 0xDA: (_STR, 2, 0), 0xDB: (_STR, 4, 0),
    0xDC: (_ARRAY, 2, 0), 0xDD: (_ARRAY, 4, 0), 0xDE: (_MAP, 2, 0), 0xDF: (_MAP, 4, 0),
}


def scan(raw: bytes | bytearray) -> None:
    """Check a msgpack document against the limits without building it (DecodeError).

    Only headers are read: str, bin and ext bodies are skipped in one step, so the cost is
    one step per value, and at most `MAX_OBJECTS` steps. Whatever is malformed (truncated,
    0xc1, trailing bytes) is left to msgpack, which refuses it with its own text.
    """
    end = len(raw)
    i = 0
    objects = 0
    remaining = 1  # values still expected in the innermost open container (root: one value)
    stack: list[int] = []  # the same count for each enclosing container
    while True:
        if i >= end:
            return  # truncated
        objects += 1
        if objects > MAX_OBJECTS:
            raise _over("msgpack_objects", "Invalid msgpack data: too many values")
        b = raw[i]
        count = -1  # children of a container
        if b <= 0x7F or b >= 0xE0:
            i += 1
        elif b <= 0x8F:
            count = 2 * (b & 0x0F)
            i += 1
        elif b <= 0x9F:
            count = b & 0x0F
            i += 1
        elif b <= 0xBF:
            size = b & 0x1F
            i += 1 + size
        else:
            kind, width, fixed = _HEADERS[b]
            if kind == _INVALID:
                return  # msgpack gives its own error
            if width:
                if i + 1 + width > end:
                    return  # truncated
                size = int.from_bytes(raw[i + 1 : i + 1 + width], "big")
            else:
                size = 0
            i += 1 + width
            if kind == _SCALAR:
                i += fixed
            elif kind == _STR:
                if size > MAX_STR_LEN:
                    raise _over("msgpack_str_bytes", "Invalid msgpack data: str too long")
                i += size
            elif kind == _BIN:
                if size > MAX_BIN_LEN:
                    raise _over("msgpack_bin_bytes", "Invalid msgpack data: bin too long")
                i += size
            elif kind == _EXT:
                i += fixed + size
            elif kind == _ARRAY:
                if size > MAX_ARRAY_LEN:
                    raise _over("msgpack_array_len", "Invalid msgpack data: array too long")
                count = size
            else:
                if size > MAX_MAP_LEN:
                    raise _over("msgpack_map_len", "Invalid msgpack data: map too long")
                count = 2 * size
        if i > end:
            return  # truncated
        if count > 0:
            if len(stack) >= MAX_DEPTH:
                raise _over("msgpack_depth", "Invalid msgpack data: nested too deeply")
            stack.append(remaining - 1)
            remaining = count
            continue
        remaining -= 1
        while remaining == 0:
            if not stack:
                return
            remaining = stack.pop()


def unpackb(raw: bytes | bytearray, *, root_map: bool = True, scanned: bool = True) -> Any:
    """Decode one message. Raises DecodeError (with a short, fixed text).

    `scanned=False` skips `scan`, a pass in Python over the document, for documents this
    server wrote and whose size something else bounds (NOTIFY payloads, under 8000 bytes
    by PostgreSQL's own limit); msgpack's length limits below still apply."""
    if scanned:
        scan(raw)
    try:
        value = msgpack.unpackb(
            raw,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_BIN_LEN,
            max_str_len=MAX_STR_LEN,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=MAX_BIN_LEN,
            timestamp=0,
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("Invalid msgpack data: unpack(b) received extra data.") from None
    except Exception as exc:  # msgpack raises many unrelated types (ValueError, TypeError, ...)
        raise DecodeError(f"Invalid msgpack data: {exc}") from None
    if root_map and not isinstance(value, dict):
        raise DecodeError("Invalid msgpack data: root must be a map")
    return value
