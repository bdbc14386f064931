"""Debian's nginx for the tests, configured from the repository's etc/nginx/parsec.conf.

* `make_tls_files(directory)`: a throwaway CA and a server certificate for 127.0.0.1 and
  localhost, made by the openssl command line tool (the certificate nginx serves, and the CA
  file the real client trusts through `SSL_CAFILE`);
* `site_config(...)`: the shipped TLS `server` block, as it is (its `location` with every
  proxy directive), with only what a test must change: the listening address, the certificate
  files and the upstream name. The shipped `map` comes along; the upstreams are the test's;
* `Nginx`: nginx run by the test's user, with its own prefix, pid, temporary and log files in
  the test's directory, listening on loopback only; `error_lines()` reads its error log.

Synchronous helpers (subprocess, bounded waits): test infrastructure, never server code.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "etc" / "nginx" / "parsec.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
START_TIMEOUT = 20.0


@attrs.frozen
class TlsFiles:
    ca: Path  # what clients trust
    cert: Path  # the server certificate nginx serves
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_tls_files(directory: Path) -> TlsFiles:
    """A CA, and a certificate it signs for 127.0.0.1 and localhost (openssl req / x509)."""
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=Parsec test CA", cwd=directory)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
             cwd=directory)  # fmt: skip
    return TlsFiles(ca=directory / "ca.pem", cert=directory / "server.pem", key=directory / "server.key")


def _block(text: str, opening: str) -> str:
    """The `{ ... }` block of `text` that starts with the line matching `opening` (a regex)."""
    match = re.search(rf"^{opening}\s*\{{", text, re.MULTILINE)
    assert match is not None, f"no block {opening!r} in {SHIPPED}"
    depth = 0
    for index in range(match.end() - 1, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return text[match.start() : index + 1]
    raise AssertionError(f"unbalanced block {opening!r} in {SHIPPED}")


def shipped_server_options() -> str:
    """The options of the shipped upstream's `server` lines (`max_fails=... fail_timeout=...`)."""
    upstream = _block(SHIPPED.read_text(), r"upstream parsec")
    match = re.search(r"^\s*server\s+\S+\s+([^;]*);", upstream, re.MULTILINE)
    assert match is not None
    return match.group(1)


def site_config(port: int, tls: TlsFiles, upstream: str) -> str:
    """The shipped TLS server block on 127.0.0.1:`port`, proxying to the upstream `upstream`."""
    server = _block(SHIPPED.read_text(), r"server")  # the first one: port 80, redirect
    text = SHIPPED.read_text()
    tls_start = text.index(server) + len(server)
    server = _block(text[tls_start:], r"server")
    assert "listen 443 ssl;" in server and "proxy_pass http://parsec;" in server
    server = re.sub(r"^\s*listen \[::\]:443 ssl;\n", "", server, flags=re.MULTILINE)
    server = server.replace("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    server = re.sub(r"server_name [^;]*;", "server_name 127.0.0.1 localhost;", server)
    server = re.sub(r"ssl_certificate +[^;]*;", f"ssl_certificate {tls.cert};", server)
    server = re.sub(r"ssl_certificate_key +[^;]*;", f"ssl_certificate_key {tls.key};", server)
    return server.replace("proxy_pass http://parsec;", f"proxy_pass http://{upstream};")


def shipped_map() -> str:
    return _block(SHIPPED.read_text(), r"map \$http_upgrade \$parsec_connection")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nginx:
    """One nginx (master + one worker) under `directory`; `http` is the body of its http block."""

    def __init__(self, directory: Path, http: str, ports: Sequence[int]) -> None:
        self.directory = directory
        self.ports = list(ports)
        self.error_log = directory / "error.log"
        self.access_log = directory / "access.log"
        self.output = directory / "nginx.out"
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (directory / name).mkdir(parents=True, exist_ok=True)
        # As root, the workers would switch to nobody: stay the test's user.
        user = "user root root;\n" if os.geteuid() == 0 else ""
        self.config = directory / "nginx.conf"
        self.config.write_text(
            f"{user}daemon off;\nworker_processes 1;\npid {directory}/nginx.pid;\n"
            f"error_log {self.error_log} {os.environ.get('NGINX_LOG_LEVEL', 'error')};\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"    access_log {self.access_log};\n"
            f"    client_body_temp_path {directory}/body;\n"
            f"    proxy_temp_path {directory}/proxy;\n"
            f"    fastcgi_temp_path {directory}/fastcgi;\n"
            f"    uwsgi_temp_path {directory}/uwsgi;\n"
            f"    scgi_temp_path {directory}/scgi;\n"
            f"{http}\n}}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def check(self) -> None:
        """`nginx -t` on the configuration (fails the test with nginx's message)."""
        result = subprocess.run(self._argv("-t"), capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"nginx -t failed:\n{result.stderr}\n{self.config.read_text()}"

    def _argv(self, *extra: str) -> list[str]:
        return [NGINX, "-p", f"{self.directory}/", "-c", str(self.config), "-e", str(self.error_log), *extra]

    def start(self) -> None:
        self.check()
        with open(self.output, "wb") as output:
            self.proc = subprocess.Popen(
                self._argv(), stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + START_TIMEOUT
        for port in self.ports:
            while not self._accepts(port):
                assert self.proc.poll() is None, f"nginx exited:\n{self.output.read_text()}"
                assert time.monotonic() < deadline, "nginx does not listen"
                time.sleep(0.05)

    @staticmethod
    def _accepts(port: int) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), then SIGKILL after a bound."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=START_TIMEOUT)

    def error_lines(self) -> list[str]:
        if not self.error_log.exists():
            return []
        return [line for line in self.error_log.read_text(errors="replace").splitlines() if line.strip()]
