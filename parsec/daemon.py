"""What a daemon owes its supervisor: signal handling (the one place) and systemd notifications.

Signals, for both front ends (`twistd parsec` and `parsec backend run`):

* SIGTERM / SIGINT: graceful stop. The reactor is stopped, which runs the service tree's
  `stopService` (twistd and `task.react` both wait for it), and the process exits with status 0.
  Twisted's own handlers would make twistd re-kill itself with the signal (status 143): a
  daemon that stopped cleanly reports success. A second SIGTERM/SIGINT while stopping exits at
  once with status 1.
* SIGHUP: reload: re-read the TLS key and certificate chain, reopen the log file.
* SIGUSR1: reopen the log file (logrotate's `postrotate`).

The reactor installs its own SIGINT/SIGTERM handlers when it starts running; ours are installed
both at once (a signal that comes before the reactor runs is not lost) and again once it runs
(the last installed win).

Notifications (`Type=notify` units): :class:`SystemdNotifier` sends sd_notify datagrams
(`READY=1`, `RELOADING=1`, `STOPPING=1`, `STATUS=...`) to the unix socket named by
`$NOTIFY_SOCKET` (`@name` is an abstract socket). Written here rather than taken from a library:
the protocol is one datagram per message.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from parsec.logging import reopen_log_files

__all__ = ["ProcessSignals", "SystemdNotifier", "stop_reactor"]

_log = Logger(namespace="parsec.daemon")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_reactor(reactor: Any) -> None:
    """Stop the reactor unless it is already stopping (or not running)."""
    try:
        reactor.stop()
    except ReactorNotRunning:
        pass


class SystemdNotifier:
    """sd_notify over `$NOTIFY_SOCKET`; does nothing when the variable is unset."""

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        if address:
            # `@name` is an abstract socket: its real name starts with a NUL byte.
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._warned = False

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, **fields: str) -> None:
        """Send `KEY=value` lines, e.g. `notify(READY="1", STATUS="Serving")`."""
        if self._address is None:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._warned:  # once: a broken supervisor socket must not flood the log
                self._warned = True
                _log.warn("Cannot notify systemd ({error}): readiness not reported", error=str(exc))

    def ready(self, status: str) -> None:
        self.notify(READY="1", STATUS=status)

    def reloading(self) -> None:
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify(RELOADING="1", MONOTONIC_USEC=str(monotonic_usec), STATUS="Reloading")

    def stopping(self) -> None:
        self.notify(STOPPING="1", STATUS="Stopping")

    def status(self, status: str) -> None:
        self.notify(STATUS=status)


class ProcessSignals:
    """SIGTERM/SIGINT (stop), SIGHUP (reload), SIGUSR1 (reopen logs) for one process.

    `reload` is called on SIGHUP (after the log files are reopened). `received_stop` tells
    which stop signal came, if any (`parsec backend run` says `bye ;-)` after Ctrl-C).
    """

    def __init__(self, reactor: Any, *, reload: Callable[[], object] | None = None) -> None:
        self._reactor = reactor
        self._reload = reload
        self.received_stop: int | None = None

    def install(self) -> None:
        self._install()
        # Again once running: the reactor installs its own SIGINT/SIGTERM handlers on start.
        self._reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, self._on_usr1)

    # Handlers run between two bytecodes of the reactor thread: they only schedule work.

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received_stop is not None:
            # Asked twice: the administrator does not want to wait for the graceful stop.
            sys.stderr.write("Stopping at once (second stop signal)\n")
            sys.stderr.flush()
            os._exit(1)
        self.received_stop = signum
        self._reactor.callFromThread(self._stop, signum)

    def _stop(self, signum: int) -> None:
        _log.info("Received {signal}: stopping", signal=signal.Signals(signum).name)
        stop_reactor(self._reactor)

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._reload_now)

    def _reload_now(self) -> None:
        _log.info("Received SIGHUP: reopening the log file and reloading the TLS certificates")
        reopen_log_files()
        if self._reload is not None:
            self._reload()

    def _on_usr1(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._reopen_logs)

    def _reopen_logs(self) -> None:
        reopen_log_files()
        _log.info("Received SIGUSR1: log file reopened")
