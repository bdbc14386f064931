"""Fuzz suite options: PARSEC_FUZZ_SEED (int or `random`), PARSEC_FUZZ_SCALE (case count
multiplier), PARSEC_FUZZ_STATS=1 (print the (command, status) counts at the end)."""

from __future__ import annotations

from typing import Any


def pytest_report_header(config: Any) -> str:
    from tests.fuzz.gen import SEED, fuzz_scale

    return f"parsec fuzz: PARSEC_FUZZ_SEED={SEED} PARSEC_FUZZ_SCALE={fuzz_scale()}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.fuzz.common import SHOW_STATS, STATS

    if SHOW_STATS and STATS:
        terminalreporter.section("fuzz replies (command, status): count")
        for (cmd, status), count in sorted(STATS.items()):
            terminalreporter.write_line(f"{cmd:45} {status:28} {count}")
