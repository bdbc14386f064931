"""A throwaway OpenStack Swift (Swift v1 API + S3 API) on loopback, from Debian's packages.

    store = start_swift(run_dir, containers=("blocks",))  # returns once everything answers
    store.env["S3_ENDPOINT"], store.env["SWIFT_AUTH_URL"], ...
    store.stop()                                           # every process started is gone

(`SwiftStore` is also a context manager.) Requirements, Debian 12, as root:

    apt-get install -y --no-install-recommends \\
        swift swift-proxy swift-account swift-container swift-object memcached

What runs, all bound to 127.0.0.1 on kernel-chosen free ports, as the calling user:

    caller ── supervisor (Debian's python3, this file `supervise`)
                 ├── memcached          tempauth keeps its tokens there
                 ├── account server ─┐
                 ├── container server├─ this file `serve`: one process each (workers = 0)
                 ├── object server  ─┘
                 └── proxy              Swift v1 (tempauth) and S3 (s3api) on the same port

* Everything (configs, rings, data, logs) lives in `run_dir`, which must be absent or empty;
  logs in `run_dir/log/*.log`. Nothing is written under /etc: Swift reads swift.conf from a
  fixed /etc/swift path, so the servers are not started with the stock `swift-*-server`
  commands but with `serve`, which points Swift at `run_dir/etc` first. Swift's syslog
  handler (its fallback when there is no /dev/log is UDP to 127.0.0.1:514) is replaced by
  nothing: the servers log to stderr only, that is to their log file.
* Ports: the supervisor binds the four Swift listening sockets itself (port 0) and hands them
  to the servers as inherited file descriptors, so no other program can take a port between
  choice and use. memcached cannot inherit a socket: it gets a probed free port, and the
  supervisor checks that the memcached answering there is its own (`stats` reports its pid);
  if the port was taken meanwhile memcached exits and another port is tried.
* Lifetime: `stop()` closes the supervisor's stdin; the supervisor then terminates its
  children (SIGTERM, SIGKILL after a grace period), reaps them and exits. The same happens when
  the caller dies, even by SIGKILL (its end of the pipe closes) and when start-up fails. Every
  child has PR_SET_PDEATHSIG=SIGKILL, so none outlives the supervisor either. `stop()`
  finally checks each recorded pid (with its start time, so a reused pid is never touched).
* Credentials (tempauth): Swift user `test:tester`, key `testing`; the S3 access key is the
  same `test:tester`, secret `testing`, region `us-east-1` (the only one s3api accepts).

The module only uses the standard library: the same file runs in the caller's interpreter
(the test virtualenv) and, for `supervise`/`serve`, in the interpreter that has Swift's
modules (`/usr/bin/python3`, override with PARSEC_TEST_SWIFT_PYTHON).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

SWIFT_PYTHON = os.environ.get("PARSEC_TEST_SWIFT_PYTHON", "/usr/bin/python3")
DEBIAN_PACKAGES = "swift swift-proxy swift-account swift-container swift-object memcached"
INSTALL_HINT = f"apt-get install -y --no-install-recommends {DEBIAN_PACKAGES}"

ACCOUNT = "test"
USER = "tester"
KEY = "testing"
REGION = "us-east-1"

START_TIMEOUT = 120.0  # readiness; a start takes 3-10 s on 2 busy cores
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL for the servers
STOP_TIMEOUT = 30.0  # caller side: supervisor exit
_EXIT_MISSING = 2  # supervisor exit status: a prerequisite is missing
_SERVERS = ("account", "container", "object", "proxy")
_MEMCACHED_ATTEMPTS = 5


class SwiftError(Exception):
    """The store could not be started."""


class SwiftUnavailable(SwiftError):
    """Swift's or memcached's Debian packages are not installed."""


# --- caller side ------------------------------------------------------------------------------


@dataclasses.dataclass
class SwiftStore:
    """A running store (see the module docstring). `env` holds SWIFT_AUTH_URL, SWIFT_USER,
    SWIFT_KEY, SWIFT_STORAGE_URL, S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY, S3_SECRET_KEY,
    SWIFT_CONTAINERS, SWIFT_RUN_DIR and SWIFT_PIDS."""

    run_dir: Path
    env: dict[str, str]
    processes: dict[str, tuple[int, int]]  # name -> (pid, start time), supervisor included
    _supervisor: subprocess.Popen[bytes] = dataclasses.field(repr=False)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop every process of the store; safe to call twice. Leaves `run_dir` in place."""
        _stop_supervisor(self._supervisor, timeout)
        _kill_leftovers(self.processes.values())

    def __enter__(self) -> SwiftStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_swift(run_dir: Path, containers: Sequence[str] = (), timeout: float = START_TIMEOUT) -> SwiftStore:
    """Start a store in `run_dir` (absent or empty) with `containers` created (a container is
    an S3 bucket: use DNS-compatible names); returns once the proxy answers, tempauth gives a
    token and every container exists. Raises SwiftUnavailable or SwiftError, with nothing left
    running."""
    for name in containers:
        if not name or "/" in name:
            raise ValueError(f"invalid container name {name!r}")
    if not Path(SWIFT_PYTHON).exists():
        raise SwiftUnavailable(f"{SWIFT_PYTHON} not found; install Debian's packages: {INSTALL_HINT}")
    run_dir = Path(run_dir).resolve()
    if "%" in str(run_dir) or "\n" in str(run_dir):
        raise ValueError(f"{run_dir}: '%' and newlines cannot be written in Swift's config files")
    run_dir.mkdir(parents=True, exist_ok=True)
    if any(run_dir.iterdir()):
        raise ValueError(f"{run_dir} is not empty")
    (run_dir / "log").mkdir()
    spec = {"run_dir": str(run_dir), "containers": list(containers), "timeout": timeout}
    with open(run_dir / "log" / "supervisor.log", "wb") as log:
        supervisor = subprocess.Popen(
            [SWIFT_PYTHON, "-I", "-B", str(Path(__file__).resolve()), "supervise", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            bufsize=0,
            cwd=run_dir,
            start_new_session=True,  # a Ctrl-C reaches the caller, who stops the store
        )
    try:
        assert supervisor.stdout is not None
        line = _read_line(supervisor.stdout.fileno(), time.monotonic() + timeout + 30)
        supervisor.stdout.close()
        if line is None:
            raise SwiftError(
                f"the Swift supervisor did not report within {timeout + 30:g} s:\n"
                + _tail(run_dir / "log" / "supervisor.log")
            )
        if not line:
            status = supervisor.wait(timeout=STOP_TIMEOUT)
            message = _tail(run_dir / "log" / "supervisor.log")
            if status == _EXIT_MISSING:
                raise SwiftUnavailable(message)
            raise SwiftError(f"the Swift supervisor exited with status {status}:\n{message}")
        ready = json.loads(line)
    except BaseException:
        _stop_supervisor(supervisor, STOP_TIMEOUT)
        raise
    processes = {name: (pid, start) for name, (pid, start) in ready["processes"].items()}
    processes["supervisor"] = (supervisor.pid, _start_time(supervisor.pid) or 0)
    return SwiftStore(run_dir=run_dir, env=ready["env"], processes=processes, _supervisor=supervisor)


def _read_line(fd: int, deadline: float) -> bytes | None:
    """One line from `fd`, b"" at end of file, None when `deadline` passes first."""
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b""
            data += chunk
    return data


def _stop_supervisor(supervisor: subprocess.Popen[bytes], timeout: float) -> None:
    with contextlib.suppress(OSError):
        if supervisor.stdin is not None:
            supervisor.stdin.close()  # end of file: the supervisor stops its children and exits
    if supervisor.stdout is not None:
        supervisor.stdout.close()
    try:
        supervisor.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        supervisor.kill()  # its children die with it (PR_SET_PDEATHSIG)
        supervisor.wait()


def _kill_leftovers(processes: Iterable[tuple[int, int]], grace: float = 5.0) -> None:
    """SIGKILL whichever of `processes` (pid, start time) still runs; normally none does."""
    pending = list(processes)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        pending = [(pid, start) for pid, start in pending if _start_time(pid) == start]
        if pending:
            time.sleep(0.05)
    for pid, start in pending:
        if _start_time(pid) == start:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live process, None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError as exc:
        return f"({path}: {exc})"


# --- supervisor (runs in Debian's python3) ------------------------------------------------------


class _Stopped(Exception):
    """The caller went away or a signal arrived: stop everything."""


class _StartFailed(Exception):
    pass


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


def _check_prerequisites(run_dir: Path) -> list[str]:
    missing = []
    if shutil.which("memcached") is None:
        missing.append("memcached")
    try:
        import swift.common.middleware.s3api.s3api  # noqa: F401
        import swift.common.middleware.tempauth  # noqa: F401
        import swift.common.ring  # noqa: F401
    except ImportError as exc:
        missing.append(f"Swift's python modules ({exc})")
    if missing:
        return missing
    # Swift keeps object metadata in user.* extended attributes.
    probe = run_dir / "data" / "d1" / ".xattr-probe"
    try:
        probe.write_bytes(b"")
        os.setxattr(probe, "user.swift.probe", b"1")
    except OSError as exc:
        raise _StartFailed(
            f"{run_dir}: its filesystem has no user.* xattr support ({exc}); use ext4, xfs, btrfs "
            "or tmpfs (Linux >= 6.6)"
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    return []


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    return sock


def _probe_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_SERVER_DEFAULTS = """\
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {port}
# One process per server: no fork, hence no privilege drop to `user` either.
workers = 0
user = {user}
swift_dir = {etc}
devices = {devices}
mount_check = false
disable_fallocate = true
fallocate_reserve = 0
recon_cache_path = {cache}
log_level = INFO
"""

_BACKEND_PIPELINE = """
[pipeline:main]
pipeline = healthcheck {server}-server

[app:{server}-server]
use = egg:swift#{server}

[filter:healthcheck]
use = egg:swift#healthcheck
"""

# s3api must sit before the auth middleware; multipart uploads need slo after it.
_PROXY_PIPELINE = """
[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{memcached_port}
memcache_max_connections = 4

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = {region}
s3_acl = false

# user_<account>_<user> = <key> <groups>: X-Auth-User `<account>:<user>`, also the S3 access key
[filter:tempauth]
use = egg:swift#tempauth
user_{account}_{user} = {key} .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
"""


class _Supervisor:
    def __init__(self, run_dir: Path, deadline: float) -> None:
        self.run_dir = run_dir
        self.etc = run_dir / "etc"
        self.deadline = deadline
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.reported_exits: set[str] = set()
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._pid = os.getpid()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy

    # --- processes
    def _child_setup(self) -> None:
        """In each child before exec: die with the supervisor (PR_SET_PDEATHSIG = 1)."""
        self._libc.prctl(1, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self._pid:  # the supervisor died before prctl
            os._exit(1)

    def _spawn(self, name: str, command: list[str], pass_fds: Sequence[int] = ()) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if key.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        }
        env.update({"TMPDIR": str(self.run_dir / "tmp"), "EVENTLET_NO_GREENDNS": "yes"})
        with open(self.run_dir / "log" / f"{name}.log", "ab") as log:
            self.children[name] = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.run_dir,
                env=env,
                pass_fds=pass_fds,
                preexec_fn=self._child_setup,  # the supervisor runs no thread
            )
        _log(f"{name}: pid {self.children[name].pid}")

    def _check_children(self) -> None:
        for name, child in self.children.items():
            if child.poll() is not None:
                raise _StartFailed(
                    f"{name} exited with status {child.returncode} during start-up; "
                    f"{self.run_dir}/log/{name}.log:\n{_tail(self.run_dir / 'log' / f'{name}.log', 3000)}"
                )

    def stop_children(self) -> None:
        alive = [(name, child) for name, child in self.children.items() if child.poll() is None]
        for _, child in alive:
            with contextlib.suppress(OSError):
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE
        for name, child in alive:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _log(f"{name} ignored SIGTERM: SIGKILL")
                child.kill()
                child.wait()
        _log("all stopped")

    # --- waiting
    def _caller_gone(self) -> bool:
        """The caller closed our stdin (stop requested, or it died)."""
        readable, _, _ = select.select([0], [], [], 0)
        return bool(readable)  # end of file (or anything written): stop

    def wait_for(self, what: str, probe: Callable[[], Any]) -> Any:
        last_error: Exception | None = None
        while True:
            if self._caller_gone():
                raise _Stopped("the caller went away during start-up")
            self._check_children()
            try:
                result = probe()
            except (OSError, ValueError) as exc:  # urllib.error.URLError is an OSError
                last_error = exc
            else:
                if result:
                    _log(f"{what}: ready")
                    return result
            if time.monotonic() > self.deadline:
                raise _StartFailed(f"timed out waiting for {what} (last error: {last_error!r})")
            time.sleep(0.05)

    def _http(self, method: str, url: str, headers: dict[str, str], timeout: float = 5.0) -> Any:
        request = urllib.request.Request(url, method=method, headers=headers)
        timeout = max(0.1, min(timeout, self.deadline - time.monotonic()))
        with self._opener.open(request, timeout=timeout) as response:
            response.read()
            return response

    def _answers(
        self, method: str, url: str, headers: dict[str, str], statuses: Sequence[int], timeout: float = 5.0
    ) -> bool:
        return self._http(method, url, headers, timeout).status in statuses

    # --- start-up
    def write_configs(self, ports: dict[str, int], memcached_port: int) -> None:
        import pwd

        user = pwd.getpwuid(os.geteuid()).pw_name
        secret = os.urandom(16).hex()
        (self.etc / "swift.conf").write_text(
            "[swift-hash]\n"
            f"swift_hash_path_prefix = {secret}\n"
            f"swift_hash_path_suffix = {secret}\n\n"
            "[storage-policy:0]\nname = Policy-0\ndefault = yes\n"
        )
        for server in _SERVERS:
            defaults = _SERVER_DEFAULTS.format(
                port=ports[server],
                user=user,
                etc=self.etc,
                devices=self.run_dir / "data",
                cache=self.run_dir / "cache",
            )
            if server == "proxy":
                pipeline = _PROXY_PIPELINE.format(
                    memcached_port=memcached_port, region=REGION, account=ACCOUNT, user=USER, key=KEY
                )
            else:
                pipeline = _BACKEND_PIPELINE.format(server=server)
            (self.etc / f"{server}-server.conf").write_text(defaults + pipeline)

    def build_rings(self, ports: dict[str, int]) -> None:
        """One device (`d1`), one replica, 2^6 partitions per ring (what `swift-ring-builder
        X.builder create 6 1 0`, `add r1z1-127.0.0.1:PORT/d1 1` and `rebalance` do)."""
        from swift.common.ring import RingBuilder

        for server in ("account", "container", "object"):
            builder = RingBuilder(6, 1, 0)
            builder.add_dev(
                {
                    "region": 1,
                    "zone": 1,
                    "ip": "127.0.0.1",
                    "port": ports[server],
                    "replication_ip": "127.0.0.1",
                    "replication_port": ports[server],
                    "device": "d1",
                    "weight": 1,
                    "meta": "",
                }
            )
            builder.rebalance()
            builder.get_ring().save(str(self.etc / f"{server}.ring.gz"))
            builder.save(str(self.etc / f"{server}.builder"))

    def start_memcached(self) -> int:
        """memcached on a probed free port; another port if that one was taken meanwhile."""
        import pwd

        user = ["-u", pwd.getpwuid(os.geteuid()).pw_name] if os.geteuid() == 0 else []
        for attempt in range(1, _MEMCACHED_ATTEMPTS + 1):
            port = _probe_port()
            self._spawn(
                "memcached",
                ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "16", "-c", "256", *user],
            )
            child = self.children["memcached"]

            def ours(port: int = port, pid: int = child.pid) -> bool:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"stats\r\n")
                    reply = b""
                    while b"END\r\n" not in reply:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        reply += chunk
                return f"STAT pid {pid}\r\n".encode() in reply

            try:
                self.wait_for(f"memcached on port {port}", ours)
                return port
            except _StartFailed:
                if child.poll() is None or attempt == _MEMCACHED_ATTEMPTS:
                    raise
                _log(f"memcached could not use port {port}: trying another one")
                del self.children["memcached"]
        raise AssertionError("unreachable")

    def start(self, containers: Sequence[str]) -> dict[str, Any]:
        for sub in ("etc", "data/d1", "cache", "tmp"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        missing = _check_prerequisites(self.run_dir)
        if missing:
            raise SwiftUnavailable(
                f"missing: {', '.join(missing)}; install Debian's packages (as root): "
                f"apt-get update && {INSTALL_HINT}"
            )
        sockets = {server: _listening_socket() for server in _SERVERS}
        ports = {server: sock.getsockname()[1] for server, sock in sockets.items()}
        try:
            memcached_port = self.start_memcached()
            self.write_configs(ports, memcached_port)
            self.build_rings(ports)
            _log("configs and rings written")
            this_file = str(Path(__file__).resolve())
            for server, sock in sockets.items():
                command = [sys.executable, "-I", "-B", this_file, "serve"]
                command += [str(self.etc), f"{server}-server", str(sock.fileno())]
                self._spawn(server, command, pass_fds=[sock.fileno()])
        finally:
            for sock in sockets.values():
                sock.close()  # the servers hold them now

        for server in _SERVERS:
            url = f"http://127.0.0.1:{ports[server]}/healthcheck"
            self.wait_for(f"{server} server", functools.partial(self._answers, "GET", url, {}, (200,)))

        proxy = f"http://127.0.0.1:{ports['proxy']}"
        auth_url = f"{proxy}/auth/v1.0"

        def authenticate() -> tuple[str, str]:
            response = self._http("GET", auth_url, {"X-Auth-User": f"{ACCOUNT}:{USER}", "X-Auth-Key": KEY})
            storage_url, token = response.headers["X-Storage-Url"], response.headers["X-Auth-Token"]
            if not storage_url or not token:
                raise ValueError(f"no X-Storage-Url or X-Auth-Token in {dict(response.headers)}")
            return storage_url, token

        storage_url, token = self.wait_for("tempauth", authenticate)
        for container in containers:
            url = f"{storage_url}/{quote(container, safe='')}"
            create = functools.partial(self._answers, "PUT", url, {"X-Auth-Token": token}, (201, 202), 10)
            self.wait_for(f"container {container}", create)

        processes = {}
        for name, child in self.children.items():
            start = _start_time(child.pid)
            if start is None:
                raise _StartFailed(f"{name} exited during start-up")
            processes[name] = (child.pid, start)
        env = {
            "SWIFT_RUN_DIR": str(self.run_dir),
            "SWIFT_AUTH_URL": auth_url,
            "SWIFT_USER": f"{ACCOUNT}:{USER}",
            "SWIFT_KEY": KEY,
            "SWIFT_STORAGE_URL": storage_url,
            "S3_ENDPOINT": proxy,
            "S3_ACCESS_KEY": f"{ACCOUNT}:{USER}",
            "S3_SECRET_KEY": KEY,
            "S3_REGION": REGION,
            "SWIFT_CONTAINERS": ",".join(containers),
            "SWIFT_PIDS": ",".join(str(pid) for pid, _ in processes.values()),
        }
        (self.run_dir / "env").write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        return {"env": env, "processes": processes}

    def watch(self) -> None:
        """Until the caller closes our stdin (or dies), or a signal arrives."""
        while True:
            readable, _, _ = select.select([0], [], [], 1.0)
            if readable:
                _log("stop requested")
                return
            for name, child in self.children.items():
                if child.poll() is not None and name not in self.reported_exits:
                    self.reported_exits.add(name)
                    _log(f"{name} exited unexpectedly with status {child.returncode}")


def _supervise(spec_json: str) -> int:
    spec = json.loads(spec_json)
    started = time.monotonic()
    supervisor = _Supervisor(Path(spec["run_dir"]), started + float(spec["timeout"]))

    def stop_on_signal(signum: int, frame: object) -> None:
        raise _Stopped(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop_on_signal)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        ready = supervisor.start(spec["containers"])
        _log(f"ready in {time.monotonic() - started:.2f} s")
        os.write(1, json.dumps(ready).encode() + b"\n")
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # nothing else goes to the caller
        supervisor.watch()
        return 0
    except SwiftUnavailable as exc:
        _log(str(exc))
        return _EXIT_MISSING
    except (_StartFailed, _Stopped) as exc:
        _log(f"stopping: {exc}")
        return 1
    finally:
        # Signals now would only interrupt the clean-up; the children die with us anyway.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        supervisor.stop_children()


# --- one Swift server (runs in Debian's python3) -----------------------------------------------


def _serve(conf_dir: str, section: str, fd: int) -> int:
    """Run one Swift WSGI server in the foreground, with swift.conf and the rings read from
    `conf_dir` and the listening socket inherited as `fd`."""
    import logging

    listening = socket.socket(fileno=fd)
    from swift.common import utils

    utils.set_swift_dir(conf_dir)
    from swift.common import storage_policy

    storage_policy.reload_storage_policies()
    from eventlet.greenio import GreenSocket
    from swift.common import wsgi

    def inherited_socket(conf: object) -> GreenSocket:
        sock = GreenSocket(listening)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    class NoSyslog(logging.Handler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__()

        def emit(self, record: logging.LogRecord) -> None:
            pass

    wsgi.get_socket = inherited_socket
    if hasattr(utils, "ThreadSafeSysLogHandler"):
        utils.ThreadSafeSysLogHandler = NoSyslog
    # verbose: log to stderr, that is to the server's log file
    return int(wsgi.run_wsgi(os.path.join(conf_dir, f"{section}.conf"), section, verbose=True) or 0)


def main(argv: Sequence[str]) -> int:
    if len(argv) == 2 and argv[0] == "supervise":
        return _supervise(argv[1])
    if len(argv) == 4 and argv[0] == "serve":
        return _serve(argv[1], argv[2], int(argv[3]))
    print("usage: objectstore_swift.py supervise SPEC_JSON | serve CONF_DIR SECTION FD", file=sys.stderr)
    return 64


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
