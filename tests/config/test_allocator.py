"""parsec.allocator: the glibc settings are applied (the server calls this at start-up)."""

from __future__ import annotations

import platform

import pytest

from parsec.allocator import tune_allocator


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_tune_allocator_applies_on_glibc() -> None:
    assert tune_allocator() is True
