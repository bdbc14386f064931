"""Log observers (CONSOLE / JSON lines, level filter, redaction, file) and their wiring into
`parsec backend run` (setup_logging) and twistd (the "logger" entry of ServerOptions)."""

from __future__ import annotations

import io
import json
import re
import signal
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService, Service
from twisted.logger import LogBeginner, Logger, LogPublisher, capturedLogs
from twisted.scripts.twistd import ServerOptions

import parsec.logging
from parsec.config import ConfigError, LogConfig
from parsec.logging import (
    LineLogObserver,
    make_observer,
    reopen_log_files,
    set_twistd_settings,
    setup_logging,
    twistd_log_settings,
    twistd_observer,
)
from parsec.tap import Options, StartupGuard, makeService

from .conftest import REQUIRED_ARGS

TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _emit_samples(log: Logger) -> None:
    log.debug("debug {n}", n=1)
    log.info("info {n}", n=2)
    log.warn("warn {n} for {who}", n=3, who="alice", extra=True, ratio=0.5, nothing=None, obj=object())
    log.error("error {n}", n=4)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("it broke")


def _json_lines(text: str) -> list[dict[str, Any]]:
    assert "\x1e" not in text  # no RFC 7464 record separator
    return [json.loads(line) for line in text.splitlines() if not line.startswith((" ", "Traceback"))]


def test_json_lines() -> None:
    stream = io.StringIO()
    _emit_samples(Logger(namespace="parsec.test", observer=make_observer(LogConfig("DEBUG", "JSON"), stream)))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 5  # one line per event, the traceback inside the JSON string
    records = [json.loads(line) for line in lines]
    assert [r["level"] for r in records] == ["debug", "info", "warning", "error", "critical"]
    warn = records[2]
    assert warn["event"] == "warn 3 for alice"
    assert warn["namespace"] == "parsec.test"
    assert TIMESTAMP_RE.match(warn["timestamp"]), warn["timestamp"]
    assert (warn["n"], warn["who"], warn["extra"], warn["ratio"], warn["nothing"]) == (
        3,
        "alice",
        True,
        0.5,
        None,
    )
    assert "obj" not in warn  # only simple values
    assert not any(key.startswith("log_") for key in warn)
    failure = records[4]
    assert failure["event"] == "it broke"
    assert "ZeroDivisionError" in failure["exception"]


@pytest.mark.parametrize(
    "level, expected",
    [
        ("DEBUG", ["debug", "info", "warning", "error", "critical"]),
        ("INFO", ["info", "warning", "error", "critical"]),
        ("WARNING", ["warning", "error", "critical"]),
        ("ERROR", ["error", "critical"]),
        ("CRITICAL", ["critical"]),
    ],
)
def test_level_filter(level: str, expected: list[str]) -> None:
    stream = io.StringIO()
    _emit_samples(Logger(namespace="parsec.test", observer=make_observer(LogConfig(level, "JSON"), stream)))
    assert [r["level"] for r in _json_lines(stream.getvalue())] == expected


def test_console_lines() -> None:
    stream = io.StringIO()
    log = Logger(namespace="parsec.test", observer=make_observer(LogConfig("INFO", "CONSOLE"), stream))
    log.warn("user {who} did {what}", who="alice", what="a thing", count=2)
    line = stream.getvalue()
    assert line.endswith("\n") and line.count("\n") == 1
    timestamp, rest = line.rstrip("\n").split(" ", 1)
    assert TIMESTAMP_RE.match(timestamp)
    assert rest == '[warning ] user alice did a thing [parsec.test] count=2 what="a thing" who=alice'
    assert "\x1b[" not in line  # no colors when the stream is not a terminal


def test_console_failure_has_traceback() -> None:
    stream = io.StringIO()
    log = Logger(namespace="parsec.test", observer=make_observer(LogConfig("INFO", "CONSOLE"), stream))
    try:
        raise ValueError("bad")
    except ValueError:
        log.failure("oops")
    text = stream.getvalue()
    assert "[critical] oops [parsec.test]" in text.splitlines()[0]
    assert "ValueError: bad" in text


@pytest.mark.parametrize("log_format", ["JSON", "CONSOLE"])
def test_secrets_are_redacted(log_format: str) -> None:
    stream = io.StringIO()
    log = Logger(namespace="parsec.test", observer=make_observer(LogConfig("DEBUG", log_format), stream))
    secrets = {
        "token": "tok-1",
        "administration_token": "tok-2",
        "password": "pw-3",
        "email_host_password": "pw-4",
        "secret": "sec-5",
        "s3_secret_key": "sec-6",
        "api_key": "key-7",
        "sentry_dsn": "dsn-8",
        "Authorization": "Bearer tok-9",
    }
    log.info("token={token} password={password} dsn={sentry_dsn} user={user}", user="alice", **secrets)
    text = stream.getvalue()
    for value in secrets.values():
        assert value not in text
    assert "alice" in text
    assert "<redacted>" in text
    if log_format == "JSON":
        record = json.loads(text)
        assert record["event"] == "token=<redacted> password=<redacted> dsn=<redacted> user=alice"
        assert record["administration_token"] == "<redacted>"


def test_unformattable_event_does_not_break_logging() -> None:
    stream = io.StringIO()
    observer = LineLogObserver(stream, "JSON")
    observer({"log_format": "{missing", "log_level": None, "log_namespace": "x", "log_time": 0.0})
    observer({"log_format": "{a}", "a": float("nan"), "log_namespace": "x", "log_time": 0.0})
    assert len(stream.getvalue().splitlines()) == 2


def test_log_file_is_appended_to(tmp_path: Path) -> None:
    """A restart (Restart=on-failure) keeps the previous run's lines."""
    path = tmp_path / "parsec.log"
    path.write_text('{"event":"previous run"}\n')
    observer = make_observer(LogConfig("INFO", "JSON", file=str(path)))
    Logger(namespace="parsec.test", observer=observer).info("hello")
    records = _json_lines(path.read_text())
    assert [r["event"] for r in records] == ["previous run", "hello"]


def test_log_file_reopened_after_rename(tmp_path: Path) -> None:
    """logrotate's default: the file is renamed, then the server reopens it by name."""
    path = tmp_path / "parsec.log"
    log = Logger(namespace="parsec.test", observer=make_observer(LogConfig("INFO", "JSON", file=str(path))))
    log.info("before")
    path.rename(tmp_path / "parsec.log.1")
    log.info("still to the renamed file")
    reopen_log_files()
    log.info("after")
    assert [r["event"] for r in _json_lines((tmp_path / "parsec.log.1").read_text())] == [
        "before",
        "still to the renamed file",
    ]
    assert [r["event"] for r in _json_lines(path.read_text())] == ["after"]


def test_log_file_truncated_under_us_leaves_no_hole(tmp_path: Path) -> None:
    """logrotate's copytruncate: the copy is taken, the file truncated in place while the
    server keeps it open; the next line must start at offset 0, not after a run of NULs."""
    path = tmp_path / "parsec.log"
    log = Logger(namespace="parsec.test", observer=make_observer(LogConfig("INFO", "JSON", file=str(path))))
    log.info("a rather long line that moves the file offset " + "x" * 200)
    with open(path, "r+b") as file:
        file.truncate(0)
    log.info("after the truncation")
    data = path.read_bytes()
    assert b"\0" not in data
    assert [r["event"] for r in _json_lines(data.decode())] == ["after the truncation"]


def test_log_file_that_cannot_be_opened(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^Invalid value for '--log-file': cannot open"):
        make_observer(LogConfig(file=str(tmp_path / "missing-dir" / "x.log")))


def test_setup_logging(tmp_path: Path) -> None:
    path = tmp_path / "out.log"
    publisher = LogPublisher()
    warnings_module = types.SimpleNamespace(showwarning=None)
    beginner = LogBeginner(publisher, io.StringIO(), types.SimpleNamespace(), warnings_module)
    Logger(namespace="parsec.early", observer=publisher).warn("before start")  # buffered
    observers = setup_logging(LogConfig("WARNING", "JSON", file=str(path)), beginner=beginner)
    assert len(observers) == 1  # no Sentry without DSN
    Logger(namespace="parsec.late", observer=publisher).info("filtered out")
    Logger(namespace="parsec.late", observer=publisher).error("after start")
    assert [r["event"] for r in _json_lines(path.read_text())] == ["before start", "after start"]


# ---- twistd wiring --------------------------------------------------------------------------


def test_twistd_observer_uses_stashed_settings(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    set_twistd_settings(LogConfig("ERROR", "JSON", file=str(path)), daemon=False)
    log = Logger(namespace="parsec.test", observer=twistd_observer())
    log.warn("dropped")
    log.error("kept")
    assert [r["event"] for r in _json_lines(path.read_text())] == ["kept"]


def test_twistd_observer_daemon_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "twistd.log").write_text("kept from before\n")
    set_twistd_settings(LogConfig("INFO", "CONSOLE"), daemon=True)
    Logger(namespace="parsec.test", observer=twistd_observer()).info("daemon line")
    text = (tmp_path / "twistd.log").read_text()
    assert text.startswith("kept from before\n") and "daemon line" in text


@pytest.mark.parametrize(
    "twistd_args, log_file",
    [
        (["--nodaemon"], None),
        # twistd's own --logfile names the file; our format and level apply to it.
        (["--nodaemon", "--logfile", "twistd-own.log"], "twistd-own.log"),
    ],
)
def test_twistd_server_options_pick_our_observer(twistd_args: list[str], log_file: str | None) -> None:
    """The real twistd ServerOptions of the installed Twisted: the subcommand sets the
    `logger` entry, which twistd's postOptions resolves and its AppLogger calls."""
    options = ServerOptions()
    options.parseOptions([*twistd_args, "parsec", *REQUIRED_ARGS, "--log-format", "JSON", "-l", "INFO"])
    assert options.subCommand == "parsec"
    assert isinstance(options.subOptions, Options)
    assert options.subOptions["config"].log == LogConfig("INFO", "JSON")
    assert options["logger"] is twistd_observer
    settings = parsec.logging._twistd_settings
    assert settings is not None and settings.daemon is False
    assert settings.config == LogConfig("INFO", "JSON", file=log_file)


@pytest.mark.parametrize("twistd_option", [["--syslog"], ["--logger", "twisted.logger.globalLogPublisher"]])
def test_twistd_own_observer_refuses_our_log_options(
    twistd_option: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    options = ServerOptions()
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["--nodaemon", *twistd_option, "parsec", *REQUIRED_ARGS, "-f", "JSON"])
    assert info.value.code == 1
    assert capsys.readouterr().err == (
        f"Error: twistd's {twistd_option[0]} chooses its own log format and level: it cannot be "
        "combined with --log-format (drop one of them)\n"
    )


def test_twistd_own_observer_without_our_log_options() -> None:
    options = ServerOptions()
    options.parseOptions(["--nodaemon", "--logger", "twisted.logger.globalLogPublisher", "parsec", *REQUIRED_ARGS])
    assert options["logger"] is not twistd_observer


def test_twistd_logfile_and_our_log_file_are_exclusive() -> None:
    config = LogConfig(file="ours.log", given=frozenset({"--log-file"}))
    with pytest.raises(ConfigError, match="twistd's --logfile and '--log-file' both name a log file"):
        twistd_log_settings(config, {"logfile": "theirs.log"})


def test_twistd_logfile_dash_is_standard_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    options = ServerOptions()
    options.parseOptions(["--nodaemon", "--logfile", "-", "parsec", *REQUIRED_ARGS, "-f", "JSON"])
    Logger(namespace="parsec.test", observer=twistd_observer()).error("to stdout")
    captured = capsys.readouterr()
    assert [r["event"] for r in _json_lines(captured.out)] == ["to stdout"] and captured.err == ""


def test_twistd_daemon_mode_is_noticed() -> None:
    options = ServerOptions()
    options.parseOptions(["parsec", *REQUIRED_ARGS])
    settings = parsec.logging._twistd_settings
    assert settings is not None and settings.daemon is True


def test_tap_options_error_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--port", "nope", *REQUIRED_ARGS])
    assert info.value.code == 1
    captured = capsys.readouterr()
    assert captured.err == "Error: Invalid value for '--port': 'nope' is not a valid integer\n"


def test_tap_options_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        Options().parseOptions(["--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: twistd parsec [OPTIONS]")


class _Server(MultiService):
    def reload(self) -> None:
        pass


@pytest.fixture
def saved_signal_handlers() -> Iterator[None]:
    """makeService installs the process's signal handlers: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("saved_signal_handlers")
def test_make_service_wraps_in_startup_guard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    built: list[Any] = []

    def make_service(config: Any, *, reactor: Any = None, on_fatal: Any = None) -> MultiService:
        built.append(config)
        return _Server()

    monkeypatch.setitem(sys.modules, "parsec.service", types.SimpleNamespace(make_service=make_service))
    options = Options()
    options.parseOptions(["--dev", "--port", "6999"])
    service = makeService(options)
    assert isinstance(service, StartupGuard)
    assert built == [options["config"]]
    assert capsys.readouterr().out.startswith("Starting Parsec Backend on 127.0.0.1:6999 (")


def test_make_service_failure_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def make_service(config: Any, *, reactor: Any = None, on_fatal: Any = None) -> MultiService:
        raise ValueError("cannot load the certificate")

    monkeypatch.setitem(sys.modules, "parsec.service", types.SimpleNamespace(make_service=make_service))
    options = Options()
    options.parseOptions(REQUIRED_ARGS)
    with pytest.raises(SystemExit) as info:
        makeService(options)
    assert info.value.code == 1
    assert capsys.readouterr().err == "Error: cannot load the certificate\n"


class _Exploding(Service):
    def startService(self) -> None:
        raise OSError("Address already in use")


@pytest.mark.allow_logged_failures
@pytest.mark.parametrize("debug", [False, True])
def test_startup_guard(debug: bool) -> None:
    from twisted.internet import reactor

    guard = StartupGuard(reactor, debug=debug)
    _Exploding().setServiceParent(guard)
    with capturedLogs() as events, pytest.raises(SystemExit) as info:
        guard.startService()
    assert info.value.code == 1
    (event,) = [e for e in events if e.get("log_namespace") == "parsec.tap"]
    assert ("log_failure" in event) is debug
    if not debug:
        assert event["error"] == "Address already in use"
