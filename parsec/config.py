"""Server configuration as data: built once at start-up, never mutated.

The command line / environment parsing that produces these objects lives in
``parsec.options``; the blockstore URL grammar in ``parsec.blockstore.config``.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import attrs

from parsec.blockstore.config import BlockStoreConfig, MockedBlockStoreConfig
from parsec.limits import Limits


class ConfigError(Exception):
    """A configuration value is invalid; the message names the option."""


@attrs.frozen
class BackendAddr:
    """`parsec://<host>[:<port>][/][?no_ssl=true|false]`"""

    hostname: str
    port: int | None = None
    use_ssl: bool = True

    @classmethod
    def from_url(cls, url: str) -> BackendAddr:
        if not url.startswith("parsec://"):
            raise ConfigError("Must start with `parsec://`")
        parts = urlsplit(url)
        if not parts.hostname:
            raise ConfigError("Missing mandatory hostname")
        if parts.path not in ("", "/"):
            raise ConfigError("Cannot have path")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigError(f"Invalid port: {exc}") from exc
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"no_ssl"}
        if unknown:
            raise ConfigError(f"Unknown query parameter `{sorted(unknown)[0]}`")
        values = query.get("no_ssl", [])
        if len(values) > 1:
            raise ConfigError("Multiple values for param `no_ssl`")
        no_ssl = False
        if values:
            value = values[0].lower()
            if value not in ("true", "false"):
                raise ConfigError("Invalid `no_ssl` param value (must be true or false)")
            no_ssl = value == "true"
        return cls(hostname=parts.hostname, port=port, use_ssl=not no_ssl)

    @property
    def default_port(self) -> int:
        return 443 if self.use_ssl else 80

    @property
    def netloc(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        if self.port is None or self.port == self.default_port:
            return host
        return f"{host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"{'https' if self.use_ssl else 'http'}://{self.netloc}"

    def to_url(self) -> str:
        url = f"parsec://{self.netloc}"
        if not self.use_ssl:
            url += "?no_ssl=true"
        return url


@attrs.frozen
class EmailConfig:
    # `host == "MOCKED"` writes e-mails to temporary files instead of sending them.
    host: str = "MOCKED"
    port: int = 25
    host_user: str | None = None
    host_password: str | None = attrs.field(default=None, repr=False)
    use_ssl: bool = False  # implicit TLS from the first byte (SMTPS)
    use_tls: bool = False  # plain connection upgraded with STARTTLS
    sender: str = "no-reply@parsec.com"
    language: str = "en"  # "en" or "fr"
    # PEM file of the CA certificate(s) trusted for the SMTP server's certificate (SMTPS or
    # STARTTLS) instead of the platform trust store, e.g. a private CA. Loaded at start-up.
    ca_file: str | None = None

    @property
    def is_mocked(self) -> bool:
        return self.host == "MOCKED"


@attrs.frozen
class BackendConfig:
    # A PostgreSQL DSN may embed a password: keep it out of reprs (and so of logs).
    db_url: str = attrs.field(default="MOCKED", repr=False)
    db_min_connections: int = 5
    db_max_connections: int = 7
    db_max_connection_attempts: int = 10
    db_pause_before_retry: float = 1.0
    blockstore: BlockStoreConfig = attrs.field(factory=MockedBlockStoreConfig)
    administration_token: str = attrs.field(default="s3cr3t", repr=False)
    backend_addr: BackendAddr | None = None
    email: EmailConfig = attrs.field(factory=EmailConfig)
    spontaneous_organization_bootstrap: bool = False
    # Often carries a token: kept out of reprs (and so of logs).
    organization_bootstrap_webhook: str | None = attrs.field(default=None, repr=False)
    organization_initial_active_users_limit: int | None = None
    organization_initial_user_profile_outsider_allowed: bool = True
    # (header name lower-cased, exact expected value)
    forward_proto_enforce_https: tuple[str, str] | None = None
    debug: bool = False
    # Every bound on what a peer can make the server spend (parsec.limits).
    limits: Limits = attrs.field(factory=Limits)
    # Addresses (or networks, e.g. 10.0.0.0/8) of reverse proxies whose X-Forwarded-For
    # names the client: only then is that header believed (per-address connection cap).
    trusted_proxies: tuple[str, ...] = ()

    @property
    def db_type(self) -> str:
        return "MOCKED" if self.db_url == "MOCKED" else "POSTGRESQL"


@attrs.frozen
class ListenConfig:
    """Where the server listens: `--listen` endpoints, or the `--host`/`--port` shorthand.

    `endpoints` holds the `--listen` values, Twisted server endpoint strings (`tcp:`, `tcp6:`,
    `ssl:`, `unix:`, `systemd:`); when empty, the server listens on `host`:`port`. The TLS
    key and certificate chain, when given, turn TLS on for the shorthand listener and for every
    `--listen` endpoint that is not `ssl:` (parsec.listen).
    """

    host: str = "127.0.0.1"
    port: int = 6777
    ssl_keyfile: str | None = None
    ssl_certfile: str | None = None
    endpoints: tuple[str, ...] = ()
    # `--metrics-listen`: where Prometheus scrapes GET /metrics (tcp:, tcp6: or unix:); None: off.
    metrics: str | None = None

    @property
    def tls(self) -> bool:
        return self.ssl_keyfile is not None or self.ssl_certfile is not None

    def describe(self) -> str:
        """Where the server listens, for the start-up line."""
        if self.endpoints:
            return ", ".join(self.endpoints)
        return f"{self.host}:{self.port}"


@attrs.frozen
class LogConfig:
    level: str = "WARNING"  # DEBUG/INFO/WARNING/ERROR/CRITICAL
    format: str = "CONSOLE"  # CONSOLE or JSON
    file: str | None = None  # None or "-" = stderr
    sentry_dsn: str | None = attrs.field(default=None, repr=False)
    sentry_environment: str = "production"
    # Which of --log-level/--log-format/--log-file were given (command line or environment),
    # as opposed to defaulted: twistd's own log options may only be combined with defaults.
    given: frozenset[str] = attrs.field(factory=frozenset, eq=False, repr=False)


@attrs.frozen
class ServerConfig:
    """Everything `twistd parsec` / `parsec backend run` needs."""

    backend: BackendConfig
    listen: ListenConfig = attrs.field(factory=ListenConfig)
    log: LogConfig = attrs.field(factory=LogConfig)


@attrs.frozen
class MigrateConfig:
    """Everything `parsec backend migrate` needs."""

    db_url: str = attrs.field(repr=False)  # postgresql:// or postgres:// DSN
    dry_run: bool = False
    log: LogConfig = attrs.field(factory=LogConfig)
    debug: bool = False
