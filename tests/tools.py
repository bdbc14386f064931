"""The administrator's own tools (curl, openssl), run from reactor-driven tests.

Each runs as a child process through the reactor (`spawnProcess`): a blocking
`subprocess.run` would freeze the reactor, and with it an in-process server under test.
Every run is bounded (the tool's own timeout, plus a deadline here).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence

import attrs
from twisted.internet import defer, protocol, reactor, task
from twisted.python.failure import Failure

DEADLINE = 30.0
CURL = shutil.which("curl") or "/usr/bin/curl"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


@attrs.frozen
class ToolResult:
    out: str
    err: str
    code: int


class _Collect(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.done: defer.Deferred[int] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.closeStdin()  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.done.callback(-1 if code is None else int(code))


async def run_tool(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> ToolResult:
    """Run `argv` (absolute path first) to completion; its output, errors and exit status.
    Its standard input is closed at once (openssl s_client then ends after the handshake)."""
    environ = {name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")}
    environ.update(env or {})
    collect = _Collect()
    process = reactor.spawnProcess(collect, argv[0], list(argv), env=environ)
    done = collect.done
    done.addTimeout(DEADLINE, reactor)
    try:
        code = await done
    except defer.TimeoutError:
        process.signalProcess("KILL")
        raise
    return ToolResult(b"".join(collect.out).decode(errors="replace"), b"".join(collect.err).decode(errors="replace"), code)


@attrs.frozen
class CurlResult:
    status: int  # 0 when curl got no HTTP answer
    body: str
    code: int  # curl's exit status
    err: str


async def curl(url: str, *args: str) -> CurlResult:
    """`curl -sS <args> <url>`: the HTTP status and the body."""
    result = await run_tool([CURL, "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", *args, url])
    body, _, status = result.out.rpartition("\n")
    return CurlResult(int(status or 0), body, result.code, result.err)


async def served_certificates(port: int, *, ca_file: str | None = None, host: str = "localhost") -> tuple[list[str], str]:
    """`openssl s_client -showcerts`: the subjects of the certificates the server sent, in
    order, and openssl's verification line (`Verify return code: 0 (ok)` with `ca_file`)."""
    argv = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", host, "-showcerts"]
    if ca_file is not None:
        argv += ["-CAfile", ca_file, "-verify_return_error"]
    result = await run_tool(argv)
    subjects = re.findall(r"^\s*\d+ s:(.*)$", result.out, re.MULTILINE)
    verify = re.search(r"Verify return code: .*", result.out)
    return [subject.strip() for subject in subjects], verify.group(0) if verify else result.err


async def sleep(seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def ready_becomes(url: str, status: int, *curl_args: str, timeout: float = DEADLINE) -> CurlResult:
    """Poll `GET <url>/ready` until it answers `status` (its answer is cached about 1 s)."""
    deadline = reactor.seconds() + timeout
    while True:
        result = await curl(f"{url}/ready", *curl_args)
        if result.status == status:
            return result
        if reactor.seconds() > deadline:
            raise AssertionError(f"/ready never answered {status}: {result}")
        await sleep(0.1)
