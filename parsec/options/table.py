"""The option table of `parsec backend run|migrate` and `twistd parsec`, as data.

Each :class:`Option` names its command line spellings, environment variables, default and
value parser; :data:`RUN_OPTIONS` and :data:`MIGRATE_OPTIONS` list them in `--help` order. The
parser (`parsec.options.parser`) and the help renderer (`parsec.options.render`) read them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from parsec import limits
from parsec.config import BackendAddr, ConfigError
from parsec.listen import check_endpoint, check_metrics_endpoint

__all__ = [
    "CMD_ARGS_ENV",
    "DEFAULT_PORT",
    "DEV_ADMINISTRATION_TOKEN",
    "DEV_EMAIL_SENDER",
    "DEV_VALUES",
    "MIGRATE_OPTIONS",
    "RUN_OPTIONS",
    "Option",
    "parse_bool",
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


def _network(raw: str) -> str:
    try:
        ipaddress.ip_network(raw.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{raw!r} is not an IP address or network") from None
    return raw.strip()


def _limit_options() -> list[Option]:
    """One option per tunable limit of parsec.limits (the PostgreSQL ones are wired with the
    storage that enforces them)."""
    options = []
    for limit in limits.tunable():
        if limit.name.startswith("db_"):
            continue
        assert limit.option is not None and limit.env is not None
        is_int = isinstance(limit.default, int)
        options.append(
            Option(
                limit.option,
                limit.name,
                limit.meaning[:1].upper() + limit.meaning[1:],
                _int_parser(minimum=0, maximum=128 if limit.unit == "bits" else None) if is_int else _float_parser(minimum=0),
                env=(limit.env,),
                default=limit.default,
                metavar={"seconds": "SECONDS", "bytes": "BYTES"}.get(limit.unit, "N"),
            )
        )
    return options


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
    "file": "File the logs are appended to (reopened on SIGUSR1 and SIGHUP, for logrotate); "
    "`-` means standard error",
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


def _db_limit_options() -> tuple[Option, ...]:
    """One option per tunable PostgreSQL row of the table of limits (`parsec.limits`); its
    dest is the limit's name (the other rows are wired with the transport)."""
    options = []
    for limit in limits.tunable():
        if not limit.name.startswith("db_"):
            continue
        assert limit.option is not None and limit.env is not None
        is_int = isinstance(limit.default, int)
        options.append(
            Option(
                limit.option,
                limit.name,
                limit.meaning[:1].upper() + limit.meaning[1:],
                _int_parser(minimum=0) if is_int else _float_parser(minimum=0),
                env=(limit.env,),
                default=limit.default,
                metavar={"seconds": "SECONDS", "bytes": "BYTES"}.get(limit.unit, "N"),
            )
        )
    return tuple(options)


_DEBUG_HELP = "Debug mode: detailed `server` header, tracebacks for start-up and configuration errors"

RUN_OPTIONS: tuple[Option, ...] = (
    Option(
        "--listen",
        "listen",
        "Where to listen, as a Twisted endpoint (repeat the option for several): "
        "`tcp:<port>[:interface=<address>]`, `tcp6:...`, "
        "`ssl:<port>:privateKey=<file>[:certKey=<chain file>][:interface=<address>]`, "
        "`unix:<path>`, or `systemd:domain=INET:index=0` (socket activation; "
        "`name=<FileDescriptorName>` instead of `index`). In the environment, several values are "
        "separated by whitespace. Replaces --host/--port; --ssl-keyfile/--ssl-certfile add TLS to "
        "each endpoint that is not `ssl:`",
        check_endpoint,
        env=("PARSEC_LISTEN",),
        default=None,
        default_help="--host:--port",
        multiple=True,
        metavar="ENDPOINT",
    ),
    Option(
        "--metrics-listen",
        "metrics_listen",
        "Serve Prometheus metrics (GET /metrics, plain HTTP) on this Twisted endpoint: "
        "`tcp:<port>[:interface=<address>]`, `tcp6:...` or `unix:<path>`; keep it on loopback or "
        "a private network. Off when unset",
        check_metrics_endpoint,
        env=("PARSEC_METRICS_LISTEN",),
        default=None,
        default_help="off",
        metavar="ENDPOINT",
    ),
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
    *_db_limit_options(),
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
        secret=True,  # often carries a token
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
        "HTTPS requests (e.g. `X-Forwarded-Proto:https`); a request whose header has another "
        "value is redirected to HTTPS, a request without the header is served as it is",
        _forward_proto,
        env=("PARSEC_FORWARD_PROTO_ENFORCE_HTTPS",),
        default=None,
        default_help="none",
        metavar="NAME:VALUE",
    ),
    Option(
        "--trusted-proxy",
        "trusted_proxies",
        "Address or network (e.g. `10.0.0.0/8`) of a reverse proxy whose X-Forwarded-For header "
        "names the client (for the per-address connection cap); repeat for several. In the "
        "environment, several values are separated by whitespace",
        _network,
        env=("PARSEC_TRUSTED_PROXY",),
        multiple=True,
        default=(),
        default_help="none",
        metavar="ADDRESS",
    ),
    *_limit_options(),
    Option(
        "--ssl-keyfile",
        "ssl_keyfile",
        "TLS private key (PEM, unencrypted); TLS is enabled when a key or a certificate is "
        "given. Re-read on SIGHUP",
        _existing_file,
        env=("PARSEC_SSL_KEYFILE",),
        default=None,
        default_help="none",
        metavar="FILE",
    ),
    Option(
        "--ssl-certfile",
        "ssl_certfile",
        "TLS certificate chain (PEM): the server's certificate first, then the intermediates, "
        "all served (e.g. certbot's fullchain.pem). Re-read on SIGHUP",
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
DEV_VALUES: dict[str, str] = {
    "debug": "1",
    "db": "MOCKED",
    "blockstore": "MOCKED",
    "administration_token": DEV_ADMINISTRATION_TOKEN,
    "email_sender": DEV_EMAIL_SENDER,
    "email_host": "MOCKED",
}
