"""Compound certificate validations of commands (docs/protocol/commands.md §5.1, §6.1, §6.4, §6.5, §9.1, §9.5)
and the ballpark rule (docs/protocol/handshake.md §6)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from nacl.signing import SigningKey

from parsec.api import ballpark
from parsec.api import certificates as c
from parsec.api.ballpark import timestamp_in_ballpark
from parsec.api.certificates import (
    CertificateValidationError,
    NewDeviceCertificates,
    NewUserCertificates,
    validate_bootstrap,
    validate_new_device,
    validate_new_user,
    validate_realm_role,
    validate_revoked_user,
)
from parsec.backend.command import CERTIFICATE_ERROR_STATUS
from tests.api import certgen
from tests.api.certgen import OMIT, LocalDevice

NOW = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)
ROOT = SigningKey(b"\x10" * 32)
ROOT_VK = bytes(ROOT.verify_key)
ALICE = LocalDevice.generate(
    "alice@dev1",
    profile="ADMIN",
    human_handle=("alice@example.com", "Alice"),
    device_label="Alice's PC",
    seed=b"\x11" * 32,
)
ALICE2 = ALICE.new_device("dev2", device_label="Alice's phone")
BOB = LocalDevice.generate(
    "bob@dev1", human_handle=("bob@example.com", "Bob"), device_label="Bob's PC", seed=b"\x12" * 32
)
MALLORY = LocalDevice.generate("mallory@dev1", seed=b"\x13" * 32)
REALM = UUID("b0000000-0000-0000-0000-000000000002")

US = 1e-6


def fail(func: Callable[..., Any], **kwargs: Any) -> CertificateValidationError:
    with pytest.raises(CertificateValidationError) as exc_info:
        func(**kwargs)
    return exc_info.value


def status_of(exc: CertificateValidationError) -> str:
    """The reply status the command layer gives this failed check."""
    return CERTIFICATE_ERROR_STATUS[type(exc)]


def assert_error(exc: CertificateValidationError, status: str, reason: str | None) -> None:
    assert (status_of(exc), exc.reason) == (status, reason)


def forged() -> str:
    return "Invalid certification data (Signature was forged or corrupt)."


# ---------------------------------------------------------------------------------------------
# Ballpark
# ---------------------------------------------------------------------------------------------


def test_ballpark_constants() -> None:
    assert ballpark.BALLPARK_CLIENT_EARLY_OFFSET == 50.0
    assert ballpark.BALLPARK_CLIENT_LATE_OFFSET == 70.0
    assert isinstance(ballpark.BALLPARK_CLIENT_EARLY_OFFSET, float)
    assert isinstance(ballpark.BALLPARK_CLIENT_LATE_OFFSET, float)


@pytest.mark.parametrize(
    "now_minus_ts, accepted",
    [
        (timedelta(0), True),
        (timedelta(seconds=70), False),
        (timedelta(seconds=70) - timedelta(microseconds=1), True),
        (timedelta(seconds=-50), False),
        (timedelta(seconds=-50) + timedelta(microseconds=1), True),
        (timedelta(seconds=3601), False),
        (timedelta(days=-365), False),
        (timedelta(seconds=-49), True),
        (timedelta(seconds=69), True),
    ],
)
def test_timestamp_in_ballpark(now_minus_ts: timedelta, accepted: bool) -> None:
    ts = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert timestamp_in_ballpark(ts, ts + now_minus_ts) is accepted


def test_ballpark_compares_instants_across_timezones() -> None:
    from datetime import timezone

    ts = datetime(2024, 1, 1, 13, 0, 0, tzinfo=timezone(timedelta(hours=1)))
    assert timestamp_in_ballpark(ts, datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC))


# Boundaries through every validator: (now - ts) -> accepted?
BOUNDARIES = [
    (timedelta(seconds=70), False),
    (timedelta(seconds=70) - timedelta(microseconds=1), True),
    (timedelta(seconds=-50), False),
    (timedelta(seconds=-50) + timedelta(microseconds=1), True),
]


def run_validator(name: str, ts: datetime, now: datetime) -> None:
    if name == "bootstrap":
        blobs = certgen.new_user_certificates(ROOT, None, ALICE, timestamp=ts)
        validate_bootstrap(root_verify_key=ROOT_VK, now=now, **blobs.as_request())
    elif name == "new_user":
        blobs = certgen.new_user_certificates(ALICE.signing_key, ALICE.device_id, BOB, timestamp=ts)
        validate_new_user(
            author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=now, **blobs.as_request()
        )
    elif name == "new_device":
        device, redacted = certgen.new_device_certificates(ALICE, ALICE2, timestamp=ts)
        validate_new_device(
            author=ALICE.device_id,
            author_verify_key=ALICE.verify_key,
            device_certificate=device,
            redacted_device_certificate=redacted,
            now=now,
        )
    elif name == "revoked_user":
        blob = ALICE.revoked_user_certificate(user_id="bob", timestamp=ts)
        validate_revoked_user(blob, author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=now)
    elif name == "realm_create":
        blob = ALICE.realm_role_certificate(realm_id=REALM, user_id="alice", role="OWNER", timestamp=ts)
        validate_realm_role(
            blob, author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=now, initial=True
        )
    elif name == "realm_update":
        blob = ALICE.realm_role_certificate(realm_id=REALM, user_id="bob", role="READER", timestamp=ts)
        validate_realm_role(
            blob, author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=now, initial=False
        )
    else:
        raise AssertionError(name)


BALLPARK_FAILURES = {
    "bootstrap": ("bad_timestamp", None),
    "new_user": ("invalid_certification", "Invalid timestamp in certificate."),
    "new_device": ("invalid_certification", "Invalid timestamp in certification."),
    "revoked_user": ("invalid_certification", "Invalid timestamp in certification."),
    "realm_create": ("bad_timestamp", None),
    "realm_update": ("bad_timestamp", None),
}


@pytest.mark.parametrize("name", list(BALLPARK_FAILURES))
@pytest.mark.parametrize("now_minus_ts, accepted", BOUNDARIES)
def test_ballpark_boundaries_in_validators(name: str, now_minus_ts: timedelta, accepted: bool) -> None:
    # Whole-second timestamp: survives the float64 encoding exactly.
    ts = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)
    now = ts + now_minus_ts
    if accepted:
        run_validator(name, ts, now)
        return
    with pytest.raises(CertificateValidationError) as exc_info:
        run_validator(name, ts, now)
    exc = exc_info.value
    assert (status_of(exc), exc.reason) == BALLPARK_FAILURES[name]
    if status_of(exc) == "bad_timestamp":
        assert exc.client_timestamp == ts
        assert exc.backend_timestamp == now
        assert str(exc).startswith("TimestampOutOfBallparkError")


# ---------------------------------------------------------------------------------------------
# organization_bootstrap (§5.1)
# ---------------------------------------------------------------------------------------------


def bootstrap(
    device: LocalDevice = ALICE,
    *,
    signing_key: SigningKey = ROOT,
    author: str | None = None,
    ts: datetime = NOW,
    now: datetime = NOW,
    drop: tuple[str, ...] = (),
    **overrides: Any,
) -> NewUserCertificates:
    blobs = certgen.new_user_certificates(signing_key, author, device, timestamp=ts, **overrides).as_request()
    request: dict[str, Any] = {**blobs, **{name: None for name in drop}}
    return validate_bootstrap(root_verify_key=ROOT_VK, now=now, **request)


def bootstrap_error(**kwargs: Any) -> CertificateValidationError:
    return fail(bootstrap, **kwargs)


def test_bootstrap_ok() -> None:
    result = bootstrap()
    assert result.user.user_id == "alice" and result.user.profile == "ADMIN" and result.user.author is None
    assert result.user.human_handle == ("alice@example.com", "Alice")
    assert result.device.device_id == "alice@dev1" and result.device.device_label == "Alice's PC"
    assert result.redacted_user.human_handle is None
    assert result.redacted_device.device_label is None
    assert result.device.verify_key == ALICE.verify_key
    assert result.user.public_key == ALICE.public_key
    assert result.user.timestamp == NOW
    blobs = certgen.new_user_certificates(ROOT, None, ALICE, timestamp=NOW)
    result = validate_bootstrap(root_verify_key=ROOT_VK, now=NOW, **blobs.as_request())
    assert result.user_certificate == blobs.user_certificate
    assert result.redacted_device_certificate == blobs.redacted_device_certificate


def test_bootstrap_without_handle_and_label_same_certificates_as_redacted() -> None:
    device = LocalDevice.generate("zack@pc", profile="ADMIN")
    blobs = certgen.new_user_certificates(ROOT, None, device, timestamp=NOW)
    result = validate_bootstrap(
        root_verify_key=ROOT_VK,
        user_certificate=blobs.user_certificate,
        device_certificate=blobs.device_certificate,
        redacted_user_certificate=blobs.user_certificate,
        redacted_device_certificate=blobs.device_certificate,
        now=NOW,
    )
    assert result.user == result.redacted_user


@pytest.mark.parametrize("which", ["user", "device", "redacted_user", "redacted_device"])
def test_bootstrap_signed_by_another_key(which: str) -> None:
    good = certgen.new_user_certificates(ROOT, None, ALICE, timestamp=NOW).as_request()
    bad = certgen.new_user_certificates(SigningKey(b"\x99" * 32), None, ALICE, timestamp=NOW).as_request()
    key = f"{which}_certificate"
    exc = fail(validate_bootstrap, root_verify_key=ROOT_VK, now=NOW, **{**good, key: bad[key]})
    assert_error(exc, "invalid_certification", forged())


def test_bootstrap_certificate_with_device_author() -> None:
    exc = bootstrap_error(author="alice@dev1")
    assert_error(
        exc,
        "invalid_certification",
        "Invalid certification data (Invalid author: expected `<root key>`, got `alice@dev1`).",
    )


def test_bootstrap_certificate_signed_by_a_device_key() -> None:
    exc = bootstrap_error(signing_key=ALICE.signing_key, author="alice@dev1")
    assert_error(exc, "invalid_certification", forged())


def test_bootstrap_user_certificate_checked_before_device() -> None:
    exc = bootstrap_error(user_overrides={"author": "x@y"}, device_overrides={"type": "nope"})
    assert exc.reason == "Invalid certification data (Invalid author: expected `<root key>`, got `x@y`)."
    exc = bootstrap_error(device_overrides={"type": "nope"}, redacted_user_overrides={"author": "x@y"})
    assert exc.reason == (
        "Invalid certification data ({'type': ['Invalid value, should be `device_certificate`']})."
    )


@pytest.mark.parametrize("profile", ["STANDARD", "OUTSIDER"])
def test_bootstrap_non_admin(profile: str) -> None:
    device = LocalDevice.generate("zack@pc", profile=profile)
    assert_error(
        bootstrap_error(device=device), "invalid_data", "Bootstrapping user must have admin profile."
    )


def test_bootstrap_timestamps_differ() -> None:
    exc = bootstrap_error(device_overrides={"timestamp": NOW + timedelta(seconds=1)})
    assert_error(exc, "invalid_data", "Device and user certificates must have the same timestamp.")


def test_bootstrap_other_user_device() -> None:
    exc = bootstrap_error(
        device_overrides={"device_id": "bob@dev1"}, redacted_device_overrides={"device_id": "bob@dev1"}
    )
    assert_error(exc, "invalid_data", "Device and user must have the same user ID.")


def test_bootstrap_check_order() -> None:
    # profile before timestamps before user id before ballpark
    device = LocalDevice.generate("zack@pc", profile="STANDARD")
    exc = bootstrap_error(
        device=device, device_overrides={"timestamp": NOW + timedelta(seconds=1), "device_id": "x@y"}
    )
    assert exc.reason == "Bootstrapping user must have admin profile."
    exc = bootstrap_error(device_overrides={"timestamp": NOW + timedelta(seconds=1), "device_id": "x@y"})
    assert exc.reason == "Device and user certificates must have the same timestamp."
    exc = bootstrap_error(device_overrides={"device_id": "x@y"}, now=NOW + timedelta(hours=1))
    assert exc.reason == "Device and user must have the same user ID."
    # ballpark before the redacted rules
    exc = bootstrap_error(
        redacted_user_overrides={"human_handle": ("a@b", "A")}, now=NOW + timedelta(hours=1)
    )
    assert status_of(exc) == "bad_timestamp"


def test_bootstrap_bad_timestamp() -> None:
    ts = NOW - timedelta(seconds=3601)
    exc = bootstrap_error(ts=ts)
    assert (status_of(exc), exc.reason, exc.client_timestamp, exc.backend_timestamp) == (
        "bad_timestamp",
        None,
        ts,
        NOW,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": NOW + timedelta(seconds=1)},
        {"user_id": "bob"},
        {"public_key": b"\x00" * 32},
        {"profile": "STANDARD"},
    ],
)
def test_bootstrap_redacted_user_differs(overrides: dict[str, Any]) -> None:
    exc = bootstrap_error(redacted_user_overrides=overrides)
    assert_error(exc, "invalid_data", "Redacted User certificate differs from User certificate.")


def test_bootstrap_redacted_user_with_handle() -> None:
    exc = bootstrap_error(redacted_user_overrides={"human_handle": ALICE.human_handle})
    assert_error(exc, "invalid_data", "Redacted User certificate must not contain a human_handle field.")
    # Another handle than the full one: still only "must not contain".
    exc = bootstrap_error(redacted_user_overrides={"human_handle": ("zz@zz", "Z")})
    assert_error(exc, "invalid_data", "Redacted User certificate must not contain a human_handle field.")


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": NOW + timedelta(seconds=1)},
        {"device_id": "alice@dev2"},
        {"verify_key": b"\x00" * 32},
    ],
)
def test_bootstrap_redacted_device_differs(overrides: dict[str, Any]) -> None:
    exc = bootstrap_error(redacted_device_overrides=overrides)
    assert_error(exc, "invalid_data", "Redacted Device certificate differs from Device certificate.")


def test_bootstrap_redacted_device_with_label() -> None:
    exc = bootstrap_error(redacted_device_overrides={"device_label": ALICE.device_label})
    assert_error(exc, "invalid_data", "Redacted Device certificate must not contain a device_label field.")


def test_bootstrap_redacted_user_checked_before_redacted_device() -> None:
    exc = bootstrap_error(
        redacted_user_overrides={"human_handle": ALICE.human_handle},
        redacted_device_overrides={"device_label": ALICE.device_label},
    )
    assert exc.reason == "Redacted User certificate must not contain a human_handle field."


def test_bootstrap_apiv1_without_redacted() -> None:
    blobs = certgen.new_user_certificates(ROOT, None, ALICE, timestamp=NOW)
    result = bootstrap(drop=("redacted_user_certificate", "redacted_device_certificate"))
    # The full certificates stand in for the missing redacted ones.
    assert result.redacted_user == result.user
    assert result.redacted_device == result.device
    assert result.redacted_user_certificate == blobs.user_certificate
    assert result.redacted_device_certificate == blobs.device_certificate


@pytest.mark.parametrize("missing", ["redacted_user_certificate", "redacted_device_certificate"])
def test_bootstrap_apiv1_only_one_redacted(missing: str) -> None:
    exc = bootstrap_error(drop=(missing,))
    assert_error(exc, "invalid_data", "Redacted user&device certificate muste be provided together")


def test_bootstrap_apiv1_single_redacted_is_checked_first() -> None:
    exc = bootstrap_error(drop=("redacted_device_certificate",), redacted_user_overrides={"user_id": "bob"})
    assert exc.reason == "Redacted User certificate differs from User certificate."
    exc = bootstrap_error(drop=("redacted_user_certificate",), redacted_device_overrides={"author": "x@y"})
    assert status_of(exc) == "invalid_certification"


# ---------------------------------------------------------------------------------------------
# user_create / pki_enrollment_accept (§6.1)
# ---------------------------------------------------------------------------------------------


def new_user(
    device: LocalDevice = BOB,
    *,
    author: LocalDevice = ALICE,
    signer: LocalDevice | None = None,
    ts: datetime = NOW,
    now: datetime = NOW,
    **overrides: Any,
) -> NewUserCertificates:
    signer = signer or author
    blobs = certgen.new_user_certificates(
        signer.signing_key, author.device_id, device, timestamp=ts, **overrides
    ).as_request()
    return validate_new_user(author=author.device_id, author_verify_key=author.verify_key, now=now, **blobs)


def new_user_error(**kwargs: Any) -> CertificateValidationError:
    return fail(new_user, **kwargs)


@pytest.mark.parametrize("profile", ["ADMIN", "STANDARD", "OUTSIDER"])
@pytest.mark.parametrize("with_labels", [True, False])
def test_new_user_ok(profile: str, with_labels: bool) -> None:
    device = LocalDevice.generate(
        "zack@pc",
        profile=profile,
        human_handle=("zack@example.com", "Zack") if with_labels else None,
        device_label="Zack's PC" if with_labels else None,
    )
    result = new_user(device)
    assert result.user.profile == profile
    assert result.user.author == "alice@dev1"
    assert result.device.device_id == "zack@pc"
    assert result.user.human_handle == device.human_handle
    assert result.device.device_label == device.device_label
    assert result.redacted_user.human_handle is None


def test_new_user_returns_bytes() -> None:
    blobs = certgen.new_user_certificates(ALICE.signing_key, ALICE.device_id, BOB, timestamp=NOW)
    result = validate_new_user(
        author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=NOW, **blobs.as_request()
    )
    assert result.user_certificate == blobs.user_certificate
    assert result.device_certificate == blobs.device_certificate
    assert result.redacted_user_certificate == blobs.redacted_user_certificate
    assert result.redacted_device_certificate == blobs.redacted_device_certificate


def test_new_user_nil_handle_and_label_as_their_own_redacted() -> None:
    device = LocalDevice.generate("zack@pc")
    blobs = certgen.new_user_certificates(ALICE.signing_key, ALICE.device_id, device, timestamp=NOW)
    validate_new_user(
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        user_certificate=blobs.user_certificate,
        device_certificate=blobs.device_certificate,
        redacted_user_certificate=blobs.user_certificate,
        redacted_device_certificate=blobs.device_certificate,
        now=NOW,
    )


@pytest.mark.parametrize("which", ["user", "device", "redacted_user", "redacted_device"])
def test_new_user_signed_by_another_device(which: str) -> None:
    good = certgen.new_user_certificates(ALICE.signing_key, ALICE.device_id, BOB, timestamp=NOW).as_request()
    bad = certgen.new_user_certificates(ALICE2.signing_key, ALICE.device_id, BOB, timestamp=NOW).as_request()
    key = f"{which}_certificate"
    exc = fail(
        validate_new_user,
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        now=NOW,
        **{**good, key: bad[key]},
    )
    assert_error(exc, "invalid_certification", forged())


def test_new_user_wrong_author_field() -> None:
    exc = new_user_error(user_overrides={"author": "alice@dev2"})
    assert_error(
        exc,
        "invalid_certification",
        "Invalid certification data (Invalid author: expected `alice@dev1`, got `alice@dev2`).",
    )


def test_new_user_root_signed_certificates_refused() -> None:
    blobs = certgen.new_user_certificates(ROOT, None, BOB, timestamp=NOW).as_request()
    # Checked with the root key as if it were a device key: the author field is nil.
    exc = fail(validate_new_user, author=ALICE.device_id, author_verify_key=ROOT_VK, now=NOW, **blobs)
    assert_error(
        exc,
        "invalid_certification",
        "Invalid certification data (Invalid author: expected `alice@dev1`, got `None`).",
    )
    exc = fail(
        validate_new_user, author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=NOW, **blobs
    )
    assert_error(exc, "invalid_certification", forged())


def test_new_user_device_certificate_checked_first() -> None:
    # Every certificate is broken differently: the device certificate's error wins, then the
    # user's, then the redacted user's.
    exc = new_user_error(
        device_overrides={"type": "x"},
        user_overrides={"author": "x@y"},
        redacted_user_overrides={"user_id": 1},
        redacted_device_overrides={"device_id": 1},
    )
    assert (
        exc.reason
        == "Invalid certification data ({'type': ['Invalid value, should be `device_certificate`']})."
    )
    exc = new_user_error(
        user_overrides={"author": "x@y"},
        redacted_user_overrides={"user_id": 1},
        redacted_device_overrides={"device_id": 1},
    )
    assert exc.reason == "Invalid certification data (Invalid author: expected `alice@dev1`, got `x@y`)."
    exc = new_user_error(redacted_user_overrides={"user_id": 1}, redacted_device_overrides={"device_id": 1})
    assert exc.reason == "Invalid certification data ({'user_id': ['Not string']})."
    exc = new_user_error(redacted_device_overrides={"device_id": 1})
    assert exc.reason == "Invalid certification data ({'device_id': ['Not string']})."


def test_new_user_timestamps_differ() -> None:
    exc = new_user_error(device_overrides={"timestamp": NOW + timedelta(seconds=1)})
    assert_error(exc, "invalid_data", "Device and User certificates must have the same timestamp.")


def test_new_user_timestamp_too_old() -> None:
    exc = new_user_error(ts=NOW - timedelta(seconds=3601))
    assert_error(exc, "invalid_certification", "Invalid timestamp in certificate.")
    assert not hasattr(exc, "client_timestamp")  # not a `bad_timestamp` reply


def test_new_user_other_user_device() -> None:
    exc = new_user_error(
        device_overrides={"device_id": "carl@dev1"}, redacted_device_overrides={"device_id": "carl@dev1"}
    )
    assert_error(exc, "invalid_data", "Device and User must have the same user ID.")


def test_new_user_check_order() -> None:
    # same timestamp -> ballpark -> same user id -> redacted user -> redacted device
    exc = new_user_error(
        device_overrides={"timestamp": NOW - timedelta(hours=2), "device_id": "carl@dev1"},
        ts=NOW - timedelta(hours=1),
    )
    assert exc.reason == "Device and User certificates must have the same timestamp."
    exc = new_user_error(
        device_overrides={"device_id": "carl@dev1"},
        redacted_user_overrides={"user_id": "x"},
        ts=NOW - timedelta(hours=1),
    )
    assert exc.reason == "Invalid timestamp in certificate."
    exc = new_user_error(
        device_overrides={"device_id": "carl@dev1"}, redacted_user_overrides={"user_id": "x"}
    )
    assert exc.reason == "Device and User must have the same user ID."
    exc = new_user_error(
        redacted_user_overrides={"user_id": "x"}, redacted_device_overrides={"device_label": "label"}
    )
    assert exc.reason == "Redacted User certificate differs from User certificate."


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": NOW + timedelta(seconds=1)},
        {"user_id": "carl"},
        {"public_key": b"\x00" * 32},
        {"profile": "ADMIN"},
        {"profile": "OUTSIDER"},
    ],
)
def test_new_user_redacted_user_differs(overrides: dict[str, Any]) -> None:
    exc = new_user_error(redacted_user_overrides=overrides)
    assert_error(exc, "invalid_data", "Redacted User certificate differs from User certificate.")


def test_new_user_redacted_user_legacy_profile_encoding_is_equal() -> None:
    # Same decoded profile written differently (no `profile` key) is not a difference.
    new_user(redacted_user_overrides={"profile": OMIT, "is_admin": False})


def test_new_user_full_certificates_as_redacted() -> None:
    blobs = certgen.new_user_certificates(ALICE.signing_key, ALICE.device_id, BOB, timestamp=NOW)
    request = {
        **blobs.as_request(),
        "redacted_user_certificate": blobs.user_certificate,
    }
    exc = fail(
        validate_new_user, author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=NOW, **request
    )
    assert_error(exc, "invalid_data", "Redacted User certificate must not contain a human_handle field.")
    request = {
        **blobs.as_request(),
        "redacted_device_certificate": blobs.device_certificate,
    }
    exc = fail(
        validate_new_user, author=ALICE.device_id, author_verify_key=ALICE.verify_key, now=NOW, **request
    )
    assert_error(exc, "invalid_data", "Redacted Device certificate must not contain a device_label field.")


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": NOW + timedelta(seconds=1)},
        {"device_id": "bob@dev2"},
        {"verify_key": b"\x00" * 32},
    ],
)
def test_new_user_redacted_device_differs(overrides: dict[str, Any]) -> None:
    exc = new_user_error(redacted_device_overrides=overrides)
    assert_error(exc, "invalid_data", "Redacted Device certificate differs from Device certificate.")


# ---------------------------------------------------------------------------------------------
# device_create (§6.4)
# ---------------------------------------------------------------------------------------------


def new_device(
    device: LocalDevice = ALICE2,
    *,
    author: LocalDevice = ALICE,
    signer: LocalDevice | None = None,
    ts: datetime = NOW,
    now: datetime = NOW,
    **overrides: Any,
) -> NewDeviceCertificates:
    blob, redacted = certgen.new_device_certificates(signer or author, device, timestamp=ts, **overrides)
    return validate_new_device(
        author=author.device_id,
        author_verify_key=author.verify_key,
        device_certificate=blob,
        redacted_device_certificate=redacted,
        now=now,
    )


def new_device_error(**kwargs: Any) -> CertificateValidationError:
    return fail(new_device, **kwargs)


def test_new_device_ok() -> None:
    result = new_device()
    assert result.device.device_id == "alice@dev2"
    assert result.device.device_label == "Alice's phone"
    assert result.device.verify_key == ALICE2.verify_key
    assert result.redacted_device.device_label is None
    blob, redacted = certgen.new_device_certificates(ALICE, ALICE2, timestamp=NOW)
    result = validate_new_device(
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        device_certificate=blob,
        redacted_device_certificate=redacted,
        now=NOW,
    )
    assert (result.device_certificate, result.redacted_device_certificate) == (blob, redacted)


def test_new_device_outsider_without_label() -> None:
    outsider = LocalDevice.generate("out@pc1", profile="OUTSIDER")
    other = outsider.new_device("pc2")
    blob, _ = certgen.new_device_certificates(outsider, other, timestamp=NOW)
    result = validate_new_device(
        author=outsider.device_id,
        author_verify_key=outsider.verify_key,
        device_certificate=blob,
        redacted_device_certificate=blob,
        now=NOW,
    )
    assert result.device.device_label is None


def test_new_device_signed_by_another_device() -> None:
    assert_error(new_device_error(signer=BOB), "invalid_certification", forged())
    good, _ = certgen.new_device_certificates(ALICE, ALICE2, timestamp=NOW)
    _, bad = certgen.new_device_certificates(ALICE2, ALICE2, timestamp=NOW)
    exc = fail(
        validate_new_device,
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        device_certificate=good,
        redacted_device_certificate=bad,
        now=NOW,
    )
    assert_error(exc, "invalid_certification", forged())


def test_new_device_certificate_checked_before_redacted() -> None:
    exc = new_device_error(device_overrides={"author": "x@y"}, redacted_device_overrides={"type": "z"})
    assert exc.reason == "Invalid certification data (Invalid author: expected `alice@dev1`, got `x@y`)."


def test_new_device_timestamp_too_old() -> None:
    exc = new_device_error(ts=NOW - timedelta(seconds=3601))
    assert_error(exc, "invalid_certification", "Invalid timestamp in certification.")


def test_new_device_for_another_user() -> None:
    exc = new_device_error(device=LocalDevice.generate("bob@dev9"))
    assert_error(exc, "bad_user_id", "Device must be handled by it own user.")


def test_new_device_check_order() -> None:
    exc = new_device_error(device=LocalDevice.generate("bob@dev9"), now=NOW + timedelta(seconds=70))
    assert exc.reason == "Invalid timestamp in certification."
    exc = new_device_error(
        device=LocalDevice.generate("bob@dev9"), redacted_device_overrides={"device_label": "x"}
    )
    assert status_of(exc) == "bad_user_id"


@pytest.mark.parametrize(
    "overrides",
    [
        {"timestamp": NOW + timedelta(seconds=1)},
        {"device_id": "alice@dev3"},
        {"verify_key": b"\x00" * 32},
    ],
)
def test_new_device_redacted_differs(overrides: dict[str, Any]) -> None:
    exc = new_device_error(redacted_device_overrides=overrides)
    assert_error(exc, "invalid_data", "Redacted Device certificate differs from Device certificate.")


def test_new_device_full_as_redacted() -> None:
    blob, _ = certgen.new_device_certificates(ALICE, ALICE2, timestamp=NOW)
    exc = fail(
        validate_new_device,
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        device_certificate=blob,
        redacted_device_certificate=blob,
        now=NOW,
    )
    assert_error(exc, "invalid_data", "Redacted Device certificate must not contain a device_label field.")


# ---------------------------------------------------------------------------------------------
# user_revoke (§6.5)
# ---------------------------------------------------------------------------------------------


def revoke(
    user_id: str = "bob",
    *,
    author: LocalDevice = ALICE,
    signer: LocalDevice | None = None,
    ts: datetime = NOW,
    now: datetime = NOW,
    **overrides: Any,
) -> c.RevokedUserCertificate:
    fields: dict[str, Any] = {"author": author.device_id, "user_id": user_id, "timestamp": ts, **overrides}
    blob = certgen.revoked_user_certificate((signer or author).signing_key, **fields)
    return validate_revoked_user(blob, author=author.device_id, author_verify_key=author.verify_key, now=now)


def test_revoke_ok() -> None:
    cert = revoke()
    assert (cert.user_id, cert.author, cert.timestamp) == ("bob", "alice@dev1", NOW)


def test_revoke_signed_by_another_device_of_the_same_user() -> None:
    assert_error(fail(revoke, signer=ALICE2), "invalid_certification", forged())


def test_revoke_wrong_author() -> None:
    blob = ALICE.revoked_user_certificate(user_id="bob", timestamp=NOW, author="alice@dev2")
    exc = fail(
        validate_revoked_user,
        revoked_user_certificate=blob,
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        now=NOW,
    )
    assert_error(
        exc,
        "invalid_certification",
        "Invalid certification data (Invalid author: expected `alice@dev1`, got `alice@dev2`).",
    )


def test_revoke_root_signed_refused() -> None:
    blob = certgen.revoked_user_certificate(ROOT, author=None, user_id="bob", timestamp=NOW)
    exc = fail(
        validate_revoked_user,
        revoked_user_certificate=blob,
        author=ALICE.device_id,
        author_verify_key=ROOT_VK,
        now=NOW,
    )
    assert_error(
        exc, "invalid_certification", "Invalid certification data ({'author': ['Field may not be null.']})."
    )


def test_revoke_timestamp_too_old() -> None:
    exc = fail(revoke, ts=NOW - timedelta(seconds=3601))
    assert_error(exc, "invalid_certification", "Invalid timestamp in certification.")


def test_revoke_self() -> None:
    assert_error(fail(revoke, user_id="alice"), "not_allowed", "Cannot do self-revocation")
    # Whichever device of the user signs.
    assert_error(fail(revoke, user_id="alice", author=ALICE2), "not_allowed", "Cannot do self-revocation")


def test_revoke_ballpark_before_self() -> None:
    exc = fail(revoke, user_id="alice", ts=NOW - timedelta(seconds=3601))
    assert exc.reason == "Invalid timestamp in certification."


# ---------------------------------------------------------------------------------------------
# realm_create (§9.1) / realm_update_roles (§9.5)
# ---------------------------------------------------------------------------------------------


def role(
    user_id: str,
    role_: str | None,
    *,
    initial: bool,
    author: LocalDevice = ALICE,
    signer: LocalDevice | None = None,
    ts: datetime = NOW,
    now: datetime = NOW,
    **overrides: Any,
) -> c.RealmRoleCertificate:
    fields: dict[str, Any] = {
        "author": author.device_id,
        "realm_id": REALM,
        "user_id": user_id,
        "role": role_,
        "timestamp": ts,
        **overrides,
    }
    blob = certgen.realm_role_certificate((signer or author).signing_key, **fields)
    return validate_realm_role(
        blob, author=author.device_id, author_verify_key=author.verify_key, now=now, initial=initial
    )


@pytest.mark.parametrize("author", [ALICE, LocalDevice.generate("out@pc", profile="OUTSIDER")])
def test_realm_create_ok(author: LocalDevice) -> None:
    cert = role(author.user_id, "OWNER", initial=True, author=author)
    assert (cert.realm_id, cert.user_id, cert.role, cert.author, cert.timestamp) == (
        REALM,
        author.user_id,
        "OWNER",
        author.device_id,
        NOW,
    )


def test_realm_create_signed_by_another_user() -> None:
    exc = fail(role, user_id="alice", role_="OWNER", initial=True, signer=BOB)
    assert_error(exc, "invalid_certification", forged())


def test_realm_create_not_self_signed() -> None:
    exc = fail(role, user_id="bob", role_="OWNER", initial=True)
    assert_error(exc, "invalid_data", "Initial realm role certificate must be self-signed.")


@pytest.mark.parametrize("role_", ["MANAGER", "CONTRIBUTOR", "READER", None])
def test_realm_create_not_owner(role_: str | None) -> None:
    exc = fail(role, user_id="alice", role_=role_, initial=True)
    assert_error(exc, "invalid_data", "Initial realm role certificate must set OWNER role.")


def test_realm_create_check_order() -> None:
    exc = fail(role, user_id="bob", role_="READER", initial=True, ts=NOW + timedelta(seconds=50))
    assert status_of(exc) == "bad_timestamp"
    assert (exc.client_timestamp, exc.backend_timestamp) == (NOW + timedelta(seconds=50), NOW)
    exc = fail(role, user_id="bob", role_="READER", initial=True)
    assert exc.reason == "Initial realm role certificate must be self-signed."


def test_realm_create_self_signed_by_other_device_of_the_user() -> None:
    assert role("alice", "OWNER", initial=True, author=ALICE2).author == "alice@dev2"


@pytest.mark.parametrize("role_", ["OWNER", "MANAGER", "CONTRIBUTOR", "READER", None])
def test_realm_update_ok(role_: str | None) -> None:
    cert = role("bob", role_, initial=False)
    assert (cert.user_id, cert.role) == ("bob", role_)


@pytest.mark.parametrize("role_", ["OWNER", None])
def test_realm_update_self_signed(role_: str | None) -> None:
    exc = fail(role, user_id="alice", role_=role_, initial=False)
    assert_error(exc, "invalid_data", "Realm role certificate cannot be self-signed.")


def test_realm_update_bad_timestamp_before_self_signed() -> None:
    ts = NOW - timedelta(seconds=70)
    exc = fail(role, user_id="alice", role_="READER", initial=False, ts=ts)
    assert (status_of(exc), exc.reason, exc.client_timestamp, exc.backend_timestamp) == (
        "bad_timestamp",
        None,
        ts,
        NOW,
    )


def test_realm_update_invalid_certification() -> None:
    exc = fail(role, user_id="bob", role_="READER", initial=False, signer=MALLORY)
    assert_error(exc, "invalid_certification", forged())
    exc = fail(role, user_id="bob", role_="READER", initial=False, author=ALICE, realm_id="nope")
    assert_error(exc, "invalid_certification", "Invalid certification data ({'realm_id': ['Not an UUID']}).")
    exc = fail(role, user_id="bob", role_="READER", initial=False, author=ALICE, role="BOSS")
    assert_error(
        exc, "invalid_certification", "Invalid certification data ({'role': ['Invalid role `BOSS`']})."
    )


def test_realm_role_of_wrong_certificate_kind() -> None:
    blob = ALICE.revoked_user_certificate(user_id="bob", timestamp=NOW)
    exc = fail(
        validate_realm_role,
        role_certificate=blob,
        author=ALICE.device_id,
        author_verify_key=ALICE.verify_key,
        now=NOW,
        initial=False,
    )
    assert status_of(exc) == "invalid_certification"
    assert exc.reason is not None and exc.reason.startswith(
        "Invalid certification data ({'type': ['Invalid value, should be `realm_role_certificate`']"
    )
