"""Signed certificates and PKI payloads (docs/protocol/data-formats.md §2-§6).

A signed certificate is ``signature (64 bytes) || zlib(msgpack map)``. Loading one:

1. Ed25519-verify with the expected author's key (`Signature was forged or corrupt`);
2. zlib-decompress (the zlib error text; output capped at `MAX_DECOMPRESSED_SIZE`);
3. msgpack-decode with `parsec.api.codec` (`Invalid msgpack data: ...`);
4. validate the map (the dict repr of the field errors);
5. compare the `author` field with the expected author.

Every failure raises `CertificateError` whose `str()` is the detail text; commands wrap it
as ``Invalid certification data (<text>).``. The ``validate_*`` functions run the compound
checks of docs/protocol/commands.md (§5.1, §6.1, §6.4, §6.5, §9.1, §9.5) and raise a
`CertificateValidationError` subclass (which check failed, and the reply's reason text): the
command layer chooses the reply status.

This module is pure: no I/O, no clock (``now`` is always a parameter).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from uuid import UUID

import attrs
import nacl.exceptions
import nacl.signing

from parsec import limits
from parsec.api import ids
from parsec.api.ballpark import timestamp_in_ballpark
from parsec.api.codec import DecodeError, unpackb
from parsec.api.schema import (
    Bool,
    Constant,
    DateTime,
    Enum,
    Field,
    FieldError,
    Identifier,
    Schema,
    Uuid,
    ValidationError,
)
from parsec.limits import DEFAULT as _LIMITS

__all__ = [
    "DEVICE_CERTIFICATE_TYPE",
    "MAX_DECOMPRESSED_SIZE",
    "PKI_ENROLLMENT_ACCEPT_PAYLOAD_TYPE",
    "PKI_ENROLLMENT_SUBMIT_PAYLOAD_TYPE",
    "REALM_ROLE_CERTIFICATE_TYPE",
    "REVOKED_USER_CERTIFICATE_TYPE",
    "SIGNATURE_SIZE",
    "USER_CERTIFICATE_TYPE",
    "CertificateError",
    "CertificateValidationError",
    "DeviceCertificate",
    "DeviceOfAnotherUserError",
    "InvalidCertificateDataError",
    "InvalidCertificationError",
    "NewDeviceCertificates",
    "NewUserCertificates",
    "PkiEnrollmentAcceptPayload",
    "PkiEnrollmentSubmitPayload",
    "RealmRoleCertificate",
    "RevokedUserCertificate",
    "SelfRevocationError",
    "TimestampOutOfBallparkError",
    "UserCertificate",
    "load_device_certificate",
    "load_pki_accept_payload",
    "load_pki_submit_payload",
    "load_realm_role_certificate",
    "load_revoked_user_certificate",
    "load_user_certificate",
    "unsecure_load_device_certificate",
    "unsecure_load_realm_role_certificate",
    "unsecure_load_revoked_user_certificate",
    "unsecure_load_user_certificate",
    "validate_bootstrap",
    "validate_new_device",
    "validate_new_user",
    "validate_realm_role",
    "validate_revoked_user",
]

SIGNATURE_SIZE = 64
VERIFY_KEY_SIZE = 32
# A genuine certificate or PKI payload decompresses to well under 1 KiB; anything above this
# cap is refused instead of being inflated in memory (zlib ratios reach ~1000:1).
MAX_DECOMPRESSED_SIZE = _LIMITS.decompressed_bytes

USER_CERTIFICATE_TYPE = "user_certificate"
DEVICE_CERTIFICATE_TYPE = "device_certificate"
REVOKED_USER_CERTIFICATE_TYPE = "revoked_user_certificate"
REALM_ROLE_CERTIFICATE_TYPE = "realm_role_certificate"
PKI_ENROLLMENT_SUBMIT_PAYLOAD_TYPE = "pki_enrollment_submit_payload"
PKI_ENROLLMENT_ACCEPT_PAYLOAD_TYPE = "pki_enrollment_answer_payload"

SIGNATURE_ERROR = "Signature was forged or corrupt"
TRUNCATED_ZLIB_ERROR = "Error -5 while decompressing data: incomplete or truncated stream"
TOO_LARGE_ERROR = f"Decompressed data exceeds {MAX_DECOMPRESSED_SIZE} bytes"
INCOMPATIBLE_PROFILE_ERROR = "Fields `profile` and `is_admin` have incompatible values"
ROOT_AUTHOR_REPR = "<root key>"

class CertificateError(Exception):
    """A signed certificate or payload could not be verified or decoded.

    ``str(exc)`` is the detail text, e.g. ``Signature was forged or corrupt``.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class CertificateValidationError(Exception):
    """A compound certificate check of a command failed. The subclass says which check (the
    command layer, parsec.backend.command, maps it to its reply status); ``reason`` is the
    exact text of the reply."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"{type(self).__name__}: {self.reason}"


class InvalidCertificationError(CertificateValidationError):
    """A certificate does not verify or decode, or is not signed by whom it must be."""


class InvalidCertificateDataError(CertificateValidationError):
    """The certificates verify but contradict each other or the request."""


class DeviceOfAnotherUserError(CertificateValidationError):
    """A new device certificate names another user than its author's."""


class SelfRevocationError(CertificateValidationError):
    """A user revocation certificate revokes its own author."""


class TimestampOutOfBallparkError(CertificateValidationError):
    """A certificate's timestamp is outside the ballpark (parsec.api.ballpark) of
    ``backend_timestamp``, the `now` of the check. No reason text."""

    def __init__(self, *, client_timestamp: datetime, backend_timestamp: datetime) -> None:
        super().__init__(None)
        self.client_timestamp = client_timestamp
        self.backend_timestamp = backend_timestamp

    def __str__(self) -> str:
        return f"{type(self).__name__}: {self.client_timestamp} (server time {self.backend_timestamp})"


# ---------------------------------------------------------------------------------------------
# Decoded objects
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class UserCertificate:
    TYPE: ClassVar[str] = USER_CERTIFICATE_TYPE

    author: str | None  # None = signed by the organization root key
    timestamp: datetime
    user_id: str
    human_handle: tuple[str, str] | None  # (email, label)
    public_key: bytes
    profile: str  # one of ids.USER_PROFILES

    @property
    def is_admin(self) -> bool:
        return self.profile == "ADMIN"


@attrs.frozen(kw_only=True)
class DeviceCertificate:
    TYPE: ClassVar[str] = DEVICE_CERTIFICATE_TYPE

    author: str | None  # None = signed by the organization root key
    timestamp: datetime
    device_id: str
    device_label: str | None
    verify_key: bytes

    @property
    def user_id(self) -> str:
        return ids.user_of(self.device_id)


@attrs.frozen(kw_only=True)
class RevokedUserCertificate:
    TYPE: ClassVar[str] = REVOKED_USER_CERTIFICATE_TYPE

    author: str
    timestamp: datetime
    user_id: str


@attrs.frozen(kw_only=True)
class RealmRoleCertificate:
    TYPE: ClassVar[str] = REALM_ROLE_CERTIFICATE_TYPE

    author: str
    timestamp: datetime
    realm_id: UUID
    user_id: str
    role: str | None  # one of ids.REALM_ROLES; None = role removed


@attrs.frozen(kw_only=True)
class PkiEnrollmentSubmitPayload:
    TYPE: ClassVar[str] = PKI_ENROLLMENT_SUBMIT_PAYLOAD_TYPE

    verify_key: bytes
    public_key: bytes
    requested_device_label: str


@attrs.frozen(kw_only=True)
class PkiEnrollmentAcceptPayload:
    TYPE: ClassVar[str] = PKI_ENROLLMENT_ACCEPT_PAYLOAD_TYPE

    device_id: str
    device_label: str | None
    human_handle: tuple[str, str] | None
    profile: str
    root_verify_key: bytes


@attrs.frozen(kw_only=True)
class NewUserCertificates:
    """Result of `validate_bootstrap` / `validate_new_user`: decoded certificates and the exact
    bytes to store. For an APIv1 bootstrap without redacted certificates, the redacted fields
    hold the full certificates (the reference stores them as their own redacted copies)."""

    user: UserCertificate
    device: DeviceCertificate
    redacted_user: UserCertificate
    redacted_device: DeviceCertificate
    user_certificate: bytes
    device_certificate: bytes
    redacted_user_certificate: bytes
    redacted_device_certificate: bytes


@attrs.frozen(kw_only=True)
class NewDeviceCertificates:
    """Result of `validate_new_device`."""

    device: DeviceCertificate
    redacted_device: DeviceCertificate
    device_certificate: bytes
    redacted_device_certificate: bytes


# ---------------------------------------------------------------------------------------------
# Field types whose error texts follow the reference's certificate schemas
# ---------------------------------------------------------------------------------------------


class _Key32(Field):
    """Ed25519 verify key or X25519 public key: the reference says `Invalid verify key.` for
    both kinds and for any bad value (wrong size or not bytes)."""

    def convert(self, value: Any) -> Any:
        if not isinstance(value, bytes) or len(value) != VERIFY_KEY_SIZE:
            raise FieldError("Invalid verify key.")
        return value


class _Choice(Enum):
    """Enum value: `Not string` for a non-str, else `Invalid role `<value>``."""

    def convert(self, value: Any) -> Any:
        if not isinstance(value, str):
            raise FieldError("Not string")
        return super().convert(value)


class _HumanHandle(Field):
    """``[email, label]`` -> ``(email, label)``."""

    def convert(self, value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise FieldError("Not a valid tuple type.")
        if any(item is None for item in value):
            raise FieldError("Field may not be null.")
        if not all(isinstance(item, str) for item in value):
            raise FieldError("Not a valid string.")
        try:
            return ids.human_handle(value)
        except ids.InvalidId:
            # The reference crashes here (uncaught ValueError); we refuse the data instead.
            raise FieldError("Invalid data") from None


def _common_fields(type_: str, *, root_author_allowed: bool) -> dict[str, Field]:
    return {
        "type": Constant(type_),
        "author": Identifier(ids.device_id, allow_none=root_author_allowed),
        "timestamp": DateTime(),
    }


_USER_SCHEMA = Schema(
    _common_fields(USER_CERTIFICATE_TYPE, root_author_allowed=True),
    user_id=Identifier(ids.user_id),
    human_handle=_HumanHandle(required=False, allow_none=True, default=None),
    public_key=_Key32(),
    is_admin=Bool(),
    profile=_Choice(ids.USER_PROFILES, required=False),
)

_DEVICE_SCHEMA = Schema(
    _common_fields(DEVICE_CERTIFICATE_TYPE, root_author_allowed=True),
    device_id=Identifier(ids.device_id),
    device_label=Identifier(ids.device_label, required=False, allow_none=True, default=None),
    verify_key=_Key32(),
)

_REVOKED_USER_SCHEMA = Schema(
    _common_fields(REVOKED_USER_CERTIFICATE_TYPE, root_author_allowed=False),
    user_id=Identifier(ids.user_id),
)

_REALM_ROLE_SCHEMA = Schema(
    _common_fields(REALM_ROLE_CERTIFICATE_TYPE, root_author_allowed=False),
    realm_id=Uuid(),
    user_id=Identifier(ids.user_id),
    role=_Choice(ids.REALM_ROLES, allow_none=True),
)

_PKI_SUBMIT_SCHEMA = Schema(
    type=Constant(PKI_ENROLLMENT_SUBMIT_PAYLOAD_TYPE),
    verify_key=_Key32(),
    public_key=_Key32(),
    requested_device_label=Identifier(ids.device_label),
)

_PKI_ACCEPT_SCHEMA = Schema(
    type=Constant(PKI_ENROLLMENT_ACCEPT_PAYLOAD_TYPE),
    device_id=Identifier(ids.device_id),
    device_label=Identifier(ids.device_label, allow_none=True),
    human_handle=_HumanHandle(allow_none=True),
    profile=_Choice(ids.USER_PROFILES),
    root_verify_key=_Key32(),
)


def _build_user(data: dict[str, Any]) -> UserCertificate:
    # Legacy rule: `is_admin` is required; a missing `profile` derives from it, and an admin
    # flag with a non-ADMIN profile is contradictory (the reverse is accepted).
    profile = data.get("profile")
    if profile is None:
        profile = "ADMIN" if data["is_admin"] else "STANDARD"
    elif data["is_admin"] and profile != "ADMIN":
        raise ValidationError({"_schema": [INCOMPATIBLE_PROFILE_ERROR]})
    return UserCertificate(
        author=data["author"],
        timestamp=data["timestamp"],
        user_id=data["user_id"],
        human_handle=data["human_handle"],
        public_key=data["public_key"],
        profile=profile,
    )


def _build_device(data: dict[str, Any]) -> DeviceCertificate:
    return DeviceCertificate(
        author=data["author"],
        timestamp=data["timestamp"],
        device_id=data["device_id"],
        device_label=data["device_label"],
        verify_key=data["verify_key"],
    )


def _build_revoked_user(data: dict[str, Any]) -> RevokedUserCertificate:
    return RevokedUserCertificate(author=data["author"], timestamp=data["timestamp"], user_id=data["user_id"])


def _build_realm_role(data: dict[str, Any]) -> RealmRoleCertificate:
    return RealmRoleCertificate(
        author=data["author"],
        timestamp=data["timestamp"],
        realm_id=data["realm_id"],
        user_id=data["user_id"],
        role=data["role"],
    )


def _build_pki_submit(data: dict[str, Any]) -> PkiEnrollmentSubmitPayload:
    return PkiEnrollmentSubmitPayload(
        verify_key=data["verify_key"],
        public_key=data["public_key"],
        requested_device_label=data["requested_device_label"],
    )


def _build_pki_accept(data: dict[str, Any]) -> PkiEnrollmentAcceptPayload:
    return PkiEnrollmentAcceptPayload(
        device_id=data["device_id"],
        device_label=data["device_label"],
        human_handle=data["human_handle"],
        profile=data["profile"],
        root_verify_key=data["root_verify_key"],
    )


# ---------------------------------------------------------------------------------------------
# Decoding pipeline
# ---------------------------------------------------------------------------------------------

_T = TypeVar("_T")


def _verify(signed: bytes, author_verify_key: bytes) -> bytes:
    """Step 1: returns the signed message, or raises CertificateError."""
    if not isinstance(author_verify_key, bytes) or len(author_verify_key) != VERIFY_KEY_SIZE:
        # A caller bug (keys are validated before reaching here), not a certificate problem.
        raise ValueError("author_verify_key must be 32 bytes")
    if len(signed) < SIGNATURE_SIZE:
        raise CertificateError(SIGNATURE_ERROR)
    try:
        return nacl.signing.VerifyKey(author_verify_key).verify(bytes(signed))
    except nacl.exceptions.CryptoError:
        raise CertificateError(SIGNATURE_ERROR) from None


def _decompress(data: bytes) -> bytes:
    """Step 2: `zlib.decompress` semantics and error texts, output capped.

    As with `zlib.decompress`, bytes after the end of the zlib stream are ignored.
    """
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED_SIZE + 1)
    except zlib.error as exc:
        raise CertificateError(str(exc)) from None
    if len(out) > MAX_DECOMPRESSED_SIZE:
        limits.hit("decompressed_bytes")
        raise CertificateError(TOO_LARGE_ERROR)
    if not inflater.eof:
        # Output below the cap means every input byte was consumed: the stream is incomplete.
        raise CertificateError(TRUNCATED_ZLIB_ERROR)
    return out


def _decode(message: bytes, schema: Schema, build: Callable[[dict[str, Any]], _T]) -> _T:
    """Steps 2-4 on an unsigned message (`zlib(msgpack map)`)."""
    raw = _decompress(message)
    try:
        data = unpackb(raw)
    except DecodeError as exc:
        raise CertificateError(str(exc)) from None
    try:
        return build(schema.load(data))
    except ValidationError as exc:
        raise CertificateError(str(exc)) from None


def _check_author(author: str | None, expected_author: str | None) -> None:
    """Step 5."""
    if author != expected_author:
        expected = expected_author if expected_author is not None else ROOT_AUTHOR_REPR
        raise CertificateError(f"Invalid author: expected `{expected}`, got `{author}`")


def load_user_certificate(
    signed: bytes, author_verify_key: bytes, expected_author: str | None
) -> UserCertificate:
    """Verify and decode a user certificate; ``expected_author`` None means root-signed."""
    cert = _decode(_verify(signed, author_verify_key), _USER_SCHEMA, _build_user)
    _check_author(cert.author, expected_author)
    return cert


def load_device_certificate(
    signed: bytes, author_verify_key: bytes, expected_author: str | None
) -> DeviceCertificate:
    """Verify and decode a device certificate; ``expected_author`` None means root-signed."""
    cert = _decode(_verify(signed, author_verify_key), _DEVICE_SCHEMA, _build_device)
    _check_author(cert.author, expected_author)
    return cert


def load_revoked_user_certificate(
    signed: bytes, author_verify_key: bytes, expected_author: str | None
) -> RevokedUserCertificate:
    """Verify and decode a revoked user certificate (its author can never be nil)."""
    cert = _decode(_verify(signed, author_verify_key), _REVOKED_USER_SCHEMA, _build_revoked_user)
    _check_author(cert.author, expected_author)
    return cert


def load_realm_role_certificate(
    signed: bytes, author_verify_key: bytes, expected_author: str | None
) -> RealmRoleCertificate:
    """Verify and decode a realm role certificate (its author can never be nil)."""
    cert = _decode(_verify(signed, author_verify_key), _REALM_ROLE_SCHEMA, _build_realm_role)
    _check_author(cert.author, expected_author)
    return cert


def _unsigned_part(signed: bytes) -> bytes:
    return bytes(signed[SIGNATURE_SIZE:])


def unsecure_load_user_certificate(signed: bytes) -> UserCertificate:
    """Decode without verifying the signature nor the author (trusted stored blobs)."""
    return _decode(_unsigned_part(signed), _USER_SCHEMA, _build_user)


def unsecure_load_device_certificate(signed: bytes) -> DeviceCertificate:
    """Decode without verifying the signature nor the author (trusted stored blobs)."""
    return _decode(_unsigned_part(signed), _DEVICE_SCHEMA, _build_device)


def unsecure_load_revoked_user_certificate(signed: bytes) -> RevokedUserCertificate:
    """Decode without verifying the signature nor the author (trusted stored blobs)."""
    return _decode(_unsigned_part(signed), _REVOKED_USER_SCHEMA, _build_revoked_user)


def unsecure_load_realm_role_certificate(signed: bytes) -> RealmRoleCertificate:
    """Decode without verifying the signature nor the author (trusted stored blobs)."""
    return _decode(_unsigned_part(signed), _REALM_ROLE_SCHEMA, _build_realm_role)


def load_pki_submit_payload(raw: bytes) -> PkiEnrollmentSubmitPayload:
    """Decode a `submit_payload` (zlib(msgpack), unsigned); errors -> CertificateError."""
    return _decode(bytes(raw), _PKI_SUBMIT_SCHEMA, _build_pki_submit)


def load_pki_accept_payload(raw: bytes) -> PkiEnrollmentAcceptPayload:
    """Decode an `accept_payload` (zlib(msgpack), unsigned); errors -> CertificateError."""
    return _decode(bytes(raw), _PKI_ACCEPT_SCHEMA, _build_pki_accept)


# ---------------------------------------------------------------------------------------------
# Compound validations used by commands
# ---------------------------------------------------------------------------------------------


def _invalid_certification(exc: CertificateError) -> InvalidCertificationError:
    return InvalidCertificationError(f"Invalid certification data ({exc}).")


def _check_redacted_user(user: UserCertificate, redacted: UserCertificate) -> None:
    # A redacted certificate equals the full one once given the full one's human handle, so
    # a full certificate with a nil handle is a valid redacted certificate of itself.
    if attrs.evolve(redacted, human_handle=user.human_handle) != user:
        raise InvalidCertificateDataError("Redacted User certificate differs from User certificate."
        )
    if redacted.human_handle is not None:
        raise InvalidCertificateDataError("Redacted User certificate must not contain a human_handle field."
        )


def _check_redacted_device(device: DeviceCertificate, redacted: DeviceCertificate) -> None:
    if attrs.evolve(redacted, device_label=device.device_label) != device:
        raise InvalidCertificateDataError("Redacted Device certificate differs from Device certificate."
        )
    if redacted.device_label is not None:
        raise InvalidCertificateDataError("Redacted Device certificate must not contain a device_label field."
        )


def validate_bootstrap(
    *,
    root_verify_key: bytes,
    user_certificate: bytes,
    device_certificate: bytes,
    redacted_user_certificate: bytes | None,
    redacted_device_certificate: bytes | None,
    now: datetime,
) -> NewUserCertificates:
    """organization_bootstrap, docs/protocol/commands.md §5.1 steps 2-13.

    The redacted certificates are None only for the APIv1 flavour when the request omits
    them (the API >= 2.7 schema requires both). A ballpark failure raises
    TimestampOutOfBallparkError (`client_timestamp` = the user certificate's timestamp).
    """
    try:
        user = load_user_certificate(user_certificate, root_verify_key, None)
        device = load_device_certificate(device_certificate, root_verify_key, None)
        redacted_user = (
            load_user_certificate(redacted_user_certificate, root_verify_key, None)
            if redacted_user_certificate is not None
            else None
        )
        redacted_device = (
            load_device_certificate(redacted_device_certificate, root_verify_key, None)
            if redacted_device_certificate is not None
            else None
        )
    except CertificateError as exc:
        raise _invalid_certification(exc) from None

    if user.profile != "ADMIN":
        raise InvalidCertificateDataError("Bootstrapping user must have admin profile.")
    if user.timestamp != device.timestamp:
        raise InvalidCertificateDataError("Device and user certificates must have the same timestamp."
        )
    if user.user_id != device.user_id:
        raise InvalidCertificateDataError("Device and user must have the same user ID.")
    if not timestamp_in_ballpark(user.timestamp, now):
        raise TimestampOutOfBallparkError(client_timestamp=user.timestamp, backend_timestamp=now
        )
    if redacted_user is not None:
        _check_redacted_user(user, redacted_user)
    if redacted_device is not None:
        _check_redacted_device(device, redacted_device)
    if (redacted_user is None) != (redacted_device is None):
        raise InvalidCertificateDataError("Redacted user&device certificate muste be provided together"
        )

    return NewUserCertificates(
        user=user,
        device=device,
        redacted_user=redacted_user if redacted_user is not None else user,
        redacted_device=redacted_device if redacted_device is not None else device,
        user_certificate=user_certificate,
        device_certificate=device_certificate,
        redacted_user_certificate=(
            redacted_user_certificate if redacted_user_certificate is not None else user_certificate
        ),
        redacted_device_certificate=(
            redacted_device_certificate if redacted_device_certificate is not None else device_certificate
        ),
    )


def validate_new_user(
    *,
    author: str,
    author_verify_key: bytes,
    user_certificate: bytes,
    device_certificate: bytes,
    redacted_user_certificate: bytes,
    redacted_device_certificate: bytes,
    now: datetime,
) -> NewUserCertificates:
    """user_create and pki_enrollment_accept, docs/protocol/commands.md §6.1 (``author`` = connected device).

    No rule on the new user's profile here.
    """
    try:
        device = load_device_certificate(device_certificate, author_verify_key, author)
        user = load_user_certificate(user_certificate, author_verify_key, author)
        redacted_user = load_user_certificate(redacted_user_certificate, author_verify_key, author)
        redacted_device = load_device_certificate(redacted_device_certificate, author_verify_key, author)
    except CertificateError as exc:
        raise _invalid_certification(exc) from None

    if user.timestamp != device.timestamp:
        raise InvalidCertificateDataError("Device and User certificates must have the same timestamp."
        )
    if not timestamp_in_ballpark(user.timestamp, now):
        raise InvalidCertificationError("Invalid timestamp in certificate.")
    if user.user_id != device.user_id:
        raise InvalidCertificateDataError("Device and User must have the same user ID.")
    _check_redacted_user(user, redacted_user)
    _check_redacted_device(device, redacted_device)

    return NewUserCertificates(
        user=user,
        device=device,
        redacted_user=redacted_user,
        redacted_device=redacted_device,
        user_certificate=user_certificate,
        device_certificate=device_certificate,
        redacted_user_certificate=redacted_user_certificate,
        redacted_device_certificate=redacted_device_certificate,
    )


def validate_new_device(
    *,
    author: str,
    author_verify_key: bytes,
    device_certificate: bytes,
    redacted_device_certificate: bytes,
    now: datetime,
) -> NewDeviceCertificates:
    """device_create, docs/protocol/commands.md §6.4 steps 2-6 (``author`` = connected device)."""
    try:
        device = load_device_certificate(device_certificate, author_verify_key, author)
        redacted_device = load_device_certificate(redacted_device_certificate, author_verify_key, author)
    except CertificateError as exc:
        raise _invalid_certification(exc) from None

    if not timestamp_in_ballpark(device.timestamp, now):
        raise InvalidCertificationError("Invalid timestamp in certification.")
    if device.user_id != ids.user_of(author):
        raise DeviceOfAnotherUserError("Device must be handled by it own user.")
    _check_redacted_device(device, redacted_device)

    return NewDeviceCertificates(
        device=device,
        redacted_device=redacted_device,
        device_certificate=device_certificate,
        redacted_device_certificate=redacted_device_certificate,
    )


def validate_revoked_user(
    revoked_user_certificate: bytes,
    *,
    author: str,
    author_verify_key: bytes,
    now: datetime,
) -> RevokedUserCertificate:
    """user_revoke, docs/protocol/commands.md §6.5 steps 3-5 (step 5 raises SelfRevocationError)."""
    try:
        cert = load_revoked_user_certificate(revoked_user_certificate, author_verify_key, author)
    except CertificateError as exc:
        raise _invalid_certification(exc) from None

    if not timestamp_in_ballpark(cert.timestamp, now):
        raise InvalidCertificationError("Invalid timestamp in certification.")
    if cert.user_id == ids.user_of(author):
        raise SelfRevocationError("Cannot do self-revocation")
    return cert


def validate_realm_role(
    role_certificate: bytes,
    *,
    author: str,
    author_verify_key: bytes,
    now: datetime,
    initial: bool,
) -> RealmRoleCertificate:
    """realm_create (``initial=True``, §9.1 steps 2-5) or realm_update_roles
    (``initial=False``, §9.5 steps 3-5). A ballpark failure raises TimestampOutOfBallparkError."""
    try:
        cert = load_realm_role_certificate(role_certificate, author_verify_key, author)
    except CertificateError as exc:
        raise _invalid_certification(exc) from None

    if not timestamp_in_ballpark(cert.timestamp, now):
        raise TimestampOutOfBallparkError(client_timestamp=cert.timestamp, backend_timestamp=now
        )
    self_signed = cert.user_id == ids.user_of(author)
    if initial:
        if not self_signed:
            raise InvalidCertificateDataError("Initial realm role certificate must be self-signed."
            )
        if cert.role != "OWNER":
            raise InvalidCertificateDataError("Initial realm role certificate must set OWNER role."
            )
    elif self_signed:
        raise InvalidCertificateDataError("Realm role certificate cannot be self-signed.")
    return cert
