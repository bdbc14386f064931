"""The access log lines of a real twistd, in both formats, read from its log file (curl as client)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import pytest_twisted

from tests.ops.conftest import MOCKED_ARGS, free_port
from tests.tools import CURL, run_tool

ok = pytest_twisted.ensureDeferred

CONSOLE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \[info    \] "
    r'(?P<client>\S+) "GET /health" 200 (?P<duration>\d+\.\d{3})s in=(?P<bytes_in>\d+) out=(?P<bytes_out>\d+) '
    r"\[parsec\.access\]$"
)


async def curl_sizes(url: str, *args: str) -> tuple[int, int]:
    """(bytes sent, bytes received) by curl for one request."""
    result = await run_tool([CURL, "-sS", "-o", "/dev/null", "-w", "%{size_request} %{size_header} %{size_download}", *args, url])
    sent, header, body = (int(value) for value in result.out.split())
    return sent, header + body


def access_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if "parsec.access" in line]


@pytest.mark.parametrize("log_format", ["CONSOLE", "JSON"])
@ok
async def test_access_line_formats(daemons, tmp_path: Path, log_format: str) -> None:
    port = free_port()
    log_file = tmp_path / "parsec.log"
    daemon = daemons.twistd(
        *MOCKED_ARGS, "--port", str(port), "--log-level", "INFO", "--log-format", log_format,
        "--log-file", str(log_file), "--trusted-proxy", "127.0.0.1",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    await daemon.wait_ready(url)
    sent, received = await curl_sizes(f"{url}/health", "-H", "X-Forwarded-For: 192.0.2.44")
    assert await daemon.stop() == 0
    (line,) = [line for line in access_lines(log_file) if "/health" in line]
    if log_format == "CONSOLE":
        match = CONSOLE_LINE.match(line)
        assert match is not None, line
        fields = match.groupdict()
    else:
        fields = json.loads(line)
        assert (fields["method"], fields["path"], fields["status"]) == ("GET", "/health", 200)
        assert fields["level"] == "info" and fields["namespace"] == "parsec.access"
        assert fields["event"].startswith('192.0.2.44 "GET /health" 200 ')
    assert fields["client"] == "192.0.2.44"  # the trusted proxy's X-Forwarded-For
    assert (int(fields["bytes_in"]), int(fields["bytes_out"])) == (sent, received)
    assert 0 <= float(fields["duration"]) < 10


@ok
async def test_no_access_line_below_info(daemons, tmp_path: Path) -> None:
    port = free_port()
    log_file = tmp_path / "parsec.log"
    daemon = daemons.twistd(*MOCKED_ARGS, "--port", str(port), "--log-file", str(log_file))  # WARNING
    await daemon.wait_ready(f"http://127.0.0.1:{port}")
    assert await daemon.stop() == 0
    assert access_lines(log_file) == []
