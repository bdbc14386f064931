"""Server side of the Parsec handshake, without any I/O (docs/protocol/handshake.md).

    hs = ServerHandshake()
    send(hs.build_challenge(now))
    answer = hs.process_answer(raw)      # AuthenticatedAnswer | InvitedAnswer | AnonymousV1Answer
    ... look the identity up in storage ...
    hs.check_signature(answer, verify_key)   # authenticated only
    send(hs.build_result("ok"))

Every failure is a `HandshakeFailed(result, help)`; `build_result` turns it
into the result message. A `help` text never carries a value the client sent (the
reference echoes `type` back, which let a few MiB of answer come back as a 12 MiB
error): validation messages that would are replaced by fixed ones, and every text is cut
at `handshake_help_chars` (docs/protocol/DECISIONS.md). After a non-ok result the caller drops the TCP
connection without a WebSocket Close frame.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from parsec.api import ids
from parsec.api import schema as s
from parsec.api.ballpark import BALLPARK_CLIENT_EARLY_OFFSET, BALLPARK_CLIENT_LATE_OFFSET
from parsec.api.codec import DecodeError, packb, unpackb
from parsec.limits import DEFAULT as _LIMITS

SUPPORTED_API_VERSIONS: tuple[tuple[int, int], ...] = ((1, 3), (2, 7), (3, 1))
CHALLENGE_SIZE = 48

HELP_BAD_IDENTITY = "Invalid handshake information"
HELP_INVITATION_NOT_FOUND = "Invalid handshake: Invitation not found"
HELP_INVITATION_DELETED = "Invalid handshake: Invitation already deleted"
HELP_RVK_MISMATCH = "Root verify key for organization differs between client and server"
HELP_ORGANIZATION_EXPIRED = "Trial organization has expired"
HELP_REVOKED_DEVICE = "Device has been revoked"


class HandshakeFailed(Exception):
    def __init__(self, result: str, help: str) -> None:
        super().__init__(f"{result}: {help}")
        self.result = result
        self.help = help


def bad_identity(help: str = HELP_BAD_IDENTITY) -> HandshakeFailed:
    return HandshakeFailed("bad_identity", help)


@attrs.frozen
class AuthenticatedAnswer:
    client_api_version: tuple[int, int]
    organization_id: str
    device_id: str
    rvk: bytes
    answer: bytes


@attrs.frozen
class InvitedAnswer:
    client_api_version: tuple[int, int]
    organization_id: str
    invitation_type: str
    token: UUID


@attrs.frozen
class AnonymousV1Answer:
    client_api_version: tuple[int, int]
    organization_id: str
    rvk: bytes | None


Answer = AuthenticatedAnswer | InvitedAnswer | AnonymousV1Answer

_VERSION_SCHEMA = s.Schema(
    handshake=s.Constant("answer"),
    client_api_version=s.Tuple(s.Int(min=0), s.Int(min=0)),
)
_BASE = {
    "handshake": s.Constant("answer"),
    "client_api_version": s.Tuple(s.Int(min=0), s.Int(min=0)),
    "organization_id": s.Identifier(ids.organization_id),
}
_V2_ANSWER = s.OneOf(
    "type",
    {
        "AUTHENTICATED": s.Schema(
            _BASE,
            type=s.Constant("AUTHENTICATED"),
            device_id=s.Identifier(ids.device_id),
            rvk=s.VerifyKey(),
            answer=s.Bytes(),
        ),
        "INVITED": s.Schema(
            _BASE,
            type=s.Constant("INVITED"),
            invitation_type=s.Enum(ids.INVITATION_TYPES),
            token=s.Uuid(),
        ),
    },
)
_V1_ANSWER = s.OneOf(
    "type",
    {
        "anonymous": s.Schema(
            _BASE,
            type=s.Constant("anonymous"),
            rvk=s.VerifyKey(required=False, allow_none=True, default=None),
        )
    },
)
_SIGNED_ANSWER = s.Schema(type=s.Constant("signed_answer"), answer=s.Bytes())


def _invalid_answer(exc: s.ValidationError) -> HandshakeFailed:
    """`bad_protocol` with the field errors, minus any value the client sent."""
    errors: dict[str, list[str]] = {}
    for field, messages in exc.errors.items():
        items = messages if isinstance(messages, list) else [messages]
        cleaned = []
        for message in items:
            if not isinstance(message, str):
                message = "Invalid value."
            elif message.startswith("Unsupported value"):
                message = "Unsupported value."
            elif message.startswith("Invalid role") or message.startswith("Invalid value:"):
                message = "Invalid value."
            cleaned.append(message)
        errors[str(field)] = cleaned
    return HandshakeFailed("bad_protocol", str(errors))


def _fmt_versions(versions: Any) -> str:
    return "{" + ", ".join(f"{major}.{minor}" for major, minor in versions) + "}"


class ServerHandshake:
    def __init__(self, challenge: bytes | None = None) -> None:
        self.challenge = challenge if challenge is not None else os.urandom(CHALLENGE_SIZE)
        self.client_api_version: tuple[int, int] | None = None
        # Server revision of the negotiated major, e.g. client 3.0 -> (3, 1)
        self.backend_api_version: tuple[int, int] | None = None

    def build_challenge(self, now: datetime) -> bytes:
        return packb(
            {
                "handshake": "challenge",
                "challenge": self.challenge,
                "supported_api_versions": [list(v) for v in SUPPORTED_API_VERSIONS],
                "ballpark_client_early_offset": BALLPARK_CLIENT_EARLY_OFFSET,
                "ballpark_client_late_offset": BALLPARK_CLIENT_LATE_OFFSET,
                "backend_timestamp": now,
            }
        )

    def process_answer(self, raw: bytes | bytearray) -> Answer:
        try:
            data = unpackb(raw)
        except DecodeError as exc:
            raise HandshakeFailed("bad_protocol", str(exc)) from None
        try:
            version = _VERSION_SCHEMA.load(data)["client_api_version"]
        except s.ValidationError as exc:
            raise _invalid_answer(exc) from None
        backend_version = next((v for v in SUPPORTED_API_VERSIONS if v[0] == version[0]), None)
        if backend_version is None:
            raise HandshakeFailed(
                "bad_protocol",
                f"No overlap between client API versions {_fmt_versions([version])} "
                f"and backend API versions {_fmt_versions(SUPPORTED_API_VERSIONS)}",
            )
        self.client_api_version = version
        self.backend_api_version = backend_version
        try:
            if version[0] == 1:
                loaded = _V1_ANSWER.load(data)
                return AnonymousV1Answer(version, loaded["organization_id"], loaded["rvk"])
            loaded = _V2_ANSWER.load(data)
        except s.ValidationError as exc:
            raise _invalid_answer(exc) from None
        if loaded["type"] == "AUTHENTICATED":
            return AuthenticatedAnswer(
                version, loaded["organization_id"], loaded["device_id"], loaded["rvk"], loaded["answer"]
            )
        return InvitedAnswer(
            version, loaded["organization_id"], loaded["invitation_type"], loaded["token"]
        )

    def check_signature(self, answer: AuthenticatedAnswer, verify_key: bytes) -> None:
        try:
            payload = VerifyKey(verify_key).verify(answer.answer)
        except (BadSignatureError, ValueError, TypeError):
            raise HandshakeFailed("bad_protocol", "Invalid answer signature") from None
        if answer.client_api_version < (2, 5):
            returned = payload
        else:
            try:
                returned = _SIGNED_ANSWER.load(unpackb(payload))["answer"]
            except DecodeError as exc:
                raise HandshakeFailed("bad_protocol", str(exc)) from None
            except s.ValidationError as exc:
                raise _invalid_answer(exc) from None
        if returned != self.challenge:
            raise HandshakeFailed("bad_protocol", "Invalid returned challenge")

    @staticmethod
    def build_result(result: str = "ok", help: str | None = None) -> bytes:
        message: dict[str, Any] = {"handshake": "result", "result": result}
        if result != "ok":
            message["help"] = (help or "")[: _LIMITS.handshake_help_chars]
        return packb(message)

    @classmethod
    def build_failure(cls, failure: HandshakeFailed) -> bytes:
        return cls.build_result(failure.result, failure.help)
