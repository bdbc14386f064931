"""Progress of a transfer: one bar per table on a terminal, plain lines otherwise.

Terminal (the output is a TTY): the current table's line is redrawn in place (carriage
return) at most `REDRAW_INTERVAL` times a second,

    vlob_atom              [##########..........]   52,000/100,000 rows   31,250 rows/s

and stays on screen, completed, when the table is done. Elsewhere (a log file, a pipe, a
test): a line every `LINE_INTERVAL` seconds while a long table is copied, and one when each
table ends (rows, seconds, rows/s).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

REDRAW_INTERVAL = 0.2
LINE_INTERVAL = 10.0
BAR_WIDTH = 20
NAME_WIDTH = 24


def _rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else 0.0


class Progress:
    """Progress display for the tables of one transfer (see module doc)."""

    def __init__(self, out: TextIO, tty: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        self._clock = clock
        self._name = ""
        self._total: int | None = None
        self._start = 0.0
        self._last_draw = 0.0
        self._rows = 0

    def line(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    def start(self, name: str, total: int | None) -> None:
        self._name = name
        self._total = total
        self._rows = 0
        self._start = self._last_draw = self._clock()
        if self._tty:
            self._draw()

    def update(self, rows: int) -> None:
        self._rows = rows
        now = self._clock()
        if self._tty:
            if now - self._last_draw >= REDRAW_INTERVAL:
                self._last_draw = now
                self._draw()
        elif now - self._last_draw >= LINE_INTERVAL:
            self._last_draw = now
            of_total = f"/{self._total:,}" if self._total is not None else ""
            self.line(f"{self._name}: {rows:,}{of_total} rows, {_rate(rows, now - self._start):,.0f} rows/s")

    def finish(self, rows: int) -> float:
        """The table is done; returns its duration in seconds."""
        self._rows = rows
        elapsed = self._clock() - self._start
        if self._tty:
            self._draw(final=True)
        else:
            self.line(f"{self._name}: {rows:,} rows in {elapsed:.1f} s ({_rate(rows, elapsed):,.0f} rows/s)")
        return elapsed

    def _draw(self, final: bool = False) -> None:
        elapsed = self._clock() - self._start
        total = self._total
        if total:
            filled = min(BAR_WIDTH, BAR_WIDTH * self._rows // total)
        else:
            filled = BAR_WIDTH if final else 0
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        count = f"{self._rows:,}/{total:,}" if total is not None else f"{self._rows:,}"
        text = f"{self._name:<{NAME_WIDTH}} [{bar}] {count:>21} rows {_rate(self._rows, elapsed):>10,.0f} rows/s"
        self._out.write("\r" + text + ("\n" if final else ""))
        self._out.flush()
