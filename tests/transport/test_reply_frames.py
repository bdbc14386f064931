"""binary_frame: the websocket frames replies are sent in (RFC 6455 §5.2), at the length-field
boundaries, and the limit that turns a reply into `bad_message`."""

from __future__ import annotations

import struct

import pytest

from parsec.api.codec import packb, unpackb
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
    frame = binary_frame(message, 16 * 1024 * 1024)
    assert frame is not None
    first, payload = _parse(frame)
    assert first == 0x82  # FIN + binary
    assert payload == packed and unpackb(payload) == message


def test_over_the_limit_is_refused_without_a_frame() -> None:
    message = {"status": "ok", "block": b"x" * 1000}
    size = len(packb(message))
    assert binary_frame(message, size) is not None
    assert binary_frame(message, size - 1) is None
    # The reused buffer is left clean after a refusal.
    assert _parse(binary_frame({"status": "ok"}, 100) or b"")[1] == packb({"status": "ok"})
