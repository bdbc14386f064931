"""Runs the `parsec` or `twistd` front-end in a subprocess with a stand-in service tree.

The front-end tests check option handling, logging, signals and exit statuses, not the Parsec
server itself, so `parsec.service.make_service` (and the migration command) are replaced by
small fakes: a TCP listener on the configured host/port (bound in privilegedStartService,
like the real service, so a busy port fails start-up) and a service that logs a few events once started.

    python launcher.py parsec backend run --dev ...
    python launcher.py twistd -n --pidfile= parsec --dev ...
"""

from __future__ import annotations

import sys
import types
from typing import Any

from twisted.application import service
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

_log = Logger(namespace="parsec.fake")


class _Listener(service.Service):
    """Binds like the real service does (synchronously, in privilegedStartService: a busy port
    fails start-up), through the public endpoint API."""

    def __init__(self, description: str) -> None:
        self._description = description
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        from twisted.internet import reactor

        outcome: list[Any] = []
        serverFromString(reactor, self._description).listen(Factory.forProtocol(Protocol)).addBoth(outcome.append)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        self.port = outcome[0]

    def stopService(self) -> Any:
        super().stopService()
        return self.port.stopListening() if self.port is not None else None


class _Announce(service.Service):
    def __init__(self, listener: _Listener) -> None:
        self._listener = listener

    def startService(self) -> None:
        super().startService()
        port = self._listener.port.getHost().port
        _log.debug("fake debug event")
        _log.info("fake info event")
        from twisted.internet import reactor

        # Announced once the reactor runs, i.e. once its signal handlers are installed (twistd
        # starts services before that), so that tests may signal the process right away.
        reactor.callWhenRunning(
            _log.warn, "fake service listening on {port}", port=port, administration_token="hunter2"
        )


class _FakeServer(service.MultiService):
    def reload(self) -> None:
        _log.warn("fake reload")


def make_service(config: Any, *, reactor: Any = None, on_fatal: Any = None) -> service.MultiService:
    top = _FakeServer()
    host = config.listen.host.replace(":", "\\:")
    listener = _Listener(f"tcp:{config.listen.port}:interface={host}")
    listener.setServiceParent(top)
    _Announce(listener).setServiceParent(top)
    return top


async def migrate_command(db_url: str, dry_run: bool, out: Any) -> bool:
    out("0001_initial.sql (already applied)")
    out(f"0002_fake.sql {'(dry run)' if dry_run else 'OK'}")
    return "fail" not in db_url


def _install_fakes() -> None:
    fake_service = types.ModuleType("parsec.service")
    fake_service.make_service = make_service  # type: ignore[attr-defined]
    sys.modules["parsec.service"] = fake_service
    fake_migrations = types.ModuleType("parsec.storage.postgresql.migrations")
    fake_migrations.migrate_command = migrate_command  # type: ignore[attr-defined]
    sys.modules["parsec.storage.postgresql.migrations"] = fake_migrations


def main() -> None:
    front_end, args = sys.argv[1], sys.argv[2:]
    _install_fakes()
    if front_end == "parsec":
        from parsec.cli import main as parsec_main

        sys.exit(parsec_main(args))
    if front_end == "twistd":
        from twisted.scripts.twistd import run

        sys.argv = ["twistd", *args]
        run()
        return
    raise SystemExit(f"unknown front-end {front_end!r}")


if __name__ == "__main__":
    main()
