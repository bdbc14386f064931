"""Build signed certificates and PKI payloads for tests, including malformed ones.

Every ``*_fields`` function returns the msgpack map of a certificate as a plain dict. Any
keyword may be given any value (wrong types included); pass `OMIT` to drop a key and extra
keywords to add unknown keys. `sign_fields` turns a map into ``signature || zlib(msgpack)``;
`sign_message` signs arbitrary bytes (to build blobs with broken compression/msgpack).

`LocalDevice` is a device with its keys; `new_user_certificates` / `new_device_certificates`
produce the certificate sets that organization_bootstrap, user_create, pki_enrollment_accept
and device_create expect.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import attrs
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from parsec.api import ids
from parsec.api.codec import packb

OMIT: Any = type("_Omit", (), {"__repr__": lambda self: "OMIT"})()
_AUTO: Any = type("_Auto", (), {"__repr__": lambda self: "AUTO"})()

DEFAULT_TIMESTAMP = datetime(2000, 1, 2, 3, 4, 5, tzinfo=UTC)


def _drop_omitted(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in fields.items() if value is not OMIT}


def compress_fields(fields: Mapping[Any, Any] | Any) -> bytes:
    """``zlib(msgpack(fields))``; fields may be any msgpack-able value (e.g. a list)."""
    return zlib.compress(packb(fields))


def sign_message(signing_key: SigningKey, message: bytes) -> bytes:
    """``signature(64) || message``."""
    return bytes(signing_key.sign(message))


def sign_fields(signing_key: SigningKey, fields: Mapping[Any, Any] | Any) -> bytes:
    return sign_message(signing_key, compress_fields(fields))


def generate_signing_key(seed: bytes | None = None) -> SigningKey:
    return SigningKey(seed) if seed is not None else SigningKey.generate()


# ---------------------------------------------------------------------------------------------
# Certificate maps
# ---------------------------------------------------------------------------------------------


def user_certificate_fields(
    *,
    author: Any,
    user_id: Any,
    public_key: Any,
    timestamp: Any = DEFAULT_TIMESTAMP,
    human_handle: Any = None,
    profile: Any = "STANDARD",
    is_admin: Any = _AUTO,
    type: Any = "user_certificate",
    **extra: Any,
) -> dict[str, Any]:
    """`is_admin` defaults to ``profile == "ADMIN"`` as real clients write it; a tuple
    `human_handle` is sent as a 2-element array."""
    if is_admin is _AUTO:
        is_admin = profile == "ADMIN"
    if isinstance(human_handle, tuple):
        human_handle = list(human_handle)
    return _drop_omitted(
        {
            "type": type,
            "author": author,
            "timestamp": timestamp,
            "user_id": user_id,
            "human_handle": human_handle,
            "public_key": public_key,
            "is_admin": is_admin,
            "profile": profile,
            **extra,
        }
    )


def device_certificate_fields(
    *,
    author: Any,
    device_id: Any,
    verify_key: Any,
    timestamp: Any = DEFAULT_TIMESTAMP,
    device_label: Any = None,
    type: Any = "device_certificate",
    **extra: Any,
) -> dict[str, Any]:
    return _drop_omitted(
        {
            "type": type,
            "author": author,
            "timestamp": timestamp,
            "device_id": device_id,
            "device_label": device_label,
            "verify_key": verify_key,
            **extra,
        }
    )


def revoked_user_certificate_fields(
    *,
    author: Any,
    user_id: Any,
    timestamp: Any = DEFAULT_TIMESTAMP,
    type: Any = "revoked_user_certificate",
    **extra: Any,
) -> dict[str, Any]:
    return _drop_omitted(
        {"type": type, "author": author, "timestamp": timestamp, "user_id": user_id, **extra}
    )


def realm_role_certificate_fields(
    *,
    author: Any,
    realm_id: Any,
    user_id: Any,
    role: Any,
    timestamp: Any = DEFAULT_TIMESTAMP,
    type: Any = "realm_role_certificate",
    **extra: Any,
) -> dict[str, Any]:
    return _drop_omitted(
        {
            "type": type,
            "author": author,
            "timestamp": timestamp,
            "realm_id": realm_id,
            "user_id": user_id,
            "role": role,
            **extra,
        }
    )


def user_certificate(signing_key: SigningKey, **fields: Any) -> bytes:
    return sign_fields(signing_key, user_certificate_fields(**fields))


def device_certificate(signing_key: SigningKey, **fields: Any) -> bytes:
    return sign_fields(signing_key, device_certificate_fields(**fields))


def revoked_user_certificate(signing_key: SigningKey, **fields: Any) -> bytes:
    return sign_fields(signing_key, revoked_user_certificate_fields(**fields))


def realm_role_certificate(signing_key: SigningKey, **fields: Any) -> bytes:
    return sign_fields(signing_key, realm_role_certificate_fields(**fields))


# ---------------------------------------------------------------------------------------------
# PKI payloads (unsigned)
# ---------------------------------------------------------------------------------------------


def pki_submit_payload_fields(
    *,
    verify_key: Any = b"v" * 32,
    public_key: Any = b"p" * 32,
    requested_device_label: Any = "My laptop",
    type: Any = "pki_enrollment_submit_payload",
    **extra: Any,
) -> dict[str, Any]:
    return _drop_omitted(
        {
            "type": type,
            "verify_key": verify_key,
            "public_key": public_key,
            "requested_device_label": requested_device_label,
            **extra,
        }
    )


def pki_accept_payload_fields(
    *,
    device_id: Any = "alice@laptop",
    device_label: Any = "My laptop",
    human_handle: Any = ("alice@example.com", "Alice"),
    profile: Any = "STANDARD",
    root_verify_key: Any = b"r" * 32,
    type: Any = "pki_enrollment_answer_payload",
    **extra: Any,
) -> dict[str, Any]:
    if isinstance(human_handle, tuple):
        human_handle = list(human_handle)
    return _drop_omitted(
        {
            "type": type,
            "device_id": device_id,
            "device_label": device_label,
            "human_handle": human_handle,
            "profile": profile,
            "root_verify_key": root_verify_key,
            **extra,
        }
    )


def pki_submit_payload(**fields: Any) -> bytes:
    return compress_fields(pki_submit_payload_fields(**fields))


def pki_accept_payload(**fields: Any) -> bytes:
    return compress_fields(pki_accept_payload_fields(**fields))


# ---------------------------------------------------------------------------------------------
# Local devices
# ---------------------------------------------------------------------------------------------


@attrs.frozen
class LocalDevice:
    """A device as a client holds it: identity, Ed25519 signing key, X25519 private key (the
    user's), and the attributes written in its certificates."""

    device_id: str
    signing_key: SigningKey
    private_key: PrivateKey
    profile: str = "STANDARD"
    human_handle: tuple[str, str] | None = None
    device_label: str | None = None

    @classmethod
    def generate(
        cls,
        device_id: str,
        *,
        profile: str = "STANDARD",
        human_handle: tuple[str, str] | None = None,
        device_label: str | None = None,
        seed: bytes | None = None,
    ) -> LocalDevice:
        """`seed` (32 bytes) makes both keys deterministic."""
        if seed is not None:
            signing_key = SigningKey(seed)
            private_key = PrivateKey(bytes(b ^ 0x5A for b in seed))
        else:
            signing_key = SigningKey.generate()
            private_key = PrivateKey.generate()
        return cls(
            device_id=device_id,
            signing_key=signing_key,
            private_key=private_key,
            profile=profile,
            human_handle=human_handle,
            device_label=device_label,
        )

    @property
    def user_id(self) -> str:
        return ids.user_of(self.device_id)

    @property
    def verify_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def public_key(self) -> bytes:
        return bytes(self.private_key.public_key)

    def sign(self, message: bytes) -> bytes:
        return sign_message(self.signing_key, message)

    def new_device(self, device_name: str, *, device_label: str | None = None) -> LocalDevice:
        """Another device of the same user (same X25519 key, new signing key)."""
        return attrs.evolve(
            self,
            device_id=f"{self.user_id}@{device_name}",
            signing_key=SigningKey.generate(),
            device_label=device_label,
        )

    def realm_role_certificate(
        self, *, realm_id: UUID, user_id: str, role: str | None, timestamp: datetime, **overrides: Any
    ) -> bytes:
        fields: dict[str, Any] = {
            "author": self.device_id,
            "realm_id": realm_id,
            "user_id": user_id,
            "role": role,
            "timestamp": timestamp,
            **overrides,
        }
        return realm_role_certificate(self.signing_key, **fields)

    def revoked_user_certificate(self, *, user_id: str, timestamp: datetime, **overrides: Any) -> bytes:
        fields: dict[str, Any] = {
            "author": self.device_id,
            "user_id": user_id,
            "timestamp": timestamp,
            **overrides,
        }
        return revoked_user_certificate(self.signing_key, **fields)


@attrs.frozen
class NewUserBlobs:
    user_certificate: bytes
    device_certificate: bytes
    redacted_user_certificate: bytes
    redacted_device_certificate: bytes

    def as_request(self) -> dict[str, bytes]:
        return attrs.asdict(self)


def new_user_certificates(
    signing_key: SigningKey,
    author: str | None,
    device: LocalDevice,
    *,
    timestamp: datetime,
    user_overrides: Mapping[str, Any] | None = None,
    device_overrides: Mapping[str, Any] | None = None,
    redacted_user_overrides: Mapping[str, Any] | None = None,
    redacted_device_overrides: Mapping[str, Any] | None = None,
) -> NewUserBlobs:
    """The four certificates creating ``device``'s user, signed by ``signing_key`` with
    ``author`` (None with the root key for organization_bootstrap). Overrides replace fields
    of one certificate (use `OMIT` to drop a key)."""
    user_base: dict[str, Any] = {
        "author": author,
        "timestamp": timestamp,
        "user_id": device.user_id,
        "public_key": device.public_key,
        "profile": device.profile,
    }
    device_base: dict[str, Any] = {
        "author": author,
        "timestamp": timestamp,
        "device_id": device.device_id,
        "verify_key": device.verify_key,
    }
    return NewUserBlobs(
        user_certificate=user_certificate(
            signing_key, **{**user_base, "human_handle": device.human_handle, **(user_overrides or {})}
        ),
        device_certificate=device_certificate(
            signing_key, **{**device_base, "device_label": device.device_label, **(device_overrides or {})}
        ),
        redacted_user_certificate=user_certificate(
            signing_key, **{**user_base, "human_handle": None, **(redacted_user_overrides or {})}
        ),
        redacted_device_certificate=device_certificate(
            signing_key, **{**device_base, "device_label": None, **(redacted_device_overrides or {})}
        ),
    )


def new_device_certificates(
    author: LocalDevice,
    device: LocalDevice,
    *,
    timestamp: datetime,
    device_overrides: Mapping[str, Any] | None = None,
    redacted_device_overrides: Mapping[str, Any] | None = None,
) -> tuple[bytes, bytes]:
    """(device_certificate, redacted_device_certificate) of ``device``, signed by ``author``."""
    base: dict[str, Any] = {
        "author": author.device_id,
        "timestamp": timestamp,
        "device_id": device.device_id,
        "verify_key": device.verify_key,
    }
    return (
        device_certificate(
            author.signing_key, **{**base, "device_label": device.device_label, **(device_overrides or {})}
        ),
        device_certificate(
            author.signing_key, **{**base, "device_label": None, **(redacted_device_overrides or {})}
        ),
    )
