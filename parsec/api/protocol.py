"""Request and reply schemas of every command, per connection type (docs/protocol/commands.md).

Everything here is data: one `CommandSpec` per (connection type, command) holding the
request schema (the `cmd` key itself is not part of it; unknown request keys are ignored)
and, for every status the command can reply, the schema of the reply's other keys.

Reply schemas are strict (an undeclared key is an error) because they describe what this
server sends; `validate_reply` checks a reply map against them. A status whose schema is
empty means the reply is exactly `{status: X}`.

Pure module: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from parsec.api import ids
from parsec.api.schema import (
    Any_,
    Bool,
    Bytes,
    Constant,
    DateTime,
    Enum,
    Field,
    Float,
    HumanHandle,
    Identifier,
    Int,
    List,
    Map,
    Nested,
    OneOf,
    PublicKey,
    Schema,
    Str,
    Tuple,
    Uuid,
    ValidationError,
    VerifyKey,
)
from parsec.limits import DEFAULT as _LIMITS

__all__ = (
    "AUTHENTICATED_COMMANDS",
    "APIV1_ANONYMOUS_COMMANDS",
    "ANONYMOUS_COMMANDS",
    "ALL_COMMAND_SETS",
    "CommandSpec",
    "GENERIC_REPLIES",
    "INVITED_COMMANDS",
    "InvalidReply",
    "validate_reply",
)

INVALID_VALUE_MSG = "Invalid value."


@attrs.frozen
class CommandSpec:
    """One command as served on one connection type.

    `req` validates the request map (`cmd` and unknown keys are ignored); `replies` maps
    every status the command may reply (`ok`, its errors and `bad_message`) to the schema
    of the reply's other keys.
    """

    name: str
    req: Schema | OneOf
    # status -> schema of the reply keys other than `status` (a `OneOf` for ok replies
    # discriminated by a key, e.g. `event` of events_listen)
    replies: Mapping[str, Schema | OneOf]


class InvalidReply(ValueError):
    """A reply map does not match the reply schemas of its command."""

    def __init__(self, message: str, errors: dict[Any, Any] | None = None) -> None:
        super().__init__(message if errors is None else f"{message}: {errors!r}")
        self.errors = errors or {}


# --- schema builders -------------------------------------------------------------------


def _req(**fields: Field) -> Schema:
    """Request schema: unknown keys are ignored."""
    return Schema(fields)


def _rep(**fields: Field) -> Schema:
    """Reply (or reply item) schema: every key must be declared."""
    return Schema(fields, strict=True)


def _user_id(**kwargs: Any) -> Identifier:
    return Identifier(ids.user_id, **kwargs)


def _device_id(**kwargs: Any) -> Identifier:
    return Identifier(ids.device_id, **kwargs)


def _nested_rep(**fields: Field) -> Nested:
    return Nested(_rep(**fields))


def _one_of_rep(discriminator: str, choices: Mapping[str, Mapping[str, Field]]) -> OneOf:
    """Strict discriminated reply: each choice also declares its discriminator constant."""
    return OneOf(
        discriminator,
        {kind: _rep(**{discriminator: Constant(kind)}, **fields) for kind, fields in choices.items()},
    )


# --- shared reply forms ----------------------------------------------------------------

EMPTY = _rep()
WITH_REASON = _rep(reason=Str())
OPTIONAL_REASON = _rep(reason=Str(required=False))
BAD_TIMESTAMP = _rep(
    ballpark_client_early_offset=Float(),
    ballpark_client_late_offset=Float(),
    backend_timestamp=DateTime(),
    client_timestamp=DateTime(),
)
REQUIRE_GREATER_TIMESTAMP = _rep(strictly_greater_than=DateTime())

BAD_MESSAGE = _rep(reason=Str(), errors=Map(Str(), Any_(), required=False))

GENERIC_REPLIES: Mapping[str, Schema] = MappingProxyType(
    {
        # `reason: "Unknown command"` on a WebSocket, no reason on the anonymous HTTP route
        "unknown_command": OPTIONAL_REASON,
        # `reason: "Invalid message format"` on a WebSocket, no reason on the anonymous HTTP route
        "invalid_msg_format": OPTIONAL_REASON,
        # schema failure: reason `Invalid message.` + errors; other protocol errors: reason only
        "bad_message": BAD_MESSAGE,
    }
)


def _spec(
    name: str,
    req: Schema | OneOf,
    ok: Schema | OneOf = EMPTY,
    errors: Mapping[str, Schema] | None = None,
) -> CommandSpec:
    replies: dict[str, Schema | OneOf] = {"ok": ok, **(errors or {})}
    replies["bad_message"] = BAD_MESSAGE
    return CommandSpec(name=name, req=req, replies=MappingProxyType(replies))


# --- field groups shared by several commands ---------------------------------------------

_TOKEN = {"token": Uuid()}
_REALM_ID = {"realm_id": Uuid()}
_NEW_USER_CERTIFICATES = {
    "user_certificate": Bytes(),
    "device_certificate": Bytes(),
    "redacted_user_certificate": Bytes(),
    "redacted_device_certificate": Bytes(),
}
_BATCH_ENTRY = _req(vlob_id=Uuid(), version=Int(min=0), blob=Bytes())
_BATCH_ENTRY_REP = _rep(vlob_id=Uuid(), version=Int(min=0), blob=Bytes())


def _profile_detail(profile: str) -> Nested:
    return _nested_rep(profile=Constant(profile), active=Int(min=0), revoked=Int(min=0))


# --- error sets shared by several commands ----------------------------------------------

_NOT_ADMIN = {"not_allowed": WITH_REASON}
_REALM_READ_ERRORS = {"not_found": WITH_REASON, "not_allowed": EMPTY}
_VLOB_MAINTENANCE_ERRORS = {
    "not_found": WITH_REASON,
    "not_allowed": EMPTY,
    "not_in_maintenance": WITH_REASON,
    "bad_encryption_revision": EMPTY,
    "maintenance_error": WITH_REASON,
}
_GREETER_ERRORS = {"not_found": EMPTY, "already_deleted": EMPTY, "invalid_state": EMPTY}
_CLAIMER_ERRORS = {"not_found": EMPTY, "invalid_state": EMPTY}
_BOOTSTRAP_ERRORS = {
    "invalid_certification": WITH_REASON,
    "invalid_data": WITH_REASON,
    "bad_timestamp": BAD_TIMESTAMP,
    "not_found": EMPTY,
    "already_bootstrapped": EMPTY,
    # docs/protocol/DECISIONS.md: bootstrap with `active_users_limit` 0 (the reference crashes)
    "active_users_limit_reached": EMPTY,
}

# --- events (docs/protocol/events.md §4) ---------------------------------------------------------------

EVENTS_LISTEN_OK = _one_of_rep(
    "event",
    {
        "pinged": {"ping": Str()},
        "message.received": {"index": Int(min=1)},
        "invite.status_changed": {
            "token": Uuid(),
            "invitation_status": Enum(ids.INVITATION_STATUSES),
        },
        "realm.roles_updated": {"realm_id": Uuid(), "role": Enum(ids.REALM_ROLES, allow_none=True)},
        "realm.vlobs_updated": {
            "realm_id": Uuid(),
            "checkpoint": Int(),
            "src_id": Uuid(),
            "src_version": Int(min=1),
        },
        "realm.maintenance_started": {"realm_id": Uuid(), "encryption_revision": Int()},
        "realm.maintenance_finished": {"realm_id": Uuid(), "encryption_revision": Int()},
        "pki_enrollment.updated": {},
    },
)

# --- commands ----------------------------------------------------------------------------

# `ping` is echoed, and sent to every subscriber of the organization: bounded (parsec.limits).
PING = _spec("ping", _req(ping=Str(max_length=_LIMITS.ping_chars)), _rep(pong=Str()))

_ORGANIZATION_BOOTSTRAP_REQ = _req(
    bootstrap_token=Str(),
    root_verify_key=VerifyKey(),
    user_certificate=Bytes(),
    device_certificate=Bytes(),
    redacted_user_certificate=Bytes(),
    redacted_device_certificate=Bytes(),
)
ORGANIZATION_BOOTSTRAP = _spec(
    "organization_bootstrap", _ORGANIZATION_BOOTSTRAP_REQ, EMPTY, _BOOTSTRAP_ERRORS
)
APIV1_ORGANIZATION_BOOTSTRAP = _spec(
    "organization_bootstrap",
    _ORGANIZATION_BOOTSTRAP_REQ.extend(
        redacted_user_certificate=Bytes(required=False),
        redacted_device_certificate=Bytes(required=False),
    ),
    EMPTY,
    _BOOTSTRAP_ERRORS,
)

_AUTHENTICATED = (
    PING,
    _spec("events_subscribe", _req()),
    _spec(
        "events_listen",
        _req(wait=Bool()),
        EVENTS_LISTEN_OK,
        {"no_events": EMPTY, "cancelled": WITH_REASON},
    ),
    _spec(
        "message_get",
        _req(offset=Int(min=0, range_error=INVALID_VALUE_MSG)),
        _rep(
            messages=List(
                _nested_rep(count=Int(min=1), sender=_device_id(), timestamp=DateTime(), body=Bytes())
            )
        ),
    ),
    _spec(
        "user_get",
        _req(user_id=_user_id()),
        _rep(
            user_certificate=Bytes(),
            revoked_user_certificate=Bytes(allow_none=True),
            device_certificates=List(Bytes()),
            trustchain=_nested_rep(devices=List(Bytes()), users=List(Bytes()), revoked_users=List(Bytes())),
        ),
        {"not_found": EMPTY},
    ),
    _spec(
        "user_create",
        _req(**_NEW_USER_CERTIFICATES),
        EMPTY,
        {
            **_NOT_ADMIN,
            "invalid_certification": WITH_REASON,
            "invalid_data": WITH_REASON,
            "active_users_limit_reached": EMPTY,
            "already_exists": WITH_REASON,
        },
    ),
    _spec(
        "user_revoke",
        _req(revoked_user_certificate=Bytes()),
        EMPTY,
        {
            # `User `x` is not admin` / `Cannot do self-revocation`
            "not_allowed": WITH_REASON,
            "invalid_certification": WITH_REASON,
            "not_found": EMPTY,
            "already_revoked": WITH_REASON,
        },
    ),
    _spec(
        "device_create",
        _req(device_certificate=Bytes(), redacted_device_certificate=Bytes()),
        EMPTY,
        {
            "invalid_certification": WITH_REASON,
            "bad_user_id": WITH_REASON,
            "invalid_data": WITH_REASON,
            "already_exists": WITH_REASON,
        },
    ),
    _spec(
        "human_find",
        _req(
            query=Str(allow_none=True),
            omit_revoked=Bool(),
            omit_non_human=Bool(),
            page=Int(min=1, range_error=INVALID_VALUE_MSG),
            per_page=Int(min=1, max=100, range_error=INVALID_VALUE_MSG),
        ),
        _rep(
            results=List(
                _nested_rep(user_id=_user_id(), human_handle=HumanHandle(allow_none=True), revoked=Bool())
            ),
            page=Int(min=1),
            per_page=Int(min=1, max=100),
            total=Int(min=0),
        ),
        {"not_allowed": WITH_REASON},
    ),
    _spec(
        "invite_new",
        OneOf(
            "type",
            {
                "USER": _req(type=Constant("USER"), claimer_email=Str(), send_email=Bool()),
                "DEVICE": _req(type=Constant("DEVICE"), send_email=Bool()),
            },
        ),
        # `email_sent` only when the request had `send_email: true`
        _rep(token=Uuid(), email_sent=Enum(ids.INVITATION_EMAIL_SENT_STATUSES, required=False)),
        {"not_allowed": EMPTY, "already_member": EMPTY, "not_available": EMPTY},
    ),
    _spec(
        "invite_delete",
        _req(**_TOKEN, reason=Enum(ids.INVITATION_DELETED_REASONS)),
        EMPTY,
        {"not_found": EMPTY, "already_deleted": EMPTY},
    ),
    _spec(
        "invite_list",
        _req(),
        _rep(
            invitations=List(
                Nested(
                    _one_of_rep(
                        "type",
                        {
                            "USER": {
                                "token": Uuid(),
                                "created_on": DateTime(),
                                "claimer_email": Str(),
                                "status": Enum(("IDLE", "READY")),
                            },
                            "DEVICE": {
                                "token": Uuid(),
                                "created_on": DateTime(),
                                "status": Enum(("IDLE", "READY")),
                            },
                        },
                    )
                )
            )
        ),
    ),
    _spec(
        "invite_1_greeter_wait_peer",
        _req(**_TOKEN, greeter_public_key=PublicKey()),
        _rep(claimer_public_key=PublicKey()),
        _GREETER_ERRORS,
    ),
    _spec(
        "invite_2a_greeter_get_hashed_nonce",
        _req(**_TOKEN),
        _rep(claimer_hashed_nonce=Bytes()),
        _GREETER_ERRORS,
    ),
    _spec(
        "invite_2b_greeter_send_nonce",
        _req(**_TOKEN, greeter_nonce=Bytes()),
        _rep(claimer_nonce=Bytes()),
        _GREETER_ERRORS,
    ),
    _spec("invite_3a_greeter_wait_peer_trust", _req(**_TOKEN), EMPTY, _GREETER_ERRORS),
    _spec("invite_3b_greeter_signify_trust", _req(**_TOKEN), EMPTY, _GREETER_ERRORS),
    _spec(
        "invite_4_greeter_communicate",
        _req(**_TOKEN, payload=Bytes()),
        _rep(payload=Bytes()),
        _GREETER_ERRORS,
    ),
    _spec(
        "block_create",
        _req(block_id=Uuid(), **_REALM_ID, block=Bytes()),
        EMPTY,
        {
            "not_found": EMPTY,
            "in_maintenance": EMPTY,
            "not_allowed": EMPTY,
            "already_exists": EMPTY,
            "timeout": EMPTY,
        },
    ),
    _spec(
        "block_read",
        _req(block_id=Uuid()),
        _rep(block=Bytes()),
        {"not_found": EMPTY, "in_maintenance": EMPTY, "not_allowed": EMPTY, "timeout": EMPTY},
    ),
    _spec(
        "vlob_create",
        _req(**_REALM_ID, encryption_revision=Int(), vlob_id=Uuid(), timestamp=DateTime(), blob=Bytes()),
        EMPTY,
        {
            "bad_timestamp": BAD_TIMESTAMP,
            # unknown realm included (not `not_found`)
            "not_allowed": EMPTY,
            "in_maintenance": EMPTY,
            "bad_encryption_revision": EMPTY,
            "require_greater_timestamp": REQUIRE_GREATER_TIMESTAMP,
            # reason is the empty string, key present
            "already_exists": WITH_REASON,
        },
    ),
    _spec(
        "vlob_read",
        _req(
            encryption_revision=Int(),
            vlob_id=Uuid(),
            version=Int(min=1, allow_none=True),
            timestamp=DateTime(allow_none=True),
        ),
        _rep(
            version=Int(min=1),
            blob=Bytes(),
            author=_device_id(),
            timestamp=DateTime(),
            author_last_role_granted_on=DateTime(),
        ),
        {
            "not_found": WITH_REASON,
            "in_maintenance": EMPTY,
            "bad_encryption_revision": EMPTY,
            "not_allowed": EMPTY,
            "bad_version": EMPTY,
        },
    ),
    _spec(
        "vlob_update",
        _req(
            encryption_revision=Int(),
            vlob_id=Uuid(),
            timestamp=DateTime(),
            version=Int(min=1),
            blob=Bytes(),
        ),
        EMPTY,
        {
            "bad_timestamp": BAD_TIMESTAMP,
            "not_found": WITH_REASON,
            "in_maintenance": EMPTY,
            "bad_encryption_revision": EMPTY,
            "not_allowed": EMPTY,
            "require_greater_timestamp": REQUIRE_GREATER_TIMESTAMP,
            "bad_version": EMPTY,
        },
    ),
    _spec(
        "vlob_poll_changes",
        _req(**_REALM_ID, last_checkpoint=Int()),
        _rep(changes=Map(Uuid(), Int(min=1)), current_checkpoint=Int()),
        {**_REALM_READ_ERRORS, "in_maintenance": EMPTY},
    ),
    _spec(
        "vlob_list_versions",
        _req(vlob_id=Uuid()),
        _rep(versions=Map(Int(min=1), Tuple(DateTime(), _device_id()))),
        {"not_found": WITH_REASON, "not_allowed": EMPTY, "in_maintenance": EMPTY},
    ),
    _spec(
        "vlob_maintenance_get_reencryption_batch",
        _req(**_REALM_ID, encryption_revision=Int(), size=Int(min=0, max=1000)),
        _rep(batch=List(Nested(_BATCH_ENTRY_REP))),
        _VLOB_MAINTENANCE_ERRORS,
    ),
    _spec(
        "vlob_maintenance_save_reencryption_batch",
        _req(**_REALM_ID, encryption_revision=Int(), batch=List(Nested(_BATCH_ENTRY))),
        _rep(total=Int(min=0), done=Int(min=0)),
        _VLOB_MAINTENANCE_ERRORS,
    ),
    _spec(
        "realm_create",
        _req(role_certificate=Bytes()),
        EMPTY,
        {
            "invalid_certification": WITH_REASON,
            "bad_timestamp": BAD_TIMESTAMP,
            "invalid_data": WITH_REASON,
            "already_exists": EMPTY,
        },
    ),
    _spec(
        "realm_status",
        _req(**_REALM_ID),
        _rep(
            in_maintenance=Bool(),
            maintenance_type=Enum(ids.MAINTENANCE_TYPES, allow_none=True),
            maintenance_started_on=DateTime(allow_none=True),
            maintenance_started_by=_device_id(allow_none=True),
            encryption_revision=Int(),
        ),
        _REALM_READ_ERRORS,
    ),
    _spec(
        "realm_stats",
        _req(**_REALM_ID),
        _rep(blocks_size=Int(min=0), vlobs_size=Int(min=0)),
        _REALM_READ_ERRORS,
    ),
    _spec(
        "realm_get_role_certificates",
        _req(**_REALM_ID),
        _rep(certificates=List(Bytes())),
        _REALM_READ_ERRORS,
    ),
    _spec(
        "realm_update_roles",
        # Stored, then sent back by message_get: bounded (parsec.limits).
        _req(role_certificate=Bytes(), recipient_message=Bytes(allow_none=True, max_length=_LIMITS.message_bytes)),
        EMPTY,
        {
            # `Outsider user cannot share realm` with a reason, role check without
            "not_allowed": OPTIONAL_REASON,
            "invalid_certification": WITH_REASON,
            "bad_timestamp": BAD_TIMESTAMP,
            "invalid_data": WITH_REASON,
            "not_found": WITH_REASON,
            "incompatible_profile": WITH_REASON,
            "user_revoked": EMPTY,
            "in_maintenance": EMPTY,
            "already_granted": EMPTY,
            "require_greater_timestamp": REQUIRE_GREATER_TIMESTAMP,
        },
    ),
    _spec(
        "realm_start_reencryption_maintenance",
        _req(
            **_REALM_ID,
            encryption_revision=Int(),
            timestamp=DateTime(),
            per_participant_message=Map(_user_id(), Bytes(max_length=_LIMITS.message_bytes)),
        ),
        EMPTY,
        {
            "bad_timestamp": BAD_TIMESTAMP,
            "not_found": WITH_REASON,
            "in_maintenance": EMPTY,
            "bad_encryption_revision": EMPTY,
            # with a reason when a recipient has too many unread messages (docs/protocol/DECISIONS.md)
            "not_allowed": OPTIONAL_REASON,
            "participants_mismatch": WITH_REASON,
        },
    ),
    _spec(
        "realm_finish_reencryption_maintenance",
        _req(**_REALM_ID, encryption_revision=Int()),
        EMPTY,
        {
            "not_found": WITH_REASON,
            "not_allowed": EMPTY,
            "not_in_maintenance": WITH_REASON,
            "bad_encryption_revision": EMPTY,
            "maintenance_error": WITH_REASON,
        },
    ),
    _spec(
        "organization_stats",
        _req(),
        _rep(
            data_size=Int(min=0),
            metadata_size=Int(min=0),
            realms=Int(min=0),
            users=Int(min=0),
            active_users=Int(min=0),
            # always the three profiles, in this order
            users_per_profile_detail=Tuple(*(_profile_detail(profile) for profile in ids.USER_PROFILES)),
        ),
        {**_NOT_ADMIN, "not_found": EMPTY},
    ),
    _spec(
        "organization_config",
        _req(),
        _rep(user_profile_outsider_allowed=Bool(), active_users_limit=Int(min=0, allow_none=True)),
        {"not_found": EMPTY},
    ),
    _spec(
        "pki_enrollment_list",
        _req(),
        _rep(
            enrollments=List(
                _nested_rep(
                    enrollment_id=Uuid(),
                    submitted_on=DateTime(),
                    submitter_der_x509_certificate=Bytes(),
                    submit_payload_signature=Bytes(),
                    submit_payload=Bytes(),
                )
            )
        ),
        _NOT_ADMIN,
    ),
    _spec(
        "pki_enrollment_reject",
        _req(enrollment_id=Uuid()),
        EMPTY,
        {**_NOT_ADMIN, "not_found": WITH_REASON, "no_longer_available": WITH_REASON},
    ),
    _spec(
        "pki_enrollment_accept",
        _req(
            enrollment_id=Uuid(),
            accepter_der_x509_certificate=Bytes(),
            accept_payload_signature=Bytes(),
            accept_payload=Bytes(),
            **_NEW_USER_CERTIFICATES,
        ),
        EMPTY,
        {
            # `User `x` is not admin`, or OUTSIDER refused by the organization (docs/protocol/DECISIONS.md)
            "not_allowed": WITH_REASON,
            "invalid_payload_data": WITH_REASON,
            "invalid_certification": WITH_REASON,
            "invalid_data": WITH_REASON,
            "not_found": WITH_REASON,
            "no_longer_available": WITH_REASON,
            "active_users_limit_reached": EMPTY,
            "already_exists": WITH_REASON,
        },
    ),
)

_INVITED = (
    PING,
    _spec(
        "invite_info",
        _req(),
        _one_of_rep(
            "type",
            {
                "USER": {
                    "claimer_email": Str(),
                    "greeter_user_id": _user_id(),
                    "greeter_human_handle": HumanHandle(allow_none=True),
                },
                "DEVICE": {
                    "greeter_user_id": _user_id(),
                    "greeter_human_handle": HumanHandle(allow_none=True),
                },
            },
        ),
    ),
    _spec(
        "invite_1_claimer_wait_peer",
        _req(claimer_public_key=PublicKey()),
        _rep(greeter_public_key=PublicKey()),
        _CLAIMER_ERRORS,
    ),
    _spec(
        "invite_2a_claimer_send_hashed_nonce",
        _req(claimer_hashed_nonce=Bytes()),
        _rep(greeter_nonce=Bytes()),
        _CLAIMER_ERRORS,
    ),
    _spec("invite_2b_claimer_send_nonce", _req(claimer_nonce=Bytes()), EMPTY, _CLAIMER_ERRORS),
    _spec("invite_3a_claimer_signify_trust", _req(), EMPTY, _CLAIMER_ERRORS),
    _spec("invite_3b_claimer_wait_peer_trust", _req(), EMPTY, _CLAIMER_ERRORS),
    _spec(
        "invite_4_claimer_communicate",
        _req(payload=Bytes()),
        _rep(payload=Bytes()),
        _CLAIMER_ERRORS,
    ),
)

_APIV1_ANONYMOUS = (PING, APIV1_ORGANIZATION_BOOTSTRAP)

_ANONYMOUS = (
    ORGANIZATION_BOOTSTRAP,
    _spec(
        "pki_enrollment_submit",
        _req(
            enrollment_id=Uuid(),
            force=Bool(),
            # Stored while pending, all sent back by pki_enrollment_list: bounded (parsec.limits).
            submitter_der_x509_certificate=Bytes(max_length=_LIMITS.enrollment_payload_bytes),
            # absent for clients < 2.8.3
            submitter_der_x509_certificate_email=Str(required=False, allow_none=True),
            submit_payload_signature=Bytes(max_length=_LIMITS.enrollment_payload_bytes),
            submit_payload=Bytes(max_length=_LIMITS.enrollment_payload_bytes),
        ),
        _rep(submitted_on=DateTime()),
        {
            "invalid_payload_data": WITH_REASON,
            "enrollment_id_already_used": EMPTY,
            "already_submitted": _rep(submitted_on=DateTime()),
            "already_enrolled": EMPTY,
            "email_already_used": EMPTY,
            # too many pending enrollments in the organization (docs/protocol/DECISIONS.md)
            "not_allowed": WITH_REASON,
        },
    ),
    _spec(
        "pki_enrollment_info",
        _req(enrollment_id=Uuid()),
        _one_of_rep(
            "enrollment_status",
            {
                "SUBMITTED": {"submitted_on": DateTime()},
                "ACCEPTED": {
                    "submitted_on": DateTime(),
                    "accepted_on": DateTime(),
                    "accepter_der_x509_certificate": Bytes(),
                    "accept_payload_signature": Bytes(),
                    "accept_payload": Bytes(),
                },
                "REJECTED": {"submitted_on": DateTime(), "rejected_on": DateTime()},
                "CANCELLED": {"submitted_on": DateTime(), "cancelled_on": DateTime()},
            },
        ),
        {"not_found": WITH_REASON},
    ),
)


def _by_name(specs: tuple[CommandSpec, ...]) -> dict[str, CommandSpec]:
    table = {spec.name: spec for spec in specs}
    assert len(table) == len(specs), "duplicate command name"
    return table


AUTHENTICATED_COMMANDS: dict[str, CommandSpec] = _by_name(_AUTHENTICATED)
INVITED_COMMANDS: dict[str, CommandSpec] = _by_name(_INVITED)
APIV1_ANONYMOUS_COMMANDS: dict[str, CommandSpec] = _by_name(_APIV1_ANONYMOUS)
ANONYMOUS_COMMANDS: dict[str, CommandSpec] = _by_name(_ANONYMOUS)

# connection type -> its command table
ALL_COMMAND_SETS: Mapping[str, Mapping[str, CommandSpec]] = {
    "authenticated": AUTHENTICATED_COMMANDS,
    "invited": INVITED_COMMANDS,
    "apiv1_anonymous": APIV1_ANONYMOUS_COMMANDS,
    "anonymous": ANONYMOUS_COMMANDS,
}


def validate_reply(spec: CommandSpec | None, reply: Any) -> None:
    """Raise `InvalidReply` unless `reply` is a reply `spec`'s command may send.

    The status must be one of the command's statuses and the other keys must be exactly
    those of its schema (types included). With `spec=None`, `reply` is checked against
    `GENERIC_REPLIES` (dispatcher replies that belong to no command).
    """
    if not isinstance(reply, dict):
        raise InvalidReply(f"reply is not a map: {reply!r}")
    status = reply.get("status")
    if not isinstance(status, str):
        raise InvalidReply(f"reply has no str status: {reply!r}")
    replies: Mapping[str, Schema | OneOf] = GENERIC_REPLIES if spec is None else spec.replies
    schema = replies.get(status)
    if schema is None:
        owner = "a dispatcher reply" if spec is None else f"a reply of `{spec.name}`"
        raise InvalidReply(f"status `{status}` is not {owner}")
    try:
        schema.load({key: value for key, value in reply.items() if key != "status"})
    except ValidationError as exc:
        raise InvalidReply(f"invalid `{status}` reply", exc.errors) from None
