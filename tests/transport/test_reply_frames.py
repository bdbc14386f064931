"""binary_frame: the websocket frames replies are sent in (RFC 6455 §5.2), at the length-field
boundaries, and the limit that turns a reply into `bad_message`."""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from parsec.api.codec import SPLIT_BYTES, packb, unpackb
from parsec.web.websocket import binary_frame


def _parse(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked frame; the whole input must be that frame."""
    first, second = frame[0], frame[1]
    assert second & 0x80 == 0  # a server never masks
    length, offset = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
        assert length >= 126  # minimal encoding
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
        assert length >= 65536
    assert len(frame) == offset + length
    return first, frame[offset:]


@pytest.mark.parametrize("size", [5, 100, 125, 126, 127, 65535, 65536, 65537, 600_000])
def test_lengths_around_each_boundary(size: int) -> None:
    # A message of exactly `size` bytes: {"b": <bin of n>}, n found around size - overhead
    # (the bin header grows with n).
    candidates = [{"b": b"x" * n} for n in range(max(0, size - 12), size + 1)]
    message = next(m for m in candidates if len(packb(m)) == size)
    packed = packb(message)
    pieces = binary_frame(message, 16 * 1024 * 1024)
    assert pieces is not None
    first, payload = _parse(pieces if isinstance(pieces, bytes) else b"".join(pieces))
    assert first == 0x82  # FIN + binary
    assert payload == packed and unpackb(payload) == message


def test_over_the_limit_is_refused_without_a_frame() -> None:
    message = {"status": "ok", "block": b"x" * 1000}
    size = len(packb(message))
    assert binary_frame(message, size) is not None
    assert binary_frame(message, size - 1) is None
    # The reused buffer is left clean after a refusal.
    assert _parse(binary_frame({"status": "ok"}, 100) or b"")[1] == packb({"status": "ok"})
    # Also when the refused message held a large value.
    large = {"status": "ok", "block": b"x" * SPLIT_BYTES}
    assert binary_frame(large, len(packb(large)) - 1) is None
    assert _parse(binary_frame({"status": "ok"}, 100) or b"")[1] == packb({"status": "ok"})


@pytest.mark.parametrize(
    "message",
    [
        {"status": "ok", "block": b"b" * SPLIT_BYTES},
        {"status": "ok", "block": b"b" * 600_000},
        {"block": b"b" * 70_000, "status": "ok", "id": uuid4(), "n": 3, "when": datetime.now(UTC)},
        {"a": b"a" * 65_536, "b": b"", "c": b"c" * 100_000, "d": [1, "two", b"3"]},
    ],
)
def test_a_large_bytes_value_is_sent_as_it_is(message: dict[str, Any]) -> None:
    pieces = binary_frame(message, 16 * 1024 * 1024)
    assert isinstance(pieces, list)
    first, payload = _parse(b"".join(pieces))
    assert first == 0x82 and payload == packb(message) and unpackb(payload) == message
    large = [value for value in message.values() if isinstance(value, bytes) and len(value) >= SPLIT_BYTES]
    # Each large value is a piece of its own: the very object, not a copy.
    assert [piece for piece in pieces if any(piece is value for value in large)] == large


def test_small_values_make_one_piece() -> None:
    message = {"status": "ok", "block": b"b" * (SPLIT_BYTES - 1)}
    frame = binary_frame(message, 16 * 1024 * 1024)
    assert isinstance(frame, bytes)
    assert _parse(frame)[1] == packb(message)
