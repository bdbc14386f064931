"""Property tests: hostile bytes never escape as anything but CertificateError."""

from __future__ import annotations

import zlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from parsec.api import certificates as c
from parsec.api.ballpark import timestamp_in_ballpark
from parsec.api.certificates import CertificateError, CertificateValidationError
from parsec.api.codec import packb
from parsec.backend.command import CERTIFICATE_ERROR_STATUS
from tests.api import certgen

KEY = SigningKey(b"\x21" * 32)
VK = bytes(KEY.verify_key)
AUTHOR = "alice@dev1"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIGNED_LOADERS = [
    c.load_user_certificate,
    c.load_device_certificate,
    c.load_revoked_user_certificate,
    c.load_realm_role_certificate,
]
UNSECURE_LOADERS = [
    c.unsecure_load_user_certificate,
    c.unsecure_load_device_certificate,
    c.unsecure_load_revoked_user_certificate,
    c.unsecure_load_realm_role_certificate,
    c.load_pki_submit_payload,
    c.load_pki_accept_payload,
]


def only_certificate_errors(func: Any, *args: Any) -> None:
    try:
        func(*args)
    except CertificateError as exc:
        assert isinstance(str(exc), str) and str(exc)


@FUZZ
@given(blob=st.binary(max_size=300), expected_author=st.sampled_from([None, AUTHOR]))
def test_random_bytes(blob: bytes, expected_author: str | None) -> None:
    for loader in SIGNED_LOADERS:
        only_certificate_errors(loader, blob, VK, expected_author)
    for unsecure in UNSECURE_LOADERS:
        only_certificate_errors(unsecure, blob)


@FUZZ
@given(message=st.binary(max_size=300), expected_author=st.sampled_from([None, AUTHOR]))
def test_correctly_signed_random_message(message: bytes, expected_author: str | None) -> None:
    blob = certgen.sign_message(KEY, message)
    for loader in SIGNED_LOADERS:
        only_certificate_errors(loader, blob, VK, expected_author)
    for unsecure in UNSECURE_LOADERS:
        only_certificate_errors(unsecure, message)


@FUZZ
@given(message=st.binary(max_size=300))
def test_correctly_signed_compressed_random_bytes(message: bytes) -> None:
    blob = certgen.sign_message(KEY, zlib.compress(message))
    for loader in SIGNED_LOADERS:
        only_certificate_errors(loader, blob, VK, AUTHOR)


def check_decompression_matches_zlib(data: bytes) -> None:
    """Step 2 reports exactly what `zlib.decompress` would (capped size aside)."""
    try:
        expected: str | None = None
        zlib.decompress(data)
    except zlib.error as exc:
        expected = str(exc)
    try:
        c.unsecure_load_user_certificate(b"\x00" * 64 + data)
    except CertificateError as exc:
        if expected is not None:
            assert str(exc) == expected
        else:
            assert not str(exc).startswith("Error ")
    else:
        assert expected is None


@FUZZ
@given(data=st.binary(max_size=200))
def test_decompression_errors_match_zlib(data: bytes) -> None:
    check_decompression_matches_zlib(data)


@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    raw = packb(
        certgen.user_certificate_fields(author=AUTHOR, user_id="bob", public_key=b"k" * 32, human_handle=None)
    )
    stream = bytearray(zlib.compress(raw, draw(st.integers(0, 9))))
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.integers(0, len(stream) - 1))
        stream[index] = draw(st.integers(0, 255))
    return bytes(stream[: draw(st.integers(0, len(stream)))])


@FUZZ
@given(stream=mutated_stream())
def test_mutated_zlib_streams(stream: bytes) -> None:
    check_decompression_matches_zlib(stream)
    blob = certgen.sign_message(KEY, stream)
    for loader in SIGNED_LOADERS:
        only_certificate_errors(loader, blob, VK, AUTHOR)


# Values a hostile client could put in a certificate map.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "alice@dev1",
            "alice",
            "bob",
            "ADMIN",
            "STANDARD",
            "OUTSIDER",
            "OWNER",
            "READER",
            "user_certificate",
            "device_certificate",
            "revoked_user_certificate",
            "realm_role_certificate",
            "pki_enrollment_submit_payload",
            "pki_enrollment_answer_payload",
            "a@b.c",
        ]
    ),
    st.binary(max_size=40),
    st.binary(min_size=32, max_size=32),
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)),
    st.uuids(),
    st.builds(msgpack.ExtType, st.integers(3, 127), st.binary(max_size=10)),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
FIELD_NAMES = [
    "type",
    "author",
    "timestamp",
    "user_id",
    "human_handle",
    "public_key",
    "is_admin",
    "profile",
    "device_id",
    "device_label",
    "verify_key",
    "realm_id",
    "role",
    "requested_device_label",
    "root_verify_key",
]
maps = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), values, max_size=16)


@FUZZ
@given(fields=maps, expected_author=st.sampled_from([None, AUTHOR]))
def test_random_maps(fields: dict[str, Any], expected_author: str | None) -> None:
    message = zlib.compress(packb(fields))
    blob = certgen.sign_message(KEY, message)
    for loader in SIGNED_LOADERS:
        only_certificate_errors(loader, blob, VK, expected_author)
    for unsecure in UNSECURE_LOADERS:
        only_certificate_errors(unsecure, message)


@st.composite
def almost_valid_maps(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid certificate map of a random kind with a few fields replaced or dropped."""
    kind = draw(st.sampled_from(["user", "device", "revoked", "role"]))
    ts = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    base: dict[str, Any] = {
        "user": certgen.user_certificate_fields(
            author=AUTHOR, user_id="bob", public_key=b"k" * 32, timestamp=ts, human_handle=("b@x.y", "B")
        ),
        "device": certgen.device_certificate_fields(
            author=AUTHOR, device_id="bob@pc", verify_key=b"v" * 32, timestamp=ts, device_label="L"
        ),
        "revoked": certgen.revoked_user_certificate_fields(author=AUTHOR, user_id="bob", timestamp=ts),
        "role": certgen.realm_role_certificate_fields(
            author=AUTHOR, realm_id=UUID(int=7), user_id="bob", role="READER", timestamp=ts
        ),
    }[kind]
    for name in draw(st.lists(st.sampled_from(sorted(base)), max_size=3)):
        if draw(st.booleans()):
            base[name] = draw(values)
        else:
            base.pop(name, None)
    return kind, base


@FUZZ
@given(case=almost_valid_maps())
def test_almost_valid_certificates(case: tuple[str, dict[str, Any]]) -> None:
    kind, fields = case
    blob = certgen.sign_fields(KEY, fields)
    for loader in SIGNED_LOADERS:
        only_certificate_errors(loader, blob, VK, AUTHOR)
    # The compound validations turn every failure into a CertificateValidationError.
    validators: list[Any] = [
        lambda: c.validate_revoked_user(blob, author=AUTHOR, author_verify_key=VK, now=NOW),
        lambda: c.validate_realm_role(blob, author=AUTHOR, author_verify_key=VK, now=NOW, initial=True),
        lambda: c.validate_realm_role(blob, author=AUTHOR, author_verify_key=VK, now=NOW, initial=False),
        lambda: c.validate_new_device(
            author=AUTHOR,
            author_verify_key=VK,
            device_certificate=blob,
            redacted_device_certificate=blob,
            now=NOW,
        ),
        lambda: c.validate_new_user(
            author=AUTHOR,
            author_verify_key=VK,
            user_certificate=blob,
            device_certificate=blob,
            redacted_user_certificate=blob,
            redacted_device_certificate=blob,
            now=NOW,
        ),
        lambda: c.validate_bootstrap(
            root_verify_key=VK,
            user_certificate=blob,
            device_certificate=blob,
            redacted_user_certificate=None,
            redacted_device_certificate=None,
            now=NOW,
        ),
    ]
    for validate in validators:
        try:
            validate()
        except CertificateValidationError as exc:
            # Each failure is one of the checks the command layer knows a reply status for.
            assert type(exc) in CERTIFICATE_ERROR_STATUS


# Valid certificates round-trip.
user_ids = st.from_regex(r"[a-zA-Z0-9_\-]{1,32}", fullmatch=True)
device_ids = st.builds(lambda u, d: f"{u}@{d}", user_ids, user_ids)
timestamps = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(lambda dt: dt.replace(microsecond=0))
keys = st.binary(min_size=32, max_size=32)
labels = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1, max_size=100
)


@FUZZ
@given(
    author=st.one_of(st.none(), device_ids),
    ts=timestamps,
    user_id=user_ids,
    public_key=keys,
    profile=st.sampled_from(["ADMIN", "STANDARD", "OUTSIDER"]),
    human_handle=st.one_of(st.none(), st.just(("bob@example.com", "Bob"))),
)
def test_user_certificate_round_trip(
    author: str | None, ts: datetime, user_id: str, public_key: bytes, profile: str, human_handle: Any
) -> None:
    blob = certgen.user_certificate(
        KEY,
        author=author,
        timestamp=ts,
        user_id=user_id,
        public_key=public_key,
        profile=profile,
        human_handle=human_handle,
    )
    cert = c.load_user_certificate(blob, VK, author)
    assert cert == c.UserCertificate(
        author=author,
        timestamp=ts,
        user_id=user_id,
        human_handle=human_handle,
        public_key=public_key,
        profile=profile,
    )
    assert c.unsecure_load_user_certificate(blob) == cert


@FUZZ
@given(
    author=device_ids,
    ts=timestamps,
    device_id=device_ids,
    verify_key=keys,
    label=st.one_of(st.none(), labels),
)
def test_device_certificate_round_trip(
    author: str, ts: datetime, device_id: str, verify_key: bytes, label: str | None
) -> None:
    import unicodedata

    blob = certgen.device_certificate(
        KEY, author=author, timestamp=ts, device_id=device_id, verify_key=verify_key, device_label=label
    )
    try:
        cert = c.load_device_certificate(blob, VK, author)
    except CertificateError as exc:
        # Only over-long labels (in UTF-8 bytes) are refused.
        assert label is not None and len(unicodedata.normalize("NFC", label).encode()) > 255, exc
        return
    assert cert.device_id == device_id and cert.verify_key == verify_key and cert.timestamp == ts
    assert cert.device_label == (None if label is None else unicodedata.normalize("NFC", label))


@FUZZ
@given(
    author=device_ids,
    ts=timestamps,
    realm_id=st.uuids(),
    user_id=user_ids,
    role=st.sampled_from(["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None]),
)
def test_realm_role_certificate_round_trip(
    author: str, ts: datetime, realm_id: UUID, user_id: str, role: str | None
) -> None:
    blob = certgen.realm_role_certificate(
        KEY, author=author, timestamp=ts, realm_id=realm_id, user_id=user_id, role=role
    )
    assert c.load_realm_role_certificate(blob, VK, author) == c.RealmRoleCertificate(
        author=author, timestamp=ts, realm_id=realm_id, user_id=user_id, role=role
    )


@FUZZ
@given(offset=st.floats(min_value=-200, max_value=200, allow_nan=False))
def test_ballpark_rule(offset: float) -> None:
    ts = datetime(2024, 1, 1, tzinfo=UTC)
    now = ts + timedelta(seconds=offset)
    seconds = (now - ts).total_seconds()
    assert timestamp_in_ballpark(ts, now) == (-50 < seconds < 70)
