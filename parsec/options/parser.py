"""Tokenizer and resolver of the options of `parsec.options.table`.

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
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from parsec import limits
from parsec.blockstore.config import BlockStoreConfigError, parse_blockstore_params
from parsec.config import (
    BackendConfig,
    ConfigError,
    EmailConfig,
    ListenConfig,
    LogConfig,
    MigrateConfig,
    ServerConfig,
)
from parsec.options.table import (
    CMD_ARGS_ENV,
    DEFAULT_PORT,
    DEV_EMAIL_SENDER,
    DEV_VALUES,
    MIGRATE_OPTIONS,
    RUN_OPTIONS,
    Option,
    parse_bool,
)

__all__ = [
    "HelpRequested",
    "VersionRequested",
    "debug_requested",
    "expand_cmd_args",
    "parse_migrate_args",
    "parse_run_args",
    "report_error",
]


class HelpRequested(Exception):
    """`--help` was found among the options: the front-end prints the help and exits 0."""


class VersionRequested(Exception):
    """`--version` was found among the options: the front-end prints the version and exits 0."""


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
        if token == "--version":
            raise VersionRequested()
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
        found = by_name.get(name)
        if found is None:
            raise ConfigError(f"No such option: {name}")
        option = found
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


COMMAND_LINE, ENVIRONMENT = "command line", "environment"


def _resolve(
    table: Sequence[Option],
    command_line: _CommandLine,
    environ: Mapping[str, str],
    given_names: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Typed value of every option (cmd line > env > default); required options checked.

    `given_names` collects where each option that was not defaulted came from (option name
    -> COMMAND_LINE or ENVIRONMENT).
    """
    values: dict[str, Any] = {}
    given_names = {} if given_names is None else given_names
    for option in table:
        if option.flag and option.dest in command_line.flags:
            values[option.dest] = True
            given_names[option.name] = COMMAND_LINE
            continue
        given = command_line.values.get(option.dest)
        if given:
            given_names[option.name] = COMMAND_LINE
            if option.multiple:
                values[option.dest] = [_convert(option, raw, None) for raw in given]
            else:
                values[option.dest] = _convert(option, given[-1], None)
            continue
        env_name = next((name for name in option.env if environ.get(name)), None)
        if env_name is not None:
            given_names[option.name] = ENVIRONMENT
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
    for dest, raw in DEV_VALUES.items():
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
    given: dict[str, str] = {}
    values = _resolve(RUN_OPTIONS, command_line, environ, given)
    _settle_listen(values, given)

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
        limits=limits.with_values({limit.name: values.get(limit.name) for limit in limits.tunable()}),
        trusted_proxies=tuple(values["trusted_proxies"]),
    )
    listen = ListenConfig(
        host=values["host"],
        port=values["port"],
        ssl_keyfile=values["ssl_keyfile"],
        ssl_certfile=values["ssl_certfile"],
        endpoints=tuple(values["listen"]),
        metrics=values["metrics_listen"],
    )
    return ServerConfig(backend=backend, listen=listen, log=_log_config(values, given))


def _settle_listen(values: dict[str, Any], given: Mapping[str, str]) -> None:
    """`--listen` or the `--host`/`--port` shorthand: the command line wins over the
    environment (e.g. the unit's `--listen systemd:...` over PARSEC_PORT in parsec.env); both
    at the same level is a mistake."""
    listen_source = given.get("--listen")
    shorthand = {name: source for name, source in given.items() if name in ("--host", "--port")}
    if listen_source is None or not shorthand:
        return
    same_level = [name for name, source in shorthand.items() if source == listen_source]
    if same_level:
        where = "on the command line" if listen_source == COMMAND_LINE else "in the environment"
        raise ConfigError(
            f"Option '--listen' replaces {' and '.join(repr(n) for n in same_level)} (both {where}): "
            "give the address in the endpoint instead (e.g. --listen tcp:6777:interface=127.0.0.1)"
        )
    if listen_source == ENVIRONMENT:
        values["listen"] = []  # --host/--port on the command line win over PARSEC_LISTEN


def _log_config(values: Mapping[str, Any], given: Mapping[str, str]) -> LogConfig:
    log_file = values["log_file"]
    return LogConfig(
        level=values["log_level"],
        format=values["log_format"],
        file=None if log_file in (None, "", "-") else log_file,
        sentry_dsn=values.get("sentry_dsn"),
        sentry_environment=values.get("sentry_environment") or "production",
        given=frozenset(name for name in given if name.startswith("--log-")),
    )


def parse_migrate_args(argv: Sequence[str], environ: Mapping[str, str]) -> MigrateConfig:
    """Options of `parsec backend migrate` -> MigrateConfig. Raises ConfigError / HelpRequested."""
    command_line = _tokenize(MIGRATE_OPTIONS, _all_tokens(argv, environ))
    given: dict[str, str] = {}
    values = _resolve(MIGRATE_OPTIONS, command_line, environ, given)
    return MigrateConfig(
        db_url=values["db"],
        dry_run=values["dry_run"],
        log=_log_config(values, given),
        debug=values["debug"],
    )
