"""`twistd parsec ...`: Options and makeService for the twistd plugin.

The Options do no parsing of their own: the raw arguments go to
:func:`parsec.options.parse_run_args`, so `twistd parsec` and `parsec backend run` accept the
same options and environment variables and fail with the same messages.

twistd would print its whole usage text plus a traceback-free but noisy line for a
``UsageError``; a configuration error here instead prints one ``Error: <message>`` line on
standard error and exits with status 1 (with a traceback when --debug / PARSEC_DEBUG is set).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.logger import Logger, globalLogPublisher
from twisted.python import usage
from twisted.python.failure import Failure

from parsec.config import ConfigError, ServerConfig
from parsec.logging import set_twistd_settings, start_sentry
from parsec.options import (
    HelpRequested,
    debug_requested,
    parse_run_args,
    render_help,
    report_error,
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
        except ConfigError as exc:
            report_error(exc, debug=debug_requested(argv, environ))
            raise SystemExit(1) from None
        self["config"] = self.config
        self.postOptions()

    def postOptions(self) -> None:
        assert self.config is not None
        parent: Any = getattr(self, "parent", None)
        daemon = parent is not None and not parent.get("nodaemon", True)
        set_twistd_settings(self.config.log, daemon=daemon)
        # twistd's AppLogger builds its observer from the parent's "logger" entry, a dotted
        # name resolved by the parent's own postOptions, which runs after ours. Leave
        # twistd's logging alone when the admin chose it explicitly (--logger, --logfile,
        # --syslog); `twist` has no such entry and keeps its own logging.
        if parent is not None and "logger" in parent and "nodaemon" in parent:
            if not (parent.get("logger") or parent.get("logfile") or parent.get("syslog")):
                parent["logger"] = _TWISTD_LOGGER_FACTORY

    def getUsage(self, width: int | None = None) -> str:
        return render_help("run", prog=_PROG)

    def __str__(self) -> str:
        return self.getUsage()


class StartupGuard(MultiService):
    """Wraps the service tree: an exception while starting it (a busy port, say) becomes one
    log line and exit status 1, instead of the traceback twistd would print line by line
    through its redirected standard error. The traceback is logged in debug mode.

    twistd calls both methods before running the reactor, so SystemExit ends the process
    there (status 1, which `Restart=on-failure` understands).
    """

    def __init__(self, debug: bool = False) -> None:
        super().__init__()
        self._debug = debug

    def privilegedStartService(self) -> None:
        self._guarded(super().privilegedStartService)

    def startService(self) -> None:
        self._guarded(super().startService)

    def _guarded(self, start: Any) -> None:
        try:
            start()
        except Exception:
            failure = Failure()
            if self._debug:
                _log.failure("Start-up failed", failure)
            else:
                _log.critical("Start-up failed: {error}", error=str(failure.value))
            raise SystemExit(1) from None


def makeService(options: Options) -> IService:
    config = options.config
    assert config is not None, "parseOptions() must run first"
    debug = config.backend.debug or debug_requested(options._argv, os.environ)
    try:
        if config.log.sentry_dsn:
            # Beside (not behind) the level filter: Sentry wants breadcrumbs from INFO up.
            globalLogPublisher.addObserver(start_sentry(config.log))
        # Imported here: the plugin machinery must stay cheap for `twistd --help`.
        from parsec.service import make_service

        service = make_service(config)
    except Exception as exc:
        report_error(exc, debug=debug)
        raise SystemExit(1) from None
    # make_service prints the start-up line (before twistd redirects stdout into the log).
    guard = StartupGuard(debug=debug)
    service.setServiceParent(guard)
    return guard
