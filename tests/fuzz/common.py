"""Shared pieces of the wire fuzz tests: a populated organization, reconnecting websocket
sessions, and the reply oracle of one fuzzed websocket message.

Oracle for one binary message sent on a ready connection (docs/protocol/transport.md §6), followed at
once by a `ping` with a unique text:

* larger than the websocket message limit (16 MiB; 1 MiB on anonymous and invited
  connections): the connection is closed;
* undecodable per the spec (`mpack.decodable`): `invalid_msg_format` with its reason, then a
  Close(1000); the ping is never answered;
* `cmd` missing, not a str, or not a command of the connection type: `unknown_command`;
* otherwise a reply of the command (`validate_reply`), `bad_message` iff the request does
  not match the command's schema (unless a profile refusal comes first; and PostgreSQL
  refuses texts holding NUL with `bad_message`, backend/storage.py), or, for the two
  cancellable commands only, no reply at all;
* then the ping's `pong`: the connection is still usable.
"""

from __future__ import annotations

import collections
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from parsec.api import protocol
from parsec.api import schema as s
from parsec.api.codec import DecodeError, unpackb
from parsec.limits import DEFAULT as LIMITS
from tests import httpclient
from tests.api.certgen import LocalDevice, pki_accept_payload, pki_submit_payload
from tests.fuzz import mpack
from tests.fuzz.gen import SEED
from tests.orgs import Org, bootstrap_organization, now
from tests.wsclient import ClosedError, WsClient

INVALID_MSG_FORMAT = {"status": "invalid_msg_format", "reason": "Invalid message format"}
UNKNOWN_COMMAND = {"status": "unknown_command", "reason": "Unknown command"}
# Commands abandoned without a reply when the next request arrives (docs/protocol/transport.md §6.1).
CANCELLABLE = {"events_listen", "invite_1_claimer_wait_peer"}
# Autobahn refuses bigger messages (1009) before the protocol sees them (web/websocket.py).
MAX_WS_MESSAGE = LIMITS.ws_message_bytes
MAX_UNAUTHENTICATED_MESSAGE = LIMITS.unauthenticated_message_bytes
# Refused on the profile before the schema is looked at (docs/protocol/commands.md §2).
PROFILE_GATED = {
    "user_create", "user_revoke", "human_find", "realm_update_roles",
    "pki_enrollment_list", "pki_enrollment_reject", "pki_enrollment_accept",
}


# (command, reply status) seen by the oracle; `PARSEC_FUZZ_STATS=1` prints them at the end.
STATS: collections.Counter[tuple[str, str]] = collections.Counter()
SHOW_STATS = bool(os.environ.get("PARSEC_FUZZ_STATS"))


def record(cmd: Any, status: Any) -> None:
    STATS[(str(cmd)[:40], str(status))] += 1


def short(value: Any, depth: int = 0) -> str:
    """A bounded repr (values hold megabytes and nest a thousand levels)."""
    if isinstance(value, str | bytes):
        return repr(value[:60]) + (f"...({len(value)})" if len(value) > 60 else "")
    if depth > 4:
        return "..."
    if isinstance(value, dict):
        items = list(value.items())
        inner = ", ".join(f"{short(k, depth + 1)}: {short(v, depth + 1)}" for k, v in items[:12])
        return "{" + inner + (", ..." if len(items) > 12 else "") + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(short(item, depth + 1) for item in value[:12])
        return "[" + inner + (", ..." if len(value) > 12 else "") + "]"
    text = repr(value)
    return text if len(text) < 200 else text[:200] + "..."


def where(name: str, case: int, detail: Any = "") -> str:
    text = short(detail)
    if len(text) > 1500:
        text = text[:1500] + "..."
    return f"[PARSEC_FUZZ_SEED={SEED} test={name} case={case}] {text}"


# ---- the organization every fuzz test plays in ---------------------------------------------------


@attrs.define
class World:
    org: Org
    realm_id: uuid.UUID
    vlob_id: uuid.UUID
    block_id: uuid.UUID
    user_token: uuid.UUID  # live USER invitation (greeter alice)
    device_token: uuid.UUID  # live DEVICE invitation (greeter alice)
    deleted_token: uuid.UUID
    enrollment_id: uuid.UUID
    known: dict[str, list[Any]]

    @property
    def organization_id(self) -> str:
        return self.org.organization_id


async def checked(client: WsClient, name: str, **fields: Any) -> dict[str, Any]:
    rep = await client.cmd(name, **fields)
    protocol.validate_reply(protocol.AUTHENTICATED_COMMANDS[name], rep)
    return rep


async def build_world(server: Any, organization_id: str = "FuzzOrg") -> World:
    """alice (ADMIN), bob (STANDARD), outsider (OUTSIDER); a realm owned by alice shared with
    bob and outsider, holding a vlob and a block; two live invitations and a deleted one; a
    submitted PKI enrollment."""
    org = await bootstrap_organization(server, organization_id)
    await org.new_user("alice@dev1", "bob@dev1", human_handle=("bob@example.com", "Bob"))
    await org.new_user("alice@dev1", "outsider@dev1", profile="OUTSIDER")
    alice: LocalDevice = org.devices["alice@dev1"]
    realm_id, vlob_id, block_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    client = await org.connect(alice)
    try:
        cert = alice.realm_role_certificate(realm_id=realm_id, user_id="alice", role="OWNER", timestamp=now())
        assert await checked(client, "realm_create", role_certificate=cert) == {"status": "ok"}
        for user_id, role in (("bob", "CONTRIBUTOR"), ("outsider", "READER")):
            cert = alice.realm_role_certificate(realm_id=realm_id, user_id=user_id, role=role, timestamp=now())
            rep = await checked(client, "realm_update_roles", role_certificate=cert, recipient_message=b"hi")
            assert rep == {"status": "ok"}, rep
        rep = await checked(
            client, "vlob_create", realm_id=realm_id, encryption_revision=1, vlob_id=vlob_id, timestamp=now(), blob=b"v1"
        )
        assert rep == {"status": "ok"}, rep
        rep = await checked(client, "block_create", block_id=block_id, realm_id=realm_id, block=b"block")
        assert rep == {"status": "ok"}, rep
        user_token = (await checked(client, "invite_new", type="USER", claimer_email="zed@example.com", send_email=False))["token"]
        device_token = (await checked(client, "invite_new", type="DEVICE", send_email=False))["token"]
        deleted_token = (await checked(client, "invite_new", type="USER", claimer_email="gone@example.com", send_email=False))["token"]
        assert await checked(client, "invite_delete", token=deleted_token, reason="CANCELLED") == {"status": "ok"}
    finally:
        await client.close()
    enrollment_id = uuid.uuid4()
    rep = await anonymous_cmd(
        server,
        organization_id,
        {
            "cmd": "pki_enrollment_submit",
            "enrollment_id": enrollment_id,
            "force": False,
            "submitter_der_x509_certificate": b"0\x82der",
            "submit_payload_signature": b"sig",
            "submit_payload": pki_submit_payload(),
        },
    )
    assert rep["status"] == "ok", rep
    known: dict[str, list[Any]] = {
        "realm_id": [realm_id],
        "vlob_id": [vlob_id],
        "block_id": [block_id],
        # Greeter commands on a live token would wait for a claimer forever: deleted only.
        "token": [deleted_token],
        "enrollment_id": [enrollment_id],
        "user_id": ["alice", "bob", "outsider"],
        "encryption_revision": [1, 2],
        "version": [1, 2],
        "submit_payload": [pki_submit_payload()],
        "accept_payload": [pki_accept_payload()],
        "claimer_email": ["zed@example.com", "bob@example.com", "new@example.com"],
        "send_email": [False],
    }
    return World(org, realm_id, vlob_id, block_id, user_token, device_token, deleted_token, enrollment_id, known)


async def anonymous_cmd(server: Any, organization_id: str, msg: dict[str, Any]) -> dict[str, Any]:
    rep = await httpclient.anonymous(server.port, organization_id, msg)
    assert rep.status == 200, (rep.status, rep.body)
    reply = rep.msgpack()
    protocol.validate_reply(protocol.ANONYMOUS_COMMANDS.get(msg.get("cmd")), reply)  # type: ignore[arg-type]
    return reply


async def admin_stats(server: Any, organization_id: str) -> dict[str, Any]:
    rep = await httpclient.admin(server.port, "GET", f"/administration/organizations/{organization_id}/stats")
    assert rep.status == 200, (rep.status, rep.body)
    stats: dict[str, Any] = json.loads(rep.body)
    return stats


# ---- websocket sessions ------------------------------------------------------------------------


class Session:
    """A connection of one type that is reopened whenever the server closed it."""

    def __init__(self, connect: Callable[[], Awaitable[WsClient]]) -> None:
        self._connect = connect
        self._client: WsClient | None = None
        self.reconnections = 0

    async def client(self) -> WsClient:
        if self._client is None or self._client.proto.closed.called:
            self._client = await self._connect()
            self.reconnections += 1
        return self._client

    def forget(self) -> None:
        self._client = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def schema_accepts(spec: protocol.CommandSpec, msg: dict[Any, Any]) -> bool:
    try:
        spec.req.load(msg)
    except s.ValidationError:
        return False
    return True


async def expect_closed_after_invalid_format(client: WsClient, context: str) -> None:
    rep = await client.recv()
    assert rep == INVALID_MSG_FORMAT, context + f" -> {rep!r}"
    code, _ = await client.wait_closed()
    assert code == 1000, context + f" -> close code {code}"


async def ws_exchange(
    session: Session,
    specs: dict[str, protocol.CommandSpec],
    payload: bytes,
    context: str,
    *,
    ping_tag: str,
    max_message: int = MAX_WS_MESSAGE,
) -> dict[str, Any] | None:
    """Send one fuzzed message then a ping; check both against the oracle (module docstring).

    Returns the reply to the fuzzed message (None: undecodable, or abandoned)."""
    client = await session.client()
    client.send_raw(payload)
    client.send({"cmd": "ping", "ping": ping_tag})
    pong = {"status": "ok", "pong": ping_tag}
    if len(payload) > max_message:
        code, _ = await client.wait_closed()
        assert code in (1009, 1006), context + f" -> close code {code}"
        record("<too big>", "closed")
        session.forget()
        return None
    if not mpack.decodable(payload):
        await expect_closed_after_invalid_format(client, context)
        record("<undecodable>", "invalid_msg_format")
        session.forget()
        return None
    try:
        msg = unpackb(payload)
    except DecodeError as exc:  # the server's decoder disagrees with the spec
        raise AssertionError(f"{context} -> project codec refuses a valid message: {exc}") from None
    try:
        rep = await client.recv()
    except ClosedError as exc:
        raise AssertionError(f"{context} -> connection closed ({exc}) instead of a reply") from None
    cmd = msg.get("cmd")
    spec = specs.get(cmd) if isinstance(cmd, str) else None
    record(spec.name if spec else "<unknown>", "<abandoned>" if rep == pong else rep.get("status"))
    if spec is None:
        assert rep == UNKNOWN_COMMAND, f"{context} -> {rep!r}"
    elif rep == pong and spec.name in CANCELLABLE:
        return None  # abandoned without reply, as the spec says
    else:
        try:
            protocol.validate_reply(spec, rep)
        except protocol.InvalidReply as exc:
            raise AssertionError(f"{context} -> {exc}") from None
        if schema_accepts(spec, msg):
            # Valid requests are not `bad_message`, except a text PostgreSQL cannot hold
            # (backend/storage.py UnstorableValueError: the NUL character).
            if rep["status"] == "bad_message":
                assert is_unstorable_reply(rep, msg), f"{context} -> {rep!r}"
        else:
            allowed = {"bad_message", "not_allowed"} if spec.name in PROFILE_GATED else {"bad_message"}
            assert rep["status"] in allowed, f"{context} -> {rep!r}"
    try:
        again = await client.recv()
    except ClosedError as exc:
        raise AssertionError(f"{context} -> connection closed ({exc}) after the reply {rep!r}") from None
    assert again == pong, f"{context} -> ping answered with {again!r}"
    return rep


NUL_ERROR = ["Cannot contain the NUL character."]


def contains_nul(value: Any) -> bool:
    """Whether a decoded value holds a str with NUL (iterative: values nest ~1000 deep)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str) and "\x00" in item:
            return True
        if isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
    return False


def is_unstorable_reply(rep: dict[str, Any], msg: dict[Any, Any]) -> bool:
    errors = rep.get("errors")
    return (
        isinstance(errors, dict)
        and len(errors) == 1
        and all(text == NUL_ERROR and contains_nul(msg.get(field)) for field, text in errors.items())
    )
