"""The `parsec` console script: `parsec backend run|migrate|import|export`, `parsec --version`.

`parsec backend run` parses the same options as `twistd parsec` (see parsec.options), sets up
logging, builds the service tree with parsec.service.make_service and runs the reactor in this
process. SIGTERM and SIGINT stop the services (their Deferreds are awaited) and then the
reactor; Ctrl-C also prints `bye ;-)`. Exit status: 0 after a clean stop, 1 when the
configuration is invalid or start-up fails (for example a busy port).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs

from parsec import __version__
from parsec.config import ConfigError
from parsec.options import (
    HelpRequested,
    debug_requested,
    parse_migrate_args,
    parse_run_args,
    render_help,
    report_error,
)
from parsec.transfer.cli import main as transfer_main

# Twisted (and the server) are imported only once the options are valid: `--help`, `--version`
# and configuration errors answer without that start-up cost.
if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IReactorCore

_MAIN_HELP = """\
Usage: parsec [OPTIONS] COMMAND [ARGS]...

  Parsec server (parsec-twisted).

Options:
  --version  Show the version and exit.
  --help     Show this message and exit.

Commands:
  backend    Run or administrate the Parsec server.
"""

_BACKEND_HELP = """\
Usage: parsec backend [OPTIONS] COMMAND [ARGS]...

  Run or administrate the Parsec server.

Options:
  --help     Show this message and exit.

Commands:
  export     Export to a database of the upstream server (parsec-cloud 2.10).
  import     Import a database of the upstream server (parsec-cloud 2.10).
  migrate    Create or upgrade the PostgreSQL database schema.
  run        Run the Parsec server.
"""


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Entry point of the `parsec` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    env = os.environ if environ is None else environ
    if not args or args[0] == "--help":
        sys.stdout.write(_MAIN_HELP)
        return 0
    if args[0] == "--version":
        sys.stdout.write(f"parsec, version {__version__}\n")
        return 0
    if args[0] != "backend":
        return _usage_error(f"No such command '{args[0]}'", "parsec")
    rest = args[1:]
    if not rest or rest[0] == "--help":
        sys.stdout.write(_BACKEND_HELP)
        return 0
    command, command_args = rest[0], rest[1:]
    if command == "run":
        return backend_run(command_args, env)
    if command == "migrate":
        return backend_migrate(command_args, env)
    if command in ("import", "export"):
        return transfer_main(command, command_args, env)
    return _usage_error(f"No such command '{command}'", "parsec backend")


def _usage_error(message: str, prog: str) -> int:
    sys.stderr.write(f"Error: {message} (see `{prog} --help`)\n")
    return 1


# --------------------------------------------------------------------------------------------
# backend run


def backend_run(argv: Sequence[str], environ: Mapping[str, str], *, reactor: Any = None) -> int:
    debug = debug_requested(argv, environ)
    try:
        config = parse_run_args(argv, environ)
    except HelpRequested:
        sys.stdout.write(render_help("run"))
        return 0
    except ConfigError as exc:
        report_error(exc, debug=debug)
        return 1
    debug = debug or config.backend.debug
    # Not at the top, like every Twisted/server import of this module: see the note there.
    from parsec.logging import setup_logging

    try:
        setup_logging(config.log)
    except ConfigError as exc:
        report_error(exc, debug=debug)
        return 1
    if reactor is None:
        # Not at the top, like every Twisted/server import of this module: see the note there.
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    # Handlers first: make_service prints the start-up line, which a supervisor (or a test)
    # may answer with a signal at once.
    with StopSignals(reactor) as signals:
        try:
            # Imported here so that `parsec --help` and option errors stay fast.
            from parsec.service import make_service

            service = make_service(config, reactor=reactor)
        except Exception as exc:
            report_error(exc, debug=debug)
            return 1
        return serve(reactor, service, signals, debug=debug)


class StopSignals:
    """SIGINT/SIGTERM handlers that stop the reactor and remember which signal came.

    Ours rather than the reactor's (which `reactor.run(installSignalHandlers=False)` then
    skips): they are in place before the reactor runs, and tell Ctrl-C (`bye ;-)`) apart.
    A second signal while stopping exits at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        return self

    def reinstall(self) -> None:
        """Take the signals back (something started by the services may have replaced us)."""
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            os._exit(1)
        self.received = signum
        # Runs once the reactor loop runs (at once if it already does).
        self._reactor.callFromThread(self._stop)

    def _stop(self) -> None:
        if self._reactor.running:
            self._reactor.stop()


@attrs.define
class _RunState:
    exit_code: int = 0
    stopping: bool = False


def serve(reactor: IReactorCore, service: IService, signals: StopSignals, *, debug: bool = False) -> int:
    """Start `service`, run the reactor until a signal or a start-up failure, stop cleanly."""
    # Not at the top, like every Twisted/server import of this module: see the note there.
    from twisted.internet import defer
    from twisted.logger import Logger
    from twisted.python.failure import Failure

    log = Logger(namespace="parsec.cli")
    state = _RunState()

    def stop_reactor() -> None:
        if not state.stopping and reactor.running:
            state.stopping = True
            reactor.stop()

    def start_failed(failure: Failure) -> None:
        state.exit_code = 1
        # One line for the log (and Sentry); the traceback only in debug mode.
        log.critical("Start-up failed: {error}", error=str(failure.value))
        if debug:
            sys.stderr.write(failure.getTraceback())
        report_error(failure.value, debug=False)
        stop_reactor()

    def start() -> None:
        try:
            result = service.startService()
        except Exception:
            start_failed(Failure())
            return
        if isinstance(result, defer.Deferred):
            result.addErrback(start_failed)

    def stop_service() -> defer.Deferred[Any] | None:
        if not service.running:
            return None
        d = defer.maybeDeferred(service.stopService)
        d.addErrback(lambda f: log.failure("Error while stopping the services", f))
        return d

    # After whatever make_service scheduled for start-up (it may install signal handlers of
    # its own for twistd's sake): the last installed handlers win.
    reactor.callWhenRunning(signals.reinstall)
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop_service)
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
    if signals.received == signal.SIGINT:
        sys.stdout.write("bye ;-)\n")
        sys.stdout.flush()
    return state.exit_code


# --------------------------------------------------------------------------------------------
# backend migrate


def backend_migrate(argv: Sequence[str], environ: Mapping[str, str], *, reactor: Any = None) -> int:
    debug = debug_requested(argv, environ)
    try:
        config = parse_migrate_args(argv, environ)
    except HelpRequested:
        sys.stdout.write(render_help("migrate"))
        return 0
    except ConfigError as exc:
        report_error(exc, debug=debug)
        return 1
    debug = debug or config.debug
    try:
        # Not at the top, like every Twisted/server import of this module: see the note there.
        from parsec.logging import setup_logging

        setup_logging(config.log)
        from parsec.storage.postgresql.migrations import migrate_command
    except (ConfigError, ImportError) as exc:
        report_error(exc, debug=debug)
        return 1
    if reactor is None:
        # Not at the top, like every Twisted/server import of this module: see the note there.
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    try:
        ok = run_until_complete(reactor, lambda: migrate_command(config.db_url, config.dry_run, out))
    except Exception as exc:
        report_error(exc, debug=debug)
        return 1
    return 0 if ok else 1


def run_until_complete(reactor: Any, make_coro: Callable[[], Any]) -> Any:
    """Run the reactor until the coroutine made by `make_coro` finishes; return its result."""
    # Not at the top, like every Twisted/server import of this module: see the note there.
    from twisted.internet import defer
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def start() -> None:
        d = defer.ensureDeferred(make_coro())
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    if not outcome:
        raise RuntimeError("interrupted")
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
