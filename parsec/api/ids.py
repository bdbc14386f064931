"""Identifiers and enumerations of the protocol (docs/protocol/commands.md §1).

Every string identifier is NFC-normalised, then fully matched against its
pattern (docs/protocol/DECISIONS.md: a trailing newline is refused), then its UTF-8 length
is checked. Identifiers stay plain `str` values once validated.
"""

from __future__ import annotations

import re
import unicodedata
from email.utils import parseaddr

_ID_RE = re.compile(r"[\w\-]{1,32}")
_DEVICE_ID_RE = re.compile(r"([\w\-]{1,32})@([\w\-]{1,32})")


class InvalidId(ValueError):
    pass


def _normalize(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidId("Not a string")
    return unicodedata.normalize("NFC", value)


def _simple_id(value: object, max_bytes: int = 32) -> str:
    text = _normalize(value)
    if not _ID_RE.fullmatch(text) or len(text.encode("utf8")) > max_bytes:
        raise InvalidId("Invalid data")
    return text


def organization_id(value: object) -> str:
    return _simple_id(value)


def user_id(value: object) -> str:
    return _simple_id(value)


def device_name(value: object) -> str:
    return _simple_id(value)


def device_id(value: object) -> str:
    text = _normalize(value)
    match = _DEVICE_ID_RE.fullmatch(text)
    if not match or len(text.encode("utf8")) > 65:
        raise InvalidId("Invalid data")
    for part in match.groups():
        if len(part.encode("utf8")) > 32:
            raise InvalidId("Invalid data")
    return text


def user_of(device: str) -> str:
    return device.split("@", 1)[0]


def device_label(value: object) -> str:
    text = _normalize(value)
    if not text or "\n" in text or "\r" in text or len(text.encode("utf8")) > 255:
        raise InvalidId("Invalid data")
    return text


def human_handle(value: object) -> tuple[str, str]:
    """`[email, label]` -> (email, label)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise InvalidId("Invalid data")
    email, label = (_normalize(item) for item in value)
    for item in (email, label):
        if not 0 < len(item.encode("utf8")) < 255:
            raise InvalidId("Invalid data")
    if parseaddr(f"{label} <{email}>") != (label, email):
        raise InvalidId("Invalid data")
    return (email, label)


def format_human_handle(handle: tuple[str, str]) -> str:
    email, label = handle
    return f"{label} <{email}>"


USER_PROFILES = ("ADMIN", "STANDARD", "OUTSIDER")
REALM_ROLES = ("OWNER", "MANAGER", "CONTRIBUTOR", "READER")
INVITATION_TYPES = ("USER", "DEVICE")
INVITATION_STATUSES = ("IDLE", "READY", "DELETED")
INVITATION_DELETED_REASONS = ("FINISHED", "CANCELLED", "ROTTEN")
INVITATION_EMAIL_SENT_STATUSES = ("SUCCESS", "NOT_AVAILABLE", "BAD_RECIPIENT")
MAINTENANCE_TYPES = ("REENCRYPTION", "GARBAGE_COLLECTION")
PKI_ENROLLMENT_STATUSES = ("SUBMITTED", "ACCEPTED", "REJECTED", "CANCELLED")
