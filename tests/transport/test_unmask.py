"""The server unmasks the client's frames itself (parsec.web.websocket.unmask_into): with
Autobahn's compiled XOR when installed, with Python integers otherwise. Both against RFC 6455
§5.3 computed byte by byte; control frames with Python integers."""

from __future__ import annotations

import random

import pytest

from parsec.web import websocket


def _reference(data: bytes, key: bytes) -> bytes:
    return bytes(byte ^ key[i % 4] for i, byte in enumerate(data))


@pytest.mark.parametrize("compiled", [True, False])
def test_unmask_into_matches_the_rfc(monkeypatch: pytest.MonkeyPatch, compiled: bool) -> None:
    if compiled and websocket._nvx is None:
        pytest.skip("Autobahn installed without its compiled masker")
    if not compiled:
        monkeypatch.setattr(websocket, "_nvx", None)
    rng = random.Random(15)
    for size in (0, 1, 3, 4, 5, 17, 125, 126, 4096, 65_537, 512 * 1024 + 3):
        for start in (0, 1, 7):
            key = rng.randbytes(4)
            frame_payload = rng.randbytes(size)
            buffer = bytearray(rng.randbytes(start) + frame_payload + b"tail")
            before = bytes(buffer)
            websocket.unmask_into(buffer, start, size, key)
            assert buffer[:start] == before[:start]
            assert buffer[start : start + size] == _reference(frame_payload, key)
            assert buffer[start + size :] == b"tail"


def test_control_frames_unmask() -> None:
    rng = random.Random(16)
    for size in range(126):
        key, data = rng.randbytes(4), rng.randbytes(size)
        assert websocket._unmasked(data, key) == _reference(data, key)
