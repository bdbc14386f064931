"""Every resource a peer can make the server spend, bounded by a named limit: ONE table.

Each row gives the limit's name, its default, its unit, what it bounds and, where an
administrator would tune it, the command-line option and its ``PARSEC_*`` variable.
README.rst ("Limits") shows this table; tests/limits/test_table.py keeps the two identical.

`Limits` holds the values in force (the defaults, or the administrator's choices); it
travels in `BackendConfig.limits`. Rules: a limit is checked *before* the work it protects
(sizes before decompression or decoding, tokens and states before certificates are
verified), and a peer that exceeds one gets the protocol's own error status or a clean close,
with a short fixed description: never a value of its own echoed back.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

KiB = 1024
MiB = 1024 * KiB


@attrs.frozen
class Limit:
    name: str
    default: int | float
    unit: str  # "bytes", "seconds", "count", "characters", "bits"
    meaning: str
    option: str | None = None  # e.g. "--handshake-timeout"
    env: str | None = None  # e.g. "PARSEC_HANDSHAKE_TIMEOUT"


def _tunable(name: str, default: int | float, unit: str, meaning: str, option: str) -> Limit:
    env = "PARSEC_" + option.removeprefix("--").replace("-", "_").upper()
    return Limit(name, default, unit, meaning, option, env)


TABLE: tuple[Limit, ...] = (
    # ---- HTTP (docs/protocol/transport.md §2) ---------------------------------------------
    Limit("http_head_bytes", 8 * KiB, "bytes",
          "request head (request line, headers and the final blank line); one byte more is "
          "answered 431 and the connection closed"),
    Limit("http_body_bytes", MiB - 1, "bytes",
          "request body read; a longer (or chunked) body is treated as empty, never buffered"),
    _tunable("http_request_timeout", 30.0, "seconds",
             "time to receive a complete request (head and body) before the connection is "
             "closed (slow senders)", "--http-request-timeout"),
    # ---- connections --------------------------------------------------------------------
    _tunable("max_connections", 10_000, "count",
             "open client connections (HTTP and websocket); above it a new connection gets "
             "503 and is closed", "--max-connections"),
    _tunable("max_connections_per_address", 200, "count",
             "open client connections from one source address (the X-Forwarded-For address "
             "behind a --trusted-proxy); above it: 429 and close", "--max-connections-per-address"),
    _tunable("ipv6_prefix_bits", 64, "bits",
             "IPv6 clients are counted for max_connections_per_address by network of this "
             "prefix length (one subscriber commonly holds a whole /64); 128: by address",
             "--ipv6-prefix-bits"),
    Limit("connections_per_turn", 16, "count",
          "new connections whose first bytes are read in one turn of the event loop; the others "
          "wait, unread, for the next turns (a burst of connections cannot stall the others)"),
    # ---- websocket before the Parsec handshake ------------------------------------------
    Limit("handshake_bytes", 4 * KiB, "bytes",
          "websocket frame and message accepted before the handshake result `ok` (a genuine "
          "answer is under 1 KiB); larger: close 1009"),
    _tunable("handshake_timeout", 30.0, "seconds",
             "from the websocket upgrade to the handshake result; then close 1008",
             "--handshake-timeout"),
    Limit("handshake_help_chars", 200, "characters",
          "length of the `help` text of a refused handshake (fixed texts, never client values)"),
    # ---- websocket after the handshake --------------------------------------------------
    _tunable("ws_message_bytes", 16 * MiB, "bytes",
             "websocket frame and message after the handshake: requests of authenticated "
             "connections, replies to all; a larger request: close 1009; a larger reply: the "
             "command's error status instead",
             "--ws-max-message-size"),
    Limit("unauthenticated_message_bytes", 1 * MiB, "bytes",
          "websocket frame and message from an anonymous or invited connection after its "
          "handshake (their largest request, a bootstrap or an enrollment, is a few hundred "
          "KiB; never above ws_message_bytes); larger: close 1009"),
    Limit("unauthenticated_pending_bytes", 32 * MiB, "bytes",
          "unfinished messages held by all anonymous and invited connections together; the "
          "connection whose bytes would go over it is closed (1013, try again later): "
          "authenticated connections are never refused for it"),
    Limit("ws_message_frames", 1024, "count",
          "pieces of one websocket message: its frames (a frame read in several parts counts "
          "each part); more: close 1009 (each piece costs the server a hundred bytes and more)"),
    Limit("ws_frames_per_turn", 128, "count",
          "frame parsing steps (a header, a payload) of one connection per turn of the event "
          "loop; the rest of what was read waits, reading paused, for the next turns (a read "
          "full of tiny frames cannot stall the other connections)"),
    Limit("pipeline_requests", 8, "count",
          "requests read ahead while one is processed; beyond it the server stops reading "
          "the connection until the queue drains"),
    Limit("pipeline_bytes", 1 * MiB, "bytes",
          "bytes of requests read ahead while one is processed (same rule, in bytes: the queue "
          "holds at most this plus one message)"),
    Limit("outgoing_buffer_bytes", 64 * KiB, "bytes",
          "high-water mark of a connection's write buffer: above it the server processes no "
          "further request of that connection (and stops reading it) until the peer reads"),
    _tunable("ws_keepalive_interval", 60.0, "seconds",
             "idle time after which the server pings a websocket (Autobahn auto-ping); 0: never",
             "--ws-keepalive-interval"),
    _tunable("ws_keepalive_timeout", 0.0, "seconds",
             "close a websocket whose pong is this late; 0: never (Parsec 2.x clients leave "
             "pooled connections unread for hours, and would be cut)", "--ws-keepalive-timeout"),
    # ---- wire encoding (docs/protocol/transport.md §4) ------------------------------------
    Limit("msgpack_str_bytes", 64 * KiB, "bytes", "msgpack str value (UTF-8 bytes)"),
    Limit("msgpack_bin_bytes", 1 * MiB, "bytes", "msgpack bin value (the protocol's own limit)"),
    Limit("msgpack_array_len", 65_536, "count", "items of one msgpack array"),
    Limit("msgpack_map_len", 65_536, "count", "pairs of one msgpack map"),
    Limit("msgpack_depth", 32, "count", "nesting depth of arrays and maps (the root map is 1)"),
    Limit("msgpack_objects", 100_000, "count",
          "values in one msgpack document, counted before any is built"),
    Limit("decompressed_bytes", 64 * KiB, "bytes",
          "inflated size of a certificate or PKI payload (zlib), checked while inflating"),
    Limit("ping_chars", 1024, "characters", "`ping` text (it is echoed and sent to subscribers)"),
    # ---- stored by peers (checked by parsec.backend before the storage writes) ------------
    Limit("message_bytes", 64 * KiB, "bytes",
          "body of one message to a user (`recipient_message` of `realm_update_roles`, each "
          "value of `per_participant_message`); larger: `bad_message`"),
    Limit("pending_messages", 1000, "count",
          "unread messages of one user (those after the highest offset its devices gave "
          "`message_get`); a role change or re-encryption start that would add one more gets "
          "`not_allowed`. A `message_get` reply holds at most this many (the next call gets "
          "the rest)"),
    Limit("pending_message_bytes", 8 * MiB, "bytes",
          "bodies of the unread messages of one user, and of one `message_get` reply (same "
          "rules; a reply always holds at least one message)"),
    Limit("enrollment_payload_bytes", 64 * KiB, "bytes",
          "each of a PKI enrollment's submitted blobs (payload, X.509 certificate, signature); "
          "larger: `bad_message`"),
    Limit("pending_enrollments", 64, "count",
          "pending (SUBMITTED) PKI enrollments of one organization, so that "
          "`pki_enrollment_list` fits in one message; beyond it `pki_enrollment_submit` gets "
          "`not_allowed` until an ADMIN accepts or rejects some"),
    Limit("event_queue_events", 100, "count",
          "events waiting for one `events_listen` subscriber; beyond it new events are dropped"),
    Limit("event_queue_bytes", 1 * MiB, "bytes",
          "size of the events waiting for one `events_listen` subscriber (same rule)"),
    Limit("event_outbox_bytes", 4 * MiB, "bytes",
          "PostgreSQL: notifications not tied to a write (`ping`, invitation status) waiting "
          "to be sent; beyond it they are dropped"),
    _tunable("block_cache_bytes", 64 * MiB, "bytes",
             "block bytes kept in memory by each server process, with a blockstore outside it "
             "(POSTGRESQL, S3, SWIFT, RAID), to serve reads again without the store; the least "
             "recently read leave first; 0: no cache", "--block-cache-size"),
    Limit("block_create_claim", 300.0, "seconds",
          "a `block_create` in progress holds its block id against other devices (a claim "
          "left by a crashed server expires after this)"),
    # ---- PostgreSQL (0: no timeout) -------------------------------------------------------
    _tunable("db_statement_timeout", 10.0, "seconds",
             "PostgreSQL statement_timeout of every pool connection; a request whose statement "
             "runs longer is answered with an error (websocket close 1011, HTTP 503)",
             "--db-statement-timeout"),
    _tunable("db_lock_timeout", 10.0, "seconds",
             "PostgreSQL lock_timeout of every pool connection (same answer)", "--db-lock-timeout"),
    _tunable("db_acquire_timeout", 10.0, "seconds",
             "wait for a free pool connection; then the request is answered with an error",
             "--db-acquire-timeout"),
    _tunable("db_max_waiters", 1000, "count",
             "requests waiting for a pool connection; beyond it new ones are refused at once",
             "--db-max-waiters"),
    _tunable("db_block_connections", 4, "count",
             "POSTGRESQL blockstore: its own pool's connections (binary sessions, for the "
             "bytes of blocks), opened on demand besides --db-max-connections",
             "--db-block-connections"),
)

BY_NAME: dict[str, Limit] = {limit.name: limit for limit in TABLE}

# How often each limit was reached in this process, by name (parsec.metrics reports them as
# `parsec_limits_hit_total`). Process-wide: the checks live in every layer, down to the codec,
# where no server object is at hand; one process serves one server in production.
hits: Counter[str] = Counter()


def hit(name: str) -> None:
    """Count one time the limit `name` (a row of TABLE) was reached."""
    hits[name] += 1


def _default(name: str) -> Any:
    return BY_NAME[name].default


@attrs.frozen
class Limits:
    """The values in force; every field is a row of `TABLE` (same name, same default)."""

    http_head_bytes: int = _default("http_head_bytes")
    http_body_bytes: int = _default("http_body_bytes")
    http_request_timeout: float = _default("http_request_timeout")
    max_connections: int = _default("max_connections")
    max_connections_per_address: int = _default("max_connections_per_address")
    ipv6_prefix_bits: int = _default("ipv6_prefix_bits")
    connections_per_turn: int = _default("connections_per_turn")
    handshake_bytes: int = _default("handshake_bytes")
    handshake_timeout: float = _default("handshake_timeout")
    handshake_help_chars: int = _default("handshake_help_chars")
    ws_message_bytes: int = _default("ws_message_bytes")
    unauthenticated_message_bytes: int = _default("unauthenticated_message_bytes")
    unauthenticated_pending_bytes: int = _default("unauthenticated_pending_bytes")
    ws_message_frames: int = _default("ws_message_frames")
    ws_frames_per_turn: int = _default("ws_frames_per_turn")
    pipeline_requests: int = _default("pipeline_requests")
    pipeline_bytes: int = _default("pipeline_bytes")
    outgoing_buffer_bytes: int = _default("outgoing_buffer_bytes")
    ws_keepalive_interval: float = _default("ws_keepalive_interval")
    ws_keepalive_timeout: float = _default("ws_keepalive_timeout")
    msgpack_str_bytes: int = _default("msgpack_str_bytes")
    msgpack_bin_bytes: int = _default("msgpack_bin_bytes")
    msgpack_array_len: int = _default("msgpack_array_len")
    msgpack_map_len: int = _default("msgpack_map_len")
    msgpack_depth: int = _default("msgpack_depth")
    msgpack_objects: int = _default("msgpack_objects")
    decompressed_bytes: int = _default("decompressed_bytes")
    ping_chars: int = _default("ping_chars")
    message_bytes: int = _default("message_bytes")
    pending_messages: int = _default("pending_messages")
    pending_message_bytes: int = _default("pending_message_bytes")
    enrollment_payload_bytes: int = _default("enrollment_payload_bytes")
    pending_enrollments: int = _default("pending_enrollments")
    event_queue_events: int = _default("event_queue_events")
    event_queue_bytes: int = _default("event_queue_bytes")
    event_outbox_bytes: int = _default("event_outbox_bytes")
    block_cache_bytes: int = _default("block_cache_bytes")
    block_create_claim: float = _default("block_create_claim")
    db_statement_timeout: float = _default("db_statement_timeout")
    db_lock_timeout: float = _default("db_lock_timeout")
    db_acquire_timeout: float = _default("db_acquire_timeout")
    db_max_waiters: int = _default("db_max_waiters")
    db_block_connections: int = _default("db_block_connections")


DEFAULT = Limits()


def tunable() -> list[Limit]:
    return [limit for limit in TABLE if limit.option is not None]


def with_values(values: Mapping[str, int | float | None], base: Limits = DEFAULT) -> Limits:
    """`base` with the given limits changed (None: keep the default)."""
    changes: dict[str, Any] = {name: value for name, value in values.items() if value is not None}
    unknown = set(changes) - set(BY_NAME)
    if unknown:
        raise KeyError(f"Unknown limit(s): {', '.join(sorted(unknown))}")
    return attrs.evolve(base, **changes)


def _human(limit: Limit) -> str:
    value = limit.default
    if limit.unit == "bytes" and isinstance(value, int):
        for size, suffix in ((MiB, "MiB"), (KiB, "KiB")):
            if value >= size and value % size == 0:
                return f"{value // size} {suffix}"
        return f"{value:,} bytes"
    if limit.unit == "seconds":
        return f"{value:g} s"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def rst_table() -> str:
    """The table as README.rst shows it (an RST list table)."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 22 10 40 28",
        "",
        "   * - limit",
        "     - default",
        "     - what it bounds",
        "     - option / variable",
    ]
    for limit in TABLE:
        knob = f"``{limit.option}`` / ``{limit.env}``" if limit.option else ""
        lines += [
            f"   * - ``{limit.name}``",
            f"     - {_human(limit)}",
            f"     - {limit.meaning}",
            f"     - {knob}" if knob else "     -",
        ]
    return "\n".join(lines) + "\n"
