"""`twistd parsec ...`: Options and makeService for the twistd plugin.

The Options do no parsing of their own: the raw arguments go to
:func:`parsec.options.parse_run_args`, so `twistd parsec` and `parsec backend run` accept the
same options and environment variables and fail with the same messages. `twistd parsec
--version` prints the version (twistd's own `twistd --version` prints Twisted's).

twistd would print its whole usage text plus a traceback-free but noisy line for a
``UsageError``; a configuration error here instead prints one ``Error: <message>`` line on
standard error and exits with status 1 (with a traceback when --debug / PARSEC_DEBUG is set).

Logging: our observer (CONSOLE or JSON lines, `--log-level`) replaces twistd's, including with
twistd's own `--logfile`, which then only names the file (see parsec.logging). With `--syslog`
or `--logger`, twistd's choice stays, and our log options are refused.

makeService installs the signal handlers (parsec.daemon) and wraps the service tree in a
:class:`StartupGuard`, which turns a start-up failure or a fatal error into one log line and
exit status 1 (`Restart=on-failure` understands it).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet import defer
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from parsec.config import ConfigError, ServerConfig
from parsec.daemon import ProcessSignals, stop_reactor
from parsec.logging import set_twistd_settings, start_sentry, twistd_log_settings
from parsec.options import (
    HelpRequested,
    VersionRequested,
    debug_requested,
    parse_run_args,
    render_help,
    report_error,
    startup_line,
    version_line,
)

_log = Logger(namespace="parsec.tap")
_PROG = "twistd parsec"
_TWISTD_LOGGER_FACTORY = "parsec.logging.twistd_observer"


class Options(usage.Options):
    """Options of `twistd parsec`; see `twistd parsec --help`."""

    synopsis = "[options]"
    longdesc = "Run the Parsec server (same options as `parsec backend run`)."

    def __init__(self) -> None:
        super().__init__()
        self.config: ServerConfig | None = None
        self._argv: list[str] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        argv = list(sys.argv[1:] if options is None else options)
        self._argv = argv
        environ = os.environ
        try:
            self.config = parse_run_args(argv, environ)
        except HelpRequested:
            sys.stdout.write(self.getUsage())
            sys.stdout.flush()
            raise SystemExit(0) from None
        except VersionRequested:
            sys.stdout.write(version_line())
            sys.stdout.flush()
            raise SystemExit(0) from None
        except ConfigError as exc:
            report_error(exc, debug=debug_requested(argv, environ))
            raise SystemExit(1) from None
        self["config"] = self.config
        self.postOptions()

    def postOptions(self) -> None:
        assert self.config is not None
        parent: Any = getattr(self, "parent", None)
        if parent is None or "logger" not in parent or "nodaemon" not in parent:
            # Not under twistd's ServerOptions (`twist` has no such entries): its logging stays.
            set_twistd_settings(self.config.log, daemon=False)
            return
        try:
            log_config = twistd_log_settings(self.config.log, parent)
        except ConfigError as exc:
            report_error(exc, debug=debug_requested(self._argv, os.environ))
            raise SystemExit(1) from None
        daemon = not parent.get("nodaemon", True)
        if log_config is None:
            return  # --syslog / --logger: twistd's own observer
        set_twistd_settings(log_config, daemon=daemon)
        # twistd's AppLogger builds its observer from the parent's "logger" entry, a dotted
        # name resolved by the parent's own postOptions, which runs after ours.
        parent["logger"] = _TWISTD_LOGGER_FACTORY

    def getUsage(self, width: int | None = None) -> str:
        return render_help("run", prog=_PROG)

    def __str__(self) -> str:
        return self.getUsage()


def _exit_after_shutdown(reactor: Any, code: int) -> None:
    """Stop the reactor (once it runs), then exit with `code` once twistd's shutdown is over.

    twistd has no exit status of its own but the signal it re-kills itself with: the process
    exits from an "after shutdown" trigger, once the services are stopped and the logs written.
    """

    def _exit() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    reactor.addSystemEventTrigger("after", "shutdown", _exit)
    reactor.callWhenRunning(stop_reactor, reactor)


class StartupGuard(MultiService):
    """The application's top service under twistd.

    * an exception while starting the tree (a busy port, say) becomes one log line and exit
      status 1, instead of the traceback twistd would print line by line through its
      redirected standard error (the traceback is logged in debug mode). twistd starts the
      services before running the reactor, so SystemExit ends the process there;
    * a start-up that fails later (the database unreachable after the configured attempts)
      stops the reactor and exits with status 1, as a fatal error while serving does
      (`_fatal`, the service's `on_fatal`).
    """

    def __init__(self, reactor: Any, *, debug: bool = False) -> None:
        super().__init__()
        self._debug = debug
        self._reactor = reactor

    def privilegedStartService(self) -> None:
        self._guarded(super().privilegedStartService)

    def startService(self) -> None:
        Service.startService(self)
        for child in self:
            self._guarded(lambda child=child: self._start_child(child))

    def _start_child(self, child: IService) -> None:
        started = child.startService()
        if isinstance(started, defer.Deferred):
            started.addErrback(self._start_failed)

    def _guarded(self, start: Any) -> None:
        try:
            start()
        except Exception:
            self._log_failure(Failure())
            raise SystemExit(1) from None

    def _log_failure(self, failure: Failure) -> None:
        if self._debug:
            _log.failure("Start-up failed", failure)
        else:
            _log.critical("Start-up failed: {error}", error=str(failure.value))

    def _start_failed(self, failure: Failure) -> None:
        if failure.check(defer.CancelledError):
            return  # stopped during the start-up
        self._log_failure(failure)
        sys.stderr.write(f"Error: {failure.value}\n")
        sys.stderr.flush()
        _exit_after_shutdown(self._reactor, 1)


def _fatal(reactor: Any, message: str) -> None:
    """The server cannot go on (event feed lost for good): log, report, exit with status 1."""
    _log.critical("Stopping: {message}", message=message)
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()
    _exit_after_shutdown(reactor, 1)


def makeService(options: Options) -> IService:
    config = options.config
    assert config is not None, "parseOptions() must run first"
    debug = config.backend.debug or debug_requested(options._argv, os.environ)
    # twistd's reactor: the global one, installed by twistd before it loads the plugin.
    from twisted.internet import reactor

    try:
        if config.log.sentry_dsn:
            # Beside (not behind) the level filter: Sentry wants breadcrumbs from INFO up.
            globalLogPublisher.addObserver(start_sentry(config.log))
        # Imported here: the plugin machinery must stay cheap for `twistd --help`.
        from parsec.service import make_service

        service = make_service(config, reactor=reactor, on_fatal=lambda message: _fatal(reactor, message))
    except Exception as exc:
        report_error(exc, debug=debug)
        raise SystemExit(1) from None
    # Signals before the start-up line: a supervisor (or a test) may answer it with a signal.
    ProcessSignals(reactor, reload=service.reload).install()
    # Printed before twistd redirects standard output into the log.
    print(startup_line(config), flush=True)
    guard = StartupGuard(reactor, debug=debug)
    service.setServiceParent(guard)
    return guard
