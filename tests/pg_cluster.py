"""Throwaway PostgreSQL clusters for the test-suite (loopback only).

    cluster = start_cluster(tmp_path)      # initdb (cached per process) + start
    cluster.dsn                            # postgresql://parsec@127.0.0.1:<port>/parsec
    cluster.create_database("x")           # more databases, optionally from a template
    cluster.stop(); cluster.start()        # clean restart on the same data directory & port
    cluster.kill()                         # SIGKILL every server process (crash); start() recovers
    cluster.destroy()                      # stop and remove everything (also done at exit)

The server listens on 127.0.0.1 only (plus a unix socket inside the cluster directory) and
is tuned for speed, not durability (fsync off, tiny buffers). PostgreSQL refuses to run as
root, so when the tests run as root (CI) the server runs as the system user `parsec-test`
(created with `useradd` if missing, override with PARSEC_TEST_PG_USER) through `runuser`.

Binaries: PARSEC_TEST_PG_BINDIR, else `pg_config --bindir`, else the newest
/usr/lib/postgresql/*/bin.

These helpers are synchronous (subprocess + short waits): they are test infrastructure, run
from fixtures, never from server code.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import attrs

SERVICE_USER = os.environ.get("PARSEC_TEST_PG_USER", "parsec-test")
DB_USER = "parsec"
DEFAULT_DATABASE = "parsec"
START_TIMEOUT = 30  # seconds, pg_ctl -t
_SOCKET_PATH_MAX = 100  # sockaddr_un limit is 107 bytes, ".s.PGSQL.<port>" included

# Speed over durability; the server only ever holds test data.
_SERVER_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "shared_buffers": "16MB",
    "max_connections": "200",
    "autovacuum": "off",
    "jit": "off",
    "deadlock_timeout": "100ms",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
    "timezone": "'UTC'",
}


class ClusterError(Exception):
    pass


def find_bindir() -> Path:
    env = os.environ.get("PARSEC_TEST_PG_BINDIR")
    if env:
        return Path(env)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=True)
            candidate = Path(out.stdout.strip())
            if (candidate / "initdb").exists():
                return candidate
        except (OSError, subprocess.CalledProcessError):
            pass
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(candidates):
        if (candidate / "initdb").exists():
            return candidate
    raise ClusterError("PostgreSQL server binaries not found (apt-get install postgresql-15)")


def free_port() -> int:
    """A 127.0.0.1 TCP port nobody listens on (bound, then released). The one helper of the
    test suite (tests.support re-exports it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _alive(pid: int) -> bool:
    """Running and not a zombie (pg_ctl daemonizes the server: its zombies are not ours to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _ensure_service_user() -> pwd.struct_passwd:
    """Return the unprivileged account the server runs as (root only), creating it if needed."""
    for _ in range(5):
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            pass
        # Concurrent test sessions may race here: useradd then fails, and the next lookup wins.
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
             "--home-dir", "/nonexistent", SERVICE_USER],
            capture_output=True,
        )
        time.sleep(0.05)
    return pwd.getpwnam(SERVICE_USER)


def _traversable(path: Path, account: pwd.struct_passwd) -> bool:
    """Can `account` reach `path` (x permission on every ancestor)?"""
    groups = {account.pw_gid} | {g for g in os.getgrouplist(account.pw_name, account.pw_gid)}
    current = path.resolve()
    for directory in [current, *current.parents]:
        st = directory.stat()
        if st.st_uid == account.pw_uid:
            allowed = st.st_mode & 0o100
        elif st.st_gid in groups:
            allowed = st.st_mode & 0o010
        else:
            allowed = st.st_mode & 0o001
        if not allowed:
            return False
    return True


@attrs.define
class _Runner:
    """Runs PostgreSQL programs, as the service user when we are root."""

    bindir: Path
    account: pwd.struct_passwd | None  # None: run as ourselves

    def command(self, program: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / program), *args]
        if self.account is not None:
            cmd = ["runuser", "-u", self.account.pw_name, "--", *cmd]
        return cmd

    def run(self, program: str, *args: str, cwd: Path, timeout: float = 60) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        proc = subprocess.run(
            self.command(program, *args), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0:
            raise ClusterError(f"{program} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def chown(self, path: Path) -> None:
        if self.account is not None:
            subprocess.run(["chown", "-R", f"{self.account.pw_uid}:{self.account.pw_gid}", str(path)], check=True)


_template: Path | None = None  # an initdb'ed data directory, copied for every new cluster


def _template_data_dir(runner: _Runner) -> Path:
    global _template
    if _template is None or not _template.exists():
        root = Path(tempfile.mkdtemp(prefix="parsec-pg-template-"))
        root.chmod(0o755)
        runner.chown(root)
        data = root / "data"
        runner.run(
            "initdb", "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-locale",
            "--no-sync", "--no-instructions", "--wal-segsize=1", cwd=root,
        )
        with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# parsec test cluster\n")
            for key, value in _SERVER_SETTINGS.items():
                conf.write(f"{key} = {value}\n")
        _template = data
        atexit.register(shutil.rmtree, root, True)
    return _template


@attrs.define(eq=False)
class PgCluster:
    root: Path  # owned by the server's account; holds data/, the socket dir and server.log
    port: int
    database: str
    _runner: _Runner
    _socket_dir: Path
    _link: Path | None = None  # symlink in base_dir when the cluster had to live elsewhere
    running: bool = False

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "server.log"

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def user(self) -> str:
        return DB_USER

    @property
    def dsn(self) -> str:
        return self.dsn_for(self.database)

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{database}"

    def _write_port(self) -> None:
        # postgresql.auto.conf is read after postgresql.conf: last setting wins.
        (self.data_dir / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nunix_socket_directories = '{self._socket_dir}'\n", encoding="utf-8"
        )
        self._runner.chown(self.data_dir / "postgresql.auto.conf")

    def start(self) -> None:
        """Start (or restart after stop/kill) the server on the same data directory and port."""
        if self.running:
            return
        self._write_port()
        self._runner.run(
            "pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
            "-t", str(START_TIMEOUT), cwd=self.root, timeout=START_TIMEOUT + 10,
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Clean shutdown (`fast`: terminates every session)."""
        if not self.running:
            return
        self._runner.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", cwd=self.root)
        self.running = False

    def _server_pids(self) -> list[int]:
        try:
            postmaster = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return []
        if not _alive(postmaster):
            return []
        pids = [postmaster]
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ..." -- comm may contain spaces: split after the last ")".
            fields = stat.rsplit(")", 1)[-1].split()
            if len(fields) > 1 and fields[1] == str(postmaster):
                pids.append(int(entry.name))
        return pids

    def kill(self) -> None:
        """SIGKILL the postmaster and its children (a crash); `start()` then runs recovery."""
        pids = self._server_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            time.sleep(0.01)
        # Unreaped zombies still pass the server's "is the lock owner alive" check (kill(pid, 0)):
        # drop the lock files of the dead server, as an admin would after a crash.
        if pids:
            for lock in [self.data_dir / "postmaster.pid", *self._socket_dir.glob(".s.PGSQL.*.lock")]:
                lock.unlink(missing_ok=True)
        self.running = False

    def destroy(self) -> None:
        """Stop the server (kill it if a clean stop fails) and delete every file."""
        if self.running:
            try:
                self.stop(mode="immediate")
            except (ClusterError, subprocess.TimeoutExpired):
                self.kill()
        if self._server_pids():
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._socket_dir.exists():
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self._link is not None and self._link.is_symlink():
            self._link.unlink()

    # --- databases ------------------------------------------------------------------------

    def _admin_sql(self, sql: str) -> None:
        import psycopg2  # the test venv has it; keeps this module importable without it

        conn = psycopg2.connect(self.dsn_for("postgres"), connect_timeout=10)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create a database (a fast file copy when `template` is given); return its DSN."""
        clause = f' TEMPLATE "{template}"' if template else " TEMPLATE template0"
        self._admin_sql(f'CREATE DATABASE "{name}"{clause}')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        self._admin_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_cluster(base_dir: Path, database: str = DEFAULT_DATABASE) -> PgCluster:
    """Create and start a new cluster under `base_dir` with one database; see module doc."""
    bindir = find_bindir()
    account = _ensure_service_user() if os.geteuid() == 0 else None
    runner = _Runner(bindir=bindir, account=account)
    base_dir = Path(base_dir)
    base_dir.mkdir(parents=True, exist_ok=True)

    # The server's account must reach its files: pytest's basetemp is 0700 root, so as root the
    # cluster may have to live in the system temp dir, with a symlink left in base_dir.
    link: Path | None = None
    parent = base_dir
    if account is not None and not _traversable(base_dir, account):
        parent = Path(tempfile.gettempdir())
    root = Path(tempfile.mkdtemp(prefix="pg-", dir=parent))
    if parent != base_dir:
        link = base_dir / root.name
        link.symlink_to(root)
    root.chmod(0o755)
    socket_dir = root / "s"
    if len(str(socket_dir)) > _SOCKET_PATH_MAX:
        socket_dir = Path(tempfile.mkdtemp(prefix="pgs-"))
    socket_dir.mkdir(exist_ok=True)
    runner.chown(socket_dir)
    runner.chown(root)

    cluster: PgCluster | None = None
    try:
        template = _template_data_dir(runner)
        subprocess.run(["cp", "-a", str(template), str(root / "data")], check=True)
        cluster = PgCluster(
            root=root, port=0, database=database, runner=runner, socket_dir=socket_dir, link=link
        )
        atexit.register(cluster.destroy)
        last_error: Exception | None = None
        for _ in range(5):  # the free port may be taken between probe and bind: try another
            cluster.port = free_port()
            try:
                cluster.start()
                break
            except ClusterError as exc:
                last_error = exc
        else:
            raise ClusterError(f"cannot start PostgreSQL: {last_error}; see {root / 'server.log'}")
        cluster.create_database(database)
        return cluster
    except BaseException:
        if cluster is not None:
            cluster.destroy()
        else:
            shutil.rmtree(root, ignore_errors=True)
        raise
