"""msgpack encoding of every protocol message (docs/protocol/transport.md §4).

* datetime <-> ext type 1: 8 bytes, big-endian float64 seconds since the epoch (UTC);
* UUID <-> ext type 2: the 16 raw bytes (a payload of another size makes the
  whole message undecodable);
* other ext types decode to an opaque `msgpack.ExtType` that no schema field accepts;
* bin values are limited to 1 MiB; the root must be a map; no trailing bytes.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgpack

MAX_BIN_LEN = 1024 * 1024
EXT_DATETIME = 1
EXT_UUID = 2
_DOUBLE = struct.Struct(">d")


class DecodeError(Exception):
    """The bytes are not a valid protocol message."""


def datetime_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


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
        return UUID(bytes=data)
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


def unpackb(raw: bytes, *, root_map: bool = True) -> Any:
    """Decode one message. Raises DecodeError (with a readable text)."""
    try:
        value = msgpack.unpackb(
            raw,
            ext_hook=_ext_hook,
            raw=False,
            strict_map_key=False,
            max_bin_len=MAX_BIN_LEN,
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
