"""twisted.logger observers for the server: level filter, CONSOLE or JSON lines, Sentry.

* :func:`make_observer` builds the observer described by a :class:`LogConfig` (level filter in
  front of a CONSOLE or JSON line writer). :func:`setup_logging` starts the global log system
  with it (the `parsec` console script).
* Under twistd the observer is built by :func:`twistd_observer`, a zero-argument factory that
  ``parsec.tap.Options`` puts in twistd's ``logger`` option (twistd's AppLogger calls it before
  starting the reactor). The settings it uses are stashed by the Options at parse time, the
  only channel a zero-argument factory leaves. twistd's own ``--logfile`` names the file our
  observer writes to, in our format and at our level (see :func:`twistd_log_settings`).
* :func:`start_sentry` initialises sentry-sdk and returns an observer that reports failures and
  error/critical events as Sentry events (info/warning ones become breadcrumbs).

Log files are opened in append mode, never truncated: a restart keeps the previous run's lines,
and after logrotate's ``copytruncate`` every write lands at the (new) end of the file instead of
at the old offset, which would leave a hole of NUL bytes. :func:`reopen_log_files` (SIGUSR1 and
SIGHUP, see ``parsec.daemon``) reopens them by name, for logrotate's ``postrotate``.

Secrets: fields whose name looks like a token, password, secret, key or DSN are replaced by
``<redacted>`` before anything is formatted, so a careless ``log.info("{token}", token=...)``
does not leak either (see :func:`redact_event`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

import attrs
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogBeginner,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    globalLogBeginner,
)
from zope.interface import implementer

from parsec import __version__
from parsec.config import ConfigError, LogConfig

__all__ = [
    "REDACTED",
    "LineLogObserver",
    "SentryLogObserver",
    "LogFile",
    "make_observer",
    "open_log_stream",
    "redact_event",
    "reopen_log_files",
    "set_twistd_settings",
    "setup_logging",
    "start_sentry",
    "twistd_log_settings",
    "twistd_observer",
]

REDACTED = "<redacted>"
LEVELS: Mapping[str, LogLevel] = {
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARNING": LogLevel.warn,
    "ERROR": LogLevel.error,
    "CRITICAL": LogLevel.critical,
}
_LEVEL_NAMES: Mapping[LogLevel, str] = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warning",
    LogLevel.error: "error",
    LogLevel.critical: "critical",
}
_SENTRY_LEVELS: Mapping[LogLevel, str] = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warning",
    LogLevel.error: "error",
    LogLevel.critical: "fatal",
}

# Field names that may carry a secret. Deliberately broad ("key" also matches "public_key"):
# a redacted harmless value costs less than a leaked credential.
_SECRET_NAME_RE = re.compile(r"token|passw|secret|key|dsn|authori[sz]ation|credential|cookie", re.I)
# Keys of legacy twisted.python.log events, redundant with the log_* ones.
_LEGACY_KEYS = frozenset({"message", "isError", "system", "time", "format", "failure", "why", "printed"})
_SIMPLE_TYPES = (str, int, float, bool, type(None))


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME_RE.search(name))


def redact_event(event: LogEvent) -> LogEvent:
    """A shallow copy of `event` where every secret-looking field holds ``<redacted>``."""
    redacted = dict(event)
    for name in event:
        if not name.startswith("log_") and _is_secret_name(name):
            redacted[name] = REDACTED
    return redacted


def _timestamp(event: LogEvent) -> str:
    when = event.get("log_time")
    moment = datetime.fromtimestamp(when, UTC) if isinstance(when, int | float) else datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _level_name(event: LogEvent) -> str:
    level = event.get("log_level")
    return _LEVEL_NAMES.get(level, "info") if level is not None else "info"


def _fields(event: LogEvent) -> dict[str, Any]:
    """The event's own simple fields (str/int/float/bool/None), already redacted."""
    return {
        name: value
        for name, value in event.items()
        if isinstance(name, str)
        and not name.startswith("log_")
        and name not in _LEGACY_KEYS
        and isinstance(value, _SIMPLE_TYPES)
    }


def _traceback(event: LogEvent) -> str | None:
    failure = event.get("log_failure")
    if failure is None:
        return None
    try:
        return str(failure.getTraceback()).rstrip("\n")
    except Exception:  # a broken failure must not break logging
        return repr(failure)


def _message(event: LogEvent) -> str:
    text = formatEvent(event)
    return text if text is not None else ""


def format_json(event: LogEvent) -> str:
    """One JSON object (no newline inside) for an event that was already redacted."""
    record: dict[str, Any] = dict(_fields(event))
    record.update(
        event=_message(event),
        level=_level_name(event),
        timestamp=_timestamp(event),
        namespace=event.get("log_namespace", ""),
    )
    trace = _traceback(event)
    if trace is not None:
        record["exception"] = trace
    return json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":"))


_COLORS = {
    "debug": "\x1b[34m",
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}
_RESET = "\x1b[0m"


def _console_value(value: Any) -> str:
    text = str(value)
    if text == "" or any(char.isspace() or char in "\"'=" for char in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_console(event: LogEvent, color: bool = False) -> str:
    """`<timestamp> [<level>] <message> [<namespace>] key=value ...` (+ traceback lines).

    An event with `log_console_inline=True` already says everything in its message (the access
    log, parsec.web.access): no key=value pairs (JSON still has every field)."""
    level = _level_name(event)
    shown_level = f"[{level:<8}]"
    if color:
        shown_level = f"{_COLORS.get(level, '')}{shown_level}{_RESET}"
    parts = [_timestamp(event), shown_level, _message(event)]
    namespace = event.get("log_namespace")
    if namespace:
        parts.append(f"[{namespace}]")
    if not event.get("log_console_inline"):
        parts.extend(f"{name}={_console_value(value)}" for name, value in sorted(_fields(event).items()))
    line = " ".join(parts)
    trace = _traceback(event)
    if trace is not None:
        line = f"{line}\n{trace}"
    return line


@implementer(ILogObserver)
class LineLogObserver:
    """Writes each event as one CONSOLE or JSON line to a text stream, secrets redacted."""

    def __init__(self, stream: IO[str] | LogFile, log_format: str = "CONSOLE", color: bool | None = None) -> None:
        self._stream = stream
        self._json = log_format.upper() == "JSON"
        if color is None:
            isatty = getattr(stream, "isatty", None)
            color = bool(isatty and isatty())
        self._color = color

    def __call__(self, event: LogEvent) -> None:
        safe = redact_event(event)
        try:
            line = format_json(safe) if self._json else format_console(safe, self._color)
        except Exception as exc:  # never let one odd event kill the observer
            line = json.dumps({"event": f"Unformattable log event ({exc!r})", "level": "error"})
        self._stream.write(line + "\n")
        self._stream.flush()


class LogFile:
    """A log file opened in append mode, which :func:`reopen_log_files` reopens by name."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = self._open()
        _log_files.append(self)

    def _open(self) -> IO[str]:
        # Line buffered: each event line is written through at once. Append mode (O_APPEND):
        # every write goes to the current end of the file, whoever truncated it.
        return open(self.path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, text: str) -> None:
        self._file.write(text)

    def flush(self) -> None:
        self._file.flush()

    def isatty(self) -> bool:
        return False

    def reopen(self) -> None:
        """Open the file by its name again (logrotate moved it away); on failure keep the old one."""
        try:
            new = self._open()
        except OSError as exc:
            # Not through the log: that is this very file.
            sys.stderr.write(f"Cannot reopen the log file {self.path!r}: {exc.strerror}; still writing to the old one\n")
            sys.stderr.flush()
            return
        old, self._file = self._file, new
        old.close()

    def close(self) -> None:
        if self in _log_files:
            _log_files.remove(self)
        self._file.close()


# Every LogFile of the process, for reopen_log_files (the signal handler's only way to them).
_log_files: list[LogFile] = []


def reopen_log_files() -> None:
    """Reopen every log file by name (SIGUSR1 / SIGHUP)."""
    for log_file in list(_log_files):
        log_file.reopen()


def open_log_stream(path: str | None) -> IO[str] | LogFile:
    """`None`/`-` -> stderr; else the file, appended to."""
    if path is None or path in ("", "-"):
        return sys.stderr
    try:
        return LogFile(path)
    except OSError as exc:
        raise ConfigError(f"Invalid value for '--log-file': cannot open {path!r}: {exc.strerror}") from None


# Whether debug events are written anywhere (the level of the last observer built by
# `make_observer`; until then, e.g. in tests, everything is). Hot paths check `debug_enabled()`
# before building a debug event that the level filter would drop: building, publishing and
# filtering one costs about 5 us, some 6 % of a `ping` (benchmarks/server_bench.py, ping).
_debug_written = True


def debug_enabled() -> bool:
    return _debug_written


def make_observer(config: LogConfig, stream: IO[str] | LogFile | None = None) -> ILogObserver:
    """Level filter + line writer for `config` (`stream` overrides config.file)."""
    global _debug_written
    target = stream if stream is not None else open_log_stream(config.file)
    level = LEVELS.get(config.level.upper(), LogLevel.warn)
    _debug_written = level == LogLevel.debug
    return FilteringLogObserver(
        LineLogObserver(target, config.format), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )


def setup_logging(config: LogConfig, *, beginner: LogBeginner | None = None) -> list[ILogObserver]:
    """Start twisted.logger's global log system for the `parsec` console script.

    Standard output is not redirected into the log (start-up line and `bye ;-)` stay on stdout).
    Returns the observers (the line writer, plus the Sentry one when a DSN is set).
    """
    observers = [make_observer(config)]
    if config.sentry_dsn:
        observers.append(start_sentry(config))
    (beginner or globalLogBeginner).beginLoggingTo(observers, redirectStandardIO=False)
    return observers


# --------------------------------------------------------------------------------------------
# twistd


@attrs.frozen
class _TwistdSettings:
    config: LogConfig
    daemon: bool = False
    to_stdout: bool = False  # twistd's `--logfile -`


_twistd_settings: _TwistdSettings | None = None

_OUR_LOG_OPTIONS = ("--log-level", "--log-format", "--log-file")


def twistd_log_settings(config: LogConfig, twistd_options: Mapping[str, Any]) -> LogConfig | None:
    """How our log options combine with twistd's own (`--logfile`, `--syslog`, `--logger`).

    Returns the configuration our observer uses, or None when twistd's own logging stays in
    charge (`--syslog` or `--logger`, and none of our log options given). Raises ConfigError
    for a combination where one side would be silently ignored.
    """
    ours = [name for name in _OUR_LOG_OPTIONS if name in config.given]
    for twistd_option, what in (("syslog", "--syslog"), ("logger", "--logger")):
        if twistd_options.get(twistd_option):
            if ours:
                raise ConfigError(
                    f"twistd's {what} chooses its own log format and level: it cannot be combined "
                    f"with {'/'.join(ours)} (drop one of them)"
                )
            return None
    logfile = twistd_options.get("logfile")
    if logfile:
        if "--log-file" in config.given:
            raise ConfigError(
                "twistd's --logfile and '--log-file' both name a log file: give only one of them"
            )
        # twistd's --logfile names the file; our format and level apply to it.
        return attrs.evolve(config, file=logfile)
    return config


def set_twistd_settings(config: LogConfig, *, daemon: bool) -> None:
    """Called by parsec.tap.Options once the command line is parsed."""
    global _twistd_settings
    to_stdout = config.file == "-"
    if to_stdout:
        config = attrs.evolve(config, file=None)
    _twistd_settings = _TwistdSettings(config=config, daemon=daemon, to_stdout=to_stdout)


def twistd_observer() -> ILogObserver:
    """Zero-argument observer factory for twistd's `--logger` option.

    Without a log file, a daemonized twistd writes to `twistd.log` (appended, like twistd's
    own default) since its standard error is closed; otherwise standard error (standard output
    for twistd's `--logfile -`).
    """
    settings = _twistd_settings or _TwistdSettings(config=LogConfig())
    if settings.to_stdout:
        return make_observer(settings.config, stream=sys.stdout)
    if settings.config.file is None and settings.daemon:
        return make_observer(attrs.evolve(settings.config, file="twistd.log"))
    return make_observer(settings.config)


# --------------------------------------------------------------------------------------------
# Sentry


@implementer(ILogObserver)
class SentryLogObserver:
    """Failures and error/critical events -> Sentry events; info/warning -> breadcrumbs."""

    def __init__(self, sdk: Any) -> None:
        self._sdk = sdk

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        failure = event.get("log_failure")
        if failure is None and (level is None or level < LogLevel.info):
            return
        try:
            self._report(redact_event(event), level, failure)
        except Exception:
            # Reporting must never break logging (the publisher would drop this observer).
            pass

    def _report(self, event: LogEvent, level: LogLevel | None, failure: Any) -> None:
        sdk = self._sdk
        message = _message(event)
        namespace = event.get("log_namespace", "")
        sentry_level = _SENTRY_LEVELS.get(level, "error") if level is not None else "error"
        if failure is None and level is not None and level < LogLevel.error:
            sdk.add_breadcrumb(category=namespace, message=message, level=sentry_level, data=_fields(event))
            return
        with sdk.new_scope() as scope:
            scope.set_tag("logger", namespace)
            scope.set_extra("log_message", message)
            for name, value in _fields(event).items():
                scope.set_extra(name, value)
            if failure is not None:
                scope.set_level("fatal" if level == LogLevel.critical else "error")
                try:
                    exc_info = (failure.type, failure.value, failure.getTracebackObject())
                    sdk.capture_exception(exc_info)
                except Exception:
                    # A failure whose frames cannot be walked still gets reported, as text.
                    sdk.capture_message(f"{message}\n{_traceback(event)}", level=sentry_level)
            else:
                sdk.capture_message(message, level=sentry_level)


def _sentry_options(config: LogConfig, sdk_version: str) -> dict[str, Any]:
    """The keywords of `sentry_sdk.init` for `config`, in the spelling of the installed SDK.

    Whatever the version: no automatic instrumentation of third-party libraries, no local
    variables in stack frames (they may hold tokens or keys), no personal data. sentry-sdk 3
    replaced `include_local_variables` and `send_default_pii` with `data_collection`.
    """
    options: dict[str, Any] = {
        "dsn": config.sentry_dsn,
        "environment": config.sentry_environment,
        "release": f"parsec-twisted@{__version__}",
        "auto_enabling_integrations": False,
    }
    major = sdk_version.split(".", 1)[0]
    if major.isdigit() and int(major) >= 3:
        options["data_collection"] = {"user_info": False, "stack_frame_variables": False}
    else:
        options["include_local_variables"] = False
        options["send_default_pii"] = False
    return options


def start_sentry(config: LogConfig) -> SentryLogObserver:
    """Initialise sentry-sdk for `config.sentry_dsn` and return the reporting observer."""
    try:
        import sentry_sdk  # an optional dependency (extra `sentry`): only when configured
    except ImportError:
        raise ConfigError(
            "Option '--sentry-dsn' needs the sentry-sdk package (pip install 'parsec-twisted[sentry]')"
        ) from None
    try:
        sentry_sdk.init(**_sentry_options(config, sentry_sdk.VERSION))
    except Exception as exc:
        raise ConfigError(f"Invalid value for '--sentry-dsn': {exc}") from None
    return SentryLogObserver(sentry_sdk)
