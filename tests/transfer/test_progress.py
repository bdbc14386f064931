"""The progress display, driven with a fake clock."""

from __future__ import annotations

import io

from parsec.transfer.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_terminal_bar_redrawn_in_place() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=True, clock=clock)
    progress.start("vlob_atom", 1000)
    clock.now += 0.1
    progress.update(100)  # too soon after the first drawing: not redrawn
    clock.now += 0.4
    progress.update(500)
    clock.now += 0.5
    assert progress.finish(1000) == 1.0
    frames = out.getvalue().split("\r")[1:]
    assert len(frames) == 3
    assert frames[0].startswith("vlob_atom ") and "[....................]" in frames[0] and "0/1,000 rows" in frames[0]
    assert "[##########..........]" in frames[1] and "500/1,000 rows" in frames[1] and "1,000 rows/s" in frames[1]
    assert "[####################]" in frames[2] and "1,000/1,000 rows" in frames[2] and frames[2].endswith("\n")
    assert "\n" not in "".join(frames[:2])


def test_plain_lines_elsewhere() -> None:
    out, clock = io.StringIO(), Clock()
    progress = Progress(out, tty=False, clock=clock)
    progress.start("block", 30000)
    clock.now += 4
    progress.update(10000)  # quiet: less than 10 s since the last line
    clock.now += 8
    progress.update(24000)
    clock.now += 3
    progress.finish(30000)
    assert out.getvalue().splitlines() == [
        "block: 24,000/30,000 rows, 2,000 rows/s",
        "block: 30,000 rows in 15.0 s (2,000 rows/s)",
    ]
