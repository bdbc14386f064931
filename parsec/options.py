"""Command line and environment parsing, shared by `parsec backend ...` and `twistd parsec`.

Both front-ends hand their raw argument list to :func:`parse_run_args` (or
:func:`parse_migrate_args`), so the two accept exactly the same options, read the same
environment variables and report the same errors. The options are described once, as data,
in :data:`RUN_OPTIONS` / :data:`MIGRATE_OPTIONS`; the help text is rendered from that table.

Resolution of one option, highest priority first:

1. the command line, followed by the tokens of ``PARSEC_CMD_ARGS`` (appended *after* the real
   arguments, so for a single-valued option they win, and ``--blockstore`` values accumulate);
2. for ``--dev``, the development value of an option that the command line did not give;
3. the option's environment variable (an empty value counts as unset);
4. the default (or a "Missing option" error for a required option).

The parser is written by hand (GNU style: ``--opt value``, ``--opt=value``, ``-P value``,
``-P6777``; no abbreviations; ``--`` ends the options) because it must be usable both from our
console script and from inside twistd's ``usage.Options``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from parsec.blockstore.config import BlockStoreConfigError, parse_blockstore_params
from parsec.config import (
    BackendAddr,
    BackendConfig,
    ConfigError,
    EmailConfig,
    ListenConfig,
    LogConfig,
    MigrateConfig,
    ServerConfig,
)

__all__ = [
    "CMD_ARGS_ENV",
    "MIGRATE_OPTIONS",
    "RUN_OPTIONS",
    "ConfigError",
    "HelpRequested",
    "MigrateConfig",
    "Option",
    "debug_requested",
    "expand_cmd_args",
    "parse_bool",
    "parse_migrate_args",
    "parse_run_args",
    "render_help",
    "report_error",
    "startup_line",
]

CMD_ARGS_ENV = "PARSEC_CMD_ARGS"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("CONSOLE", "JSON")
EMAIL_LANGUAGES = ("en", "fr")
DEV_ADMINISTRATION_TOKEN = "s3cr3t"
DEV_EMAIL_SENDER = "no-reply@parsec.com"
DEFAULT_PORT = 6777

_TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})


class HelpRequested(Exception):
    """`--help` was found among the options: the front-end prints the help and exits 0."""


# --------------------------------------------------------------------------------------------
# Value parsers: take the raw string, return the typed value or raise ValueError(reason).
# Reasons must not repeat values that may be secret (DSNs, tokens, passwords).


def parse_bool(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"{raw!r} is not a valid boolean (use 1/0, true/false, yes/no or on/off)")


def _text(raw: str) -> str:
    return raw


def _int_parser(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ValueError(f"{raw!r} is not a valid integer") from None
        if minimum is not None and value < minimum:
            raise ValueError(f"{value} is smaller than the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise ValueError(f"{value} is bigger than the maximum {maximum}")
        return value

    return parse


def _float_parser(minimum: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError(f"{raw!r} is not a valid number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{raw!r} is not a finite number")
        if minimum is not None and value < minimum:
            raise ValueError(f"{value} is smaller than the minimum {minimum}")
        return value

    return parse


def _choice_parser(choices: Sequence[str]) -> Callable[[str], str]:
    """Case-insensitive choice; returns the spelling of `choices`."""
    by_lower = {choice.lower(): choice for choice in choices}

    def parse(raw: str) -> str:
        try:
            return by_lower[raw.strip().lower()]
        except KeyError:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}") from None

    return parse


def _run_db_url(raw: str) -> str:
    # Exactly `MOCKED` (case-sensitive, as in the reference where `mocked` is taken for a DSN)
    # or a PostgreSQL DSN. The value itself is never repeated: it may hold a password.
    if raw == "MOCKED" or raw.startswith(("postgresql://", "postgres://")):
        return raw
    raise ValueError("must be `MOCKED` or start with `postgresql://` or `postgres://`")


def _migrate_db_url(raw: str) -> str:
    if raw.startswith(("postgresql://", "postgres://")):
        return raw
    raise ValueError("Must start with `postgresql://` or `postgres://`")


def _backend_addr(raw: str) -> BackendAddr:
    try:
        return BackendAddr.from_url(raw)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _forward_proto(raw: str) -> tuple[str, str]:
    if raw.count(":") != 1:
        raise ValueError("Invalid format, should be `<header-name>:<header-value>`")
    name, value = raw.split(":")
    if not name.strip():
        raise ValueError("Invalid format, should be `<header-name>:<header-value>` (empty header name)")
    return name.strip().lower(), value


def _existing_file(raw: str) -> str:
    if not os.path.exists(raw):
        raise ValueError(f"File {raw!r} does not exist")
    if not os.path.isfile(raw):
        raise ValueError(f"{raw!r} is not a file")
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw.split("://", 1)[1]) == 0:
        raise ValueError("must be an http:// or https:// URL")
    return raw


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


# --------------------------------------------------------------------------------------------
# The option table


@attrs.frozen
class Option:
    """One command line option and its environment variable(s)."""

    name: str  # long name with dashes, e.g. "--db-min-connections"
    dest: str  # key of the parsed values
    help: str
    parser: Callable[[str], Any] = _text  # raw string -> value (values and env vars)
    short: str | None = None  # e.g. "-P"
    aliases: tuple[str, ...] = ()  # other long names, e.g. ("--sentry-url",)
    env: tuple[str, ...] = ()  # environment variables, first set one wins
    default: Any = None  # typed default (not parsed); None = no value
    required: bool = False
    flag: bool = False  # takes no value on the command line; env value is a boolean
    multiple: bool = False  # repeatable; env value is whitespace-separated
    metavar: str = "TEXT"
    default_help: str | None = None  # how `--help` shows the default, when not repr-able
    secret: bool = False  # never echo the value (help shows no default, errors no value)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases) + ((self.short,) if self.short else ())

    def label(self) -> str:
        return f"'{self.name}'"


_LOG_OPTIONS_HELP = {
    "level": "Minimum level of the log messages written: DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "format": "Format of the log lines: CONSOLE (readable key=value lines) or JSON "
    "(one JSON object per line)",
    "file": "File the logs are written to (truncated at start-up); `-` means standard error",
}


def _log_options() -> tuple[Option, ...]:
    return (
        Option(
            "--log-level",
            "log_level",
            _LOG_OPTIONS_HELP["level"],
            _choice_parser(LOG_LEVELS),
            short="-l",
            env=("PARSEC_LOG_LEVEL",),
            default="WARNING",
            metavar="LEVEL",
        ),
        Option(
            "--log-format",
            "log_format",
            _LOG_OPTIONS_HELP["format"],
            _choice_parser(LOG_FORMATS),
            short="-f",
            env=("PARSEC_LOG_FORMAT",),
            default="CONSOLE",
            metavar="FORMAT",
        ),
        Option(
            "--log-file",
            "log_file",
            _LOG_OPTIONS_HELP["file"],
            short="-o",
            env=("PARSEC_LOG_FILE",),
            default=None,
            default_help="standard error",
            metavar="FILE",
        ),
    )


_DEBUG_HELP = "Debug mode: detailed `server` header, tracebacks for start-up and configuration errors"

RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        "--host",
        "host",
        "Address to listen on (IPv4 or IPv6 address or host name)",
        _non_empty,
        short="-H",
        env=("PARSEC_HOST",),
        default="127.0.0.1",
        metavar="HOST",
    ),
    Option(
        "--port",
        "port",
        "TCP port to listen on",
        _int_parser(0, 65535),
        short="-P",
        env=("PARSEC_PORT",),
        default=DEFAULT_PORT,
        metavar="PORT",
    ),
    Option(
        "--db",
        "db",
        "Database: `MOCKED` (in memory, lost at exit) or a PostgreSQL URL "
        "`postgresql://<user>:<password>@<host>:<port>/<db>` (`postgres://` also accepted)",
        _run_db_url,
        env=("PARSEC_DB",),
        required=True,
        metavar="URL",
        secret=True,
    ),
    Option(
        "--db-min-connections",
        "db_min_connections",
        "Minimum number of connections to the PostgreSQL database",
        _int_parser(1),
        env=("PARSEC_DB_MIN_CONNECTIONS",),
        default=5,
        metavar="INTEGER",
    ),
    Option(
        "--db-max-connections",
        "db_max_connections",
        "Maximum number of connections to the PostgreSQL database "
        "(plus one dedicated to event notifications)",
        _int_parser(1),
        env=("PARSEC_DB_MAX_CONNECTIONS",),
        default=7,
        metavar="INTEGER",
    ),
    Option(
        "--maximum-database-connection-attempts",
        "db_max_connection_attempts",
        "Consecutive failed attempts to (re)connect to the database before giving up (0 = never retry)",
        _int_parser(0),
        env=("PARSEC_MAXIMUM_DATABASE_CONNECTION_ATTEMPTS",),
        default=10,
        metavar="INTEGER",
    ),
    Option(
        "--pause-before-retry-database-connection",
        "db_pause_before_retry",
        "Seconds to wait before retrying a failed database connection",
        _float_parser(0.0),
        env=("PARSEC_PAUSE_BEFORE_RETRY_DATABASE_CONNECTION",),
        default=1.0,
        metavar="SECONDS",
    ),
    Option(
        "--blockstore",
        "blockstore",
        "Where blocks are stored (repeat the option for RAID): `MOCKED`, `POSTGRESQL`, "
        "`s3:[<endpoint_url>]:<region>:<bucket>:<key>:<secret>`, "
        "`swift:<auth_url>:<tenant>:<container>:<user>:<password>`, or "
        "`<RAID0|RAID1|RAID5>:<node index>:<one of the above>`. In the environment, "
        "several values are separated by whitespace",
        short="-b",
        env=("PARSEC_BLOCKSTORE",),
        required=True,
        multiple=True,
        metavar="CONFIG",
        secret=True,
    ),
    Option(
        "--administration-token",
        "administration_token",
        "Secret token (HTTP Bearer) of the administration REST API",
        _non_empty,
        env=("PARSEC_ADMINISTRATION_TOKEN",),
        required=True,
        metavar="TOKEN",
        secret=True,
    ),
    Option(
        "--spontaneous-organization-bootstrap",
        "spontaneous_organization_bootstrap",
        "Allow clients to bootstrap an organization that the administration API did not create",
        parse_bool,
        env=("PARSEC_SPONTANEOUS_ORGANIZATION_BOOTSTRAP",),
        default=False,
        flag=True,
    ),
    Option(
        "--organization-bootstrap-webhook",
        "organization_bootstrap_webhook",
        "URL notified (HTTP POST) each time an organization is bootstrapped",
        _http_url,
        env=("PARSEC_ORGANIZATION_BOOTSTRAP_WEBHOOK",),
        default=None,
        default_help="none",
        metavar="URL",
    ),
    Option(
        "--organization-initial-active-users-limit",
        "organization_initial_active_users_limit",
        "Maximum number of active users of a newly created organization",
        _int_parser(0),
        env=("PARSEC_ORGANIZATION_INITIAL_ACTIVE_USERS_LIMIT",),
        default=None,
        default_help="unlimited",
        metavar="INTEGER",
    ),
    Option(
        "--organization-initial-user-profile-outsider-allowed",
        "organization_initial_user_profile_outsider_allowed",
        "Whether a newly created organization accepts users with the OUTSIDER profile",
        parse_bool,
        env=("PARSEC_ORGANIZATION_INITIAL_USER_PROFILE_OUTSIDER_ALLOWED",),
        default=True,
        metavar="BOOLEAN",
    ),
    Option(
        "--backend-addr",
        "backend_addr",
        "Public address of this server, as clients reach it: "
        "`parsec://<host>[:<port>][?no_ssl=true]` (used in invitation e-mails and /redirect)",
        _backend_addr,
        env=("PARSEC_BACKEND_ADDR",),
        required=True,
        metavar="URL",
    ),
    Option(
        "--email-host",
        "email_host",
        "SMTP server that sends the invitation e-mails, or `MOCKED` to write them to temporary files instead",
        _non_empty,
        env=("PARSEC_EMAIL_HOST",),
        required=True,
        metavar="HOST",
    ),
    Option(
        "--email-port",
        "email_port",
        "Port of the SMTP server",
        _int_parser(1, 65535),
        env=("PARSEC_EMAIL_PORT",),
        default=25,
        metavar="PORT",
    ),
    Option(
        "--email-host-user",
        "email_host_user",
        "SMTP user name (used only together with --email-host-password)",
        env=("PARSEC_EMAIL_HOST_USER",),
        default=None,
        default_help="none",
        metavar="USER",
    ),
    Option(
        "--email-host-password",
        "email_host_password",
        "SMTP password",
        env=("PARSEC_EMAIL_HOST_PASSWORD",),
        default=None,
        metavar="PASSWORD",
        secret=True,
    ),
    Option(
        "--email-use-ssl",
        "email_use_ssl",
        "Use implicit TLS: the SMTP connection is encrypted from the first byte "
        "(SMTPS, usually port 465). Exclusive with --email-use-tls",
        parse_bool,
        env=("PARSEC_EMAIL_USE_SSL",),
        default=False,
        flag=True,
    ),
    Option(
        "--email-use-tls",
        "email_use_tls",
        "Use STARTTLS: a plain SMTP connection upgraded to TLS (usually port 587). "
        "Exclusive with --email-use-ssl",
        parse_bool,
        env=("PARSEC_EMAIL_USE_TLS",),
        default=False,
        flag=True,
    ),
    Option(
        "--email-ca-file",
        "email_ca_file",
        "PEM file of the certificate authorities trusted for the SMTP server's certificate "
        "(with --email-use-ssl or --email-use-tls); the system's trust store when unset",
        _existing_file,
        env=("PARSEC_EMAIL_CA_FILE",),
        default=None,
        metavar="FILE",
    ),
    Option(
        "--email-sender",
        "email_sender",
        "Sender address (`From` header) of the e-mails; required unless --email-host is MOCKED",
        _non_empty,
        env=("PARSEC_EMAIL_SENDER",),
        default=None,
        default_help=f"{DEV_EMAIL_SENDER} when --email-host is MOCKED",
        metavar="EMAIL",
    ),
    Option(
        "--email-language",
        "email_language",
        "Language of the invitation e-mails: en or fr",
        _choice_parser(EMAIL_LANGUAGES),
        env=("PARSEC_EMAIL_LANGUAGE",),
        default="en",
        metavar="LANG",
    ),
    Option(
        "--forward-proto-enforce-https",
        "forward_proto_enforce_https",
        "When behind a reverse proxy: `<header-name>:<header-value>` that the proxy sets on "
        "HTTPS requests (e.g. `X-Forwarded-Proto:https`); other requests are redirected to HTTPS",
        _forward_proto,
        env=("PARSEC_FORWARD_PROTO_ENFORCE_HTTPS",),
        default=None,
        default_help="none",
        metavar="NAME:VALUE",
    ),
    Option(
        "--ssl-keyfile",
        "ssl_keyfile",
        "TLS private key (PEM); TLS is enabled when a key or a certificate is given",
        _existing_file,
        env=("PARSEC_SSL_KEYFILE",),
        default=None,
        default_help="none",
        metavar="FILE",
    ),
    Option(
        "--ssl-certfile",
        "ssl_certfile",
        "TLS certificate chain (PEM)",
        _existing_file,
        env=("PARSEC_SSL_CERTFILE",),
        default=None,
        default_help="none",
        metavar="FILE",
    ),
    *_log_options(),
    Option(
        "--sentry-dsn",
        "sentry_dsn",
        "Sentry DSN: report errors to Sentry (needs the sentry-sdk package)",
        _non_empty,
        aliases=("--sentry-url",),
        env=("PARSEC_SENTRY_DSN", "PARSEC_SENTRY_URL"),
        default=None,
        metavar="URL",
        secret=True,
    ),
    Option(
        "--sentry-environment",
        "sentry_environment",
        "Sentry environment name attached to the reports",
        _non_empty,
        env=("PARSEC_SENTRY_ENVIRONMENT",),
        default="production",
        metavar="NAME",
    ),
    Option(
        "--dev",
        "dev",
        "Development mode: those of the following options not given on the command line take "
        "development values, overriding their environment variables: --debug, --db=MOCKED, "
        f"--blockstore=MOCKED, --administration-token={DEV_ADMINISTRATION_TOKEN}, "
        f"--email-host=MOCKED, --email-sender={DEV_EMAIL_SENDER}, "
        "--backend-addr=parsec://localhost:<--port given on the command line, else 6777>",
        flag=True,
        default=False,
    ),
    Option(
        "--debug",
        "debug",
        _DEBUG_HELP,
        parse_bool,
        env=("PARSEC_DEBUG",),
        default=False,
        flag=True,
    ),
)

MIGRATE_OPTIONS: tuple[Option, ...] = (
    Option(
        "--db",
        "db",
        "PostgreSQL database to create or upgrade: `postgresql://<user>:<password>@<host>:<port>/<db>`",
        _migrate_db_url,
        env=("PARSEC_DB",),
        required=True,
        metavar="URL",
        secret=True,
    ),
    Option(
        "--dry-run",
        "dry_run",
        "Only list the migrations that would be applied",
        flag=True,
        default=False,
    ),
    *_log_options(),
    Option("--debug", "debug", _DEBUG_HELP, parse_bool, env=("PARSEC_DEBUG",), default=False, flag=True),
)

# Options injected by --dev when the command line lacks them (backend_addr is computed).
_DEV_VALUES: dict[str, str] = {
    "debug": "1",
    "db": "MOCKED",
    "blockstore": "MOCKED",
    "administration_token": DEV_ADMINISTRATION_TOKEN,
    "email_sender": DEV_EMAIL_SENDER,
    "email_host": "MOCKED",
}

_DESCRIPTIONS = {
    "run": "Run the Parsec server.",
    "migrate": "Create or upgrade the PostgreSQL database schema (run it before the server).",
}


# --------------------------------------------------------------------------------------------
# PARSEC_CMD_ARGS

_VAR_RE = re.compile(r"\$(\w+|\{[^}]*\})", re.ASCII)


def _expand_vars(token: str, environ: Mapping[str, str]) -> str:
    """`$VAR` / `${VAR}` expansion from `environ`; unknown variables stay as written."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("{"):
            name = name[1:-1]
        value = environ.get(name)
        return match.group(0) if value is None else value

    return _VAR_RE.sub(replace, token)


def expand_cmd_args(environ: Mapping[str, str]) -> list[str]:
    """The tokens of PARSEC_CMD_ARGS: split on whitespace (no quoting), then variables expanded."""
    raw = environ.get(CMD_ARGS_ENV, "")
    return [_expand_vars(token, environ) for token in raw.split()]


# --------------------------------------------------------------------------------------------
# Parsing


@attrs.define
class _CommandLine:
    values: dict[str, list[str]] = attrs.field(factory=dict)  # dest -> raw values, in order
    flags: set[str] = attrs.field(factory=set)  # dests of flags that were given


def _tokenize(table: Sequence[Option], tokens: Sequence[str]) -> _CommandLine:
    by_name: dict[str, Option] = {}
    for option in table:
        for name in option.names:
            by_name[name] = option
    result = _CommandLine()
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            if index < len(tokens):
                raise ConfigError(f"Got unexpected extra argument ({tokens[index]})")
            break
        if token == "--help":
            raise HelpRequested()
        if not token.startswith("-") or token == "-":
            raise ConfigError(f"Got unexpected extra argument ({token})")
        attached: str | None = None
        if token.startswith("--"):
            name, sep, rest = token.partition("=")
            if sep:
                attached = rest
        else:
            name = token[:2]
            if len(token) > 2:
                attached = token[2:]
        option = by_name.get(name)
        if option is None:
            raise ConfigError(f"No such option: {name}")
        if option.flag:
            if attached is not None:
                raise ConfigError(f"Option '{name}' does not take a value")
            result.flags.add(option.dest)
            continue
        if attached is None:
            if index >= len(tokens):
                raise ConfigError(f"Option '{name}' requires an argument")
            attached = tokens[index]
            index += 1
        result.values.setdefault(option.dest, []).append(attached)
    return result


def _convert(option: Option, raw: str, source: str | None) -> Any:
    try:
        return option.parser(raw)
    except ValueError as exc:
        origin = f" (from {source})" if source else ""
        raise ConfigError(f"Invalid value for {option.label()}{origin}: {exc}") from None


def _resolve(
    table: Sequence[Option], command_line: _CommandLine, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Typed value of every option (cmd line > env > default); required options checked."""
    values: dict[str, Any] = {}
    for option in table:
        if option.flag and option.dest in command_line.flags:
            values[option.dest] = True
            continue
        given = command_line.values.get(option.dest)
        if given:
            if option.multiple:
                values[option.dest] = [_convert(option, raw, None) for raw in given]
            else:
                values[option.dest] = _convert(option, given[-1], None)
            continue
        env_name = next((name for name in option.env if environ.get(name)), None)
        if env_name is not None:
            raw = environ[env_name]
            if option.multiple:
                values[option.dest] = [_convert(option, part, env_name) for part in raw.split()]
            else:
                values[option.dest] = _convert(option, raw, env_name)
            continue
        if option.required:
            env_hint = f" (or environment variable {option.env[0]})" if option.env else ""
            raise ConfigError(f"Missing option {option.label()}{env_hint}")
        values[option.dest] = list(option.default or ()) if option.multiple else option.default
    return values


def _apply_dev(command_line: _CommandLine) -> None:
    """`--dev`: inject development values for options absent from the command line."""
    for dest, raw in _DEV_VALUES.items():
        if dest == "debug":
            command_line.flags.add("debug")
        elif dest not in command_line.values:
            command_line.values[dest] = [raw]
    if "backend_addr" not in command_line.values:
        # The quirk is deliberate (docs/protocol/server-config.md §3): PARSEC_PORT is not looked at.
        ports = command_line.values.get("port")
        port = ports[-1] if ports else str(DEFAULT_PORT)
        command_line.values["backend_addr"] = [f"parsec://localhost:{port}"]


def _all_tokens(argv: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    return [*argv, *expand_cmd_args(environ)]


def debug_requested(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
    """Best effort, for error reporting when the configuration itself is invalid."""
    tokens = _all_tokens(argv, environ)
    if "--debug" in tokens or "--dev" in tokens:
        return True
    try:
        return parse_bool(environ.get("PARSEC_DEBUG", "0") or "0")
    except ValueError:
        return False


def report_error(exc: BaseException, *, debug: bool) -> None:
    """`Error: <message>` on stderr (both front-ends), after the traceback in debug mode."""
    if debug:
        traceback.print_exception(exc, file=sys.stderr)
    sys.stderr.write(f"Error: {exc}\n")
    sys.stderr.flush()


def _check_sentry_dsn(dsn: str) -> None:
    # sentry-sdk is an optional dependency: only imported when a DSN is configured.
    if importlib.util.find_spec("sentry_sdk") is None:
        raise ConfigError(
            "Option '--sentry-dsn' needs the sentry-sdk package (pip install 'parsec-twisted[sentry]')"
        )
    from sentry_sdk.utils import BadDsn, Dsn

    try:
        Dsn(dsn)
    except BadDsn as exc:
        # BadDsn messages name the faulty part, not the whole DSN.
        raise ConfigError(f"Invalid value for '--sentry-dsn': {exc}") from None


def parse_run_args(argv: Sequence[str], environ: Mapping[str, str]) -> ServerConfig:
    """Options of `parsec backend run` / `twistd parsec` -> ServerConfig.

    Raises ConfigError (message naming the option) or HelpRequested.
    """
    command_line = _tokenize(RUN_OPTIONS, _all_tokens(argv, environ))
    if "dev" in command_line.flags:
        _apply_dev(command_line)
    values = _resolve(RUN_OPTIONS, command_line, environ)

    try:
        blockstore = parse_blockstore_params(values["blockstore"])
    except BlockStoreConfigError as exc:
        raise ConfigError(f"Invalid value for '--blockstore': {exc}") from None

    if values["email_use_ssl"] and values["email_use_tls"]:
        raise ConfigError(
            "Options '--email-use-ssl' (implicit TLS) and '--email-use-tls' (STARTTLS) are mutually exclusive"
        )
    email_host = values["email_host"]
    email_sender = values["email_sender"]
    if email_sender is None:
        if email_host != "MOCKED":
            raise ConfigError("--email-sender is required when --email-host is provided")
        email_sender = DEV_EMAIL_SENDER
    if values["sentry_dsn"]:
        _check_sentry_dsn(values["sentry_dsn"])

    email = EmailConfig(
        host=email_host,
        port=values["email_port"],
        host_user=values["email_host_user"],
        host_password=values["email_host_password"],
        use_ssl=values["email_use_ssl"],
        use_tls=values["email_use_tls"],
        sender=email_sender,
        language=values["email_language"],
        ca_file=values["email_ca_file"],
    )
    backend = BackendConfig(
        db_url=values["db"],
        db_min_connections=values["db_min_connections"],
        db_max_connections=values["db_max_connections"],
        db_max_connection_attempts=values["db_max_connection_attempts"],
        db_pause_before_retry=values["db_pause_before_retry"],
        blockstore=blockstore,
        administration_token=values["administration_token"],
        backend_addr=values["backend_addr"],
        email=email,
        spontaneous_organization_bootstrap=values["spontaneous_organization_bootstrap"],
        organization_bootstrap_webhook=values["organization_bootstrap_webhook"],
        organization_initial_active_users_limit=values["organization_initial_active_users_limit"],
        organization_initial_user_profile_outsider_allowed=values[
            "organization_initial_user_profile_outsider_allowed"
        ],
        forward_proto_enforce_https=values["forward_proto_enforce_https"],
        debug=values["debug"],
    )
    listen = ListenConfig(
        host=values["host"],
        port=values["port"],
        ssl_keyfile=values["ssl_keyfile"],
        ssl_certfile=values["ssl_certfile"],
    )
    return ServerConfig(backend=backend, listen=listen, log=_log_config(values))


def _log_config(values: Mapping[str, Any]) -> LogConfig:
    log_file = values["log_file"]
    return LogConfig(
        level=values["log_level"],
        format=values["log_format"],
        file=None if log_file in (None, "", "-") else log_file,
        sentry_dsn=values.get("sentry_dsn"),
        sentry_environment=values.get("sentry_environment") or "production",
    )


def parse_migrate_args(argv: Sequence[str], environ: Mapping[str, str]) -> MigrateConfig:
    """Options of `parsec backend migrate` -> MigrateConfig. Raises ConfigError / HelpRequested."""
    command_line = _tokenize(MIGRATE_OPTIONS, _all_tokens(argv, environ))
    values = _resolve(MIGRATE_OPTIONS, command_line, environ)
    return MigrateConfig(
        db_url=values["db"],
        dry_run=values["dry_run"],
        log=_log_config(values),
        debug=values["debug"],
    )


# --------------------------------------------------------------------------------------------
# Output


def startup_line(config: ServerConfig) -> str:
    backend = config.backend
    addr = backend.backend_addr.to_url() if backend.backend_addr is not None else "none"
    return (
        f"Starting Parsec Backend on {config.listen.host}:{config.listen.port} "
        f"(db={backend.db_type} "
        f"blockstore={backend.blockstore.type} "
        f"email={'MOCKED' if backend.email.is_mocked else 'SMTP'} "
        f"telemetry={'on' if config.log.sentry_dsn else 'off'} "
        f"backend_addr={addr})"
    )


def _format_default(option: Option) -> str | None:
    if option.required:
        return None
    if option.default_help is not None:
        return option.default_help
    if option.secret or option.default is None:
        return None
    if option.flag or isinstance(option.default, bool):
        return "on" if option.default else "off"
    return str(option.default)


def render_help(command: str = "run", prog: str | None = None, width: int = 79) -> str:
    """Help text of `parsec backend <command>` (also used by `twistd parsec --help`)."""
    table = RUN_OPTIONS if command == "run" else MIGRATE_OPTIONS
    prog = prog or f"parsec backend {command}"
    lines = [f"Usage: {prog} [OPTIONS]", ""]
    for paragraph in (
        _DESCRIPTIONS[command],
        "Every option can also be set through the environment variable shown with it "
        "(precedence: command line, then environment, then default). Boolean variables accept "
        "1/0, true/false, yes/no, on/off.",
        f"{CMD_ARGS_ENV}: extra options, split on whitespace, with $VAR / ${{VAR}} expanded, "
        "appended after the command line (so they win over it; --blockstore values accumulate).",
    ):
        lines.extend(
            textwrap.wrap(
                paragraph, width, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False
            )
        )
        lines.append("")
    lines.append("Options:")
    body_indent = " " * 8
    for option in table:
        names = ", ".join(filter(None, (option.short, option.name, *option.aliases)))
        head = f"  {names}" if option.flag else f"  {names} {option.metavar}"
        lines.append(head)
        lines.extend(
            textwrap.wrap(
                option.help,
                width,
                initial_indent=body_indent,
                subsequent_indent=body_indent,
                break_on_hyphens=False,
            )
        )
        facts = []
        if option.env:
            label = "env var" if len(option.env) == 1 else "env vars"
            facts.append(f"{label}: {', '.join(option.env)}")
        default = _format_default(option)
        if default is not None:
            facts.append(f"default: {default}")
        if option.required:
            facts.append("required")
        if option.multiple:
            facts.append("repeatable")
        if facts:
            lines.append(f"{body_indent}[{'; '.join(facts)}]")
    lines.append("  --help")
    lines.append(f"{body_indent}Show this message and exit.")
    return "\n".join(lines) + "\n"
