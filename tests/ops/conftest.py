"""Real daemons for the operations tests: `twistd parsec` / `parsec backend run` processes.

`daemons.twistd(*args)` starts `twistd -n --pidfile= parsec <args>` (`daemons.parsec(*args)`:
`parsec backend run <args>`) in the test's directory, with an environment cleaned of PARSEC_*
and proxy variables, its output (stdout and stderr) in a file; every process still running
after the test is killed. Waits are bounded polls: a deadline only turns a hang into a failure.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from twisted.internet import reactor

from tests.tools import curl, sleep

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
PARSEC = str(BIN / "parsec")
DEADLINE = 30.0
# Everything in memory, like --dev but without its --debug (tracebacks on errors).
MOCKED_ARGS = (
    "--db=MOCKED",
    "--blockstore=MOCKED",
    "--administration-token=s3cr3t",
    "--backend-addr=parsec://localhost:6777?no_ssl=true",
    "--email-host=MOCKED",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PARSEC_", "SENTRY_", "LISTEN_", "NOTIFY_"))
        and not name.lower().endswith("_proxy")
    }
    env.update(extra or {})
    return env


class Daemon:
    def __init__(self, argv: Sequence[str], cwd: Path, log_path: Path, env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, sig: int) -> None:
        assert self.alive(), f"exited ({self.proc.returncode}):\n{self.output()}"
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(timeout=DEADLINE)

    async def wait_exit(self, timeout: float = DEADLINE) -> int:
        deadline = reactor.seconds() + timeout
        while self.alive():
            if reactor.seconds() > deadline:
                pytest.fail(f"{self.argv[0]} did not exit in time:\n{self.output()}")
            await sleep(0.05)
        return int(self.proc.returncode)

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        self.send(sig)
        return await self.wait_exit()

    async def wait_output(self, marker: str, timeout: float = DEADLINE) -> str:
        """The first output line holding `marker` (fails if the process exits first)."""
        deadline = reactor.seconds() + timeout
        while True:
            for line in self.output().splitlines():
                if marker in line:
                    return line
            assert self.alive(), f"exited ({self.proc.returncode}) before {marker!r}:\n{self.output()}"
            if reactor.seconds() > deadline:
                pytest.fail(f"{marker!r} never logged:\n{self.output()}")
            await sleep(0.05)

    async def wait_ready(self, url: str, *curl_args: str, timeout: float = DEADLINE) -> None:
        """Until `GET <url>/ready` answers 200 (through curl)."""
        deadline = reactor.seconds() + timeout
        while True:
            assert self.alive(), f"exited ({self.proc.returncode}):\n{self.output()}"
            result = await curl(f"{url}/ready", *curl_args)
            if result.status == 200:
                return
            if reactor.seconds() > deadline:
                pytest.fail(f"{url} not ready in time ({result}):\n{self.output()}")
            await sleep(0.05)


class Daemons:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Daemon] = []

    def spawn(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> Daemon:
        log_path = self.tmp_path / f"daemon-{len(self.started)}.log"
        daemon = Daemon(argv, self.tmp_path, log_path, clean_environ(env))
        self.started.append(daemon)
        return daemon

    def twistd(self, *args: str, env: Mapping[str, str] | None = None, twistd_args: Sequence[str] = ()) -> Daemon:
        return self.spawn([TWISTD, "-n", "--pidfile=", *twistd_args, "parsec", *args], env)

    def parsec(self, *args: str, env: Mapping[str, str] | None = None) -> Daemon:
        return self.spawn([PARSEC, "backend", "run", *args], env)

    def stop_all(self) -> None:
        for daemon in self.started:
            daemon.kill()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    started = Daemons(tmp_path)
    yield started
    started.stop_all()
