"""Decoding and verification of signed certificates and PKI payloads (docs/protocol/data-formats.md §2-§6)."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs
import msgpack
import pytest
from nacl.signing import SigningKey

from parsec.api import certificates as c
from parsec.api.certificates import (
    CertificateError,
    DeviceCertificate,
    PkiEnrollmentAcceptPayload,
    PkiEnrollmentSubmitPayload,
    RealmRoleCertificate,
    RevokedUserCertificate,
    UserCertificate,
    load_device_certificate,
    load_pki_accept_payload,
    load_pki_submit_payload,
    load_realm_role_certificate,
    load_revoked_user_certificate,
    load_user_certificate,
    unsecure_load_device_certificate,
    unsecure_load_realm_role_certificate,
    unsecure_load_revoked_user_certificate,
    unsecure_load_user_certificate,
)
from parsec.api.codec import DecodeError, packb, unpackb
from tests.api import certgen
from tests.api.certgen import OMIT

TS = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ROOT = SigningKey(b"\x01" * 32)
ROOT_VK = bytes(ROOT.verify_key)
ALICE = certgen.LocalDevice.generate("alice@dev1", profile="ADMIN", seed=b"\x02" * 32)
BOB = certgen.LocalDevice.generate("bob@dev1", seed=b"\x03" * 32)
REALM = UUID("a0000000-0000-0000-0000-000000000001")
MISSING = "Missing data for required field."
NULL = "Field may not be null."

Loader = Any


def expect_error(func: Loader, *args: Any, text: str) -> None:
    with pytest.raises(CertificateError) as exc_info:
        func(*args)
    assert str(exc_info.value) == text
    assert exc_info.value.text == text


# ---------------------------------------------------------------------------------------------
# Builders for each kind: default valid fields signed by ALICE (root for user/device when asked)
# ---------------------------------------------------------------------------------------------


def user_fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        author=ALICE.device_id,
        timestamp=TS,
        user_id="bob",
        human_handle=("bob@example.com", "Bob"),
        public_key=BOB.public_key,
        profile="STANDARD",
    )
    return certgen.user_certificate_fields(**{**base, **overrides})


def device_fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        author=ALICE.device_id,
        timestamp=TS,
        device_id="bob@dev1",
        device_label="Bob's laptop",
        verify_key=BOB.verify_key,
    )
    return certgen.device_certificate_fields(**{**base, **overrides})


def revoked_fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(author=ALICE.device_id, timestamp=TS, user_id="bob")
    return certgen.revoked_user_certificate_fields(**{**base, **overrides})


def role_fields(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(
        author=ALICE.device_id, timestamp=TS, realm_id=REALM, user_id="bob", role="OWNER"
    )
    return certgen.realm_role_certificate_fields(**{**base, **overrides})


KINDS = {
    "user": (user_fields, load_user_certificate, unsecure_load_user_certificate),
    "device": (device_fields, load_device_certificate, unsecure_load_device_certificate),
    "revoked": (revoked_fields, load_revoked_user_certificate, unsecure_load_revoked_user_certificate),
    "role": (role_fields, load_realm_role_certificate, unsecure_load_realm_role_certificate),
}


def load_kind(kind: str, **overrides: Any) -> Any:
    fields_fn, loader, _ = KINDS[kind]
    fields = fields_fn(**overrides)
    return loader(certgen.sign_fields(ALICE.signing_key, fields), ALICE.verify_key, fields.get("author"))


def kind_error(kind: str, **overrides: Any) -> str:
    fields_fn, loader, _ = KINDS[kind]
    blob = certgen.sign_fields(ALICE.signing_key, fields_fn(**overrides))
    with pytest.raises(CertificateError) as exc_info:
        loader(blob, ALICE.verify_key, ALICE.device_id)
    return str(exc_info.value)


# ---------------------------------------------------------------------------------------------
# Happy paths
# ---------------------------------------------------------------------------------------------


def test_type_constants() -> None:
    assert c.USER_CERTIFICATE_TYPE == UserCertificate.TYPE == "user_certificate"
    assert c.DEVICE_CERTIFICATE_TYPE == DeviceCertificate.TYPE == "device_certificate"
    assert c.REVOKED_USER_CERTIFICATE_TYPE == RevokedUserCertificate.TYPE == "revoked_user_certificate"
    assert c.REALM_ROLE_CERTIFICATE_TYPE == RealmRoleCertificate.TYPE == "realm_role_certificate"
    assert c.PKI_ENROLLMENT_SUBMIT_PAYLOAD_TYPE == PkiEnrollmentSubmitPayload.TYPE
    assert c.PKI_ENROLLMENT_SUBMIT_PAYLOAD_TYPE == "pki_enrollment_submit_payload"
    assert c.PKI_ENROLLMENT_ACCEPT_PAYLOAD_TYPE == PkiEnrollmentAcceptPayload.TYPE
    assert c.PKI_ENROLLMENT_ACCEPT_PAYLOAD_TYPE == "pki_enrollment_answer_payload"


def test_load_user_certificate() -> None:
    cert = load_kind("user")
    assert cert == UserCertificate(
        author="alice@dev1",
        timestamp=TS,
        user_id="bob",
        human_handle=("bob@example.com", "Bob"),
        public_key=BOB.public_key,
        profile="STANDARD",
    )
    assert not cert.is_admin
    assert cert.timestamp.tzinfo is not None


def test_load_root_signed_user_and_device() -> None:
    user_blob = certgen.sign_fields(ROOT, user_fields(author=None, profile="ADMIN"))
    user = load_user_certificate(user_blob, ROOT_VK, None)
    assert user.author is None and user.profile == "ADMIN" and user.is_admin
    device_blob = certgen.sign_fields(ROOT, device_fields(author=None))
    device = load_device_certificate(device_blob, ROOT_VK, None)
    assert device.author is None


def test_load_device_certificate() -> None:
    cert = load_kind("device")
    assert cert == DeviceCertificate(
        author="alice@dev1",
        timestamp=TS,
        device_id="bob@dev1",
        device_label="Bob's laptop",
        verify_key=BOB.verify_key,
    )
    assert cert.user_id == "bob"


def test_load_revoked_user_certificate() -> None:
    assert load_kind("revoked") == RevokedUserCertificate(author="alice@dev1", timestamp=TS, user_id="bob")


@pytest.mark.parametrize("role", ["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None])
def test_load_realm_role_certificate(role: str | None) -> None:
    cert = load_kind("role", role=role)
    assert cert == RealmRoleCertificate(
        author="alice@dev1", timestamp=TS, realm_id=REALM, user_id="bob", role=role
    )
    assert isinstance(cert.realm_id, UUID)


def test_decoded_certificates_are_frozen() -> None:
    cert = load_kind("revoked")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cert.user_id = "eve"  # type: ignore[misc]


@pytest.mark.parametrize("kind", list(KINDS))
def test_unknown_extra_fields_are_ignored(kind: str) -> None:
    assert load_kind(kind, extra_field=1, other=[1, {"x": b"y"}]) == load_kind(kind)


@pytest.mark.parametrize("kind", list(KINDS))
def test_non_str_map_keys_are_ignored(kind: str) -> None:
    fields_fn, loader, _ = KINDS[kind]
    fields: dict[Any, Any] = {**fields_fn(), 1: 2, b"k": None}
    blob = certgen.sign_fields(ALICE.signing_key, fields)
    assert loader(blob, ALICE.verify_key, ALICE.device_id) == load_kind(kind)


def test_any_zlib_level_and_trailing_bytes_after_stream() -> None:
    raw = packb(user_fields())
    for message in (zlib.compress(raw, 0), zlib.compress(raw, 9), zlib.compress(raw) + b"trailing junk"):
        blob = ALICE.sign(message)
        assert load_user_certificate(blob, ALICE.verify_key, ALICE.device_id) == load_kind("user")


def test_blob_may_be_any_bytes_like() -> None:
    blob = certgen.sign_fields(ALICE.signing_key, user_fields())
    assert load_user_certificate(bytearray(blob), ALICE.verify_key, ALICE.device_id) == load_kind("user")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Signature (step 1)
# ---------------------------------------------------------------------------------------------

FORGED = "Signature was forged or corrupt"


@pytest.mark.parametrize("kind", list(KINDS))
def test_signed_by_another_key(kind: str) -> None:
    fields_fn, loader, _ = KINDS[kind]
    blob = certgen.sign_fields(BOB.signing_key, fields_fn())
    expect_error(loader, blob, ALICE.verify_key, ALICE.device_id, text=FORGED)


@pytest.mark.parametrize("position", [0, 10, 63, 64, 70, -1])
def test_tampered_byte(position: int) -> None:
    blob = bytearray(certgen.sign_fields(ALICE.signing_key, user_fields()))
    blob[position] ^= 0x01
    expect_error(load_user_certificate, bytes(blob), ALICE.verify_key, ALICE.device_id, text=FORGED)


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65])
def test_short_or_truncated_blob(length: int) -> None:
    blob = certgen.sign_fields(ALICE.signing_key, user_fields())
    expect_error(load_user_certificate, blob[:length], ALICE.verify_key, ALICE.device_id, text=FORGED)


def test_truncated_signed_message() -> None:
    blob = certgen.sign_fields(ALICE.signing_key, user_fields())
    expect_error(load_user_certificate, blob[:-1], ALICE.verify_key, ALICE.device_id, text=FORGED)
    expect_error(load_user_certificate, blob + b"\x00", ALICE.verify_key, ALICE.device_id, text=FORGED)


def test_root_signed_certificate_checked_with_device_key_and_vice_versa() -> None:
    root_blob = certgen.sign_fields(ROOT, user_fields(author=None))
    expect_error(load_user_certificate, root_blob, ALICE.verify_key, ALICE.device_id, text=FORGED)
    device_blob = certgen.sign_fields(ALICE.signing_key, user_fields())
    expect_error(load_user_certificate, device_blob, ROOT_VK, None, text=FORGED)


def test_signature_checked_before_anything_else() -> None:
    blob = certgen.sign_message(BOB.signing_key, b"not zlib at all")
    expect_error(load_device_certificate, blob, ALICE.verify_key, ALICE.device_id, text=FORGED)


@pytest.mark.parametrize("bad_key", [b"", b"x" * 31, b"x" * 33, "x" * 32])
def test_invalid_verify_key_is_a_caller_error(bad_key: Any) -> None:
    blob = certgen.sign_fields(ALICE.signing_key, user_fields())
    with pytest.raises(ValueError):
        load_user_certificate(blob, bad_key, ALICE.device_id)


def test_low_order_32_byte_key_is_just_a_bad_signature() -> None:
    blob = certgen.sign_fields(ALICE.signing_key, user_fields())
    expect_error(load_user_certificate, blob, b"\x00" * 32, ALICE.device_id, text=FORGED)


# ---------------------------------------------------------------------------------------------
# Author (step 5)
# ---------------------------------------------------------------------------------------------


def test_device_signed_where_root_expected() -> None:
    # The root key signed it, but the author field names a device.
    blob = certgen.sign_fields(ROOT, user_fields(author="alice@dev1"))
    expect_error(
        load_user_certificate,
        blob,
        ROOT_VK,
        None,
        text="Invalid author: expected `<root key>`, got `alice@dev1`",
    )
    blob = certgen.sign_fields(ROOT, device_fields(author="x@y"))
    expect_error(
        load_device_certificate, blob, ROOT_VK, None, text="Invalid author: expected `<root key>`, got `x@y`"
    )


def test_root_signed_where_device_expected() -> None:
    blob = certgen.sign_fields(ALICE.signing_key, user_fields(author=None))
    expect_error(
        load_user_certificate,
        blob,
        ALICE.verify_key,
        "alice@dev1",
        text="Invalid author: expected `alice@dev1`, got `None`",
    )
    blob = certgen.sign_fields(ALICE.signing_key, device_fields(author=None))
    expect_error(
        load_device_certificate,
        blob,
        ALICE.verify_key,
        "alice@dev1",
        text="Invalid author: expected `alice@dev1`, got `None`",
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_other_author(kind: str) -> None:
    fields_fn, loader, _ = KINDS[kind]
    blob = certgen.sign_fields(ALICE.signing_key, fields_fn(author="alice@dev2"))
    expect_error(
        loader,
        blob,
        ALICE.verify_key,
        "alice@dev1",
        text="Invalid author: expected `alice@dev1`, got `alice@dev2`",
    )


@pytest.mark.parametrize("kind", ["revoked", "role"])
def test_nil_author_refused_for_revocation_and_role(kind: str) -> None:
    # Never root-signed: nil fails the schema (step 4) before the author comparison.
    assert kind_error(kind, author=None) == "{'author': ['Field may not be null.']}"
    fields_fn, loader, _ = KINDS[kind]
    blob = certgen.sign_fields(ROOT, fields_fn(author=None))
    expect_error(loader, blob, ROOT_VK, None, text="{'author': ['Field may not be null.']}")


def test_author_is_compared_after_nfc_normalisation() -> None:
    # "e" + combining acute accent is stored NFC ("é").
    blob = certgen.sign_fields(ALICE.signing_key, user_fields(author="jose\u0301@dev1"))
    cert = load_user_certificate(blob, ALICE.verify_key, "jos\u00e9@dev1")
    assert cert.author == "jos\u00e9@dev1"


# ---------------------------------------------------------------------------------------------
# Compression (step 2)
# ---------------------------------------------------------------------------------------------


def signed(message: bytes) -> bytes:
    return ALICE.sign(message)


def test_garbage_compression() -> None:
    expect_error(
        load_user_certificate,
        signed(b"hello world"),
        ALICE.verify_key,
        ALICE.device_id,
        text="Error -3 while decompressing data: incorrect header check",
    )


def test_uncompressed_msgpack() -> None:
    expect_error(
        load_user_certificate,
        signed(packb(user_fields())),
        ALICE.verify_key,
        ALICE.device_id,
        text=str(_zlib_error(packb(user_fields()))),
    )


def _zlib_error(data: bytes) -> zlib.error:
    try:
        zlib.decompress(data)
    except zlib.error as exc:
        return exc
    raise AssertionError("data decompresses")


@pytest.mark.parametrize("cut", [1, 2, 4, 10])
def test_truncated_compression(cut: int) -> None:
    message = zlib.compress(packb(user_fields()))[:-cut]
    expect_error(
        load_user_certificate,
        signed(message),
        ALICE.verify_key,
        ALICE.device_id,
        text="Error -5 while decompressing data: incomplete or truncated stream",
    )


def test_empty_message() -> None:
    expect_error(
        load_user_certificate,
        signed(b""),
        ALICE.verify_key,
        ALICE.device_id,
        text="Error -5 while decompressing data: incomplete or truncated stream",
    )


def test_corrupted_checksum() -> None:
    message = bytearray(zlib.compress(packb(user_fields())))
    message[-1] ^= 0xFF
    expect_error(
        load_user_certificate,
        signed(bytes(message)),
        ALICE.verify_key,
        ALICE.device_id,
        text="Error -3 while decompressing data: incorrect data check",
    )


def test_preset_dictionary_stream() -> None:
    compressor = zlib.compressobj(zdict=b"user_certificate")
    message = compressor.compress(packb(user_fields())) + compressor.flush()
    expect_error(
        load_user_certificate,
        signed(message),
        ALICE.verify_key,
        ALICE.device_id,
        text=str(_zlib_error(message)),
    )


def test_zlib_bomb_is_refused() -> None:
    # 64 MiB of zeros compress to ~64 KiB.
    message = zlib.compress(b"\x00" * (64 * 1024 * 1024), 9)
    assert len(message) < 100_000
    expect_error(
        load_user_certificate,
        signed(message),
        ALICE.verify_key,
        ALICE.device_id,
        text="Decompressed data exceeds 65536 bytes",
    )
    expect_error(
        unsecure_load_user_certificate, signed(message), text="Decompressed data exceeds 65536 bytes"
    )
    expect_error(load_pki_submit_payload, message, text="Decompressed data exceeds 65536 bytes")


def _padded_fields(size: int) -> bytes:
    """A valid user certificate map padded with an unknown bin field to exactly `size` bytes."""
    fields = user_fields()
    overhead = len(packb({**fields, "pad": b""}))
    pad = size - overhead
    raw = packb({**fields, "pad": b"\x00" * pad})
    # bin8/16/32 headers differ in size: adjust once.
    raw = packb({**fields, "pad": b"\x00" * (pad - (len(raw) - size))})
    assert len(raw) == size
    return raw


def test_decompressed_size_cap_boundary() -> None:
    cap = c.MAX_DECOMPRESSED_SIZE
    assert cap == 64 * 1024
    ok = signed(zlib.compress(_padded_fields(cap)))
    assert load_user_certificate(ok, ALICE.verify_key, ALICE.device_id) == load_kind("user")
    too_big = signed(zlib.compress(_padded_fields(cap + 1)))
    expect_error(
        load_user_certificate,
        too_big,
        ALICE.verify_key,
        ALICE.device_id,
        text="Decompressed data exceeds 65536 bytes",
    )


# ---------------------------------------------------------------------------------------------
# msgpack (step 3)
# ---------------------------------------------------------------------------------------------


def _codec_error(raw: bytes) -> str:
    try:
        unpackb(raw)
    except DecodeError as exc:
        return str(exc)
    raise AssertionError("raw decodes")


@pytest.mark.parametrize(
    "raw, text",
    [
        (b"", "Invalid msgpack data: Unpack failed: incomplete input"),
        (b"\x92\x01\x02", "Invalid msgpack data: root must be a map"),
        (packb([1, 2]), "Invalid msgpack data: root must be a map"),
        (packb(1), "Invalid msgpack data: root must be a map"),
        (packb("user_certificate"), "Invalid msgpack data: root must be a map"),
        (packb(None), "Invalid msgpack data: root must be a map"),
        (packb({"a": 1}) + b"\x00", "Invalid msgpack data: unpack(b) received extra data."),
    ],
)
def test_valid_zlib_of_invalid_msgpack(raw: bytes, text: str) -> None:
    blob = signed(zlib.compress(raw))
    expect_error(load_user_certificate, blob, ALICE.verify_key, ALICE.device_id, text=text)
    expect_error(load_realm_role_certificate, blob, ALICE.verify_key, ALICE.device_id, text=text)


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # never-used type byte
        b"\x81",  # map header without content
        b"\x91" * 5000,  # too deep
        b"hello",
        b"\xd4\x01\x00",  # datetime ext with a 1-byte payload
        b"\xc7\x03\x02abc",  # UUID ext with a 3-byte payload
        b"\x81\xa1a\xa3\xff\xfe\xfd",  # invalid UTF-8 str
    ],
)
def test_codec_errors_are_reported_with_the_codec_text(raw: bytes) -> None:
    text = _codec_error(raw)
    expect_error(
        load_user_certificate, signed(zlib.compress(raw)), ALICE.verify_key, ALICE.device_id, text=text
    )


# ---------------------------------------------------------------------------------------------
# Schema (step 4)
# ---------------------------------------------------------------------------------------------


def test_all_fields_missing_user() -> None:
    blob = signed(zlib.compress(packb({})))
    expect_error(
        load_user_certificate,
        blob,
        ALICE.verify_key,
        ALICE.device_id,
        text=(
            "{'type': ['Missing data for required field.'], 'author': ['Missing data for required field.'], "
            "'timestamp': ['Missing data for required field.'], 'user_id': ['Missing data for required field.'], "
            "'public_key': ['Missing data for required field.'], 'is_admin': ['Missing data for required field.']}"
        ),
    )


@pytest.mark.parametrize(
    "kind, text",
    [
        (
            "device",
            "{'type': ['Missing data for required field.'], 'author': ['Missing data for required field.'], "
            "'timestamp': ['Missing data for required field.'], 'device_id': ['Missing data for required field.'], "
            "'verify_key': ['Missing data for required field.']}",
        ),
        (
            "revoked",
            "{'type': ['Missing data for required field.'], 'author': ['Missing data for required field.'], "
            "'timestamp': ['Missing data for required field.'], 'user_id': ['Missing data for required field.']}",
        ),
        (
            "role",
            "{'type': ['Missing data for required field.'], 'author': ['Missing data for required field.'], "
            "'timestamp': ['Missing data for required field.'], 'realm_id': ['Missing data for required field.'], "
            "'user_id': ['Missing data for required field.'], 'role': ['Missing data for required field.']}",
        ),
    ],
)
def test_all_fields_missing(kind: str, text: str) -> None:
    _, loader, _ = KINDS[kind]
    expect_error(loader, signed(zlib.compress(packb({}))), ALICE.verify_key, ALICE.device_id, text=text)


def test_spec_example_wrong_type_and_missing_user_id() -> None:
    assert (
        kind_error("role", type="user_certificate", user_id=OMIT)
        == "{'type': ['Invalid value, should be `realm_role_certificate`'], 'user_id': ['Missing data for required field.']}"
    )


@pytest.mark.parametrize(
    "kind, constant",
    [
        ("user", "user_certificate"),
        ("device", "device_certificate"),
        ("revoked", "revoked_user_certificate"),
        ("role", "realm_role_certificate"),
    ],
)
@pytest.mark.parametrize(
    "value", ["foo_certificate", "USER_CERTIFICATE", "", 1, True, b"user_certificate", ["x"]]
)
def test_unknown_type_constant(kind: str, constant: str, value: Any) -> None:
    if value == constant:
        pytest.skip("same value")
    assert kind_error(kind, type=value) == f"{{'type': ['Invalid value, should be `{constant}`']}}"


@pytest.mark.parametrize("kind", list(KINDS))
def test_type_nil_or_missing(kind: str) -> None:
    assert kind_error(kind, type=None) == "{'type': ['Field may not be null.']}"
    assert kind_error(kind, type=OMIT) == "{'type': ['Missing data for required field.']}"


def test_certificate_of_another_kind() -> None:
    fields = device_fields()
    blob = certgen.sign_fields(ALICE.signing_key, fields)
    expect_error(
        load_user_certificate,
        blob,
        ALICE.verify_key,
        ALICE.device_id,
        text=(
            "{'type': ['Invalid value, should be `user_certificate`'], 'user_id': ['Missing data for required field.'], "
            "'public_key': ['Missing data for required field.'], 'is_admin': ['Missing data for required field.']}"
        ),
    )


NOT_DT = "Not a datetime"
COMMON_FIELD_CASES: list[tuple[str, Any, str]] = [
    ("author", 1, "Not string"),
    ("author", b"alice@dev1", "Not string"),
    ("author", ["alice@dev1"], "Not string"),
    ("author", "alice", "Invalid data"),
    ("author", "alice@", "Invalid data"),
    ("author", "@dev1", "Invalid data"),
    ("author", "alice@dev1@x", "Invalid data"),
    ("author", "alice@dev1\n", "Invalid data"),
    ("author", "a b@dev1", "Invalid data"),
    ("author", "a" * 33 + "@dev1", "Invalid data"),
    ("author", "", "Invalid data"),
    ("author", OMIT, MISSING),
    ("timestamp", 1704067200.0, NOT_DT),
    ("timestamp", 1704067200, NOT_DT),
    ("timestamp", "2024-01-01T00:00:00Z", NOT_DT),
    ("timestamp", b"\x00" * 8, NOT_DT),
    ("timestamp", msgpack.ExtType(5, b"\x00" * 8), NOT_DT),
    ("timestamp", UUID(int=1), NOT_DT),
    ("timestamp", None, NULL),
    ("timestamp", OMIT, MISSING),
]
USER_ID_CASES: list[tuple[str, Any, str]] = [
    ("user_id", 1, "Not string"),
    ("user_id", b"bob", "Not string"),
    ("user_id", UUID(int=1), "Not string"),
    ("user_id", "bob@dev1", "Invalid data"),
    ("user_id", "b b", "Invalid data"),
    ("user_id", "b.b", "Invalid data"),
    ("user_id", "", "Invalid data"),
    ("user_id", "bob\n", "Invalid data"),
    ("user_id", "b" * 33, "Invalid data"),
    ("user_id", "\u00e9" * 17, "Invalid data"),
    ("user_id", None, NULL),
    ("user_id", OMIT, MISSING),
]
KEY_CASES = [
    (b"", "Invalid verify key."),
    (b"k" * 31, "Invalid verify key."),
    (b"k" * 33, "Invalid verify key."),
    ("k" * 32, "Invalid verify key."),
    (1, "Invalid verify key."),
    ([1] * 32, "Invalid verify key."),
    (None, NULL),
    (OMIT, MISSING),
]

FIELD_CASES: dict[str, list[tuple[str, Any, str]]] = {
    "user": [
        *COMMON_FIELD_CASES,
        *USER_ID_CASES,
        *[("public_key", value, text) for value, text in KEY_CASES],
        ("is_admin", 1, "Not a valid boolean."),
        ("is_admin", "true", "Not a valid boolean."),
        ("is_admin", None, NULL),
        ("is_admin", OMIT, MISSING),
        ("profile", "FOO", "Invalid role `FOO`"),
        ("profile", "admin", "Invalid role `admin`"),
        ("profile", "", "Invalid role ``"),
        ("profile", 1, "Not string"),
        ("profile", b"ADMIN", "Not string"),
        ("profile", None, NULL),
        ("human_handle", "bob@example.com", "Not a valid tuple type."),
        ("human_handle", b"ab", "Not a valid tuple type."),
        ("human_handle", {"email": "a@b"}, "Not a valid tuple type."),
        ("human_handle", [], "Not a valid tuple type."),
        ("human_handle", ["bob@example.com"], "Not a valid tuple type."),
        ("human_handle", ["bob@example.com", "Bob", "x"], "Not a valid tuple type."),
        ("human_handle", [1, 2], "Not a valid string."),
        ("human_handle", ["bob@example.com", b"Bob"], "Not a valid string."),
        ("human_handle", ["bob@example.com", None], NULL),
        ("human_handle", [None, "Bob"], NULL),
        ("human_handle", ["", "Bob"], "Invalid data"),
        ("human_handle", ["bob@example.com", ""], "Invalid data"),
        ("human_handle", ["bob@example.com", "B" * 255], "Invalid data"),
        ("human_handle", ["b" * 250 + "@x.com", "Bob"], "Invalid data"),
        ("human_handle", ["bob@example.com", "Bob <bob@evil.com>"], "Invalid data"),
        ("human_handle", ["bob@example.com", "Bob, Jr"], "Invalid data"),
        ("human_handle", ["bob@example.com <x>", "Bob"], "Invalid data"),
    ],
    "device": [
        *COMMON_FIELD_CASES,
        ("device_id", 1, "Not string"),
        ("device_id", "bob", "Invalid data"),
        ("device_id", "bob@", "Invalid data"),
        ("device_id", "bob@dev1\n", "Invalid data"),
        ("device_id", "bob@" + "d" * 33, "Invalid data"),
        ("device_id", None, NULL),
        ("device_id", OMIT, MISSING),
        ("device_label", "", "Invalid data"),
        ("device_label", "a\nb", "Invalid data"),
        ("device_label", "a\n", "Invalid data"),
        ("device_label", "x" * 256, "Invalid data"),
        ("device_label", "\u00e9" * 128, "Invalid data"),
        ("device_label", 1, "Not string"),
        ("device_label", b"label", "Not string"),
        *[("verify_key", value, text) for value, text in KEY_CASES],
    ],
    "revoked": [*COMMON_FIELD_CASES, *USER_ID_CASES, ("author", None, NULL)],
    "role": [
        *COMMON_FIELD_CASES,
        *USER_ID_CASES,
        ("author", None, NULL),
        ("realm_id", "a0000000000000000000000000000001", "Not an UUID"),
        ("realm_id", "a0000000-0000-0000-0000-000000000001", "Not an UUID"),
        ("realm_id", REALM.bytes, "Not an UUID"),
        ("realm_id", 1, "Not an UUID"),
        ("realm_id", msgpack.ExtType(5, REALM.bytes), "Not an UUID"),
        ("realm_id", None, NULL),
        ("realm_id", OMIT, MISSING),
        ("role", "owner", "Invalid role `owner`"),
        ("role", "ADMIN", "Invalid role `ADMIN`"),
        ("role", "", "Invalid role ``"),
        ("role", 1, "Not string"),
        ("role", b"OWNER", "Not string"),
        ("role", OMIT, MISSING),
    ],
}


@pytest.mark.parametrize(
    "kind, field, value, text",
    [(kind, field, value, text) for kind, cases in FIELD_CASES.items() for field, value, text in cases],
    ids=lambda v: repr(v)[:40],
)
def test_invalid_field(kind: str, field: str, value: Any, text: str) -> None:
    assert kind_error(kind, **{field: value}) == repr({field: [text]})


def test_several_errors_are_reported_together_in_field_order() -> None:
    assert kind_error("user", user_id=1, public_key=OMIT, profile="X", type="z") == (
        "{'type': ['Invalid value, should be `user_certificate`'], 'user_id': ['Not string'], "
        "'public_key': ['Missing data for required field.'], 'profile': ['Invalid role `X`']}"
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_wrong_type_for_every_field_at_once(kind: str) -> None:
    fields_fn, _, _ = KINDS[kind]
    names = [name for name in fields_fn() if name not in ("type",)]
    text = kind_error(kind, **{name: 3.5 for name in names})
    for name in names:
        assert f"'{name}': [" in text


# --- identifiers and labels that are accepted -------------------------------------------------


@pytest.mark.parametrize(
    "user_id", ["b", "B-o_b", "b" * 32, "\u00e9" * 16, "\u0411\u043e\u0431", "123", "_", "-"]
)
def test_valid_user_ids(user_id: str) -> None:
    assert load_kind("revoked", user_id=user_id).user_id == user_id


def test_identifiers_are_nfc_normalised() -> None:
    assert load_kind("revoked", user_id="jose\u0301").user_id == "jos\u00e9"
    assert load_kind("device", device_id="jose\u0301@dev1").device_id == "jos\u00e9@dev1"


@pytest.mark.parametrize("label", ["x", "x" * 255, "\u00e9" * 127, "My laptop (home)", "a\tb", " "])
def test_valid_device_labels(label: str) -> None:
    assert load_kind("device", device_label=label).device_label == label


def test_device_label_optional() -> None:
    assert load_kind("device", device_label=None).device_label is None
    assert load_kind("device", device_label=OMIT).device_label is None


@pytest.mark.parametrize(
    "handle",
    [
        ("bob@example.com", "Bob"),
        ("abc", "x"),  # the e-mail is not otherwise validated
        ("a@b.c", "B" * 254),
        ("b" * 240 + "@x.com", "Bob"),
        ("bob@example.com", "Bob B\u00e9b\u00e9"),
    ],
)
def test_valid_human_handles(handle: tuple[str, str]) -> None:
    assert load_kind("user", human_handle=list(handle)).human_handle == handle


def test_human_handle_optional_and_normalised() -> None:
    assert load_kind("user", human_handle=None).human_handle is None
    assert load_kind("user", human_handle=OMIT).human_handle is None
    cert = load_kind("user", human_handle=["jose\u0301@x.com", "Jose\u0301"])
    assert cert.human_handle == ("jos\u00e9@x.com", "Jos\u00e9")


# --- profile / is_admin legacy rules ------------------------------------------------------------


@pytest.mark.parametrize(
    "is_admin, profile, expected",
    [
        (True, OMIT, "ADMIN"),
        (False, OMIT, "STANDARD"),
        (True, "ADMIN", "ADMIN"),
        (False, "ADMIN", "ADMIN"),
        (False, "STANDARD", "STANDARD"),
        (False, "OUTSIDER", "OUTSIDER"),
    ],
)
def test_profile_legacy_rules(is_admin: bool, profile: Any, expected: str) -> None:
    cert = load_kind("user", is_admin=is_admin, profile=profile)
    assert cert.profile == expected
    assert cert.is_admin == (expected == "ADMIN")


@pytest.mark.parametrize("profile", ["STANDARD", "OUTSIDER"])
def test_profile_incompatible_with_is_admin(profile: str) -> None:
    assert kind_error("user", is_admin=True, profile=profile) == (
        "{'_schema': ['Fields `profile` and `is_admin` have incompatible values']}"
    )


def test_incompatible_profile_only_checked_when_fields_are_valid() -> None:
    assert kind_error("user", is_admin=True, profile="STANDARD", user_id=1) == "{'user_id': ['Not string']}"


# ---------------------------------------------------------------------------------------------
# unsecure_load_*
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_unsecure_load_ignores_signature_and_author(kind: str) -> None:
    fields_fn, _, unsecure = KINDS[kind]
    blob = certgen.sign_fields(BOB.signing_key, fields_fn(author="zed@dev9"))
    cert = unsecure(blob)
    assert cert.author == "zed@dev9"
    # Garbage in place of the signature is fine too.
    assert unsecure(b"\xff" * 64 + blob[64:]) == cert


@pytest.mark.parametrize("kind", list(KINDS))
def test_unsecure_load_still_decodes_and_validates(kind: str) -> None:
    fields_fn, _, unsecure = KINDS[kind]
    expect_error(unsecure, b"", text="Error -5 while decompressing data: incomplete or truncated stream")
    expect_error(
        unsecure, b"x" * 64, text="Error -5 while decompressing data: incomplete or truncated stream"
    )
    expect_error(unsecure, b"x" * 70, text="Error -3 while decompressing data: incorrect header check")
    expect_error(
        unsecure, b"x" * 64 + zlib.compress(b"\x90"), text="Invalid msgpack data: root must be a map"
    )
    blob = certgen.sign_fields(ALICE.signing_key, fields_fn(type="nope"))
    with pytest.raises(CertificateError, match="should be"):
        unsecure(blob)


def test_unsecure_load_root_signed() -> None:
    blob = certgen.sign_fields(ROOT, user_fields(author=None))
    assert unsecure_load_user_certificate(blob).author is None


# ---------------------------------------------------------------------------------------------
# PKI payloads (docs/protocol/data-formats.md §6)
# ---------------------------------------------------------------------------------------------


def test_load_pki_submit_payload() -> None:
    payload = load_pki_submit_payload(certgen.pki_submit_payload())
    assert payload == PkiEnrollmentSubmitPayload(
        verify_key=b"v" * 32, public_key=b"p" * 32, requested_device_label="My laptop"
    )


def test_load_pki_accept_payload() -> None:
    payload = load_pki_accept_payload(certgen.pki_accept_payload())
    assert payload == PkiEnrollmentAcceptPayload(
        device_id="alice@laptop",
        device_label="My laptop",
        human_handle=("alice@example.com", "Alice"),
        profile="STANDARD",
        root_verify_key=b"r" * 32,
    )
    payload = load_pki_accept_payload(certgen.pki_accept_payload(device_label=None, human_handle=None))
    assert payload.device_label is None and payload.human_handle is None


@pytest.mark.parametrize(
    "overrides, text",
    [
        ({"requested_device_label": None}, "{'requested_device_label': ['Field may not be null.']}"),
        (
            {"requested_device_label": OMIT},
            "{'requested_device_label': ['Missing data for required field.']}",
        ),
        ({"requested_device_label": ""}, "{'requested_device_label': ['Invalid data']}"),
        ({"public_key": b"x"}, "{'public_key': ['Invalid verify key.']}"),
        ({"verify_key": "v" * 32}, "{'verify_key': ['Invalid verify key.']}"),
        (
            {"type": "pki_enrollment_answer_payload"},
            "{'type': ['Invalid value, should be `pki_enrollment_submit_payload`']}",
        ),
        ({"extra": 1}, None),
    ],
)
def test_pki_submit_payload_errors(overrides: dict[str, Any], text: str | None) -> None:
    raw = certgen.pki_submit_payload(**overrides)
    if text is None:
        load_pki_submit_payload(raw)
    else:
        expect_error(load_pki_submit_payload, raw, text=text)


@pytest.mark.parametrize(
    "overrides, text",
    [
        (
            {"device_label": OMIT, "human_handle": OMIT},
            "{'device_label': ['Missing data for required field.'], 'human_handle': ['Missing data for required field.']}",
        ),
        ({"profile": None}, "{'profile': ['Field may not be null.']}"),
        (
            {"profile": "X", "device_id": "ab", "root_verify_key": None},
            "{'device_id': ['Invalid data'], 'profile': ['Invalid role `X`'], 'root_verify_key': ['Field may not be null.']}",
        ),
        ({"human_handle": ["a@b", "<x>"]}, "{'human_handle': ['Invalid data']}"),
        ({"human_handle": "a@b"}, "{'human_handle': ['Not a valid tuple type.']}"),
        (
            {"type": "pki_enrollment_accept_payload"},
            "{'type': ['Invalid value, should be `pki_enrollment_answer_payload`']}",
        ),
    ],
)
def test_pki_accept_payload_errors(overrides: dict[str, Any], text: str) -> None:
    expect_error(load_pki_accept_payload, certgen.pki_accept_payload(**overrides), text=text)


@pytest.mark.parametrize("loader", [load_pki_submit_payload, load_pki_accept_payload])
def test_pki_payload_decoding_errors(loader: Loader) -> None:
    expect_error(loader, b"garbage", text="Error -3 while decompressing data: incorrect header check")
    expect_error(loader, b"", text="Error -5 while decompressing data: incomplete or truncated stream")
    expect_error(loader, zlib.compress(b"\x90"), text="Invalid msgpack data: root must be a map")
    # A signed payload is not what the server expects: the signature breaks the zlib header.
    signed_payload = certgen.sign_message(ALICE.signing_key, certgen.pki_submit_payload())
    expect_error(loader, signed_payload, text=str(_zlib_error(signed_payload)))


def test_pki_payloads_all_fields_missing() -> None:
    empty = zlib.compress(packb({}))
    expect_error(
        load_pki_submit_payload,
        empty,
        text=(
            "{'type': ['Missing data for required field.'], 'verify_key': ['Missing data for required field.'], "
            "'public_key': ['Missing data for required field.'], "
            "'requested_device_label': ['Missing data for required field.']}"
        ),
    )
    expect_error(
        load_pki_accept_payload,
        empty,
        text=(
            "{'type': ['Missing data for required field.'], 'device_id': ['Missing data for required field.'], "
            "'device_label': ['Missing data for required field.'], 'human_handle': ['Missing data for required field.'], "
            "'profile': ['Missing data for required field.'], 'root_verify_key': ['Missing data for required field.']}"
        ),
    )
