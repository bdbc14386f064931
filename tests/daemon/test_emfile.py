"""Out of file descriptors: a real `twistd parsec` under a low RLIMIT_NOFILE warns at start-up,
logs refused accepts (EMFILE) at WARNING, and serves again once the clients are gone."""

from __future__ import annotations

import resource
import socket
import subprocess
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from tests import httpclient
from tests.daemon.test_twistd import BIN, free_port, wait_ready

ok = pytest_twisted.ensureDeferred
FD_LIMIT = 64


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


async def _until_logged(log: Path, marker: str, timeout: float = 60.0) -> str:
    for _ in range(int(timeout / 0.05)):
        text = log.read_text() if log.exists() else ""
        if marker in text:
            return text
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError(f"{marker!r} never logged:\n{log.read_text() if log.exists() else ''}")


@pytest.mark.storage("memory")
@ok
async def test_emfile_is_a_warning(tmp_path, server_storage):
    port = free_port()
    log = tmp_path / "parsec.log"
    proc = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "parsec", "--dev", "--port", str(port), "--host", "127.0.0.1",
         "--log-file", str(log), *server_storage.twistd_args()],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_low_fd_limit,
    )
    held: list[socket.socket] = []
    try:
        await wait_ready(port, proc)
        await _until_logged(log, f"File descriptor limit {FD_LIMIT} is below --max-connections")
        for _ in range(2 * FD_LIMIT):
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
            except OSError:
                continue  # the backlog is full: the server is out of descriptors already
            await task.deferLater(reactor, 0, lambda: None)
        text = await _until_logged(log, "Cannot accept new connections (EMFILE")
        assert "CRITICAL" not in text and "Traceback" not in text, text
        for sock in held:
            sock.close()
        held.clear()
        # Descriptors come back: the server serves again.
        for _ in range(200):
            try:
                if (await httpclient.request(port, "GET", "/")).status == 200:
                    break
            except Exception:
                pass
            await task.deferLater(reactor, 0.05, lambda: None)
        else:
            raise AssertionError("the server did not serve again")
    finally:
        for sock in held:
            sock.close()
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stdout:
            proc.stdout.close()
