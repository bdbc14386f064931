"""Log files an administrator can keep, checked with Debian's logrotate against real daemons.

* `--log-file` is appended to: a restart keeps the previous run's lines;
* logrotate's default (rename, then `postrotate` sends SIGUSR1): the server reopens the file
  by name, the old lines stay in `parsec.log.1`;
* logrotate's `copytruncate`: the file is copied then truncated while the server holds it
  open; the next line lands at the start of the file, with no hole of NUL bytes;
* twistd's own `--logfile` names the file; `--log-format` and `--log-level` apply to it.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from tests.ops.conftest import DEADLINE, MOCKED_ARGS, Daemon, free_port
from tests.tools import run_tool, sleep

ok = pytest_twisted.ensureDeferred

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
READY = "Parsec server ready, serving on"


async def logrotate(tmp_path: Path, log_file: Path, directives: str) -> None:
    """`logrotate --force` with a configuration of its own (state file in tmp_path)."""
    config = tmp_path / "logrotate.conf"
    config.write_text(f"{log_file} {{\n    rotate 2\n    missingok\n{directives}}}\n")
    config.chmod(0o644)
    result = await run_tool([LOGROTATE, "--force", "--state", str(tmp_path / "logrotate.state"), str(config)])
    assert result.code == 0, result


def events(path: Path) -> list[str]:
    """The log's events, the variable end of some cut off (`Parsec server ready, serving on`)."""
    texts = [json.loads(line)["event"] for line in path.read_text().splitlines()]
    return [READY if text.startswith(READY) else text for text in texts]


async def wait_for_lines(path: Path, event: str, count: int) -> None:
    deadline = reactor.seconds() + DEADLINE
    while not (path.exists() and events(path).count(event) >= count):
        if reactor.seconds() > deadline:
            pytest.fail(f"{count} x {event!r} never written to {path}")
        await sleep(0.05)


async def start(daemons, log_file: Path, *args: str) -> tuple[Daemon, int]:
    port = free_port()
    daemon = daemons.twistd(*MOCKED_ARGS, "--port", str(port), "-l", "INFO", "-f", "JSON", "--log-file", str(log_file), *args)
    await daemon.wait_ready(f"http://127.0.0.1:{port}")
    return daemon, port


@ok
async def test_log_file_is_appended_across_restarts(daemons, tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    for _ in range(2):
        daemon, _ = await start(daemons, log_file)
        assert await daemon.stop() == 0
    lines = events(log_file)
    assert lines.count(READY) == 2
    # Twisted's "Starting factory <ParsecSite object at 0x...>" is not INFO noise.
    assert not any(line.startswith(("Starting factory", "Stopping factory")) for line in lines), lines


@ok
async def test_logrotate_postrotate_sigusr1_reopens(daemons, tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    daemon, _ = await start(daemons, log_file)
    await logrotate(
        tmp_path, log_file, f"    create 0640\n    postrotate\n        kill -USR1 {daemon.pid}\n    endscript\n"
    )
    await wait_for_lines(log_file, "Received SIGUSR1: log file reopened", 1)
    assert READY in events(tmp_path / "parsec.log.1")
    assert READY not in events(log_file)
    assert await daemon.stop() == 0
    assert "Received SIGTERM: stopping" in events(log_file)
    assert "Received SIGTERM: stopping" not in events(tmp_path / "parsec.log.1")


@ok
async def test_logrotate_copytruncate_leaves_no_hole(daemons, tmp_path: Path) -> None:
    log_file = tmp_path / "parsec.log"
    daemon, _ = await start(daemons, log_file)
    for count in range(1, 6):  # move the server's file offset well past zero (signals coalesce)
        daemon.send(signal.SIGUSR1)
        await wait_for_lines(log_file, "Received SIGUSR1: log file reopened", count)
    size_before = log_file.stat().st_size
    await logrotate(tmp_path, log_file, "    copytruncate\n")
    assert (tmp_path / "parsec.log.1").stat().st_size >= size_before
    # SIGHUP's log line is written before the file is reopened: through the truncated one.
    daemon.send(signal.SIGHUP)
    await wait_for_lines(log_file, "Received SIGHUP: reopening the log file and reloading the TLS certificates", 1)
    data = log_file.read_bytes()
    assert b"\0" not in data
    assert data.startswith(b'{"')
    assert await daemon.stop() == 0


@ok
async def test_twistd_logfile_gets_our_format_and_level(daemons, tmp_path: Path) -> None:
    log_file = tmp_path / "twistd.log"
    port = free_port()
    daemon = daemons.twistd(
        *MOCKED_ARGS, "--port", str(port), "-f", "JSON", "-l", "INFO", twistd_args=["--logfile", str(log_file)]
    )
    await daemon.wait_ready(f"http://127.0.0.1:{port}")
    await logrotate(tmp_path, log_file, f"    postrotate\n        kill -USR1 {daemon.pid}\n    endscript\n")
    await wait_for_lines(log_file, "Received SIGUSR1: log file reopened", 1)
    assert await daemon.stop() == 0
    rotated = events(tmp_path / "twistd.log.1")  # JSON lines: our format
    assert READY in rotated
    assert "Received SIGTERM: stopping" in events(log_file)
    # The process's own output holds the start-up line only: the log went to the file.
    assert [line.split(" (")[0] for line in daemon.output().splitlines()] == [
        f"Starting Parsec Backend on 127.0.0.1:{port}"
    ]

    # At the default level (WARNING), the same start writes nothing.
    quiet = tmp_path / "quiet.log"
    port = free_port()
    daemon = daemons.twistd(*MOCKED_ARGS, "--port", str(port), twistd_args=["--logfile", str(quiet)])
    await daemon.wait_ready(f"http://127.0.0.1:{port}")
    assert await daemon.stop() == 0
    assert quiet.read_text() == ""
