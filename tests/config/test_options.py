"""Option parsing as data: each option from argv and from the environment, defaults,
precedence, PARSEC_CMD_ARGS, --dev, the start-up line (docs/protocol/server-config.md §1-3, docs/protocol/DECISIONS.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from parsec import limits
from parsec.blockstore.config import MockedBlockStoreConfig, PostgreSQLBlockStoreConfig, RaidBlockStoreConfig
from parsec.config import BackendAddr, ConfigError, MigrateConfig, ServerConfig
from parsec.options import (
    MIGRATE_OPTIONS,
    RUN_OPTIONS,
    HelpRequested,
    expand_cmd_args,
    parse_bool,
    parse_migrate_args,
    parse_run_args,
    startup_line,
)

from .conftest import REQUIRED_ARGS, REQUIRED_ENV

THIS_FILE = __file__

Getter = Callable[[ServerConfig], Any]

# (option, env var, raw value, getter, expected typed value). Flags use `raw` for the env only.
OPTION_CASES: list[tuple[str, str, str, Getter, Any]] = [
    ("--host", "PARSEC_HOST", "0.0.0.0", lambda c: c.listen.host, "0.0.0.0"),
    ("--port", "PARSEC_PORT", "6895", lambda c: c.listen.port, 6895),
    (
        "--db",
        "PARSEC_DB",
        "postgresql://u:p@127.0.0.1/db",
        lambda c: c.backend.db_url,
        "postgresql://u:p@127.0.0.1/db",
    ),
    ("--db", "PARSEC_DB", "postgres:///parsec", lambda c: c.backend.db_type, "POSTGRESQL"),
    ("--db-min-connections", "PARSEC_DB_MIN_CONNECTIONS", "2", lambda c: c.backend.db_min_connections, 2),
    ("--db-max-connections", "PARSEC_DB_MAX_CONNECTIONS", "9", lambda c: c.backend.db_max_connections, 9),
    (
        "--maximum-database-connection-attempts",
        "PARSEC_MAXIMUM_DATABASE_CONNECTION_ATTEMPTS",
        "0",
        lambda c: c.backend.db_max_connection_attempts,
        0,
    ),
    (
        "--pause-before-retry-database-connection",
        "PARSEC_PAUSE_BEFORE_RETRY_DATABASE_CONNECTION",
        "2.5",
        lambda c: c.backend.db_pause_before_retry,
        2.5,
    ),
    (
        "--blockstore",
        "PARSEC_BLOCKSTORE",
        "POSTGRESQL",
        lambda c: c.backend.blockstore,
        PostgreSQLBlockStoreConfig(),
    ),
    (
        "--administration-token",
        "PARSEC_ADMINISTRATION_TOKEN",
        "abc",
        lambda c: c.backend.administration_token,
        "abc",
    ),
    (
        "--spontaneous-organization-bootstrap",
        "PARSEC_SPONTANEOUS_ORGANIZATION_BOOTSTRAP",
        "true",
        lambda c: c.backend.spontaneous_organization_bootstrap,
        True,
    ),
    (
        "--organization-bootstrap-webhook",
        "PARSEC_ORGANIZATION_BOOTSTRAP_WEBHOOK",
        "https://hooks.test/bootstrap",
        lambda c: c.backend.organization_bootstrap_webhook,
        "https://hooks.test/bootstrap",
    ),
    (
        "--organization-initial-active-users-limit",
        "PARSEC_ORGANIZATION_INITIAL_ACTIVE_USERS_LIMIT",
        "3",
        lambda c: c.backend.organization_initial_active_users_limit,
        3,
    ),
    (
        "--organization-initial-user-profile-outsider-allowed",
        "PARSEC_ORGANIZATION_INITIAL_USER_PROFILE_OUTSIDER_ALLOWED",
        "false",
        lambda c: c.backend.organization_initial_user_profile_outsider_allowed,
        False,
    ),
    (
        "--backend-addr",
        "PARSEC_BACKEND_ADDR",
        "parsec://parsec.test:1234?no_ssl=true",
        lambda c: c.backend.backend_addr,
        BackendAddr("parsec.test", 1234, use_ssl=False),
    ),
    ("--email-host", "PARSEC_EMAIL_HOST", "smtp.test", lambda c: c.backend.email.host, "smtp.test"),
    ("--email-port", "PARSEC_EMAIL_PORT", "587", lambda c: c.backend.email.port, 587),
    ("--email-host-user", "PARSEC_EMAIL_HOST_USER", "bob", lambda c: c.backend.email.host_user, "bob"),
    (
        "--email-host-password",
        "PARSEC_EMAIL_HOST_PASSWORD",
        "pw",
        lambda c: c.backend.email.host_password,
        "pw",
    ),
    ("--email-use-ssl", "PARSEC_EMAIL_USE_SSL", "yes", lambda c: c.backend.email.use_ssl, True),
    ("--email-use-tls", "PARSEC_EMAIL_USE_TLS", "on", lambda c: c.backend.email.use_tls, True),
    (
        "--email-sender",
        "PARSEC_EMAIL_SENDER",
        "Parsec <p@mail.test>",
        lambda c: c.backend.email.sender,
        "Parsec <p@mail.test>",
    ),
    ("--email-language", "PARSEC_EMAIL_LANGUAGE", "fr", lambda c: c.backend.email.language, "fr"),
    ("--email-ca-file", "PARSEC_EMAIL_CA_FILE", THIS_FILE, lambda c: c.backend.email.ca_file, THIS_FILE),
    (
        "--forward-proto-enforce-https",
        "PARSEC_FORWARD_PROTO_ENFORCE_HTTPS",
        "X-Forwarded-Proto:HTTPS",
        lambda c: c.backend.forward_proto_enforce_https,
        ("x-forwarded-proto", "HTTPS"),
    ),
    (
        "--listen",
        "PARSEC_LISTEN",
        "unix:/run/parsec/parsec.sock",
        lambda c: c.listen.endpoints,
        ("unix:/run/parsec/parsec.sock",),
    ),
    ("--trusted-proxy", "PARSEC_TRUSTED_PROXY", "10.0.0.0/8", lambda c: c.backend.trusted_proxies, ("10.0.0.0/8",)),
    ("--metrics-listen", "PARSEC_METRICS_LISTEN", "tcp:9200:interface=127.0.0.1", lambda c: c.listen.metrics, "tcp:9200:interface=127.0.0.1"),
    ("--http-request-timeout", "PARSEC_HTTP_REQUEST_TIMEOUT", "12.5", lambda c: c.backend.limits.http_request_timeout, 12.5),
    ("--max-connections", "PARSEC_MAX_CONNECTIONS", "500", lambda c: c.backend.limits.max_connections, 500),
    (
        "--max-connections-per-address",
        "PARSEC_MAX_CONNECTIONS_PER_ADDRESS",
        "20",
        lambda c: c.backend.limits.max_connections_per_address,
        20,
    ),
    ("--ipv6-prefix-bits", "PARSEC_IPV6_PREFIX_BITS", "56", lambda c: c.backend.limits.ipv6_prefix_bits, 56),
    ("--handshake-timeout", "PARSEC_HANDSHAKE_TIMEOUT", "5", lambda c: c.backend.limits.handshake_timeout, 5.0),
    ("--ws-max-message-size", "PARSEC_WS_MAX_MESSAGE_SIZE", "1048576", lambda c: c.backend.limits.ws_message_bytes, 1048576),
    ("--ws-keepalive-interval", "PARSEC_WS_KEEPALIVE_INTERVAL", "0", lambda c: c.backend.limits.ws_keepalive_interval, 0.0),
    ("--ws-keepalive-timeout", "PARSEC_WS_KEEPALIVE_TIMEOUT", "90", lambda c: c.backend.limits.ws_keepalive_timeout, 90.0),
    ("--block-cache-size", "PARSEC_BLOCK_CACHE_SIZE", "0", lambda c: c.backend.limits.block_cache_bytes, 0),
    ("--ssl-keyfile", "PARSEC_SSL_KEYFILE", THIS_FILE, lambda c: c.listen.ssl_keyfile, THIS_FILE),
    ("--ssl-certfile", "PARSEC_SSL_CERTFILE", THIS_FILE, lambda c: c.listen.ssl_certfile, THIS_FILE),
    ("--log-level", "PARSEC_LOG_LEVEL", "debug", lambda c: c.log.level, "DEBUG"),
    ("--log-format", "PARSEC_LOG_FORMAT", "json", lambda c: c.log.format, "JSON"),
    ("--log-file", "PARSEC_LOG_FILE", "parsec.log", lambda c: c.log.file, "parsec.log"),
    ("--log-file", "PARSEC_LOG_FILE", "-", lambda c: c.log.file, None),
    (
        "--sentry-dsn",
        "PARSEC_SENTRY_DSN",
        "http://public@127.0.0.1:9/1",
        lambda c: c.log.sentry_dsn,
        "http://public@127.0.0.1:9/1",
    ),
    (
        "--sentry-url",
        "PARSEC_SENTRY_URL",
        "http://public@127.0.0.1:9/2",
        lambda c: c.log.sentry_dsn,
        "http://public@127.0.0.1:9/2",
    ),
    (
        "--sentry-environment",
        "PARSEC_SENTRY_ENVIRONMENT",
        "staging",
        lambda c: c.log.sentry_environment,
        "staging",
    ),
    ("--debug", "PARSEC_DEBUG", "1", lambda c: c.backend.debug, True),
]


def _limit_case(limit: limits.Limit) -> tuple[str, str, str, Getter, Any]:
    value: int | float = 7 if isinstance(limit.default, int) else 0.25
    assert limit.option is not None and limit.env is not None and value != limit.default
    return (limit.option, limit.env, str(value), lambda c: getattr(c.backend.limits, limit.name), value)


# The PostgreSQL rows of the table of limits (parsec.limits) have their options.
OPTION_CASES += [_limit_case(limit) for limit in limits.tunable() if limit.name.startswith("db_")]
_FLAGS = {option.name for option in RUN_OPTIONS if option.flag}
# Values needed alongside some cases (a non-MOCKED e-mail host needs a sender).
_COMPANIONS = {"--email-host": {"PARSEC_EMAIL_SENDER": "p@mail.test"}}


def _case_id(case: tuple[str, str, str, Getter, Any]) -> str:
    return f"{case[0]}={case[2]}"


@pytest.mark.parametrize("case", OPTION_CASES, ids=_case_id)
def test_option_from_argv(case: tuple[str, str, str, Getter, Any]) -> None:
    option, _, raw, getter, expected = case
    argv = [option] if option in _FLAGS else [option, raw]
    config = parse_run_args(argv, {**REQUIRED_ENV, **_COMPANIONS.get(option, {})})
    assert getter(config) == expected


@pytest.mark.parametrize("case", OPTION_CASES, ids=_case_id)
def test_option_from_env(case: tuple[str, str, str, Getter, Any]) -> None:
    option, env_var, raw, getter, expected = case
    config = parse_run_args([], {**REQUIRED_ENV, **_COMPANIONS.get(option, {}), env_var: raw})
    assert getter(config) == expected


def test_option_table_is_complete() -> None:
    """Every option of the table is exercised above, and every env var is PARSEC_-prefixed."""
    tested = {case[0] for case in OPTION_CASES} | {"--dev"}
    names = {name for option in RUN_OPTIONS for name in (option.name, *option.aliases)}
    assert names == tested
    for option in (*RUN_OPTIONS, *MIGRATE_OPTIONS):
        assert all(env.startswith("PARSEC_") for env in option.env)
    assert {env for option in RUN_OPTIONS for env in option.env} >= {"PARSEC_DEBUG", "PARSEC_EMAIL_LANGUAGE"}


@pytest.mark.parametrize(
    "argv, getter, expected",
    [
        (["-H", "::1"], lambda c: c.listen.host, "::1"),
        (["-P", "7000"], lambda c: c.listen.port, 7000),
        (["-P7001"], lambda c: c.listen.port, 7001),
        (["--port=7002"], lambda c: c.listen.port, 7002),
        (["-b", "POSTGRESQL"], lambda c: c.backend.blockstore, PostgreSQLBlockStoreConfig()),
        (["-l", "ERROR"], lambda c: c.log.level, "ERROR"),
        (["-f", "JSON"], lambda c: c.log.format, "JSON"),
        (["-o", "out.log"], lambda c: c.log.file, "out.log"),
        (["--administration-token", "--dev"], lambda c: c.backend.administration_token, "--dev"),
    ],
)
def test_short_and_attached_forms(argv: list[str], getter: Getter, expected: Any) -> None:
    assert getter(parse_run_args(argv, REQUIRED_ENV)) == expected


def test_defaults() -> None:
    config = parse_run_args([], REQUIRED_ENV)
    assert config.listen.host == "127.0.0.1"
    assert config.listen.port == 6777
    assert (config.listen.ssl_keyfile, config.listen.ssl_certfile) == (None, None)
    backend = config.backend
    assert (backend.db_min_connections, backend.db_max_connections) == (5, 7)
    assert backend.db_max_connection_attempts == 10
    assert backend.db_pause_before_retry == 1.0
    assert backend.blockstore == MockedBlockStoreConfig()
    assert backend.spontaneous_organization_bootstrap is False
    assert backend.organization_bootstrap_webhook is None
    assert backend.organization_initial_active_users_limit is None
    assert backend.organization_initial_user_profile_outsider_allowed is True
    assert backend.forward_proto_enforce_https is None
    assert backend.debug is False
    email = backend.email
    assert (email.host, email.port, email.host_user, email.host_password) == ("MOCKED", 25, None, None)
    assert (email.use_ssl, email.use_tls, email.language) == (False, False, "en")
    assert email.sender == "no-reply@parsec.com"  # MOCKED host: sender not required
    log = config.log
    assert (log.level, log.format, log.file) == ("WARNING", "CONSOLE", None)  # WARNING: docs/protocol/DECISIONS.md
    assert (log.sentry_dsn, log.sentry_environment) == (None, "production")


def test_required_options_from_argv() -> None:
    config = parse_run_args(REQUIRED_ARGS, {})
    assert config.backend.administration_token == "t0ken"
    assert config.backend.backend_addr == BackendAddr("parsec.test")


@pytest.mark.parametrize(
    "word, expected",
    [(w, True) for w in ("1", "true", "TRUE", "yes", "on", "y", "t")]
    + [(w, False) for w in ("0", "false", "False", "no", "off", "n", "f")],
)
def test_boolean_words(word: str, expected: bool) -> None:
    assert parse_bool(word) is expected
    config = parse_run_args([], {**REQUIRED_ENV, "PARSEC_EMAIL_USE_SSL": word})
    assert config.backend.email.use_ssl is expected


# ---- precedence -----------------------------------------------------------------------------


def test_command_line_beats_env_beats_default() -> None:
    assert parse_run_args(["--port", "1111"], {**REQUIRED_ENV, "PARSEC_PORT": "2222"}).listen.port == 1111
    assert parse_run_args([], {**REQUIRED_ENV, "PARSEC_PORT": "2222"}).listen.port == 2222
    assert parse_run_args([], REQUIRED_ENV).listen.port == 6777


def test_empty_env_var_counts_as_unset() -> None:
    config = parse_run_args([], {**REQUIRED_ENV, "PARSEC_PORT": "", "PARSEC_SENTRY_DSN": ""})
    assert config.listen.port == 6777
    assert config.log.sentry_dsn is None


def test_last_command_line_value_wins() -> None:
    assert parse_run_args(["--port", "1", "--port", "2"], REQUIRED_ENV).listen.port == 2


def test_cmd_args_override_the_command_line() -> None:
    # docs/protocol/server-config.md §1: `--port 6895` on the CLI, `--port=6896` in PARSEC_CMD_ARGS -> 6896.
    env = {**REQUIRED_ENV, "PARSEC_CMD_ARGS": "--port=6896"}
    assert parse_run_args(["--port", "6895"], env).listen.port == 6896


def test_cmd_args_beat_env() -> None:
    env = {**REQUIRED_ENV, "PARSEC_PORT": "1000", "PARSEC_CMD_ARGS": "-P 2000"}
    assert parse_run_args([], env).listen.port == 2000


def test_cmd_args_variable_expansion() -> None:
    # The hosting guide's example, plus ${VAR}, unknown variables left as written.
    env = {
        "DB_URL": "postgres:///parsec",
        "TOKEN_PART": "abc",
        "PARSEC_CMD_ARGS": "--db=$DB_URL --host=0.0.0.0 --administration-token=${TOKEN_PART}-$NOPE-${NOPE2}",
        "PARSEC_BLOCKSTORE": "MOCKED",
        "PARSEC_BACKEND_ADDR": "parsec://parsec.test",
        "PARSEC_EMAIL_HOST": "MOCKED",
    }
    config = parse_run_args([], env)
    assert config.backend.db_url == "postgres:///parsec"
    assert config.listen.host == "0.0.0.0"
    assert config.backend.administration_token == "abc-$NOPE-${NOPE2}"


def test_cmd_args_split_on_any_whitespace_without_quoting() -> None:
    env = {"PARSEC_CMD_ARGS": " --port\t6001 \n --host='a'  ", "X": "1"}
    assert expand_cmd_args(env) == ["--port", "6001", "--host='a'"]
    assert expand_cmd_args({}) == []


def test_blockstore_values_accumulate() -> None:
    env = {**REQUIRED_ENV, "PARSEC_CMD_ARGS": "--blockstore=RAID1:1:MOCKED"}
    config = parse_run_args(["-b", "RAID1:0:MOCKED"], env)
    assert config.backend.blockstore == RaidBlockStoreConfig(
        type="RAID1", nodes=(MockedBlockStoreConfig(), MockedBlockStoreConfig())
    )


def test_blockstore_env_is_whitespace_separated() -> None:
    env = {**REQUIRED_ENV, "PARSEC_BLOCKSTORE": "RAID0:0:MOCKED  RAID0:1:POSTGRESQL"}
    config = parse_run_args([], env)
    assert config.backend.blockstore == RaidBlockStoreConfig(
        type="RAID0", nodes=(MockedBlockStoreConfig(), PostgreSQLBlockStoreConfig())
    )


def test_blockstore_command_line_replaces_env() -> None:
    env = {**REQUIRED_ENV, "PARSEC_BLOCKSTORE": "RAID0:0:MOCKED RAID0:1:MOCKED"}
    assert parse_run_args(["-b", "POSTGRESQL"], env).backend.blockstore == PostgreSQLBlockStoreConfig()


def test_sentry_dsn_env_wins_over_its_alias() -> None:
    env = {
        **REQUIRED_ENV,
        "PARSEC_SENTRY_DSN": "http://a@127.0.0.1:9/1",
        "PARSEC_SENTRY_URL": "http://b@127.0.0.1:9/2",
    }
    assert parse_run_args([], env).log.sentry_dsn == "http://a@127.0.0.1:9/1"


def test_help_is_requested() -> None:
    with pytest.raises(HelpRequested):
        parse_run_args(["--port", "1", "--help"], {})
    with pytest.raises(HelpRequested):
        parse_migrate_args(["--help"], {})


# ---- --dev ----------------------------------------------------------------------------------


def test_dev_alone() -> None:
    config = parse_run_args(["--dev"], {})
    backend = config.backend
    assert backend.debug is True
    assert backend.db_url == "MOCKED"
    assert backend.blockstore == MockedBlockStoreConfig()
    assert backend.administration_token == "s3cr3t"
    assert backend.email.host == "MOCKED"
    assert backend.email.sender == "no-reply@parsec.com"
    # No no_ssl parameter: the address claims SSL.
    assert backend.backend_addr == BackendAddr("localhost", 6777, use_ssl=True)
    assert config.listen.port == 6777


def test_dev_overrides_env() -> None:
    env = {
        "PARSEC_DB": "postgresql://u@127.0.0.1/db",
        "PARSEC_BLOCKSTORE": "POSTGRESQL",
        "PARSEC_ADMINISTRATION_TOKEN": "from-env",
        "PARSEC_EMAIL_HOST": "smtp.test",
        "PARSEC_EMAIL_SENDER": "env@mail.test",
        "PARSEC_BACKEND_ADDR": "parsec://env.test",
        "PARSEC_DEBUG": "0",
    }
    backend = parse_run_args(["--dev"], env).backend
    assert backend.db_url == "MOCKED"
    assert backend.blockstore == MockedBlockStoreConfig()
    assert backend.administration_token == "s3cr3t"
    assert (backend.email.host, backend.email.sender) == ("MOCKED", "no-reply@parsec.com")
    assert backend.backend_addr == BackendAddr("localhost", 6777)
    assert backend.debug is True


def test_dev_backend_addr_ignores_parsec_port() -> None:
    # docs/protocol/server-config.md §3 (observed): PARSEC_PORT=6897 -> listens on 6897, addr says 6777.
    config = parse_run_args(["--dev"], {"PARSEC_PORT": "6897"})
    assert config.listen.port == 6897
    assert config.backend.backend_addr == BackendAddr("localhost", 6777)


def test_dev_backend_addr_follows_command_line_port() -> None:
    config = parse_run_args(["--dev", "--port", "6895"], {})
    assert config.backend.backend_addr == BackendAddr("localhost", 6895)
    config = parse_run_args(["--dev", "--port", "6895"], {"PARSEC_CMD_ARGS": "--port=6896"})
    assert (config.listen.port, config.backend.backend_addr) == (6896, BackendAddr("localhost", 6896))


def test_dev_keeps_what_the_command_line_gives() -> None:
    argv = [
        "--dev",
        "--db=postgres:///parsec",
        "--backend-addr=parsec://mine.test?no_ssl=true",
        "--email-host=smtp.test",
        "--administration-token=mine",
    ]
    backend = parse_run_args(argv, {}).backend
    assert backend.db_url == "postgres:///parsec"
    assert backend.backend_addr == BackendAddr("mine.test", use_ssl=False)
    assert backend.email.host == "smtp.test"
    assert backend.email.sender == "no-reply@parsec.com"  # still injected
    assert backend.administration_token == "mine"


def test_dev_via_cmd_args() -> None:
    config = parse_run_args([], {"PARSEC_CMD_ARGS": "--dev --port 6900"})
    assert config.backend.backend_addr == BackendAddr("localhost", 6900)


# ---- migrate --------------------------------------------------------------------------------


def test_migrate_args() -> None:
    assert parse_migrate_args(["--db", "postgresql:///x"], {}) == MigrateConfig(db_url="postgresql:///x")
    config = parse_migrate_args(
        ["--dry-run", "-l", "info", "-f", "json", "-o", "m.log"],
        {"PARSEC_DB": "postgres:///y", "PARSEC_DEBUG": "yes"},
    )
    assert (config.db_url, config.dry_run, config.debug) == ("postgres:///y", True, True)
    assert (config.log.level, config.log.format, config.log.file) == ("INFO", "JSON", "m.log")


def test_migrate_defaults_to_warning() -> None:
    assert parse_migrate_args(["--db", "postgresql:///x"], {}).log.level == "WARNING"


# ---- start-up line --------------------------------------------------------------------------


def test_startup_line_dev() -> None:
    assert startup_line(parse_run_args(["--dev", "--port", "6888"], {})) == (
        "Starting Parsec Backend on 127.0.0.1:6888 (db=MOCKED blockstore=MOCKED email=MOCKED "
        "telemetry=off backend_addr=parsec://localhost:6888)"
    )


def test_startup_line_production() -> None:
    env = {
        "PARSEC_DB": "postgresql://u:secret@127.0.0.1/db",
        "PARSEC_BLOCKSTORE": "RAID5:0:MOCKED RAID5:1:MOCKED RAID5:2:MOCKED",
        "PARSEC_ADMINISTRATION_TOKEN": "x",
        "PARSEC_BACKEND_ADDR": "parsec://parsec.test:80?no_ssl=true",
        "PARSEC_EMAIL_HOST": "smtp.test",
        "PARSEC_EMAIL_SENDER": "a@mail.test",
        "PARSEC_SENTRY_DSN": "http://public@127.0.0.1:9/1",
        "PARSEC_HOST": "0.0.0.0",
    }
    line = startup_line(parse_run_args([], env))
    assert line == (
        "Starting Parsec Backend on 0.0.0.0:6777 (db=POSTGRESQL blockstore=RAID5 email=SMTP "
        "telemetry=on backend_addr=parsec://parsec.test?no_ssl=true)"
    )
    assert "secret" not in line


def test_secrets_stay_out_of_config_reprs() -> None:
    env = {
        **REQUIRED_ENV,
        "PARSEC_DB": "postgresql://u:pg-pass@127.0.0.1/db",
        "PARSEC_ADMINISTRATION_TOKEN": "admin-token-value",
        "PARSEC_EMAIL_HOST_PASSWORD": "smtp-pass",
        "PARSEC_SENTRY_DSN": "http://sentrykey@127.0.0.1:9/1",
    }
    text = repr(parse_run_args([], env))
    for secret in ("pg-pass", "admin-token-value", "smtp-pass", "sentrykey"):
        assert secret not in text


def test_config_error_is_the_config_module_one() -> None:
    with pytest.raises(ConfigError):
        parse_run_args([], {})


# ---- --listen ----------------------------------------------------------------------------------


def test_listen_values_accumulate_and_env_is_whitespace_separated() -> None:
    config = parse_run_args(["--listen", "tcp:7000", "--listen", "unix:/run/p.sock"], REQUIRED_ENV)
    assert config.listen.endpoints == ("tcp:7000", "unix:/run/p.sock")
    config = parse_run_args([], {**REQUIRED_ENV, "PARSEC_LISTEN": "tcp:7000  unix:/run/p.sock"})
    assert config.listen.endpoints == ("tcp:7000", "unix:/run/p.sock")
    assert config.listen.describe() == "tcp:7000, unix:/run/p.sock"


def test_listen_on_the_command_line_beats_host_and_port_in_the_environment() -> None:
    env = {**REQUIRED_ENV, "PARSEC_HOST": "0.0.0.0", "PARSEC_PORT": "7000"}
    config = parse_run_args(["--listen", "systemd:domain=INET:name=parsec"], env)
    assert config.listen.endpoints == ("systemd:domain=INET:name=parsec",)


def test_port_on_the_command_line_beats_listen_in_the_environment() -> None:
    config = parse_run_args(["--port", "7001"], {**REQUIRED_ENV, "PARSEC_LISTEN": "tcp:7000"})
    assert (config.listen.endpoints, config.listen.port) == ((), 7001)


def test_listen_and_host_both_in_the_environment() -> None:
    with pytest.raises(ConfigError, match=r"^Option '--listen' replaces '--host' \(both in the environment\)"):
        parse_run_args([], {**REQUIRED_ENV, "PARSEC_LISTEN": "tcp:7000", "PARSEC_HOST": "::"})


def test_listen_specs() -> None:
    from parsec.listen import TLSFiles, listen_specs

    shorthand = parse_run_args(["-H", "::1", "-P", "7000"], REQUIRED_ENV).listen
    (spec,) = listen_specs(shorthand)
    assert (spec.endpoint, spec.tls, spec.label) == ("tcp:7000:interface=\\:\\:1", None, "::1:7000")
    tls_env = {**REQUIRED_ENV, "PARSEC_SSL_CERTFILE": THIS_FILE, "PARSEC_SSL_KEYFILE": THIS_FILE}
    listen = parse_run_args(
        [
            "--listen", "unix:/run/p.sock",
            "--listen", f"ssl:443:interface=10.0.0.1:privateKey={THIS_FILE}:extraCertChain={THIS_FILE}",
        ],
        tls_env,
    ).listen
    plain, ssl = listen_specs(listen)
    assert plain.endpoint == "unix:/run/p.sock" and plain.tls == TLSFiles(THIS_FILE, THIS_FILE)
    assert ssl.endpoint == "tcp:443:interface=10.0.0.1"
    assert ssl.tls == TLSFiles(
        key_file=THIS_FILE,
        cert_file=THIS_FILE,
        extra_chain_file=THIS_FILE,
        key_option="--listen ssl:...:privateKey",
        cert_option="--listen ssl:...:privateKey",
    )


@pytest.mark.parametrize(
    "value, reason",
    [
        ("tcp", "a tcp: endpoint needs a port number (e.g. tcp:6777)"),
        ("tcp:http", "a tcp: endpoint needs a port number (e.g. tcp:6777)"),
        ("tcp:1:2", "unexpected argument '2' in a tcp: endpoint"),
        ("tcp:1:port=2", "argument 'port' given twice"),
        ("unix:", "a unix: endpoint needs a socket path (e.g. unix:/run/parsec/parsec.sock)"),
        ("systemd:domain=INET", "a systemd: endpoint needs exactly one of index=<n> or name=<FileDescriptorName>"),
        ("systemd:domain=IPX:index=0", "a systemd: endpoint needs domain=INET, INET6 or UNIX"),
        ("ssl:443:privateKey=/nonexistent.pem", "privateKey: file '/nonexistent.pem' does not exist"),
        ("=tcp:1", "unsupported endpoint type '=tcp' (use tcp:, tcp6:, ssl:, unix:, systemd:)"),
    ],
)
def test_listen_syntax_errors(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_args(["--listen", value], REQUIRED_ENV)
    assert str(info.value) == f"Invalid value for '--listen': {reason}"


@pytest.mark.parametrize(
    "value, reason",
    [
        ("tcp", "a tcp: endpoint needs a port number (e.g. tcp:6777)"),
        (
            "ssl:443:privateKey=key.pem",
            "the metrics are served on tcp:, tcp6:, unix: endpoints only (plain HTTP: keep it on "
            "loopback or a private network, e.g. tcp:9200:interface=127.0.0.1)",
        ),
    ],
)
def test_metrics_listen_errors(value: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_run_args(["--metrics-listen", value], REQUIRED_ENV)
    assert str(info.value) == f"Invalid value for '--metrics-listen': {reason}"
    assert parse_run_args([], REQUIRED_ENV).listen.metrics is None  # off by default


def test_ipv6_prefix_is_a_prefix_length() -> None:
    with pytest.raises(ConfigError, match="129 is bigger than the maximum 128"):
        parse_run_args(["--ipv6-prefix-bits", "129"], REQUIRED_ENV)
