"""Handshake answers fuzzed field by field, for every API major (known and unknown).

Each case opens a websocket, reads the challenge, builds a genuine answer (AUTHENTICATED
with a correct signature in the format of the declared version, INVITED with a live token,
APIv1 `anonymous`) for a chosen identity, mutates it, and sends it. The server must answer
with exactly one handshake result (docs/protocol/handshake.md §4) then, unless `ok`, drop the connection;
an `ok` connection must serve a ping. Undecodable answers and versions that are not two
non-negative ints of a supported major get `bad_protocol`. Some cases send a text frame
(`invalid_msg_format` + Close) or hang up right after the answer (nothing to check but the
server's log).
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from nacl.signing import SigningKey

from parsec.api import schema as s
from parsec.api.codec import packb, unpackb
from parsec.limits import DEFAULT as LIMITS
from tests import httpclient
from tests.fuzz import mpack
from tests.fuzz.common import INVALID_MSG_FORMAT, build_world, checked, record, where
from tests.fuzz.gen import Gen, cases, rng_for
from tests.orgs import bootstrap_organization, now
from tests.wsclient import ClosedError, WsClient

ok = pytest_twisted.ensureDeferred

RESULTS = {"ok", "bad_protocol", "bad_identity", "rvk_mismatch", "organization_expired", "revoked_device"}
SUPPORTED = {1: (1, 3), 2: (2, 7), 3: (3, 1)}
VERSIONS = [
    (1, 0), (1, 3), (1, 99), (2, 0), (2, 4), (2, 5), (2, 7), (2, 99), (3, 0), (3, 1), (3, 2**63 - 1),
    (0, 0), (0, 9), (4, 0), (5, 1), (99, 0), (255, 255), (2**32, 0), (2**64 - 1, 2**64 - 1),
]
BAD_VERSIONS: list[Any] = [(-1, 0), (2, -1), (-(2**63), 0), [2], [2, 7, 0], [], ["2", "7"], [2.0, 7], [True, 1], "2.7", 27, None, {2: 7}]

# Answer fields as schemas, for the mutations.
ANSWER_FIELDS: dict[str, s.Field] = {
    "handshake": s.Constant("answer"),
    "type": s.Enum(("AUTHENTICATED", "INVITED", "anonymous")),
    "client_api_version": s.Tuple(s.Int(min=0), s.Int(min=0)),
    "organization_id": s.Str(),
    "device_id": s.Str(),
    "rvk": s.VerifyKey(),
    "answer": s.Bytes(),
    "invitation_type": s.Enum(("USER", "DEVICE")),
    "token": s.Uuid(),
}


def well_formed_version(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(part, int) and not isinstance(part, bool) and part >= 0 for part in value)
    )


def signed_answer(key: SigningKey, challenge: bytes, version: Any, gen: Gen) -> tuple[bytes, bool]:
    """The signature of the declared version's format, sometimes deliberately broken
    (then the flag is False)."""
    old_format = well_formed_version(version) and tuple(version) < (2, 5)
    payload = challenge if old_format else packb({"type": "signed_answer", "answer": challenge})
    r = gen.rng.random()
    if r < 0.7:
        return bytes(key.sign(payload)), True
    if r < 0.8:
        # the other format
        other = packb({"type": "signed_answer", "answer": challenge}) if old_format else challenge
        return bytes(key.sign(other)), False
    if r < 0.9:
        signed = bytearray(key.sign(payload))
        signed[gen.rng.randrange(len(signed))] ^= 1 << gen.rng.randrange(8)
        return bytes(signed), False
    garbage = gen.rng.choice([b"", gen.rng.randbytes(48), packb({"type": "signed_answer", "answer": b"x"}), packb({"answer": challenge})])
    return bytes(key.sign(garbage)), False


@ok
async def test_handshake_answers(server):
    world = await build_world(server)
    org = world.org
    # An expired organization and a revoked user, to reach every result.
    expired = await bootstrap_organization(server, "Expired", human_handle=None)
    rep = await httpclient.admin(server.port, "PATCH", "/administration/organizations/Expired", {"is_expired": True})
    assert rep.status == 200, rep.body
    carl = await org.new_user("alice@dev1", "carl@dev1")
    admin = await org.connect("alice@dev1")
    assert await checked(admin, "user_revoke", revoked_user_certificate=org.devices["alice@dev1"].revoked_user_certificate(user_id="carl", timestamp=now())) == {"status": "ok"}
    await admin.close()

    identities = [
        ("AUTHENTICATED", org, "alice@dev1", "ok"),
        ("AUTHENTICATED", org, "outsider@dev1", "ok"),
        ("AUTHENTICATED", org, carl.device_id, "revoked_device"),
        ("AUTHENTICATED", expired, "alice@dev1", "organization_expired"),
        ("INVITED", org, ("USER", world.user_token), "ok"),
        ("INVITED", org, ("DEVICE", world.device_token), "ok"),
        ("INVITED", org, ("USER", world.deleted_token), "bad_identity"),
        ("anonymous", org, None, "ok"),
        ("anonymous", expired, None, "organization_expired"),
    ]
    name = "handshake"
    gen = Gen(rng_for(name), {"organization_id": ["FuzzOrg", "Expired", "Nope"], "device_id": ["alice@dev1", "bob@dev1"]})
    seen: dict[str, int] = {}
    for case in range(cases(400)):
        kind, target, who, expected = gen.rng.choice(identities)
        if gen.chance(0.85):
            # mostly a major that fits the answer type (1 for `anonymous`, else 2 or 3)
            fitting = [v for v in VERSIONS if v[0] in SUPPORTED and (v[0] == 1) == (kind == "anonymous")]
            version: Any = gen.rng.choice(fitting if gen.chance(0.6) else VERSIONS)
        else:
            version = gen.rng.choice(BAD_VERSIONS)
        client = await WsClient.connect(server.port)
        challenge = await client.challenge()
        assert challenge["handshake"] == "challenge" and len(challenge["challenge"]) == 48
        answer: dict[Any, Any] = {
            "handshake": "answer",
            "type": kind,
            "client_api_version": list(version) if isinstance(version, tuple) else version,
            "organization_id": target.organization_id,
        }
        if kind == "AUTHENTICATED":
            answer["device_id"] = who
            answer["rvk"] = target.root_verify_key
            answer["answer"], intact = signed_answer(target.devices[who].signing_key, challenge["challenge"], version, gen)
            if not intact and expected == "ok":
                expected = "bad_protocol"
            r = gen.rng.random()
            if r < 0.1:
                answer["rvk"] = bytes(32)  # checked right after the identity
                expected = "rvk_mismatch"
            elif r < 0.2:
                answer["device_id"] = gen.rng.choice(["alice@nodevice", "nobody@dev1"])  # checked first
                expected = "bad_identity"
        elif kind == "INVITED":
            answer["invitation_type"], answer["token"] = who
        elif gen.chance(0.5):
            answer["rvk"] = gen.rng.choice([target.root_verify_key, None, bytes(32)])
            if answer["rvk"] == bytes(32) and expected == "ok":
                expected = "rvk_mismatch"
        pristine = dict(answer)
        if gen.chance(0.7):
            answer = gen.mutate_map(answer, s.Schema(ANSWER_FIELDS))
        mode = gen.rng.random()
        if mode < 0.04:
            text = mpack.pack(answer)
            client.send_raw(text, binary=False)
            context = where(name, case, ("text frame", answer))
            if len(text) > LIMITS.handshake_bytes:
                code, _ = await client.wait_closed()
                assert code in (1009, 1006), f"{context} -> close code {code}"
                continue
            assert await client.recv() == INVALID_MSG_FORMAT, context
            code, _ = await client.wait_closed()
            assert code == 1000, context
            continue
        payload = mpack.pack(answer, gen.rng if gen.chance(0.5) else None)
        if gen.chance(0.1):
            payload = gen.rng.choice([payload[: gen.rng.randrange(len(payload))], payload + b"\x00", gen.rng.randbytes(20), b""])
        context = where(name, case, (kind, who, answer))
        client.send_raw(payload)
        if len(payload) > LIMITS.handshake_bytes:
            # Before the handshake result, a few KiB at most (parsec.limits).
            code, _ = await client.wait_closed()
            assert code in (1009, 1006), f"{context} -> close code {code}"
            continue
        if mode < 0.1:
            # Hang up before the result (the server may be looking the identity up).
            client.proto.transport.abortConnection()
            await client.wait_closed()
            continue
        try:
            result = await client.recv()
        except ClosedError as exc:
            raise AssertionError(f"{context} -> closed without a handshake result ({exc})") from None
        assert result.get("handshake") == "result" and result.get("result") in RESULTS, f"{context} -> {result!r}"
        if result["result"] == "ok":
            assert set(result) == {"handshake", "result"}, f"{context} -> {result!r}"
        else:
            assert set(result) == {"handshake", "result", "help"} and isinstance(result["help"], str), f"{context} -> {result!r}"
        seen[result["result"]] = seen.get(result["result"], 0) + 1
        record(f"handshake {kind}", result["result"])
        # What the oracle knows for sure.
        if not mpack.decodable(payload):
            assert result["result"] == "bad_protocol", f"{context} -> {result!r}"
        else:
            sent = unpackb(payload)
            sent_version = sent.get("client_api_version")
            if sent.get("handshake") != "answer" or not well_formed_version(sent_version):
                assert result["result"] == "bad_protocol", f"{context} -> {result!r}"
            elif sent_version[0] not in SUPPORTED:
                assert result == {
                    "handshake": "result",
                    "result": "bad_protocol",
                    "help": f"No overlap between client API versions {{{sent_version[0]}.{sent_version[1]}}} "
                    "and backend API versions {1.3, 2.7, 3.1}",
                }, f"{context} -> {result!r}"
            elif sent == pristine and (kind == "anonymous") == (sent_version[0] == 1):
                assert result["result"] == expected, f"{context} -> {result!r}"
        if result["result"] == "ok":
            try:
                assert await client.cmd("ping", ping="hs") == {"status": "ok", "pong": "hs"}, context
            finally:
                await client.close()
        else:
            code, clean = await client.wait_closed()
            assert not clean, f"{context} -> closed with a Close frame ({code}) after a failed handshake"
    assert {"ok", "bad_protocol"} <= set(seen), seen
    # Still serving.
    client = await org.connect("alice@dev1")
    assert await client.cmd("ping", ping="end") == {"status": "ok", "pong": "end"}
    await client.close()

