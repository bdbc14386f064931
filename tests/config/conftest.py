"""Fixtures and helpers for the configuration / front-end tests.

Subprocess tests run the venv's own `parsec` and `twistd` scripts (next to sys.executable) or
`launcher.py` (the same front-ends with a stand-in service tree), always with an environment
cleaned of PARSEC_* / DEBUG / proxy variables, and always bounded by a timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import attrs
import pytest

import parsec.logging

BIN_DIR = Path(sys.executable).parent
PARSEC = str(BIN_DIR / "parsec")
TWISTD = str(BIN_DIR / "twistd")
LAUNCHER = str(Path(__file__).with_name("launcher.py"))
REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT = 60

# The required options, as environment variables (tests override some of them).
REQUIRED_ENV: dict[str, str] = {
    "PARSEC_DB": "MOCKED",
    "PARSEC_BLOCKSTORE": "MOCKED",
    "PARSEC_ADMINISTRATION_TOKEN": "t0ken",
    "PARSEC_BACKEND_ADDR": "parsec://parsec.test",
    "PARSEC_EMAIL_HOST": "MOCKED",
}
# The same, as command line arguments.
REQUIRED_ARGS: list[str] = [
    "--db=MOCKED",
    "--blockstore=MOCKED",
    "--administration-token=t0ken",
    "--backend-addr=parsec://parsec.test",
    "--email-host=MOCKED",
]


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ without anything that could change the server configuration or reach out."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PARSEC_", "SENTRY_"))
        and name not in ("DEBUG",)
        and not name.lower().endswith("_proxy")
    }
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra or {})
    return env


@attrs.frozen
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None) -> Result:
    completed = subprocess.run(
        list(argv),
        env=clean_environ(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )
    return Result(tuple(argv), completed.returncode, completed.stdout, completed.stderr)


def run_many(
    jobs: Sequence[tuple[Sequence[str], Mapping[str, str] | None]], cwd: str | Path | None = None
) -> list[Result]:
    """Run independent commands concurrently (each bounded by the timeout); results in order."""
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        futures = [pool.submit(run, argv, env, cwd) for argv, env in jobs]
        return [future.result() for future in futures]


class Server:
    """A front-end process that runs until signalled; stderr is read line by line."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.process = subprocess.Popen(
            self.argv,
            env=clean_environ(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.stderr_lines: list[str] = []
        self.stdout_lines: list[str] = []
        # Watchdog: a hung process is killed, so reads below always end.
        self._watchdog = threading.Timer(SUBPROCESS_TIMEOUT, self.kill)
        self._watchdog.start()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()

    def wait_for_stderr(self, marker: str) -> str:
        """Read stderr lines until one contains `marker`; fails if the process ends first."""
        assert self.process.stderr is not None
        return self._wait_for(self.process.stderr, self.stderr_lines, marker)

    def wait_for_stdout(self, marker: str) -> str:
        assert self.process.stdout is not None
        return self._wait_for(self.process.stdout, self.stdout_lines, marker)

    def _wait_for(self, stream: IO[str], seen: list[str], marker: str) -> str:
        for line in stream:
            seen.append(line)
            if marker in line:
                return line
        raise AssertionError(f"{marker!r} never written; got:\n{''.join(seen)}")

    def stop(self, sig: int = signal.SIGTERM) -> Result:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            stdout, stderr = self.process.communicate(timeout=SUBPROCESS_TIMEOUT)
        finally:
            self._watchdog.cancel()
            self.kill()
        self.stderr_lines.append(stderr)
        self.stdout_lines.append(stdout)
        return Result(
            tuple(self.argv), self.process.returncode, "".join(self.stdout_lines), "".join(self.stderr_lines)
        )


@pytest.fixture
def start_server() -> Iterator[type[Server]]:
    started: list[Server] = []

    def factory(
        argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None
    ) -> Server:
        server = Server(argv, env, cwd)
        started.append(server)
        return server

    yield factory  # type: ignore[misc]
    for server in started:
        server._watchdog.cancel()
        server.kill()
        server.process.wait(timeout=SUBPROCESS_TIMEOUT)
        for stream in (server.process.stdout, server.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture(autouse=True)
def _isolate(monkeypatch: pytest.MonkeyPatch) -> None:
    # tap.Options stashes the log settings for twistd's observer factory: keep tests apart.
    monkeypatch.setattr(parsec.logging, "_twistd_settings", None)
    # tap.Options reads os.environ (tox passes PARSEC_* through): none may leak into a test.
    for name in list(os.environ):
        if name.startswith("PARSEC_") or name == "DEBUG":
            monkeypatch.delenv(name)
