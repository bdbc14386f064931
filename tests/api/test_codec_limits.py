"""The codec's limits (parsec.limits), at their boundaries: checked on the headers, before
msgpack builds anything."""

from __future__ import annotations

import pytest

from parsec.api.codec import DecodeError, unpackb
from parsec.limits import DEFAULT as LIMITS

HEAD = b"\x81\xa1a"  # {"a": <value>}


def nested(depth: int) -> bytes:
    """A document whose non-empty containers nest `depth` deep (the root map is 1)."""
    return HEAD + b"\x91" * (depth - 1) + b"\xc0"


def test_depth_boundary() -> None:
    unpackb(nested(LIMITS.msgpack_depth))
    with pytest.raises(DecodeError, match="nested too deeply"):
        unpackb(nested(LIMITS.msgpack_depth + 1))
    # Empty containers do not nest anything.
    unpackb(HEAD + b"\x91" * (LIMITS.msgpack_depth - 1) + b"\x90")


def _str(size: int) -> bytes:
    return HEAD + b"\xdb" + size.to_bytes(4, "big") + b"s" * size


def test_str_boundary() -> None:
    assert len(unpackb(_str(LIMITS.msgpack_str_bytes))["a"]) == LIMITS.msgpack_str_bytes
    with pytest.raises(DecodeError, match="str too long"):
        unpackb(_str(LIMITS.msgpack_str_bytes + 1))


def _bin(size: int) -> bytes:
    return HEAD + b"\xc6" + size.to_bytes(4, "big") + bytes(size)


def test_bin_boundary() -> None:
    assert len(unpackb(_bin(LIMITS.msgpack_bin_bytes))["a"]) == LIMITS.msgpack_bin_bytes
    with pytest.raises(DecodeError, match="bin too long"):
        unpackb(_bin(LIMITS.msgpack_bin_bytes + 1))


def _array(size: int) -> bytes:
    return HEAD + b"\xdd" + size.to_bytes(4, "big") + b"\xc0" * size


def test_array_and_map_boundaries() -> None:
    assert len(unpackb(_array(LIMITS.msgpack_array_len))["a"]) == LIMITS.msgpack_array_len
    with pytest.raises(DecodeError, match="array too long"):
        unpackb(_array(LIMITS.msgpack_array_len + 1))
    pairs = b"".join(b"\xcd" + i.to_bytes(2, "big") + b"\xc0" for i in range(LIMITS.msgpack_map_len - 256))
    doc = HEAD + b"\xdf" + (LIMITS.msgpack_map_len + 1).to_bytes(4, "big") + pairs
    with pytest.raises(DecodeError, match="map too long"):
        unpackb(doc)


def test_value_count_boundary() -> None:
    # root map (1) + key (1) + array (1) + items: exactly the limit, then one more.
    items = LIMITS.msgpack_objects - 3
    half = items // 2
    exact = HEAD + b"\x92" + b"\xdd" + (half - 1).to_bytes(4, "big") + b"\xc0" * (half - 1)
    exact += b"\xdd" + (items - half - 1).to_bytes(4, "big") + b"\xc0" * (items - half - 1)
    unpackb(exact)
    over = HEAD + b"\x92" + b"\xdd" + (half - 1).to_bytes(4, "big") + b"\xc0" * (half - 1)
    over += b"\xdd" + (items - half).to_bytes(4, "big") + b"\xc0" * (items - half)
    with pytest.raises(DecodeError, match="too many values"):
        unpackb(over)


@pytest.mark.parametrize("raw", [b"", HEAD, HEAD + b"\xdd\x00\x01\x00\x00", HEAD + b"\xdb\x00\x00\x10\x00abc", b"\xdf\xff\xff"])
def test_truncated_documents_are_refused_by_msgpack(raw: bytes) -> None:
    with pytest.raises(DecodeError, match="Invalid msgpack data"):
        unpackb(raw)
