"""The `parsec` console script: `parsec backend run|migrate|import|export`, `parsec --version`.

`parsec backend run` parses the same options as `twistd parsec` (see parsec.options), sets up
logging, builds the same service tree (parsec.service.make_service) and runs it through
`twisted.internet.task.react`: the reactor stops when the service has stopped, and its
"before shutdown" trigger stops the service, as under twistd. Signals are handled by
parsec.daemon, as under twistd: SIGTERM and SIGINT stop gracefully (Ctrl-C also prints
`bye ;-)`), SIGHUP reloads the TLS certificates and reopens the log file, SIGUSR1 reopens the
log file. Exit status: 0 after a clean stop, 1 when the configuration is invalid, start-up
fails (for example a busy port) or the server cannot go on.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from parsec.config import ConfigError
from parsec.options import (
    HelpRequested,
    VersionRequested,
    debug_requested,
    parse_migrate_args,
    parse_run_args,
    render_help,
    report_error,
    startup_line,
    version_line,
)
from parsec.transfer.cli import main as transfer_main

# Twisted (and the server) are imported only once the options are valid: `--help`, `--version`
# and configuration errors answer without that start-up cost.
if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from parsec.config import ServerConfig

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
  --version  Show the version and exit.
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
        sys.stdout.write(version_line())
        return 0
    if args[0] != "backend":
        return _usage_error(f"No such command '{args[0]}'", "parsec")
    rest = args[1:]
    if not rest or rest[0] == "--help":
        sys.stdout.write(_BACKEND_HELP)
        return 0
    if rest[0] == "--version":
        sys.stdout.write(version_line())
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


def _react(main: Callable[[Any], Coroutine[Any, Any, None]]) -> int:
    """Run `main(reactor)` through task.react; its exit status (react ends with sys.exit)."""
    # Not at the top, like every Twisted/server import of this module: see the note there.
    from twisted.internet import defer, task

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))
    except SystemExit as exc:  # task.react always ends with one
        return exc.code if isinstance(exc.code, int) else 1


# --------------------------------------------------------------------------------------------
# backend run


_Config = TypeVar("_Config")


def _parse_options(
    parse: Callable[[Sequence[str], Mapping[str, str]], _Config],
    command: str,
    argv: Sequence[str],
    environ: Mapping[str, str],
) -> _Config | int:
    """The subcommand's configuration, or the exit status once --help, --version or a
    configuration error has been answered."""
    try:
        return parse(argv, environ)
    except HelpRequested:
        sys.stdout.write(render_help(command))
        return 0
    except VersionRequested:
        sys.stdout.write(version_line())
        return 0
    except ConfigError as exc:
        report_error(exc, debug=debug_requested(argv, environ))
        return 1


def backend_run(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    config = _parse_options(parse_run_args, "run", argv, environ)
    if isinstance(config, int):
        return config
    debug = debug_requested(argv, environ) or config.backend.debug
    # Not at the top, like every Twisted/server import of this module: see the note there.
    from parsec.logging import setup_logging

    try:
        setup_logging(config.log)
    except ConfigError as exc:
        report_error(exc, debug=debug)
        return 1
    outcome = _Outcome()
    code = _react(lambda reactor: serve(reactor, config, outcome, debug=debug))
    if outcome.stop_signal == signal.SIGINT:
        sys.stdout.write("bye ;-)\n")
        sys.stdout.flush()
    return code


@attrs.define
class _Outcome:
    stop_signal: int | None = None  # SIGINT or SIGTERM, when one stopped the server


async def serve(reactor: Any, config: ServerConfig, outcome: _Outcome, *, debug: bool = False) -> None:
    """Start the service tree, serve until a stop signal or a fatal error, stop it.

    Raises SystemExit(1) when start-up fails or the server cannot go on.
    """
    # Not at the top, like every Twisted/server import of this module: see the note there.
    from twisted.internet import defer
    from twisted.logger import Logger

    from parsec.daemon import ProcessSignals, stop_reactor

    log = Logger(namespace="parsec.cli")
    fatal: list[str] = []

    def on_fatal(message: str) -> None:
        log.critical("Stopping: {message}", message=message)
        fatal.append(message)
        stop_reactor(reactor)

    try:
        # Imported here so that `parsec --help` and option errors stay fast.
        from parsec.service import make_service

        service = make_service(config, reactor=reactor, on_fatal=on_fatal)
    except Exception as exc:
        report_error(exc, debug=debug)
        raise SystemExit(1) from None
    # Signals before the start-up line: a supervisor (or a test) may answer it with a signal.
    signals = ProcessSignals(reactor, reload=service.reload)
    signals.install()
    sys.stdout.write(startup_line(config) + "\n")
    sys.stdout.flush()

    stopped: Deferred[None] = defer.Deferred()

    async def stop_service() -> None:
        try:
            await defer.maybeDeferred(service.stopService)
        except Exception:
            log.failure("Error while stopping the services")
        stopped.callback(None)

    # As under twistd: the service stops before the reactor does (the reactor waits for it).
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.Deferred.fromCoroutine(stop_service()))
    try:
        service.privilegedStartService()
        await defer.maybeDeferred(service.startService)
    except defer.CancelledError:
        pass  # stopped while starting
    except Exception as exc:
        # One line for the log (and Sentry); the traceback only in debug mode.
        log.critical("Start-up failed: {error}", error=str(exc))
        report_error(exc, debug=debug)
        raise SystemExit(1) from None
    await stopped
    outcome.stop_signal = signals.received_stop
    if fatal:
        sys.stderr.write(f"Error: {fatal[0]}\n")
        sys.stderr.flush()
        raise SystemExit(1)


# --------------------------------------------------------------------------------------------
# backend migrate


def backend_migrate(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    config = _parse_options(parse_migrate_args, "migrate", argv, environ)
    if isinstance(config, int):
        return config
    debug = debug_requested(argv, environ) or config.debug
    try:
        # Not at the top, like every Twisted/server import of this module: see the note there.
        from parsec.logging import setup_logging

        setup_logging(config.log)
        from parsec.storage.postgresql.migrations import migrate_command
    except (ConfigError, ImportError) as exc:
        report_error(exc, debug=debug)
        return 1

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async def run(reactor: Any) -> None:
        try:
            ok = await migrate_command(config.db_url, config.dry_run, out)
        except Exception as exc:
            report_error(exc, debug=debug)
            raise SystemExit(1) from None
        if not ok:
            raise SystemExit(1)

    return _react(run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
