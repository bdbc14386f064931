"""Process harness for the real-client interoperability tests.

Everything here runs in the pytest virtualenv. The Parsec server under test and the real
parsec-cloud 2.10.0 client both run as subprocesses:

* the server is OUR server (`twistd -n --pidfile= parsec --dev ...`, the twistd next to
  `sys.executable`) unless PARSEC_INTEROP_SERVER=reference, in which case it is the reference
  server shipped in the client virtualenv (`parsec backend run --dev ...`);
* the client is the `parsec` CLI or a script of tests/interop/scripts/ run by the client
  virtualenv's python.

Nothing here talks to any host but 127.0.0.1, and every process started is tracked so that
the fixtures can stop it (SIGTERM, then SIGKILL after a bound) at teardown.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
SCRIPTS_DIR = HERE / "scripts"

ADMIN_TOKEN = "s3cr3t"  # what --dev injects, for both servers
SERVER_START_TIMEOUT = 30.0
SERVER_STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 60.0
PROMPT_TIMEOUT = 30.0
SCRIPT_TIMEOUT = 120.0

# Environment variables understood by this harness (all optional):
ENV_SERVER = "PARSEC_INTEROP_SERVER"  # "reference" or unset/"ours"
ENV_SERVER_ARGS = "PARSEC_INTEROP_SERVER_ARGS"  # shell-quoted extra args appended to the server command
ENV_VARIANTS = "PARSEC_INTEROP_VARIANTS"  # storage variants to run (memory,pg,pg-s3,... or all)
ENV_CLIENT_VENV = "PARSEC_CLIENT_VENV"  # client virtualenv (default <repo>/.client-venv)
ENV_REQUIRED = "PARSEC_INTEROP_REQUIRED"  # set (CI): a missing client venv is an error, not a skip
ENV_ISOLATE = "PARSEC_INTEROP_ISOLATE"  # set: a fresh server process for every test
ENV_WIRE_LOG = "PARSEC_INTEROP_WIRE_LOG"  # set: ask OUR server for JSON request logs too
ENV_WIRE_REPORT = "PARSEC_INTEROP_WIRE_REPORT"  # path: write the per-test wire command summary


class HarnessError(AssertionError):
    """A harness-level failure (process timed out, exited early, unexpected output)."""


# ----------------------------------------------------------------------------- helpers
def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the server may still lose a race for it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean_output(text: str) -> str:
    """Strip ANSI sequences and spinner redraws: keep what a terminal would finally show."""
    text = _ANSI_RE.sub("", text)
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def tail(path: Path, lines: int = 60) -> str:
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"<{path} unreadable>"
    return "\n".join(content[-lines:])


def _die_with_parent() -> None:
    """preexec_fn: have the kernel SIGTERM the child if pytest itself dies (killed by a CI
    timeout, say), so that no server or client outlives the test run (Linux only)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def popen(args: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen for every process of this harness: own session (so the whole group
    can be stopped) and death with the parent."""
    return subprocess.Popen(list(args), start_new_session=True, preexec_fn=_die_with_parent, **kwargs)


def stop_process(proc: subprocess.Popen[Any], timeout: float = SERVER_STOP_TIMEOUT) -> int | None:
    """SIGTERM the process (and its own process group, which it leads), SIGKILL after
    `timeout`. Only ever signals processes this harness started."""
    if proc.poll() is not None:
        _reap_group(proc)
        return proc.returncode
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=timeout)
    _reap_group(proc)
    return proc.returncode


def _reap_group(proc: subprocess.Popen[Any]) -> None:
    # Our children are started with start_new_session=True: their pgid is their pid. Kill
    # anything they may have left in that group (the group is ours alone).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- client venv
def find_client_venv() -> Path | None:
    configured = os.environ.get(ENV_CLIENT_VENV)
    venv = Path(configured) if configured else REPO_ROOT / ".client-venv"
    if (venv / "bin" / "parsec").exists() and (venv / "bin" / "python").exists():
        return venv
    return None


def client_base_env() -> dict[str, str]:
    """Environment for client processes: ours minus anything that would leak the pytest
    venv or PARSEC_* settings (PARSEC_CMD_ARGS applies to every `parsec` command!)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PARSEC_")
        and key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTEST_ADDOPTS")
    }
    env.update(
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        PYTHONIOENCODING="utf-8",
        LC_ALL="C.UTF-8",
        LANG="C.UTF-8",
        TERM="dumb",
        NO_COLOR="1",
    )
    return env


# ----------------------------------------------------------------------------- wire log
@dataclass
class WireSummary:
    """What the server logged for a span of time: commands per connection kind, HTTP
    routes (organization ids replaced by <org>), and other log events."""

    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    http: collections.Counter[str] = field(default_factory=collections.Counter)
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    events: collections.Counter[str] = field(default_factory=collections.Counter)

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {
            "commands": dict(sorted(self.commands.items())),
            "http": dict(sorted(self.http.items())),
            "statuses": dict(sorted(self.statuses.items())),
            "events": dict(sorted(self.events.items())),
        }

    @property
    def command_names(self) -> set[str]:
        return {key.split(" ", 1)[-1] for key in self.commands}


_ORG_PATH_RE = re.compile(r"^(/anonymous|/administration/organizations)/[^/?]+")


def _normalize_path(path: str) -> str:
    return _ORG_PATH_RE.sub(lambda m: f"{m.group(1)}/<org>", path.split("?", 1)[0])


def summarize_wire_log(lines: Sequence[str]) -> WireSummary:
    summary = WireSummary()
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        event = str(entry.get("event", ""))
        # Reference: event "Request" plus fields. Ours: event "Request <cmd> -> <status>" plus
        # the same fields (cmd/status), and the access log (namespace parsec.access) for HTTP.
        if event.startswith("Request") and "cmd" in entry:
            if "device_id" in entry:
                kind = "authenticated"
            elif "invitation_token" in entry:
                kind = "invited"
            elif entry.get("organization_id") is not None or "conn_id" in entry:
                kind = "anonymous"
            else:
                kind = "ws"  # the log line does not say which connection kind
            summary.commands[f"{kind} {entry['cmd']}"] += 1
            summary.statuses[f"{entry['cmd']} -> {entry.get('status')}"] += 1
        elif entry.get("namespace") == "parsec.access":
            if "kind" not in entry:  # an HTTP request (a websocket is summarized by its commands)
                summary.http[f"{entry.get('method')} {_normalize_path(str(entry['path']))} {entry.get('status')}"] += 1
        elif event.startswith("Request") and "path" in entry:
            status = entry.get("status", entry.get("code"))
            summary.http[f"{entry.get('method')} {_normalize_path(str(entry['path']))} {status}"] += 1
        elif event:
            summary.events[event.split(":", 1)[0]] += 1
    return summary


# ----------------------------------------------------------------------------- server
class ServerProcess:
    """One Parsec server subprocess on a free loopback port."""

    def __init__(
        self,
        kind: str,
        workdir: Path,
        client_venv: Path | None,
        extra_args: Sequence[str] = (),
        extra_env: Mapping[str, str] | None = None,
        wire_log: bool | None = None,
    ) -> None:
        if kind not in ("ours", "reference"):
            raise ValueError(f"unknown server kind {kind!r} (expected 'ours' or 'reference')")
        if kind == "reference" and client_venv is None:
            raise HarnessError("the reference server needs the client venv")
        self.kind = kind
        self.workdir = workdir
        self.client_venv = client_venv
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.wire_log = (kind == "reference") if wire_log is None else wire_log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "server-wire.jsonl"
        self.output_path = workdir / "server-output.log"
        self.command: list[str] = []
        self.returncode: int | None = None

    # --- addresses
    @property
    def addr(self) -> str:
        """Backend address the client must use (the --dev backend_addr claims SSL)."""
        return f"parsec://127.0.0.1:{self.port}?no_ssl=true"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def build_command(self, port: int) -> list[str]:
        common = ["--dev", "--port", str(port), "--host", "127.0.0.1"]
        if self.kind == "reference":
            assert self.client_venv is not None
            cmd = [str(self.client_venv / "bin" / "parsec"), "backend", "run", *common]
            level = "INFO"
        else:
            twistd = Path(sys.executable).parent / "twistd"
            cmd = [str(twistd), "-n", "--pidfile=", "parsec", *common]
            level = "DEBUG"  # our server logs requests at DEBUG (docs/protocol/DECISIONS.md)
        if self.wire_log:
            cmd += ["--log-level", level, "--log-format", "JSON", "--log-file", str(self.log_path)]
        return cmd + self.extra_args

    def start(self, attempts: int = 3, port: int | None = None) -> None:
        """Start on a free port, or on `port` (a server taking over another one's address:
        the client devices keep the address they were created with)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        if self.kind == "reference":
            # The reference server is a client-venv program: same hygiene as the client.
            env = {**client_base_env(), **{k: v for k, v in os.environ.items() if k.startswith("PARSEC_")}}
        env.update(self.extra_env)
        last_error = ""
        for attempt in range(attempts):
            if port is not None and attempt:
                time.sleep(1.0)  # the previous server's socket may take a moment to go
            self.port = port if port is not None else free_loopback_port()
            self.command = self.build_command(self.port)
            with self.output_path.open("ab") as output:
                output.write(f"\n$ {shlex.join(self.command)}\n".encode())
                output.flush()
                self.proc = popen(
                    self.command,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=env,
                )
            if self._wait_ready(SERVER_START_TIMEOUT):
                return
            self.returncode = stop_process(self.proc)
            last_error = tail(self.output_path)
            if "in use" not in last_error.lower():
                break
        raise HarnessError(
            f"{self.kind} server did not accept TCP connections on 127.0.0.1:{self.port}\n"
            f"command: {shlex.join(self.command)}\n--- output ---\n{last_error}"
        )

    def _wait_ready(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if port_accepts(self.port):
                return True
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        if self.proc is not None:
            self.returncode = stop_process(self.proc)
        return self.returncode

    # --- logs
    def wire_log_offset(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def wire_summary_since(self, offset: int) -> WireSummary:
        try:
            with self.log_path.open("rb") as log_file:
                log_file.seek(offset)
                data = log_file.read().decode(errors="replace")
        except OSError:
            data = ""
        return summarize_wire_log(data.splitlines())

    def describe(self) -> str:
        return f"{self.kind} server pid={self.proc.pid if self.proc else None} {self.addr}"

    def output_tail(self, lines: int = 60) -> str:
        text = tail(self.output_path, lines)
        if self.wire_log:
            text += "\n--- wire log tail ---\n" + tail(self.log_path, lines)
        return text


def server_kind_from_env() -> str:
    value = (os.environ.get(ENV_SERVER) or "ours").strip().lower()
    return "reference" if value == "reference" else "ours" if value in ("", "ours") else value


def server_args_from_env() -> list[str]:
    return shlex.split(os.environ.get(ENV_SERVER_ARGS, ""))


# ----------------------------------------------------------------------------- client processes
class ProcessRegistry:
    """Tracks the client processes of one test so the fixture can stop leftovers."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def add(self, proc: subprocess.Popen[Any]) -> None:
        self._procs.append(proc)

    def stop_all(self) -> list[str]:
        leftovers = []
        for proc in self._procs:
            if proc.poll() is None:
                leftovers.append(f"pid {proc.pid}: {shlex.join(map(str, proc.args))}")  # type: ignore[arg-type]
            stop_process(proc, timeout=5)
        self._procs.clear()
        return leftovers


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    raw_stdout: str
    stderr: str
    duration: float = 0.0

    @property
    def stdout(self) -> str:
        return clean_output(self.raw_stdout)

    def __str__(self) -> str:
        return (
            f"$ {shlex.join(self.args)}\nexit {self.returncode}\n--- stdout ---\n{self.stdout}\n"
            f"--- stderr ---\n{clean_output(self.stderr)}"
        )


class InteractiveProcess:
    """A CLI process driven through its stdin/stdout pipes (prompts, SAS codes)."""

    def __init__(self, args: list[str], env: Mapping[str, str], cwd: Path, registry: ProcessRegistry) -> None:
        self.args = args
        self.proc = popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
        )
        registry.add(self.proc)
        self._buffer = ""
        self._pos = 0
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, name=f"reader-{self.proc.pid}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            with self._cond:
                if not chunk:
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._buffer += _ANSI_RE.sub("", chunk.decode("utf-8", errors="replace"))
                self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return clean_output(self._buffer)

    def expect(self, pattern: str, timeout: float = PROMPT_TIMEOUT) -> tuple[str, re.Match[str]]:
        """Wait for `pattern` (multiline regex) in output not consumed yet; return the text
        before the match and the match. Raises HarnessError on timeout or EOF."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                match = regex.search(self._buffer, self._pos)
                if match:
                    before = self._buffer[self._pos : match.start()]
                    self._pos = match.end()
                    return before, match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    why = "process output ended" if self._eof else f"timeout after {timeout:.0f}s"
                    raise HarnessError(
                        f"{why} while waiting for /{pattern}/ from {shlex.join(self.args)}\n"
                        f"--- output ---\n{clean_output(self._buffer)}"
                    )
                self._cond.wait(timeout=min(remaining, 0.5))

    def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = CLI_TIMEOUT) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stop_process(self.proc, timeout=5)
            raise HarnessError(
                f"{shlex.join(self.args)} did not exit within {timeout:.0f}s\n{self.output}"
            ) from exc
        self._reader.join(timeout=5)
        return code

    def close(self) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        stop_process(self.proc, timeout=5)


class ClientHome:
    """A client machine: its own HOME and XDG directories under the test's tmp_path, and
    helpers to run the real client's CLI and Python scripts there."""

    def __init__(self, root: Path, client_venv: Path, registry: ProcessRegistry) -> None:
        self.root = root
        self.client_venv = client_venv
        self.registry = registry
        self.home = root / "home"
        self.config_home = self.home / ".config"
        self.data_home = self.home / ".local" / "share"
        self.cache_home = self.home / ".cache"
        for directory in (self.config_home, self.data_home, self.cache_home):
            directory.mkdir(parents=True, exist_ok=True)
        self.env = client_base_env()
        self.env.update(
            HOME=str(self.home),
            XDG_CONFIG_HOME=str(self.config_home),
            XDG_DATA_HOME=str(self.data_home),
            XDG_CACHE_HOME=str(self.cache_home),
        )

    @property
    def parsec(self) -> str:
        return str(self.client_venv / "bin" / "parsec")

    @property
    def python(self) -> str:
        return str(self.client_venv / "bin" / "python")

    def _run(self, args: list[str], input: str | None, timeout: float) -> CliResult:
        proc = popen(
            args,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.root,
        )
        self.registry.add(proc)
        started = time.monotonic()
        try:
            out, err = proc.communicate(input.encode() if input is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            stop_process(proc, timeout=5)
            out, err = proc.communicate()
            raise HarnessError(
                f"{shlex.join(args)} timed out after {timeout:.0f}s\n--- stdout ---\n"
                f"{clean_output(out.decode(errors='replace'))}\n--- stderr ---\n{err.decode(errors='replace')}"
            ) from exc
        result = CliResult(
            args,
            proc.returncode,
            out.decode(errors="replace"),
            err.decode(errors="replace"),
            time.monotonic() - started,
        )
        # Captured by pytest, shown when the test fails: what ran, how it ended, how long.
        print(
            f"[client {self.root.name}] exit {result.returncode} in {result.duration:.2f}s: {shlex.join(args[1:])}"
        )
        return result

    def cli(
        self, *args: str, input: str | None = None, timeout: float = CLI_TIMEOUT, check: bool = True
    ) -> CliResult:
        """Run `parsec core <args>`; with check=True a non-zero exit fails the test."""
        result = self._run([self.parsec, "core", *args], input, timeout)
        if check and result.returncode != 0:
            raise HarnessError(f"client CLI failed\n{result}")
        return result

    def spawn_cli(self, *args: str) -> InteractiveProcess:
        return InteractiveProcess([self.parsec, "core", *args], self.env, self.root, self.registry)

    def run_script(
        self, name: str, *args: str, timeout: float = SCRIPT_TIMEOUT
    ) -> tuple[CliResult, dict[str, Any]]:
        """Run tests/interop/scripts/<name> with the client's python. The script writes its
        observations to a JSON file, returned with the process result."""
        result_path = self.root / f"{Path(name).stem}-{time.monotonic_ns()}.json"
        cmd = [self.python, str(SCRIPTS_DIR / name), *args, "--result", str(result_path)]
        result = self._run(cmd, None, timeout)
        try:
            data = json.loads(result_path.read_text())
        except (OSError, ValueError):
            data = {"ok": False, "error": "script wrote no result"}
        return result, data

    # --- CLI conveniences used by several tests
    def list_devices(self) -> list[tuple[str, str]]:
        """[(slughash prefix, description)] as printed by `list_devices`."""
        out = self.cli("list_devices").stdout
        return re.findall(r"^(\w+) - (.+)$", out, re.MULTILINE)

    def only_device(self) -> str:
        devices = self.list_devices()
        if len(devices) != 1:
            raise HarnessError(f"expected exactly one device in {self.home}, got {devices}")
        return devices[0][0]
