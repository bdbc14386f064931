"""`--listen` endpoint strings and the `--host/--port/--ssl-*` shorthand, as data (no Twisted here).

`--listen` takes Twisted server endpoint strings: `tcp:6777:interface=127.0.0.1`,
`tcp6:6777:interface=\\:\\:1`, `ssl:443:privateKey=key.pem:certKey=fullchain.pem`,
`unix:/run/parsec/parsec.sock`, `systemd:domain=INET:index=0` (socket activation). The syntax
is Twisted's: `:` separates arguments, `\\` escapes the next character, `name=value` arguments
are keywords.

TLS is ours, not Twisted's `ssl:` endpoint: an `ssl:` value becomes a plain `tcp:` endpoint
plus the TLS files, served by `parsec.tls` (the whole certificate chain, reloaded on SIGHUP).
`--ssl-keyfile`/`--ssl-certfile` add TLS to the shorthand listener and to every `--listen`
endpoint that is not `ssl:` (e.g. the socket systemd passes). This module checks the syntax
(for the option parser, which must not import Twisted) and turns a ListenConfig into
:class:`ListenSpec`s; parsec.service builds the listeners from them.
"""

from __future__ import annotations

import os

import attrs

from parsec.config import ConfigError, ListenConfig

__all__ = [
    "ENDPOINT_TYPES",
    "ListenSpec",
    "TLSFiles",
    "check_endpoint",
    "check_metrics_endpoint",
    "listen_specs",
    "metrics_spec",
    "quote",
    "split_endpoint",
]

ENDPOINT_TYPES = ("tcp", "tcp6", "ssl", "unix", "systemd")
# Keyword arguments each endpoint type accepts (Twisted's own, minus what TLS replaces).
_KEYWORDS: dict[str, frozenset[str]] = {
    "tcp": frozenset({"port", "interface", "backlog"}),
    "tcp6": frozenset({"port", "interface", "backlog"}),
    "ssl": frozenset({"port", "interface", "backlog", "privateKey", "certKey", "extraCertChain"}),
    "unix": frozenset({"address", "mode", "backlog", "lockfile"}),
    "systemd": frozenset({"domain", "index", "name"}),
}
_POSITIONAL: dict[str, tuple[str, ...]] = {
    "tcp": ("port",),
    "tcp6": ("port",),
    "ssl": ("port",),
    "unix": ("address",),
    "systemd": (),
}


def quote(value: str) -> str:
    """Escape a value for an endpoint string (as twisted's quoteStringArgument does)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def split_endpoint(description: str) -> tuple[str, dict[str, str]]:
    """`type:arg:name=value...` -> (type, {name: value}), positional arguments named.

    Raises ValueError(reason) for anything Twisted would reject or we do not serve.
    """
    args: list[tuple[str | None, str]] = []
    key: str | None = None
    current: list[str] = []
    chars = iter(description)
    for char in chars:
        if char == "\\":
            current.append(next(chars, ""))
        elif char == ":":
            args.append((key, "".join(current)))
            key, current = None, []
        elif char == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(char)
    args.append((key, "".join(current)))
    (first_key, kind), rest = args[0], args[1:]
    if first_key is not None or kind not in ENDPOINT_TYPES:
        shown = description.split(":", 1)[0]
        raise ValueError(
            f"unsupported endpoint type {shown!r} (use {', '.join(t + ':' for t in ENDPOINT_TYPES)})"
        )
    named: dict[str, str] = {}
    positional = list(_POSITIONAL[kind])
    for name, value in rest:
        if name is None:
            if not positional:
                raise ValueError(f"unexpected argument {value!r} in a {kind}: endpoint")
            name = positional.pop(0)
        if name not in _KEYWORDS[kind]:
            allowed = ", ".join(sorted(_KEYWORDS[kind]))
            raise ValueError(f"unknown argument {name!r} for a {kind}: endpoint (allowed: {allowed})")
        if name in named:
            raise ValueError(f"argument {name!r} given twice")
        named[name] = value
    _check_arguments(kind, named)
    return kind, named


def _check_arguments(kind: str, named: dict[str, str]) -> None:
    if kind in ("tcp", "tcp6", "ssl"):
        port = named.get("port")
        if port is None or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"a {kind}: endpoint needs a port number (e.g. {kind}:6777)")
    if "backlog" in named and not named["backlog"].isdigit():
        raise ValueError("backlog must be a number")
    if kind == "ssl" and "privateKey" not in named:
        raise ValueError(
            "an ssl: endpoint needs privateKey=<file> (and certKey=<file> with the certificate "
            "chain, unless the key file holds it too)"
        )
    if kind == "unix" and not named.get("address"):
        raise ValueError("a unix: endpoint needs a socket path (e.g. unix:/run/parsec/parsec.sock)")
    if kind == "systemd":
        if named.get("domain") not in ("INET", "INET6", "UNIX"):
            raise ValueError("a systemd: endpoint needs domain=INET, INET6 or UNIX")
        if ("index" in named) == ("name" in named):
            raise ValueError("a systemd: endpoint needs exactly one of index=<n> or name=<FileDescriptorName>")
        if "index" in named and not named["index"].isdigit():
            raise ValueError("index must be a number")


def check_endpoint(raw: str) -> str:
    """Value parser of `--listen` (ValueError with the reason); returns the value as given."""
    kind, named = split_endpoint(raw)
    if kind == "ssl":
        for name in ("privateKey", "certKey", "extraCertChain"):
            path = named.get(name)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{name}: file {path!r} does not exist")
    return raw


METRICS_ENDPOINT_TYPES = ("tcp", "tcp6", "unix")


def check_metrics_endpoint(raw: str) -> str:
    """Value parser of `--metrics-listen`: a plain `tcp:`, `tcp6:` or `unix:` endpoint."""
    kind, _ = split_endpoint(raw)
    if kind not in METRICS_ENDPOINT_TYPES:
        raise ValueError(
            f"the metrics are served on {', '.join(t + ':' for t in METRICS_ENDPOINT_TYPES)} endpoints only "
            "(plain HTTP: keep it on loopback or a private network, e.g. tcp:9200:interface=127.0.0.1)"
        )
    return raw


@attrs.frozen
class TLSFiles:
    """Where the TLS key and certificate chain come from, and which option named them."""

    key_file: str
    cert_file: str  # the server's certificate first, then the intermediates
    extra_chain_file: str | None = None  # more intermediates (ssl: extraCertChain=)
    key_option: str = "--ssl-keyfile"
    cert_option: str = "--ssl-certfile"


@attrs.frozen
class ListenSpec:
    """One listener: a plain Twisted endpoint string, TLS on top of it or not."""

    endpoint: str  # tcp:, tcp6:, unix: or systemd: (never ssl:)
    tls: TLSFiles | None
    label: str  # as the administrator wrote it, for logs


def _shorthand_tls(config: ListenConfig) -> TLSFiles | None:
    if not config.tls:
        return None
    key = config.ssl_keyfile or config.ssl_certfile
    cert = config.ssl_certfile or config.ssl_keyfile
    assert key is not None and cert is not None
    return TLSFiles(key_file=key, cert_file=cert)


def metrics_spec(config: ListenConfig) -> ListenSpec | None:
    """The metrics listener (`--metrics-listen`), or None when off."""
    if config.metrics is None:
        return None
    return ListenSpec(config.metrics, None, f"{config.metrics} (metrics)")


def listen_specs(config: ListenConfig) -> list[ListenSpec]:
    """The listeners of `config`, in order. Raises ConfigError naming the option."""
    tls = _shorthand_tls(config)
    if not config.endpoints:
        host = f"{config.host}"
        return [ListenSpec(f"tcp:{config.port}:interface={quote(host)}", tls, f"{host}:{config.port}")]
    specs = []
    for description in config.endpoints:
        try:
            kind, named = split_endpoint(description)
        except ValueError as exc:
            raise ConfigError(f"Invalid value for '--listen' ({description}): {exc}") from None
        if kind != "ssl":
            specs.append(ListenSpec(description, tls, description))
            continue
        tcp = f"tcp:{named['port']}"
        for name in ("interface", "backlog"):
            if name in named:
                tcp += f":{name}={quote(named[name])}"
        key = named["privateKey"]
        own = TLSFiles(
            key_file=key,
            cert_file=named.get("certKey", key),
            extra_chain_file=named.get("extraCertChain"),
            key_option="--listen ssl:...:privateKey",
            cert_option="--listen ssl:...:certKey" if "certKey" in named else "--listen ssl:...:privateKey",
        )
        specs.append(ListenSpec(tcp, own, description))
    return specs
