"""Every command of every connection type, with requests built from its schema then mutated
(fields dropped, nil, values of other msgpack types, edge values, unknown keys, exotic
encodings), sent on live connections: authenticated ADMIN and OUTSIDER, invited (USER and
DEVICE invitations), APIv1 anonymous, and the anonymous HTTP route.

Oracle: `tests.fuzz.common` (replies valid for the command, connection still usable unless
the message was undecodable) plus the `logged_failures` fixture (no server traceback).
"""

from __future__ import annotations

import pytest_twisted

from parsec.api import protocol
from parsec.api.codec import DecodeError, packb, unpackb
from parsec.limits import DEFAULT as LIMITS
from tests import httpclient
from tests.fuzz import mpack
from tests.fuzz.common import (
    MAX_UNAUTHENTICATED_MESSAGE,
    MAX_WS_MESSAGE,
    Session,
    World,
    build_world,
    checked,
    is_unstorable_reply,
    record,
    schema_accepts,
    where,
    ws_exchange,
)
from tests.fuzz.gen import Gen, cases, rng_for
from tests.orgs import create_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

PER_COMMAND = 40
MAX_HTTP_BODY = 1024 * 1024


async def fuzz_ws_commands(
    name: str, session: Session, specs: dict[str, protocol.CommandSpec], kind: str, gen: Gen, count: int
) -> None:
    case = 0
    max_message = MAX_WS_MESSAGE if kind == "authenticated" else MAX_UNAUTHENTICATED_MESSAGE
    for spec in specs.values():
        for _ in range(count):
            case += 1
            msg = gen.request(spec, kind)
            payload = mpack.pack(msg, gen.rng if gen.chance(0.5) else None)
            await ws_exchange(
                session, specs, payload, where(name, case, msg), ping_tag=f"tag-{case}", max_message=max_message
            )


async def still_serving(world: World, device_id: str = "alice@dev1") -> None:
    client = await world.org.connect(device_id)
    try:
        assert await checked(client, "ping", ping="after") == {"status": "ok", "pong": "after"}
        rep = await checked(client, "realm_status", realm_id=world.realm_id)
        assert rep["status"] == "ok", rep
    finally:
        await client.close()


@ok
async def test_authenticated_admin_and_outsider(server):
    world = await build_world(server)
    for device_id, api_version in (("alice@dev1", (2, 7)), ("outsider@dev1", (3, 1))):
        name = f"authenticated-{device_id}"
        gen = Gen(rng_for(name), world.known)

        async def connect(device_id: str = device_id, api_version: tuple[int, int] = api_version) -> WsClient:
            return await world.org.connect(device_id, api_version=api_version)

        session = Session(connect)
        try:
            await fuzz_ws_commands(name, session, protocol.AUTHENTICATED_COMMANDS, "authenticated", gen, cases(PER_COMMAND))
        finally:
            await session.close()
    await still_serving(world)


@ok
async def test_invited(server):
    world = await build_world(server)
    for invitation_type, token in (("USER", world.user_token), ("DEVICE", world.device_token)):
        name = f"invited-{invitation_type}"
        gen = Gen(rng_for(name), world.known)

        async def connect(invitation_type: str = invitation_type, token: object = token) -> WsClient:
            client = await WsClient.connect(server.port)
            result = await client.handshake_invited(world.organization_id, invitation_type, token)
            assert result == {"handshake": "result", "result": "ok"}, result
            return client

        session = Session(connect)
        try:
            await fuzz_ws_commands(name, session, protocol.INVITED_COMMANDS, "invited", gen, cases(3 * PER_COMMAND))
        finally:
            await session.close()
    await still_serving(world)


@ok
async def test_apiv1_anonymous(server):
    world = await build_world(server)
    # One organization still waiting for its bootstrap, one already bootstrapped.
    await create_organization(server, "Fresh")
    for organization_id in ("Fresh", world.organization_id):
        name = f"apiv1-{organization_id}"
        gen = Gen(rng_for(name), {**world.known, "bootstrap_token": ["", "x"]})

        async def connect(organization_id: str = organization_id) -> WsClient:
            client = await WsClient.connect(server.port)
            result = await client.handshake_anonymous_v1(organization_id)
            assert result == {"handshake": "result", "result": "ok"}, result
            return client

        session = Session(connect)
        try:
            await fuzz_ws_commands(name, session, protocol.APIV1_ANONYMOUS_COMMANDS, "apiv1_anonymous", gen, cases(4 * PER_COMMAND))
        finally:
            await session.close()
    rep = await httpclient.admin(server.port, "GET", "/administration/organizations/Fresh")
    assert rep.status == 200 and rep.json()["is_bootstrapped"] is False, (rep.status, rep.body)
    await still_serving(world)


@ok
async def test_anonymous_http(server):
    world = await build_world(server)
    await create_organization(server, "Fresh")
    specs = protocol.ANONYMOUS_COMMANDS
    case = 0
    for organization_id in ("Fresh", world.organization_id):
        name = f"anonymous-http-{organization_id}"
        gen = Gen(rng_for(name), world.known)
        for spec in specs.values():
            for _ in range(cases(4 * PER_COMMAND)):
                case += 1
                msg = gen.request(spec, "anonymous")
                payload = mpack.pack(msg, gen.rng if gen.chance(0.5) else None)
                context = where(name, case, msg)
                rep = await httpclient.request(server.port, "POST", f"/anonymous/{organization_id}", body=payload)
                assert rep.status == 200, f"{context} -> {rep.status} {rep.body[:200]!r}"
                assert rep.headers.get("content-type") == "application/msgpack", context
                reply = unpackb(rep.body)
                # docs/protocol/transport.md §2: a body of 1 MiB or more is not read (treated as empty).
                if len(payload) >= MAX_HTTP_BODY or not mpack.decodable(payload):
                    assert reply == {"status": "invalid_msg_format"}, f"{context} -> {reply!r}"
                    continue
                try:
                    decoded = unpackb(payload)
                except DecodeError as exc:
                    raise AssertionError(f"{context} -> project codec refuses a valid message: {exc}") from None
                cmd = decoded.get("cmd")
                command = specs.get(cmd) if isinstance(cmd, str) else None
                if command is None:
                    assert reply == {"status": "unknown_command"}, f"{context} -> {reply!r}"
                    continue
                try:
                    protocol.validate_reply(command, reply)
                except protocol.InvalidReply as exc:
                    raise AssertionError(f"{context} -> {exc}") from None
                record(command.name, reply["status"])
                if schema_accepts(command, decoded):
                    assert reply["status"] != "bad_message" or is_unstorable_reply(reply, decoded), f"{context} -> {reply!r}"
                else:
                    assert reply["status"] == "bad_message", f"{context} -> {reply!r}"
    # Still serving, and nothing bootstrapped by accident.
    rep = await httpclient.admin(server.port, "GET", "/administration/organizations/Fresh")
    assert rep.status == 200 and rep.json()["is_bootstrapped"] is False, (rep.status, rep.body)
    rep = await httpclient.request(
        server.port, "POST", f"/anonymous/{world.organization_id}", body=packb({"cmd": "pki_enrollment_info", "enrollment_id": world.enrollment_id})
    )
    assert rep.status == 200 and unpackb(rep.body)["status"] == "ok", rep.body
    await still_serving(world)


HOSTILE_EMAILS = [
    '"', "?<", "=?utf-8?q?x?=", "a\u2028b", "a\x1cb", "a\nb", "a\rb", "<>", "a@b, c@d", "=@[>", "_.:", "\x00",
    "é" * 5000, "😀" * 300, "a" * 60000 + "@example.com", "", " ", "alice@example.com\n",
]


@ok
async def test_invite_new_hostile_claimer_emails(server):
    """invite_new USER with `send_email`: the claimer e-mail is client input that ends up in
    an e-mail header (mocked e-mails here, the test server's default)."""
    world = await build_world(server)
    name = "claimer-emails"
    gen = Gen(rng_for(name), world.known)
    emails = [*HOSTILE_EMAILS, *(gen.text() for _ in range(cases(12)))]
    # A str over the msgpack limit never reaches the command (tests/transport/test_hostile.py).
    emails = [e for e in emails if len(e.encode("utf8", "surrogatepass")) <= LIMITS.msgpack_str_bytes]
    client = await world.org.connect("alice@dev1")
    try:
        for case, email in enumerate(emails):
            rep = await client.cmd("invite_new", type="USER", claimer_email=email, send_email=True)
            context = where(name, case, email)
            try:
                protocol.validate_reply(protocol.AUTHENTICATED_COMMANDS["invite_new"], rep)
            except protocol.InvalidReply as exc:
                raise AssertionError(f"{context} -> {exc}") from None
            record("invite_new hostile e-mail", rep.get("email_sent", rep["status"]))
            if rep["status"] == "ok":
                assert "email_sent" in rep, f"{context} -> {rep!r}"
            else:
                assert is_unstorable_reply(rep, {"claimer_email": email}), f"{context} -> {rep!r}"
            if rep["status"] == "ok" and len(email.encode("utf8")) > 254:
                assert rep["email_sent"] == "BAD_RECIPIENT", f"{context} -> {rep!r}"
    finally:
        await client.close()
    await still_serving(world)
