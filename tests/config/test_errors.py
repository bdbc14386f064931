"""Configuration errors: the exact message (in-process), then the same cases through the real
`parsec backend run` and `twistd parsec` scripts: one `Error: <message>` line on stderr, exit
status 1, no traceback (unless --debug)."""

from __future__ import annotations

from pathlib import Path

import pytest

from parsec.config import ConfigError
from parsec.options import parse_migrate_args, parse_run_args

from .conftest import PARSEC, REQUIRED_ENV, TWISTD, run, run_many

MISSING_FILE = "/nonexistent/parsec/key.pem"

# (id, argv, env on top of REQUIRED_ENV (None value = removed), exact message)
RUN_ERRORS: list[tuple[str, list[str], dict[str, str | None], str]] = [
    ("missing-db", [], {"PARSEC_DB": None}, "Missing option '--db' (or environment variable PARSEC_DB)"),
    (
        "missing-blockstore",
        [],
        {"PARSEC_BLOCKSTORE": None},
        "Missing option '--blockstore' (or environment variable PARSEC_BLOCKSTORE)",
    ),
    (
        "missing-token",
        [],
        {"PARSEC_ADMINISTRATION_TOKEN": None},
        "Missing option '--administration-token' (or environment variable PARSEC_ADMINISTRATION_TOKEN)",
    ),
    (
        "missing-backend-addr",
        [],
        {"PARSEC_BACKEND_ADDR": None},
        "Missing option '--backend-addr' (or environment variable PARSEC_BACKEND_ADDR)",
    ),
    (
        "missing-email-host",
        [],
        {"PARSEC_EMAIL_HOST": None},
        "Missing option '--email-host' (or environment variable PARSEC_EMAIL_HOST)",
    ),
    (
        "db-lowercase-mocked",
        ["--db", "mocked"],
        {},
        "Invalid value for '--db': must be `MOCKED` or start with `postgresql://` or `postgres://`",
    ),
    (
        "db-from-env",
        [],
        {"PARSEC_DB": "mysql://u:pw@127.0.0.1/x"},
        "Invalid value for '--db' (from PARSEC_DB): must be `MOCKED` or start with `postgresql://` or `postgres://`",
    ),
    ("port-not-int", ["--port", "http"], {}, "Invalid value for '--port': 'http' is not a valid integer"),
    (
        "port-from-env",
        [],
        {"PARSEC_PORT": "70000"},
        "Invalid value for '--port' (from PARSEC_PORT): 70000 is bigger than the maximum 65535",
    ),
    (
        "backend-addr-scheme",
        ["--backend-addr", "https://parsec.test"],
        {},
        "Invalid value for '--backend-addr': Must start with `parsec://`",
    ),
    (
        "backend-addr-no-ssl",
        ["--backend-addr", "parsec://parsec.test?no_ssl=maybe"],
        {},
        "Invalid value for '--backend-addr': Invalid `no_ssl` param value (must be true or false)",
    ),
    (
        "forward-proto-format",
        ["--forward-proto-enforce-https", "X-Forwarded-Proto"],
        {},
        "Invalid value for '--forward-proto-enforce-https': Invalid format, should be `<header-name>:<header-value>`",
    ),
    (
        "forward-proto-two-colons",
        [],
        {"PARSEC_FORWARD_PROTO_ENFORCE_HTTPS": "a:b:c"},
        "Invalid value for '--forward-proto-enforce-https' (from PARSEC_FORWARD_PROTO_ENFORCE_HTTPS): "
        "Invalid format, should be `<header-name>:<header-value>`",
    ),
    (
        "ssl-keyfile-missing",
        ["--ssl-keyfile", MISSING_FILE],
        {},
        f"Invalid value for '--ssl-keyfile': File '{MISSING_FILE}' does not exist",
    ),
    (
        "ssl-certfile-missing",
        [],
        {"PARSEC_SSL_CERTFILE": MISSING_FILE},
        f"Invalid value for '--ssl-certfile' (from PARSEC_SSL_CERTFILE): File '{MISSING_FILE}' does not exist",
    ),
    (
        "email-sender-required",
        ["--email-host", "smtp.test"],
        {},
        "--email-sender is required when --email-host is provided",
    ),
    (
        "email-ssl-and-tls",
        ["--email-use-ssl"],
        {"PARSEC_EMAIL_USE_TLS": "1"},
        "Options '--email-use-ssl' (implicit TLS) and '--email-use-tls' (STARTTLS) are mutually exclusive",
    ),
    (
        "email-language",
        ["--email-language", "de"],
        {},
        "Invalid value for '--email-language': 'de' is not one of en, fr",
    ),
    (
        "bool-env",
        [],
        {"PARSEC_EMAIL_USE_SSL": "maybe"},
        "Invalid value for '--email-use-ssl' (from PARSEC_EMAIL_USE_SSL): 'maybe' is not a valid boolean "
        "(use 1/0, true/false, yes/no or on/off)",
    ),
    (
        "log-level",
        ["-l", "verbose"],
        {},
        "Invalid value for '--log-level': 'verbose' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
    ),
    (
        "log-format",
        ["--log-format=xml"],
        {},
        "Invalid value for '--log-format': 'xml' is not one of CONSOLE, JSON",
    ),
    (
        "blockstore",
        ["-b", "floppy"],
        {},
        "Invalid value for '--blockstore': Invalid blockstore type `floppy`",
    ),
    (
        "webhook",
        ["--organization-bootstrap-webhook", "ftp://hooks.test"],
        {},
        "Invalid value for '--organization-bootstrap-webhook': must be an http:// or https:// URL",
    ),
    (
        "users-limit",
        ["--organization-initial-active-users-limit", "-1"],
        {},
        "Invalid value for '--organization-initial-active-users-limit': -1 is smaller than the minimum 0",
    ),
    (
        "pause",
        ["--pause-before-retry-database-connection", "soon"],
        {},
        "Invalid value for '--pause-before-retry-database-connection': 'soon' is not a valid number",
    ),
    ("sentry-dsn", ["--sentry-dsn", "nope"], {}, "Invalid value for '--sentry-dsn': Unsupported scheme ''"),
    ("unknown-option", ["--db-url", "MOCKED"], {}, "No such option: --db-url"),
    ("unknown-short", ["-x"], {}, "No such option: -x"),
    ("value-missing", ["--port"], {}, "Option '--port' requires an argument"),
    ("flag-with-value", ["--dev=1"], {}, "Option '--dev' does not take a value"),
    ("extra-argument", ["serve"], {}, "Got unexpected extra argument (serve)"),
    (
        "unknown-var-stays-literal",
        [],
        {"PARSEC_CMD_ARGS": "--port=$NOPE"},
        "Invalid value for '--port': '$NOPE' is not a valid integer",
    ),
]

# Run through the real scripts: one case per kind of message (`parsec` answers errors
# before importing Twisted, so it is cheap; twistd is not, it gets a subset).
TWISTD_CASES = [
    "missing-db",
    "port-from-env",
    "email-ssl-and-tls",
    "ssl-keyfile-missing",
    "unknown-option",
    "unknown-var-stays-literal",
]
SUBPROCESS_CASES = [
    "missing-db",
    "db-lowercase-mocked",
    "port-from-env",
    "backend-addr-scheme",
    "forward-proto-format",
    "ssl-keyfile-missing",
    "email-sender-required",
    "email-ssl-and-tls",
    "blockstore",
    "unknown-option",
    "extra-argument",
    "unknown-var-stays-literal",
]


def _env(overrides: dict[str, str | None]) -> dict[str, str]:
    env = dict(REQUIRED_ENV)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.mark.parametrize("case_id, argv, env, message", RUN_ERRORS, ids=[case[0] for case in RUN_ERRORS])
def test_run_error_message(case_id: str, argv: list[str], env: dict[str, str | None], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_args(argv, _env(env))
    assert str(info.value) == message


def test_secret_values_are_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_args([], _env({"PARSEC_DB": "postgressql://user:hunter2@127.0.0.1/db"}))
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "argv, env, message",
    [
        ([], {}, "Missing option '--db' (or environment variable PARSEC_DB)"),
        (
            ["--db", "MOCKED"],
            {},
            "Invalid value for '--db': Must start with `postgresql://` or `postgres://`",
        ),
        (["--db", "postgres:///x", "--host", "h"], {}, "No such option: --host"),
        (
            ["--db", "postgres:///x"],
            {"PARSEC_CMD_ARGS": "--dry-run=yes"},
            "Option '--dry-run' does not take a value",
        ),
    ],
)
def test_migrate_error_message(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_migrate_args(argv, env)
    assert str(info.value) == message


@pytest.fixture(scope="module")
def subprocess_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], object]:
    """All the subprocess cases of this module, run concurrently once."""
    cwd = tmp_path_factory.mktemp("errors")
    cases = {case[0]: case for case in RUN_ERRORS}
    jobs: list[tuple[list[str], dict[str, str]]] = []
    keys: list[tuple[str, str]] = []
    for case_id in SUBPROCESS_CASES:
        _, argv, env, _ = cases[case_id]
        jobs.append(([PARSEC, "backend", "run", *argv], _env(env)))
        keys.append(("parsec", case_id))
        if case_id in TWISTD_CASES:
            jobs.append(([TWISTD, "--nodaemon", "--pidfile=", "parsec", *argv], _env(env)))
            keys.append(("twistd", case_id))
    # --debug shows the traceback (env var of docs/protocol/DECISIONS.md: PARSEC_DEBUG).
    jobs.append(([PARSEC, "backend", "run", "--port", "x"], {**REQUIRED_ENV, "PARSEC_DEBUG": "1"}))
    keys.append(("parsec", "debug"))
    jobs.append(([TWISTD, "-n", "--pidfile=", "parsec", "--debug", "--port", "x"], REQUIRED_ENV))
    keys.append(("twistd", "debug"))
    jobs.append(([PARSEC, "backend", "migrate", "--db", "MOCKED"], {}))
    keys.append(("parsec", "migrate"))
    # Port 1 on loopback: connection refused at once.
    jobs.append(([PARSEC, "backend", "migrate"], {"PARSEC_DB": "postgresql://parsec@127.0.0.1:1/parsec"}))
    keys.append(("parsec", "migrate-unreachable"))
    results = run_many(jobs, cwd=cwd)
    assert not list(Path(cwd).iterdir()), "a failed start-up left files behind"
    return dict(zip(keys, results, strict=True))


@pytest.mark.parametrize(
    "front_end, case_id",
    [("parsec", case_id) for case_id in SUBPROCESS_CASES] + [("twistd", case_id) for case_id in TWISTD_CASES],
)
def test_error_is_one_line_and_status_1(subprocess_results: dict, front_end: str, case_id: str) -> None:
    result = subprocess_results[(front_end, case_id)]
    message = next(case[3] for case in RUN_ERRORS if case[0] == case_id)
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [f"Error: {message}"], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("front_end", ["parsec", "twistd"])
def test_debug_adds_the_traceback(subprocess_results: dict, front_end: str) -> None:
    result = subprocess_results[(front_end, "debug")]
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.splitlines()[-1] == "Error: Invalid value for '--port': 'x' is not a valid integer"


def test_migrate_error_subprocess(subprocess_results: dict) -> None:
    result = subprocess_results[("parsec", "migrate")]
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "Error: Invalid value for '--db': Must start with `postgresql://` or `postgres://`"
    ]


def test_migrate_unreachable_database(subprocess_results: dict) -> None:
    result = subprocess_results[("parsec", "migrate-unreachable")]
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: ")


def test_unknown_command() -> None:
    result = run([PARSEC, "frontend"])
    assert result.returncode == 1
    assert result.stderr == "Error: No such command 'frontend' (see `parsec --help`)\n"
