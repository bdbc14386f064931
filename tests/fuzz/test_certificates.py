"""Mutated certificates in every command that takes some (docs/protocol/data-formats.md, docs/protocol/commands.md §5-§12).

Each case builds a genuine, valid request (fresh ids each time), then corrupts it in one of
these ways, each with a verdict on what the server may do:

* blob level -- a bit flipped in the signature or in the signed message, truncation, extra
  bytes, signed by another key, or signed garbage: random bytes, zlib of non-msgpack, of a
  non-map, a truncated zlib stream, a zlib bomb -> must fail (`invalid_certification`);
* field level, certificate re-signed by the right key -- a required key dropped, nil, a value
  of another msgpack type, a wrong value of the right type (bad identifier, key size,
  enum, human handle, label, far timestamp), another author, a value no decoder accepts
  -> must fail with one of the command's certificate statuses;
* field level, still plausible -- another valid id / profile / role / handle / label / key,
  optional keys dropped, zlib trailing bytes -> any documented reply;
* equivalent -- unknown extra keys, keys reordered, non-minimal msgpack, another zlib level
  -> must be `ok`, like the untouched request.

After every reply: if not `ok`, nothing was stored (user_get / realm_get_role_certificates /
admin stats / organization config are unchanged); if `ok`, exactly the bytes sent were stored.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest_twisted
from nacl.signing import SigningKey

from parsec.api import protocol
from parsec.api import schema as s
from tests import httpclient
from tests.api.certgen import (
    LocalDevice,
    device_certificate_fields,
    pki_accept_payload,
    pki_submit_payload,
    realm_role_certificate_fields,
    revoked_user_certificate_fields,
    sign_message,
    user_certificate_fields,
)
from tests.fuzz import mpack
from tests.fuzz.common import admin_stats, anonymous_cmd, build_world, checked, record, where
from tests.fuzz.gen import Gen, cases, rng_for
from tests.fuzz.gen import now as utcnow
from tests.orgs import create_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred

INVALID, MAYBE, EQUIVALENT = "invalid", "maybe", "equivalent"
# Statuses a command may answer to a certificate that is definitely invalid.
CERT_ERRORS = {
    "user_create": {"invalid_certification", "invalid_data"},
    "pki_enrollment_accept": {"invalid_certification", "invalid_data"},
    "device_create": {"invalid_certification", "invalid_data", "bad_user_id"},
    "user_revoke": {"invalid_certification"},
    "realm_create": {"invalid_certification", "invalid_data", "bad_timestamp"},
    "realm_update_roles": {"invalid_certification", "invalid_data", "bad_timestamp"},
    "organization_bootstrap": {"invalid_certification", "invalid_data", "bad_timestamp"},
}

# Certificate fields (docs/protocol/data-formats.md §3) as schema fields, used for their shape only.
ID = s.Identifier(lambda value: value)
COMMON = {"type": s.Constant(""), "author": ID, "timestamp": s.DateTime()}
SHAPES: dict[str, dict[str, Any]] = {
    "user": {**COMMON, "user_id": ID, "human_handle": s.HumanHandle(allow_none=True), "public_key": s.Bytes(), "is_admin": s.Bool(), "profile": s.Enum(())},
    "device": {**COMMON, "device_id": ID, "device_label": s.Str(allow_none=True), "verify_key": s.Bytes()},
    "revoked_user": {**COMMON, "user_id": ID},
    "realm_role": {**COMMON, "realm_id": s.Uuid(), "user_id": ID, "role": s.Enum((), allow_none=True)},
}
OPTIONAL = {"human_handle", "device_label", "profile"}
# Wrong values of the right msgpack type.
BAD_IDS = ["", "a.b", "x" * 33, "é" * 17, "alice\n", "a b", "a/b", "\x00"]
BAD_DEVICE_IDS = ["alice", "@dev1", "alice@", "a@b@c", "alice@dev1\n", "x" * 33 + "@d", "alice @dev1"]
BAD_HANDLES = [[], ["a"], ["a", "b", "c"], ["", "x"], ["x@y", ""], ["x@y", "<z>"], ["x@y", "a, b"], [1, 2], [None, "x"], ["x" * 255, "y"]]
BAD_LABELS = ["", "a\nb", "\r", "é" * 128]
FAR_TIMESTAMPS = [-3600.0, -71.0, 51.0, 3600.0, -86400.0 * 365 * 30, 86400.0 * 365 * 100]
# Decompresses to 8 MiB (the server caps certificates at 1 MiB).
ZLIB_BOMB = zlib.compress(bytes(8 * 1024 * 1024), 9)


@attrs.define
class Cert:
    kind: str  # user | device | revoked_user | realm_role
    fields: dict[Any, Any]
    key: SigningKey
    blob: bytes = b""
    verdict: str = EQUIVALENT
    label: str = "untouched"

    def sign(self, gen: Gen | None = None) -> None:
        rng = gen.rng if gen is not None else None
        level = rng.choice([0, 1, 6, 9]) if rng is not None else 6
        self.blob = sign_message(self.key, zlib.compress(mpack.pack(self.fields, rng), level))


def worst(*verdicts: str) -> str:
    order = [EQUIVALENT, MAYBE, INVALID]
    return max(verdicts, key=order.index)


# ---- mutations -------------------------------------------------------------------------------------


def valid_other(gen: Gen, cert: Cert, name: str, others: dict[str, list[Any]]) -> Any:
    rng = gen.rng
    if name in others and others[name]:
        return rng.choice(others[name])
    if name == "profile":
        return rng.choice(["ADMIN", "STANDARD", "OUTSIDER"])
    if name == "role":
        return rng.choice(["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None])
    if name == "human_handle":
        return rng.choice([None, [f"h{rng.randrange(10**9)}@example.com", "Somebody Else"]])
    if name == "device_label":
        return rng.choice([None, "Another label", "é" * 20])
    if name in ("public_key", "verify_key"):
        return rng.randbytes(32)
    if name == "realm_id":
        return gen.uuid()
    if name == "is_admin":
        return not cert.fields.get(name)
    if name == "timestamp":
        return utcnow()
    return cert.fields.get(name)


def mutate_fields(gen: Gen, cert: Cert, root_signed: bool, others: dict[str, list[Any]]) -> None:
    """One field-level mutation of `cert`, re-signed; sets its verdict and label."""
    rng = gen.rng
    shape = SHAPES[cert.kind]
    name = rng.choice(sorted(shape))
    field = shape[name]
    fields = cert.fields
    nullable = name in ("human_handle", "device_label", "role") or (name == "author" and root_signed)
    choice = rng.choice(["drop", "nil", "type", "value", "value", "valid", "valid", "extra", "poison"])
    if choice == "drop":
        fields.pop(name, None)
        verdict = MAYBE if name in OPTIONAL else INVALID
    elif choice == "nil":
        fields[name] = None
        verdict = MAYBE if nullable else INVALID
    elif choice == "type":
        fields[name] = gen.other_type(field)
        if len(mpack.pack(fields)) > 64 * 1024:
            # keep the request far below the 1 MiB bin limit of the transport
            fields[name] = gen.rng.choice([gen.integer(), 1.5, [1], {"k": 1}, gen.unknown_ext()])
        verdict = MAYBE if fields[name] is None and nullable else INVALID
    elif choice == "value":
        fields[name], verdict = bad_value(gen, cert, name, root_signed)
    elif choice == "valid":
        fields[name] = valid_other(gen, cert, name, others)
        verdict = MAYBE
    elif choice == "extra":
        for _ in range(rng.randint(1, 3)):
            key = rng.choice([gen.text(), gen.integer(), gen.uuid(), None, True])
            if key not in shape and key not in ("user", "device"):
                fields[key] = rng.choice([gen.text(), gen.integer(), gen.blob_small(), None, [1, 2], {"a": 1}, gen.unknown_ext(), gen.uuid()])
        verdict = EQUIVALENT
    else:
        fields[name] = gen.poison(small=True)
        verdict = INVALID
    if not mpack.decodable(mpack.pack(fields)):
        verdict = INVALID  # e.g. an extra key holding a value no decoder accepts
    cert.verdict = worst(cert.verdict, verdict)
    cert.label = f"{choice} {cert.kind}.{name}"
    cert.sign(gen)


def bad_value(gen: Gen, cert: Cert, name: str, root_signed: bool) -> tuple[Any, str]:
    rng = gen.rng
    if name == "type":
        value = rng.choice(["", "user_certificate", "device_certificate", "realm_role_certificate", "revoked_user_certificate", "x", "User_certificate"])
        return value, EQUIVALENT if value == f"{cert.kind}_certificate" else INVALID
    if name == "author":
        if root_signed:
            return rng.choice(["alice@dev1", "bob@dev1"]), INVALID
        return rng.choice([None, "bob@dev1", "zed@dev1", *BAD_DEVICE_IDS]), INVALID
    if name in ("user_id",):
        return rng.choice(BAD_IDS), INVALID
    if name == "device_id":
        return rng.choice(BAD_DEVICE_IDS), INVALID
    if name in ("public_key", "verify_key"):
        return rng.randbytes(rng.choice([0, 16, 31, 33, 64])), INVALID
    if name == "profile":
        return rng.choice(["admin", "", "OWNER", "ADMIN "]), INVALID
    if name == "role":
        return rng.choice(["owner", "", "ADMIN", "OWNER "]), INVALID
    if name == "human_handle":
        return rng.choice(BAD_HANDLES), INVALID
    if name == "device_label":
        return rng.choice(BAD_LABELS), INVALID
    if name == "is_admin":
        return rng.choice([0, 1, "true"]), INVALID
    if name == "timestamp":
        return utcnow() + _seconds(rng.choice(FAR_TIMESTAMPS)), INVALID
    return gen.other_type(SHAPES[cert.kind][name]), INVALID


def _seconds(value: float) -> Any:
    from datetime import timedelta

    return timedelta(seconds=value)


def mutate_blob(gen: Gen, cert: Cert, wrong_keys: list[SigningKey]) -> None:
    """A blob-level corruption: always invalid."""
    rng = gen.rng
    blob = bytearray(cert.blob)
    choice = rng.choice(["flip signature", "flip message", "truncate", "append", "wrong key", "garbage", "garbage", "empty"])
    if choice == "flip signature":
        blob[rng.randrange(64)] ^= 1 << rng.randrange(8)
        cert.blob = bytes(blob)
    elif choice == "flip message":
        blob[rng.randrange(64, len(blob))] ^= 1 << rng.randrange(8)
        cert.blob = bytes(blob)
    elif choice == "truncate":
        cert.blob = bytes(blob[: rng.randrange(len(blob))])
    elif choice == "append":
        cert.blob = bytes(blob) + rng.randbytes(rng.randint(1, 10))
    elif choice == "wrong key":
        cert.blob = sign_message(rng.choice(wrong_keys), zlib.compress(mpack.pack(cert.fields)))
    elif choice == "empty":
        cert.blob = rng.choice([b"", bytes(64), cert.blob[:64]])
    else:
        packed = mpack.pack(cert.fields)
        garbage = rng.choice(
            [
                rng.randbytes(rng.randint(0, 100)),
                zlib.compress(rng.randbytes(rng.randint(1, 100))),
                zlib.compress(mpack.pack(rng.choice([[cert.fields], 1, "x", None, b"x"]))),
                zlib.compress(packed)[: rng.randint(1, 8)],
                zlib.compress(packed + b"\xc0"),
                zlib.compress(packed[:-1]),
                ZLIB_BOMB,
                zlib.compress(mpack.pack({**cert.fields, "timestamp": gen.poison(small=True)})),
            ]
        )
        cert.blob = sign_message(cert.key, garbage)
    cert.verdict = INVALID
    cert.label = f"{choice} {cert.kind}"


def corrupt(gen: Gen, certs: list[Cert], root_signed: bool, others: dict[str, list[Any]], wrong_keys: list[SigningKey]) -> str:
    """Corrupt some of `certs` (all signed); returns the combined verdict."""
    rng = gen.rng
    r = rng.random()
    if r < 0.08:
        return EQUIVALENT  # untouched
    targets = rng.sample(certs, k=1 if len(certs) == 1 or rng.random() < 0.8 else 2)
    for cert in targets:
        r = rng.random()
        if r < 0.3:
            mutate_blob(gen, cert, wrong_keys)
        elif r < 0.85:
            mutate_fields(gen, cert, root_signed, others)
        elif r < 0.93:
            cert.label = "re-encoded"
            cert.sign(gen)  # non-minimal msgpack, another zlib level
            items = list(cert.fields.items())
            rng.shuffle(items)
            cert.fields = dict(items)
            cert.sign(gen)
        else:
            # bytes after the end of the zlib stream are ignored, as zlib.decompress does
            cert.blob = sign_message(cert.key, zlib.compress(mpack.pack(cert.fields)) + rng.randbytes(rng.randint(1, 8)))
            cert.verdict = worst(cert.verdict, MAYBE)
            cert.label = "zlib trailing bytes"
    return worst(*(cert.verdict for cert in certs))


# ---- independent consistency rules (docs/protocol/commands.md §5.1, §6.1, §6.4, §6.5, §9.1, §9.5) -----------------


def _user_view(fields: dict[Any, Any]) -> tuple[tuple[Any, ...], Any]:
    profile = fields.get("profile")
    if profile is None:
        profile = "ADMIN" if fields.get("is_admin") else "STANDARD"
    if fields.get("is_admin") and profile != "ADMIN":
        profile = "<incompatible>"
    view = (fields.get("type"), fields.get("author"), fields.get("timestamp"), fields.get("user_id"), fields.get("public_key"), profile)
    return view, fields.get("human_handle")


def _device_view(fields: dict[Any, Any]) -> tuple[tuple[Any, ...], Any]:
    view = (fields.get("type"), fields.get("author"), fields.get("timestamp"), fields.get("device_id"), fields.get("verify_key"))
    return view, fields.get("device_label")


def _recent(fields: dict[Any, Any]) -> bool:
    ts = fields.get("timestamp")
    return ts is not None and abs((utcnow() - ts).total_seconds()) < 50


def consistent(cmd_name: str, certs: list[Cert]) -> bool:
    """What an `ok` requires of the (well-typed) certificate fields, checked independently."""
    if cmd_name in ("user_create", "pki_enrollment_accept", "organization_bootstrap"):
        user, device, r_user, r_device = (c.fields for c in certs)
        (u, _), (d, _) = _user_view(user), _device_view(device)
        (ru, ru_handle), (rd, rd_label) = _user_view(r_user), _device_view(r_device)
        author = None if cmd_name == "organization_bootstrap" else "alice@dev1"
        return (
            u == ru and d == rd and ru_handle is None and rd_label is None
            and u[0] == "user_certificate" and d[0] == "device_certificate"
            and u[1] == author and d[1] == author and u[5] != "<incompatible>"
            and u[2] == d[2] and _recent(user)
            and str(d[3]).split("@")[0] == u[3]
            and (cmd_name != "organization_bootstrap" or u[5] == "ADMIN")
        )
    if cmd_name == "device_create":
        (d, _), (rd, rd_label) = (_device_view(c.fields) for c in certs)
        return d == rd and rd_label is None and d[0] == "device_certificate" and d[1] == "alice@dev1" and str(d[3]).startswith("alice@") and _recent(certs[0].fields)
    fields = certs[0].fields
    if fields.get("type") != f"{certs[0].kind}_certificate" or fields.get("author") != "alice@dev1" or not _recent(fields):
        return False
    if cmd_name == "realm_create":
        return fields.get("user_id") == "alice" and fields.get("role") == "OWNER"
    return fields.get("user_id") != "alice"  # user_revoke, realm_update_roles


# ---- the scenario -----------------------------------------------------------------------------------


@attrs.define
class Bench:
    """The organization, connections, and the checks before/after a case."""

    server: Any
    world: Any
    alice: WsClient
    counter: int = 0
    revoke_target: str | None = None
    bob_role: str | None = "CONTRIBUTOR"
    enrollment_id: uuid.UUID | None = None
    bootstrap_org: tuple[str, str] | None = None

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    @property
    def alice_device(self) -> LocalDevice:
        return self.world.org.devices["alice@dev1"]

    async def cmd(self, name: str, **fields: Any) -> dict[str, Any]:
        return await checked(self.alice, name, **fields)


def new_user_certs(author: str | None, key: SigningKey, device: LocalDevice) -> list[Cert]:
    ts = utcnow()
    user = user_certificate_fields(author=author, user_id=device.user_id, public_key=device.public_key, timestamp=ts, human_handle=device.human_handle, profile=device.profile)
    dev = device_certificate_fields(author=author, device_id=device.device_id, verify_key=device.verify_key, timestamp=ts, device_label=device.device_label)
    certs = [
        Cert("user", user, key),
        Cert("device", dev, key),
        Cert("user", {**user, "human_handle": None}, key),
        Cert("device", {**dev, "device_label": None}, key),
    ]
    for cert in certs:
        cert.sign()
    return certs


def random_device(gen: Gen, bench: Bench, profile: str | None = None) -> LocalDevice:
    name = bench.fresh("u")
    return LocalDevice.generate(
        f"{name}@dev1",
        profile=profile or gen.rng.choice(["ADMIN", "STANDARD", "OUTSIDER"]),
        human_handle=(f"{name}@example.com", f"User {name}") if gen.chance(0.7) else None,
        device_label="Laptop" if gen.chance(0.7) else None,
    )


CERT_REQUEST_KEYS = ["user_certificate", "device_certificate", "redacted_user_certificate", "redacted_device_certificate"]


async def case_user_create(gen: Gen, bench: Bench, pki: bool) -> tuple[str, dict[str, Any], list[Cert], Callable[[dict[str, Any]], Awaitable[None]]]:
    device = random_device(gen, bench)
    certs = new_user_certs("alice@dev1", bench.alice_device.signing_key, device)
    others = {"user_id": ["bob", "alice", bench.fresh("v")], "device_id": [f"{device.user_id}@dev2", "bob@dev9"]}
    corrupt(gen, certs, False, others, [SigningKey.generate(), bench.world.org.devices["bob@dev1"].signing_key])
    request = dict(zip(CERT_REQUEST_KEYS, (c.blob for c in certs), strict=True))
    name = "user_create"
    if pki:
        name = "pki_enrollment_accept"
        if bench.enrollment_id is None:
            bench.enrollment_id = uuid.uuid4()
            rep = await anonymous_cmd(bench.server, bench.world.organization_id, {
                "cmd": "pki_enrollment_submit", "enrollment_id": bench.enrollment_id, "force": False,
                "submitter_der_x509_certificate": bench.fresh("der").encode(), "submit_payload_signature": b"sig",
                "submit_payload": pki_submit_payload(),
            })
            assert rep["status"] == "ok", rep
        request.update(
            enrollment_id=bench.enrollment_id, accepter_der_x509_certificate=b"der", accept_payload_signature=b"sig",
            accept_payload=pki_accept_payload(device_id=device.device_id),
        )
    before = await admin_stats(bench.server, bench.world.organization_id)
    user_id = certs[0].fields.get("user_id")

    async def after(rep: dict[str, Any]) -> None:
        stats = await admin_stats(bench.server, bench.world.organization_id)
        if rep["status"] != "ok":
            assert stats == before, (before, stats)
            return
        assert stats["users"] == before["users"] + 1, (before, stats)
        got = await bench.cmd("user_get", user_id=user_id)
        assert got["user_certificate"] == certs[0].blob and got["device_certificates"] == [certs[1].blob], got
        if pki:
            bench.enrollment_id = None

    return name, request, certs, after


async def case_device_create(gen: Gen, bench: Bench) -> tuple[str, dict[str, Any], list[Cert], Callable[[dict[str, Any]], Awaitable[None]]]:
    device = bench.alice_device.new_device(bench.fresh("d"), device_label="Phone" if gen.chance(0.7) else None)
    ts = utcnow()
    base = device_certificate_fields(author="alice@dev1", device_id=device.device_id, verify_key=device.verify_key, timestamp=ts, device_label=device.device_label)
    certs = [Cert("device", base, bench.alice_device.signing_key), Cert("device", {**base, "device_label": None}, bench.alice_device.signing_key)]
    for cert in certs:
        cert.sign()
    others = {"device_id": [f"alice@{bench.fresh('d')}", "bob@dev7", "alice@dev1"]}
    corrupt(gen, certs, False, others, [SigningKey.generate()])
    request = {"device_certificate": certs[0].blob, "redacted_device_certificate": certs[1].blob}
    before = (await bench.cmd("user_get", user_id="alice"))["device_certificates"]

    async def after(rep: dict[str, Any]) -> None:
        now_devices = (await bench.cmd("user_get", user_id="alice"))["device_certificates"]
        if rep["status"] != "ok":
            assert now_devices == before
            bob = await bench.cmd("user_get", user_id="bob")
            assert len(bob["device_certificates"]) == 1, bob
            return
        assert sorted(now_devices) == sorted([*before, certs[0].blob])

    return "device_create", request, certs, after


async def case_user_revoke(gen: Gen, bench: Bench) -> tuple[str, dict[str, Any], list[Cert], Callable[[dict[str, Any]], Awaitable[None]]]:
    if bench.revoke_target is None:
        device = random_device(gen, bench, profile="STANDARD")
        certs = new_user_certs("alice@dev1", bench.alice_device.signing_key, device)
        assert await bench.cmd("user_create", **dict(zip(CERT_REQUEST_KEYS, (c.blob for c in certs), strict=True))) == {"status": "ok"}
        bench.revoke_target = device.user_id
    target = bench.revoke_target
    cert = Cert("revoked_user", revoked_user_certificate_fields(author="alice@dev1", user_id=target, timestamp=utcnow()), bench.alice_device.signing_key)
    cert.sign()
    corrupt(gen, [cert], False, {"user_id": [target, "alice", "nobody"]}, [SigningKey.generate()])
    user_id = cert.fields.get("user_id")
    before = await admin_stats(bench.server, bench.world.organization_id)

    async def after(rep: dict[str, Any]) -> None:
        stats = await admin_stats(bench.server, bench.world.organization_id)
        if rep["status"] != "ok":
            assert stats == before, (before, stats)
            got = await bench.cmd("user_get", user_id=target)
            assert got["revoked_user_certificate"] is None, got
            return
        got = await bench.cmd("user_get", user_id=user_id)
        assert got["revoked_user_certificate"] == cert.blob, got
        assert stats["active_users"] == before["active_users"] - 1
        if user_id == target:
            bench.revoke_target = None

    return "user_revoke", {"revoked_user_certificate": cert.blob}, [cert], after


async def case_realm_create(gen: Gen, bench: Bench) -> tuple[str, dict[str, Any], list[Cert], Callable[[dict[str, Any]], Awaitable[None]]]:
    realm_id = uuid.uuid4()
    cert = Cert("realm_role", realm_role_certificate_fields(author="alice@dev1", realm_id=realm_id, user_id="alice", role="OWNER", timestamp=utcnow()), bench.alice_device.signing_key)
    cert.sign()
    corrupt(gen, [cert], False, {"user_id": ["alice", "bob"], "realm_id": [bench.world.realm_id, uuid.uuid4()]}, [SigningKey.generate()])
    before = await admin_stats(bench.server, bench.world.organization_id)
    cert_realm = cert.fields.get("realm_id")

    async def after(rep: dict[str, Any]) -> None:
        stats = await admin_stats(bench.server, bench.world.organization_id)
        if rep["status"] != "ok":
            assert stats["realms"] == before["realms"], (before, stats)
            got = await bench.cmd("realm_get_role_certificates", realm_id=realm_id)
            assert got["status"] == "not_found", got
            return
        assert stats["realms"] == before["realms"] + 1
        got = await bench.cmd("realm_get_role_certificates", realm_id=cert_realm)
        assert got == {"status": "ok", "certificates": [cert.blob]}, got

    return "realm_create", {"role_certificate": cert.blob}, [cert], after


async def case_realm_update_roles(gen: Gen, bench: Bench) -> tuple[str, dict[str, Any], list[Cert], Callable[[dict[str, Any]], Awaitable[None]]]:
    realm_id = bench.world.realm_id
    role = gen.rng.choice([r for r in ("MANAGER", "CONTRIBUTOR", "READER", None) if r != bench.bob_role])
    cert = Cert("realm_role", realm_role_certificate_fields(author="alice@dev1", realm_id=realm_id, user_id="bob", role=role, timestamp=utcnow()), bench.alice_device.signing_key)
    cert.sign()
    corrupt(gen, [cert], False, {"user_id": ["bob", "alice", "outsider", "nobody"], "realm_id": [realm_id, uuid.uuid4()]}, [SigningKey.generate()])
    before = await bench.cmd("realm_get_role_certificates", realm_id=realm_id)
    messages = await bench_messages(bench)

    async def after(rep: dict[str, Any]) -> None:
        got = await bench.cmd("realm_get_role_certificates", realm_id=realm_id)
        if rep["status"] != "ok":
            assert got == before, (before, got)
            assert await bench_messages(bench) == messages
            return
        assert got["certificates"] == [*before["certificates"], cert.blob], got
        if cert.fields.get("user_id") == "bob" and cert.fields.get("realm_id") == realm_id:
            bench.bob_role = cert.fields.get("role")

    return "realm_update_roles", {"role_certificate": cert.blob, "recipient_message": gen.rng.choice([None, b"msg"])}, [cert], after


async def bench_messages(bench: Bench) -> int:
    """Messages received by bob (realm_update_roles writes there on success only)."""
    bob = await bench.world.org.connect("bob@dev1")
    try:
        rep = await checked(bob, "message_get", offset=0)
    finally:
        await bob.close()
    return len(rep["messages"])


async def case_bootstrap(gen: Gen, bench: Bench) -> tuple[str, dict[str, Any], list[Cert], Callable[[dict[str, Any]], Awaitable[None]]]:
    if bench.bootstrap_org is None:
        organization_id = bench.fresh("Boot")
        bench.bootstrap_org = (organization_id, await create_organization(bench.server, organization_id))
    organization_id, token = bench.bootstrap_org
    root = SigningKey.generate()
    device = random_device(gen, bench, profile="ADMIN")
    certs = new_user_certs(None, root, device)
    corrupt(gen, certs, True, {"user_id": [device.user_id, "other"], "profile": ["ADMIN", "STANDARD"]}, [SigningKey.generate()])
    request = {
        "cmd": "organization_bootstrap",
        "bootstrap_token": token,
        "root_verify_key": bytes(root.verify_key),
        **dict(zip(CERT_REQUEST_KEYS, (c.blob for c in certs), strict=True)),
    }

    async def after(rep: dict[str, Any]) -> None:
        config = await httpclient.admin(bench.server.port, "GET", f"/administration/organizations/{organization_id}")
        stats = await admin_stats(bench.server, organization_id)
        if rep["status"] != "ok":
            assert config.json()["is_bootstrapped"] is False, config.body
            assert stats["users"] == 0, stats
            return
        assert config.json()["is_bootstrapped"] is True and stats["users"] == 1, (config.body, stats)
        bench.bootstrap_org = None

    return "organization_bootstrap", request, certs, after


async def apiv1_bootstrap(server: Any, organization_id: str, request: dict[str, Any]) -> dict[str, Any]:
    client = await WsClient.connect(server.port)
    try:
        result = await client.handshake_anonymous_v1(organization_id)
        assert result == {"handshake": "result", "result": "ok"}, result
        return await client.cmd(**request)
    finally:
        await client.close()


CASES = {
    "user_create": lambda gen, bench: case_user_create(gen, bench, pki=False),
    "pki_enrollment_accept": lambda gen, bench: case_user_create(gen, bench, pki=True),
    "device_create": case_device_create,
    "user_revoke": case_user_revoke,
    "realm_create": case_realm_create,
    "realm_update_roles": case_realm_update_roles,
    "organization_bootstrap": case_bootstrap,
}


@ok
async def test_mutated_certificates(server):
    world = await build_world(server)
    name = "certificates"
    gen = Gen(rng_for(name), poison=0.0)
    alice = await world.org.connect("alice@dev1")
    bench = Bench(server, world, alice)
    # carol-free realm: bob is CONTRIBUTOR there (build_world), alice OWNER.
    try:
        for case in range(cases(400)):
            command = gen.rng.choice(sorted(CASES))
            cmd_name, request, certs, after = await CASES[command](gen, bench)
            verdict = worst(*(cert.verdict for cert in certs))
            labels = [cert.label for cert in certs if cert.label != "untouched"] or ["untouched"]
            context = where(name, case, (cmd_name, verdict, labels, [cert.fields for cert in certs if cert.label != "untouched"]))
            if cmd_name == "organization_bootstrap":
                organization_id = bench.bootstrap_org[0] if bench.bootstrap_org else ""
                if gen.chance(0.3):
                    # the legacy path of 2.10 clients: APIv1 anonymous websocket
                    rep = await apiv1_bootstrap(server, organization_id, request)
                    spec = protocol.APIV1_ANONYMOUS_COMMANDS[cmd_name]
                else:
                    rep = await anonymous_cmd(server, organization_id, request)
                    spec = protocol.ANONYMOUS_COMMANDS[cmd_name]
            else:
                rep = await alice.cmd(cmd_name, **request)
                spec = protocol.AUTHENTICATED_COMMANDS[cmd_name]
            try:
                protocol.validate_reply(spec, rep)
            except protocol.InvalidReply as exc:
                raise AssertionError(f"{context} -> {exc}") from None
            record(f"cert {cmd_name} {verdict}", rep["status"])
            if verdict == INVALID:
                assert rep["status"] in CERT_ERRORS[cmd_name], f"{context} -> {rep!r}"
            elif verdict == EQUIVALENT:
                assert rep == {"status": "ok"}, f"{context} -> {rep!r}"
            if rep["status"] == "ok":
                assert consistent(cmd_name, certs), f"{context} -> ok for certificates that break a rule"
            try:
                await after(rep)
            except AssertionError as exc:
                raise AssertionError(f"{context} -> {rep!r}, then the stored state: {exc}") from None
    finally:
        await alice.close()
