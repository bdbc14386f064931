"""Test data for the protocol schemas, written from docs/protocol/commands.md / docs/protocol/events.md independently of
`parsec.api.protocol` (the tests compare the two).

* `REQUESTS`: per connection type and command, the request fields and their kind;
* `KINDS`: per kind, valid values and (wrong value, expected error) pairs;
* `OK_REPLIES` / `ERROR_FORMS` / `DOCUMENTED_REPLIES` / `BAD_REPLIES`: replies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

MISSING = ["Missing data for required field."]
NULL = ["Field may not be null."]

AUTH = "authenticated"
INVITED = "invited"
APIV1 = "apiv1_anonymous"
ANON = "anonymous"

REALM = UUID("a0000000000000000000000000000000")
VLOB = UUID("b0000000000000000000000000000000")
BLOCK = UUID("c0000000000000000000000000000000")
TOKEN = UUID("d0000000000000000000000000000000")
ENROLLMENT = UUID("e0000000000000000000000000000000")
T1 = datetime(2000, 1, 2, 3, 4, 5, tzinfo=UTC)
T2 = datetime(2000, 1, 3, 0, 0, 0, 250000, tzinfo=UTC)
KEY = bytes(range(32))


# --------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    valid: tuple[Any, ...]
    invalid: tuple[tuple[Any, Any], ...] = ()


_BATCH_ENTRY = {"vlob_id": VLOB, "version": 1, "blob": b"re-encrypted"}

KINDS: dict[str, Kind] = {
    "str": Kind(("hello", "", "é" * 100), ((42, ["Not a valid string."]), ([], ["Not a valid string."]))),
    "bytes": Kind((b"data", b""), (("data", ["Not bytes"]), (42, ["Not bytes"]))),
    # any integer (encryption_revision, last_checkpoint)
    "int": Kind((1, 0, -5, 2**40), (("abc", ["Not a valid integer."]), ([], ["Not a valid integer."]))),
    "bool": Kind((True, False), ((42, ["Not a valid boolean."]), ("maybe", ["Not a valid boolean."]))),
    "uuid": Kind((REALM,), ((REALM.hex, ["Not an UUID"]), (REALM.bytes, ["Not an UUID"]))),
    "datetime": Kind(
        (T1, T2), ((T1.timestamp(), ["Not a datetime"]), ("2000-01-02T03:04:05Z", ["Not a datetime"]))
    ),
    "user_id": Kind(
        ("alice", "a-b_c", "é" * 16, "x" * 32),
        (
            (42, ["Not string"]),
            ("a.b", ["Invalid data"]),
            ("", ["Invalid data"]),
            ("é" * 17, ["Invalid data"]),
            ("x" * 33, ["Invalid data"]),
            ("alice@dev1", ["Invalid data"]),
        ),
    ),
    "verify_key": Kind((KEY,), ((KEY[:31], ["Invalid verify key."]), (KEY + b"x", ["Invalid verify key."]))),
    "public_key": Kind((KEY,), ((KEY[:31], ["Invalid verify key."]), (b"", ["Invalid verify key."]))),
    "deleted_reason": Kind(
        ("FINISHED", "CANCELLED", "ROTTEN"),
        (
            ("FOO", ["Invalid role `FOO`"]),
            ("finished", ["Invalid role `finished`"]),
            (42, ["Not string"]),
        ),
    ),
    "offset": Kind((0, 1, 1000), ((-1, ["Invalid value."]), ("0", ["Not a valid integer."]))),
    "page": Kind((1, 1000), ((0, ["Invalid value."]), (-1, ["Invalid value."]))),
    "per_page": Kind((1, 100), ((0, ["Invalid value."]), (101, ["Invalid value."]))),
    "size": Kind((0, 1000), ((-1, ["Must be between 0 and 1000."]), (1001, ["Must be between 0 and 1000."]))),
    "version": Kind((1, 42), ((0, ["Must be at least 1."]), (-1, ["Must be at least 1."]))),
    "participant_messages": Kind(
        ({"bob": b"msg"}, {}, {"alice": b"", "bob": b"x"}),
        (
            ([], ["Not a valid mapping type."]),
            ({"a.b": b"x"}, ["Invalid data"]),
            ({"bob": "x"}, ["Not bytes"]),
            ({"bob": None}, NULL),
            ({42: b"x"}, ["Not string"]),
        ),
    ),
    "batch": Kind(
        ([_BATCH_ENTRY], [], [{**_BATCH_ENTRY, "version": 0}, {**_BATCH_ENTRY, "blob": b""}]),
        (
            ("x", ["Not a valid list."]),
            ([{**_BATCH_ENTRY, "version": -1}], {0: {"version": ["Must be at least 0."]}}),
            ([_BATCH_ENTRY, {"version": 1}], {1: {"vlob_id": MISSING, "blob": MISSING}}),
            (
                [{**_BATCH_ENTRY, "vlob_id": "x", "blob": "y"}],
                {0: {"vlob_id": ["Not an UUID"], "blob": ["Not bytes"]}},
            ),
            ([42], {0: {"_schema": ["Invalid input type."]}}),
            ([None], {0: NULL}),
        ),
    ),
}


def kind_of(tag: str) -> tuple[Kind, bool, bool]:
    """`tag` is a KINDS key, `?`-suffixed when nil is allowed, `~`-prefixed when optional."""
    optional = tag.startswith("~")
    nullable = tag.endswith("?")
    return KINDS[tag.strip("~?")], nullable, optional


@dataclass(frozen=True)
class Req:
    fields: dict[str, str]
    # discriminated requests: discriminator -> {value: fields}
    union: tuple[str, dict[str, dict[str, str]]] | None = field(default=None)


_NEW_USER_CERTS = {
    "user_certificate": "bytes",
    "device_certificate": "bytes",
    "redacted_user_certificate": "bytes",
    "redacted_device_certificate": "bytes",
}
_BOOTSTRAP = {"bootstrap_token": "str", "root_verify_key": "verify_key", **_NEW_USER_CERTS}

REQUESTS: dict[str, dict[str, Req]] = {
    AUTH: {
        "ping": Req({"ping": "str"}),
        "events_subscribe": Req({}),
        "events_listen": Req({"wait": "bool"}),
        "message_get": Req({"offset": "offset"}),
        "user_get": Req({"user_id": "user_id"}),
        "user_create": Req(dict(_NEW_USER_CERTS)),
        "user_revoke": Req({"revoked_user_certificate": "bytes"}),
        "device_create": Req({"device_certificate": "bytes", "redacted_device_certificate": "bytes"}),
        "human_find": Req(
            {
                "query": "str?",
                "omit_revoked": "bool",
                "omit_non_human": "bool",
                "page": "page",
                "per_page": "per_page",
            }
        ),
        "invite_new": Req(
            {},
            union=(
                "type",
                {
                    "USER": {"claimer_email": "str", "send_email": "bool"},
                    "DEVICE": {"send_email": "bool"},
                },
            ),
        ),
        "invite_delete": Req({"token": "uuid", "reason": "deleted_reason"}),
        "invite_list": Req({}),
        "invite_1_greeter_wait_peer": Req({"token": "uuid", "greeter_public_key": "public_key"}),
        "invite_2a_greeter_get_hashed_nonce": Req({"token": "uuid"}),
        "invite_2b_greeter_send_nonce": Req({"token": "uuid", "greeter_nonce": "bytes"}),
        "invite_3a_greeter_wait_peer_trust": Req({"token": "uuid"}),
        "invite_3b_greeter_signify_trust": Req({"token": "uuid"}),
        "invite_4_greeter_communicate": Req({"token": "uuid", "payload": "bytes"}),
        "block_create": Req({"block_id": "uuid", "realm_id": "uuid", "block": "bytes"}),
        "block_read": Req({"block_id": "uuid"}),
        "vlob_create": Req(
            {
                "realm_id": "uuid",
                "encryption_revision": "int",
                "vlob_id": "uuid",
                "timestamp": "datetime",
                "blob": "bytes",
            }
        ),
        "vlob_read": Req(
            {"encryption_revision": "int", "vlob_id": "uuid", "version": "version?", "timestamp": "datetime?"}
        ),
        "vlob_update": Req(
            {
                "encryption_revision": "int",
                "vlob_id": "uuid",
                "timestamp": "datetime",
                "version": "version",
                "blob": "bytes",
            }
        ),
        "vlob_poll_changes": Req({"realm_id": "uuid", "last_checkpoint": "int"}),
        "vlob_list_versions": Req({"vlob_id": "uuid"}),
        "vlob_maintenance_get_reencryption_batch": Req(
            {"realm_id": "uuid", "encryption_revision": "int", "size": "size"}
        ),
        "vlob_maintenance_save_reencryption_batch": Req(
            {"realm_id": "uuid", "encryption_revision": "int", "batch": "batch"}
        ),
        "realm_create": Req({"role_certificate": "bytes"}),
        "realm_status": Req({"realm_id": "uuid"}),
        "realm_stats": Req({"realm_id": "uuid"}),
        "realm_get_role_certificates": Req({"realm_id": "uuid"}),
        "realm_update_roles": Req({"role_certificate": "bytes", "recipient_message": "bytes?"}),
        "realm_start_reencryption_maintenance": Req(
            {
                "realm_id": "uuid",
                "encryption_revision": "int",
                "timestamp": "datetime",
                "per_participant_message": "participant_messages",
            }
        ),
        "realm_finish_reencryption_maintenance": Req({"realm_id": "uuid", "encryption_revision": "int"}),
        "organization_stats": Req({}),
        "organization_config": Req({}),
        "pki_enrollment_list": Req({}),
        "pki_enrollment_reject": Req({"enrollment_id": "uuid"}),
        "pki_enrollment_accept": Req(
            {
                "enrollment_id": "uuid",
                "accepter_der_x509_certificate": "bytes",
                "accept_payload_signature": "bytes",
                "accept_payload": "bytes",
                **_NEW_USER_CERTS,
            }
        ),
    },
    INVITED: {
        "ping": Req({"ping": "str"}),
        "invite_info": Req({}),
        "invite_1_claimer_wait_peer": Req({"claimer_public_key": "public_key"}),
        "invite_2a_claimer_send_hashed_nonce": Req({"claimer_hashed_nonce": "bytes"}),
        "invite_2b_claimer_send_nonce": Req({"claimer_nonce": "bytes"}),
        "invite_3a_claimer_signify_trust": Req({}),
        "invite_3b_claimer_wait_peer_trust": Req({}),
        "invite_4_claimer_communicate": Req({"payload": "bytes"}),
    },
    APIV1: {
        "ping": Req({"ping": "str"}),
        "organization_bootstrap": Req(
            {
                **_BOOTSTRAP,
                "redacted_user_certificate": "~bytes",
                "redacted_device_certificate": "~bytes",
            }
        ),
    },
    ANON: {
        "organization_bootstrap": Req(dict(_BOOTSTRAP)),
        "pki_enrollment_submit": Req(
            {
                "enrollment_id": "uuid",
                "force": "bool",
                "submitter_der_x509_certificate": "bytes",
                "submitter_der_x509_certificate_email": "~str?",
                "submit_payload_signature": "bytes",
                "submit_payload": "bytes",
            }
        ),
        "pki_enrollment_info": Req({"enrollment_id": "uuid"}),
    },
}


@dataclass(frozen=True)
class Variant:
    """One concrete request shape: fixed discriminator items + kinded fields."""

    conn: str
    cmd: str
    label: str
    fixed: dict[str, Any]
    fields: dict[str, str]

    def valid_request(self) -> dict[str, Any]:
        return {**self.fixed, **{name: kind_of(tag)[0].valid[0] for name, tag in self.fields.items()}}

    def __str__(self) -> str:
        return f"{self.conn}:{self.cmd}{self.label}"


def request_variants() -> list[Variant]:
    variants = []
    for conn, commands in REQUESTS.items():
        for cmd, req in commands.items():
            if req.union is None:
                variants.append(Variant(conn, cmd, "", {}, req.fields))
            else:
                discriminator, choices = req.union
                for value, fields in choices.items():
                    variants.append(Variant(conn, cmd, f"[{value}]", {discriminator: value}, fields))
    return variants


# --------------------------------------------------------------------------------------
# Replies
# --------------------------------------------------------------------------------------

ALICE_HANDLE = ["alice@example.com", "Alice"]

# valid ok replies (without `status`), several where the reply is a union
OK_REPLIES: dict[str, dict[str, list[dict[str, Any]]]] = {
    AUTH: {
        "ping": [{"pong": "42"}],
        "events_subscribe": [{}],
        "events_listen": [
            {"event": "pinged", "ping": "foo"},
            {"event": "message.received", "index": 1},
            {"event": "invite.status_changed", "token": TOKEN, "invitation_status": "IDLE"},
            {"event": "invite.status_changed", "token": TOKEN, "invitation_status": "READY"},
            {"event": "invite.status_changed", "token": TOKEN, "invitation_status": "DELETED"},
            {"event": "realm.roles_updated", "realm_id": REALM, "role": "OWNER"},
            {"event": "realm.roles_updated", "realm_id": REALM, "role": None},
            {
                "event": "realm.vlobs_updated",
                "realm_id": REALM,
                "checkpoint": 1,
                "src_id": VLOB,
                "src_version": 1,
            },
            {"event": "realm.maintenance_started", "realm_id": REALM, "encryption_revision": 2},
            {"event": "realm.maintenance_finished", "realm_id": REALM, "encryption_revision": 2},
            {"event": "pki_enrollment.updated"},
        ],
        "message_get": [
            {"messages": []},
            {
                "messages": [
                    {"count": 2, "sender": "alice@dev1", "timestamp": T1, "body": b"m2"},
                    {"count": 3, "sender": "alice@dev1", "timestamp": T2, "body": b"m3"},
                ]
            },
        ],
        "user_get": [
            {
                "user_certificate": b"uc",
                "revoked_user_certificate": None,
                "device_certificates": [b"dc"],
                "trustchain": {"devices": [], "users": [], "revoked_users": []},
            },
            {
                "user_certificate": b"uc",
                "revoked_user_certificate": b"ruc",
                "device_certificates": [b"dc1", b"dc2"],
                "trustchain": {"devices": [b"d"], "users": [b"u"], "revoked_users": [b"r"]},
            },
        ],
        "user_create": [{}],
        "user_revoke": [{}],
        "device_create": [{}],
        "human_find": [
            {"results": [], "page": 1, "per_page": 100, "total": 0},
            {
                "results": [
                    {"user_id": "alice", "human_handle": ALICE_HANDLE, "revoked": False},
                    {"user_id": "bob", "human_handle": ["bob@example.com", "Bob"], "revoked": True},
                    {"user_id": "nohuman", "human_handle": None, "revoked": False},
                ],
                "page": 2,
                "per_page": 3,
                "total": 9,
            },
        ],
        "invite_new": [
            {"token": TOKEN},
            {"token": TOKEN, "email_sent": "SUCCESS"},
            {"token": TOKEN, "email_sent": "NOT_AVAILABLE"},
            {"token": TOKEN, "email_sent": "BAD_RECIPIENT"},
        ],
        "invite_delete": [{}],
        "invite_list": [
            {"invitations": []},
            {
                "invitations": [
                    {"type": "DEVICE", "token": TOKEN, "created_on": T1, "status": "IDLE"},
                    {
                        "type": "USER",
                        "token": REALM,
                        "created_on": T2,
                        "claimer_email": "zack@example.com",
                        "status": "READY",
                    },
                ]
            },
        ],
        "invite_1_greeter_wait_peer": [{"claimer_public_key": KEY}],
        "invite_2a_greeter_get_hashed_nonce": [{"claimer_hashed_nonce": b"hash"}],
        "invite_2b_greeter_send_nonce": [{"claimer_nonce": b"nonce"}],
        "invite_3a_greeter_wait_peer_trust": [{}],
        "invite_3b_greeter_signify_trust": [{}],
        "invite_4_greeter_communicate": [{"payload": b"claimer payload"}, {"payload": b""}],
        "block_create": [{}],
        "block_read": [{"block": b"block data"}, {"block": b""}],
        "vlob_create": [{}],
        "vlob_read": [
            {
                "version": 2,
                "blob": b"v2",
                "author": "alice@dev1",
                "timestamp": T2,
                "author_last_role_granted_on": T1,
            }
        ],
        "vlob_update": [{}],
        "vlob_poll_changes": [
            {"changes": {VLOB: 2}, "current_checkpoint": 2},
            {"changes": {}, "current_checkpoint": 2},
        ],
        "vlob_list_versions": [
            {"versions": {1: (T1, "alice@dev1"), 2: [T2, "alice@dev2"]}},
            {"versions": {}},
        ],
        "vlob_maintenance_get_reencryption_batch": [
            {"batch": []},
            {
                "batch": [
                    {"vlob_id": VLOB, "version": 1, "blob": b"old"},
                    {"vlob_id": REALM, "version": 0, "blob": b""},
                ]
            },
        ],
        "vlob_maintenance_save_reencryption_batch": [{"total": 3, "done": 2}, {"total": 3, "done": 3}],
        "realm_create": [{}],
        "realm_status": [
            {
                "in_maintenance": False,
                "maintenance_type": None,
                "maintenance_started_by": None,
                "maintenance_started_on": None,
                "encryption_revision": 1,
            },
            {
                "in_maintenance": True,
                "maintenance_type": "REENCRYPTION",
                "maintenance_started_by": "alice@dev1",
                "maintenance_started_on": T1,
                "encryption_revision": 2,
            },
        ],
        "realm_stats": [{"blocks_size": 4, "vlobs_size": 0}, {"blocks_size": 4, "vlobs_size": 4}],
        "realm_get_role_certificates": [{"certificates": [b"c1", b"c2"]}, {"certificates": []}],
        "realm_update_roles": [{}],
        "realm_start_reencryption_maintenance": [{}],
        "realm_finish_reencryption_maintenance": [{}],
        "organization_stats": [
            {
                "data_size": 4,
                "metadata_size": 4,
                "realms": 4,
                "users": 3,
                "active_users": 3,
                "users_per_profile_detail": [
                    {"profile": "ADMIN", "active": 2, "revoked": 0},
                    {"profile": "STANDARD", "active": 1, "revoked": 0},
                    {"profile": "OUTSIDER", "active": 0, "revoked": 0},
                ],
            }
        ],
        "organization_config": [
            {"user_profile_outsider_allowed": True, "active_users_limit": None},
            {"user_profile_outsider_allowed": False, "active_users_limit": 10},
        ],
        "pki_enrollment_list": [
            {"enrollments": []},
            {
                "enrollments": [
                    {
                        "enrollment_id": ENROLLMENT,
                        "submitted_on": T1,
                        "submitter_der_x509_certificate": b"der",
                        "submit_payload_signature": b"sig",
                        "submit_payload": b"payload",
                    }
                ]
            },
        ],
        "pki_enrollment_reject": [{}],
        "pki_enrollment_accept": [{}],
    },
    INVITED: {
        "ping": [{"pong": ""}],
        "invite_info": [
            {
                "type": "USER",
                "claimer_email": "zack@example.com",
                "greeter_user_id": "alice",
                "greeter_human_handle": ALICE_HANDLE,
            },
            {"type": "USER", "claimer_email": "z", "greeter_user_id": "alice", "greeter_human_handle": None},
            {"type": "DEVICE", "greeter_user_id": "alice", "greeter_human_handle": ALICE_HANDLE},
            {"type": "DEVICE", "greeter_user_id": "alice", "greeter_human_handle": None},
        ],
        "invite_1_claimer_wait_peer": [{"greeter_public_key": KEY}],
        "invite_2a_claimer_send_hashed_nonce": [{"greeter_nonce": b"nonce"}],
        "invite_2b_claimer_send_nonce": [{}],
        "invite_3a_claimer_signify_trust": [{}],
        "invite_3b_claimer_wait_peer_trust": [{}],
        "invite_4_claimer_communicate": [{"payload": b"greeter payload"}],
    },
    APIV1: {
        "ping": [{"pong": "hello"}],
        "organization_bootstrap": [{}],
    },
    ANON: {
        "organization_bootstrap": [{}],
        "pki_enrollment_submit": [{"submitted_on": T1}],
        "pki_enrollment_info": [
            {"enrollment_status": "SUBMITTED", "submitted_on": T1},
            {
                "enrollment_status": "ACCEPTED",
                "submitted_on": T1,
                "accepted_on": T2,
                "accepter_der_x509_certificate": b"der",
                "accept_payload_signature": b"sig",
                "accept_payload": b"payload",
            },
            {"enrollment_status": "REJECTED", "submitted_on": T1, "rejected_on": T2},
            {"enrollment_status": "CANCELLED", "submitted_on": T1, "cancelled_on": T2},
        ],
    },
}

# Error statuses (besides bad_message) and the form of their reply:
# "bare" = {status} only; "reason" = reason required; "reason?" = with or without reason;
# "bad_timestamp" = full form; "greater" = require_greater_timestamp; "submitted_on".
_GREETER = {"not_found": "bare", "already_deleted": "bare", "invalid_state": "bare"}
_CLAIMER = {"not_found": "bare", "invalid_state": "bare"}
_REALM_READ = {"not_found": "reason", "not_allowed": "bare"}
_VLOB_MAINTENANCE = {
    "not_found": "reason",
    "not_allowed": "bare",
    "not_in_maintenance": "reason",
    "bad_encryption_revision": "bare",
    "maintenance_error": "reason",
}
_BOOTSTRAP_ERRORS = {
    "invalid_certification": "reason",
    "invalid_data": "reason",
    "bad_timestamp": "bad_timestamp",
    "not_found": "bare",
    "already_bootstrapped": "bare",
    "active_users_limit_reached": "bare",  # docs/protocol/DECISIONS.md
}

ERROR_FORMS: dict[str, dict[str, dict[str, str]]] = {
    AUTH: {
        "ping": {},
        "events_subscribe": {},
        "events_listen": {"no_events": "bare", "cancelled": "reason"},
        "message_get": {},
        "user_get": {"not_found": "bare"},
        "user_create": {
            "not_allowed": "reason",
            "invalid_certification": "reason",
            "invalid_data": "reason",
            "active_users_limit_reached": "bare",
            "already_exists": "reason",
        },
        "user_revoke": {
            "not_allowed": "reason",
            "invalid_certification": "reason",
            "not_found": "bare",
            "already_revoked": "reason",
        },
        "device_create": {
            "invalid_certification": "reason",
            "bad_user_id": "reason",
            "invalid_data": "reason",
            "already_exists": "reason",
        },
        "human_find": {"not_allowed": "reason"},
        "invite_new": {"not_allowed": "bare", "already_member": "bare", "not_available": "bare"},
        "invite_delete": {"not_found": "bare", "already_deleted": "bare"},
        "invite_list": {},
        "invite_1_greeter_wait_peer": _GREETER,
        "invite_2a_greeter_get_hashed_nonce": _GREETER,
        "invite_2b_greeter_send_nonce": _GREETER,
        "invite_3a_greeter_wait_peer_trust": _GREETER,
        "invite_3b_greeter_signify_trust": _GREETER,
        "invite_4_greeter_communicate": _GREETER,
        "block_create": {
            "not_found": "bare",
            "in_maintenance": "bare",
            "not_allowed": "bare",
            "already_exists": "bare",
            "timeout": "bare",
        },
        "block_read": {
            "not_found": "bare",
            "in_maintenance": "bare",
            "not_allowed": "bare",
            "timeout": "bare",
        },
        "vlob_create": {
            "bad_timestamp": "bad_timestamp",
            "not_allowed": "bare",
            "in_maintenance": "bare",
            "bad_encryption_revision": "bare",
            "require_greater_timestamp": "greater",
            "already_exists": "reason",
        },
        "vlob_read": {
            "not_found": "reason",
            "in_maintenance": "bare",
            "bad_encryption_revision": "bare",
            "not_allowed": "bare",
            "bad_version": "bare",
        },
        "vlob_update": {
            "bad_timestamp": "bad_timestamp",
            "not_found": "reason",
            "in_maintenance": "bare",
            "bad_encryption_revision": "bare",
            "not_allowed": "bare",
            "require_greater_timestamp": "greater",
            "bad_version": "bare",
        },
        "vlob_poll_changes": {**_REALM_READ, "in_maintenance": "bare"},
        "vlob_list_versions": {**_REALM_READ, "in_maintenance": "bare"},
        "vlob_maintenance_get_reencryption_batch": _VLOB_MAINTENANCE,
        "vlob_maintenance_save_reencryption_batch": _VLOB_MAINTENANCE,
        "realm_create": {
            "invalid_certification": "reason",
            "bad_timestamp": "bad_timestamp",
            "invalid_data": "reason",
            "already_exists": "bare",
        },
        "realm_status": _REALM_READ,
        "realm_stats": _REALM_READ,
        "realm_get_role_certificates": _REALM_READ,
        "realm_update_roles": {
            "not_allowed": "reason?",
            "invalid_certification": "reason",
            "bad_timestamp": "bad_timestamp",
            "invalid_data": "reason",
            "not_found": "reason",
            "incompatible_profile": "reason",
            "user_revoked": "bare",
            "in_maintenance": "bare",
            "already_granted": "bare",
            "require_greater_timestamp": "greater",
        },
        "realm_start_reencryption_maintenance": {
            "bad_timestamp": "bad_timestamp",
            "not_found": "reason",
            "in_maintenance": "bare",
            "bad_encryption_revision": "bare",
            "not_allowed": "reason?",  # a reason when a recipient is full (docs/protocol/DECISIONS.md)
            "participants_mismatch": "reason",
        },
        "realm_finish_reencryption_maintenance": {
            "not_found": "reason",
            "not_allowed": "bare",
            "not_in_maintenance": "reason",
            "bad_encryption_revision": "bare",
            "maintenance_error": "reason",
        },
        "organization_stats": {"not_allowed": "reason", "not_found": "bare"},
        "organization_config": {"not_found": "bare"},
        "pki_enrollment_list": {"not_allowed": "reason"},
        "pki_enrollment_reject": {
            "not_allowed": "reason",
            "not_found": "reason",
            "no_longer_available": "reason",
        },
        "pki_enrollment_accept": {
            "not_allowed": "reason",
            "invalid_payload_data": "reason",
            "invalid_certification": "reason",
            "invalid_data": "reason",
            "not_found": "reason",
            "no_longer_available": "reason",
            "active_users_limit_reached": "bare",
            "already_exists": "reason",
        },
    },
    INVITED: {
        "ping": {},
        "invite_info": {},
        "invite_1_claimer_wait_peer": _CLAIMER,
        "invite_2a_claimer_send_hashed_nonce": _CLAIMER,
        "invite_2b_claimer_send_nonce": _CLAIMER,
        "invite_3a_claimer_signify_trust": _CLAIMER,
        "invite_3b_claimer_wait_peer_trust": _CLAIMER,
        "invite_4_claimer_communicate": _CLAIMER,
    },
    APIV1: {"ping": {}, "organization_bootstrap": _BOOTSTRAP_ERRORS},
    ANON: {
        "organization_bootstrap": _BOOTSTRAP_ERRORS,
        "pki_enrollment_submit": {
            "invalid_payload_data": "reason",
            "enrollment_id_already_used": "bare",
            "already_submitted": "submitted_on",
            "already_enrolled": "bare",
            "email_already_used": "bare",
            "not_allowed": "reason",  # too many pending enrollments (docs/protocol/DECISIONS.md)
        },
        "pki_enrollment_info": {"not_found": "reason"},
    },
}

BAD_TIMESTAMP_KEYS = {
    "ballpark_client_early_offset": 50.0,
    "ballpark_client_late_offset": 70.0,
    "backend_timestamp": T2,
    "client_timestamp": T1,
}

# form -> (list of valid extra-key sets, list of invalid extra-key sets)
ERROR_FORM_EXAMPLES: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {
    "bare": ([{}], [{"reason": "some reason"}, {"reason": None}]),
    "reason": ([{"reason": "some reason"}, {"reason": ""}], [{}, {"reason": None}, {"reason": b"x"}]),
    "reason?": ([{}, {"reason": "some reason"}], [{"reason": None}, {"reason": 42}]),
    "bad_timestamp": (
        [BAD_TIMESTAMP_KEYS],
        [
            {},
            {**BAD_TIMESTAMP_KEYS, "reason": "Timestamp is out of date."},
            {k: v for k, v in BAD_TIMESTAMP_KEYS.items() if k != "client_timestamp"},
            {**BAD_TIMESTAMP_KEYS, "backend_timestamp": T2.timestamp()},
            {**BAD_TIMESTAMP_KEYS, "ballpark_client_early_offset": "50"},
        ],
    ),
    "greater": (
        [{"strictly_greater_than": T1}],
        [{}, {"strictly_greater_than": None}, {"strictly_greater_than": T1, "reason": "x"}],
    ),
    "submitted_on": (
        [{"submitted_on": T1}],
        [{}, {"submitted_on": None}, {"submitted_on": T1, "reason": ""}],
    ),
}

# Replies quoted in the "Tests" paragraphs of docs/protocol/commands.md: (conn, cmd, reply)
DOCUMENTED_REPLIES: list[tuple[str, str, dict[str, Any]]] = [
    (AUTH, "ping", {"status": "ok", "pong": "42"}),
    (INVITED, "ping", {"status": "ok", "pong": "42"}),
    (APIV1, "ping", {"status": "ok", "pong": "42"}),
    (AUTH, "events_listen", {"status": "no_events"}),
    (AUTH, "events_listen", {"status": "cancelled", "reason": "Client cancelled the listening"}),
    (AUTH, "organization_stats", {"status": "not_allowed", "reason": "User `bob` is not admin"}),
    (
        AUTH,
        "user_create",
        {
            "status": "bad_message",
            "reason": "Invalid message.",
            "errors": {"redacted_device_certificate": MISSING},
        },
    ),
    (AUTH, "user_create", {"status": "already_exists", "reason": "User `bob` already exists"}),
    (
        AUTH,
        "user_create",
        {
            "status": "already_exists",
            "reason": "Human handle `Bob <bob@example.com>` already corresponds to a non-revoked user",
        },
    ),
    (
        AUTH,
        "user_create",
        {
            "status": "invalid_certification",
            "reason": "Invalid certification data (Signature was forged or corrupt).",
        },
    ),
    (AUTH, "user_create", {"status": "invalid_certification", "reason": "Invalid timestamp in certificate."}),
    (
        AUTH,
        "user_create",
        {"status": "invalid_data", "reason": "Device and User must have the same user ID."},
    ),
    (AUTH, "user_create", {"status": "not_allowed", "reason": "User `bob` is not admin"}),
    (AUTH, "user_create", {"status": "active_users_limit_reached"}),
    (AUTH, "device_create", {"status": "already_exists", "reason": "Device `alice@dev2` already exists"}),
    (AUTH, "device_create", {"status": "bad_user_id", "reason": "Device must be handled by it own user."}),
    (
        AUTH,
        "device_create",
        {"status": "invalid_certification", "reason": "Invalid timestamp in certification."},
    ),
    (
        AUTH,
        "device_create",
        {
            "status": "invalid_data",
            "reason": "Redacted Device certificate must not contain a device_label field.",
        },
    ),
    (AUTH, "user_revoke", {"status": "not_allowed", "reason": "Cannot do self-revocation"}),
    (AUTH, "user_revoke", {"status": "not_found"}),
    (AUTH, "user_revoke", {"status": "already_revoked", "reason": "User `bob` already revoked"}),
    (AUTH, "user_get", {"status": "not_found"}),
    (
        AUTH,
        "user_get",
        {
            "status": "bad_message",
            "reason": "Invalid message.",
            "errors": {"user_id": ["Not string"]},
        },
    ),
    (AUTH, "human_find", {"status": "not_allowed", "reason": "Not allowed for user with OUTSIDER profile."}),
    (
        AUTH,
        "human_find",
        {"status": "bad_message", "reason": "Invalid message.", "errors": {"page": ["Invalid value."]}},
    ),
    (AUTH, "invite_new", {"status": "ok", "token": TOKEN}),
    (AUTH, "invite_new", {"status": "not_allowed"}),
    (AUTH, "invite_new", {"status": "already_member"}),
    (AUTH, "invite_new", {"status": "not_available"}),
    (
        AUTH,
        "invite_new",
        {
            "status": "bad_message",
            "reason": "Invalid message.",
            "errors": {"type": ["Unsupported value: FOO"]},
        },
    ),
    (AUTH, "invite_delete", {"status": "already_deleted"}),
    (AUTH, "invite_delete", {"status": "not_found"}),
    (AUTH, "invite_1_greeter_wait_peer", {"status": "invalid_state"}),
    (INVITED, "invite_1_claimer_wait_peer", {"status": "invalid_state"}),
    (AUTH, "realm_create", {"status": "already_exists"}),
    (
        AUTH,
        "realm_create",
        {"status": "invalid_data", "reason": "Initial realm role certificate must be self-signed."},
    ),
    (AUTH, "realm_create", {"status": "bad_timestamp", **BAD_TIMESTAMP_KEYS}),
    (
        AUTH,
        "realm_status",
        {
            "status": "ok",
            "in_maintenance": False,
            "maintenance_type": None,
            "maintenance_started_by": None,
            "maintenance_started_on": None,
            "encryption_revision": 1,
        },
    ),
    (AUTH, "realm_status", {"status": "not_allowed"}),
    (AUTH, "realm_stats", {"status": "ok", "blocks_size": 4, "vlobs_size": 4}),
    (
        AUTH,
        "realm_stats",
        {"status": "not_found", "reason": "Realm `a0000000000000000000000000000000` doesn't exist"},
    ),
    (AUTH, "realm_get_role_certificates", {"status": "not_allowed"}),
    (AUTH, "realm_update_roles", {"status": "not_allowed"}),
    (AUTH, "realm_update_roles", {"status": "not_allowed", "reason": "Outsider user cannot share realm"}),
    (AUTH, "realm_update_roles", {"status": "not_found", "reason": "User `zack` doesn't exist"}),
    (
        AUTH,
        "realm_update_roles",
        {"status": "incompatible_profile", "reason": "User with OUTSIDER profile cannot be MANAGER or OWNER"},
    ),
    (
        AUTH,
        "realm_update_roles",
        {"status": "invalid_data", "reason": "Realm role certificate cannot be self-signed."},
    ),
    (AUTH, "realm_update_roles", {"status": "already_granted"}),
    (AUTH, "realm_update_roles", {"status": "user_revoked"}),
    (AUTH, "realm_update_roles", {"status": "in_maintenance"}),
    (AUTH, "realm_update_roles", {"status": "require_greater_timestamp", "strictly_greater_than": T1}),
    (AUTH, "realm_update_roles", {"status": "bad_timestamp", **BAD_TIMESTAMP_KEYS}),
    (AUTH, "realm_start_reencryption_maintenance", {"status": "bad_encryption_revision"}),
    (
        AUTH,
        "realm_start_reencryption_maintenance",
        {"status": "participants_mismatch", "reason": "Realm participants and message recipients mismatch"},
    ),
    (AUTH, "realm_start_reencryption_maintenance", {"status": "in_maintenance"}),
    (AUTH, "realm_start_reencryption_maintenance", {"status": "bad_timestamp", **BAD_TIMESTAMP_KEYS}),
    (
        AUTH,
        "realm_finish_reencryption_maintenance",
        {
            "status": "not_in_maintenance",
            "reason": "Realm `a0000000000000000000000000000000` not under maintenance",
        },
    ),
    (
        AUTH,
        "realm_finish_reencryption_maintenance",
        {"status": "maintenance_error", "reason": "Reencryption operations are not over"},
    ),
    (AUTH, "vlob_create", {"status": "already_exists", "reason": ""}),
    (AUTH, "vlob_create", {"status": "not_allowed"}),
    (AUTH, "vlob_create", {"status": "require_greater_timestamp", "strictly_greater_than": T1}),
    (
        AUTH,
        "vlob_read",
        {"status": "not_found", "reason": "Vlob `b0000000000000000000000000000000` doesn't exist"},
    ),
    (AUTH, "vlob_read", {"status": "bad_version"}),
    (AUTH, "vlob_read", {"status": "bad_encryption_revision"}),
    (AUTH, "vlob_read", {"status": "in_maintenance"}),
    (
        AUTH,
        "vlob_read",
        {
            "status": "ok",
            "version": 1,
            "blob": b"Initial commit.",
            "author": "alice@dev1",
            "timestamp": T1,
            "author_last_role_granted_on": T1,
        },
    ),
    (AUTH, "vlob_update", {"status": "bad_version"}),
    (AUTH, "vlob_update", {"status": "require_greater_timestamp", "strictly_greater_than": T1}),
    (AUTH, "vlob_poll_changes", {"status": "ok", "current_checkpoint": 2, "changes": {VLOB: 2}}),
    (AUTH, "vlob_poll_changes", {"status": "ok", "current_checkpoint": 2, "changes": {}}),
    (
        AUTH,
        "vlob_list_versions",
        {"status": "ok", "versions": {1: (T1, "alice@dev1"), 2: (T2, "alice@dev1")}},
    ),
    (AUTH, "vlob_maintenance_save_reencryption_batch", {"status": "ok", "total": 3, "done": 3}),
    (
        AUTH,
        "vlob_maintenance_get_reencryption_batch",
        {
            "status": "not_in_maintenance",
            "reason": "Realm `a0000000000000000000000000000000` not under maintenance",
        },
    ),
    (AUTH, "block_create", {"status": "already_exists"}),
    (AUTH, "block_create", {"status": "timeout"}),
    (AUTH, "block_read", {"status": "not_found"}),
    (
        AUTH,
        "message_get",
        {"status": "bad_message", "reason": "Invalid message.", "errors": {"offset": ["Invalid value."]}},
    ),
    (AUTH, "pki_enrollment_list", {"status": "ok", "enrollments": []}),
    (AUTH, "pki_enrollment_reject", {"status": "not_found", "reason": ""}),
    (AUTH, "pki_enrollment_reject", {"status": "no_longer_available", "reason": ""}),
    (AUTH, "pki_enrollment_accept", {"status": "already_exists", "reason": ""}),
    (AUTH, "pki_enrollment_accept", {"status": "active_users_limit_reached"}),
    (ANON, "pki_enrollment_info", {"reason": "", "status": "not_found"}),
    (ANON, "pki_enrollment_submit", {"status": "already_submitted", "submitted_on": T1}),
    (ANON, "pki_enrollment_submit", {"status": "enrollment_id_already_used"}),
    (ANON, "pki_enrollment_submit", {"status": "already_enrolled"}),
    (ANON, "pki_enrollment_submit", {"status": "email_already_used"}),
    (
        ANON,
        "pki_enrollment_submit",
        {
            "status": "invalid_payload_data",
            "reason": "Error -3 while decompressing data: incorrect header check",
        },
    ),
    (ANON, "organization_bootstrap", {"status": "not_found"}),
    (ANON, "organization_bootstrap", {"status": "already_bootstrapped"}),
    (
        ANON,
        "organization_bootstrap",
        {"status": "invalid_data", "reason": "Bootstrapping user must have admin profile."},
    ),
    (
        APIV1,
        "organization_bootstrap",
        {"status": "invalid_data", "reason": "Redacted user&device certificate muste be provided together"},
    ),
    (
        APIV1,
        "organization_bootstrap",
        {
            "status": "bad_message",
            "reason": "Invalid message.",
            "errors": {"redacted_user_certificate": ["Field may not be null."]},
        },
    ),
    (APIV1, "organization_bootstrap", {"status": "bad_timestamp", **BAD_TIMESTAMP_KEYS}),
]

# (conn, cmd, reply) that validate_reply must refuse
BAD_REPLIES: list[tuple[str, str, dict[str, Any]]] = [
    # unknown status for the command / generic statuses are not command replies
    (AUTH, "ping", {"status": "not_found"}),
    (AUTH, "ping", {"status": "unknown_command", "reason": "Unknown command"}),
    (AUTH, "vlob_create", {"status": "not_found", "reason": "Realm `x` doesn't exist"}),
    (AUTH, "block_create", {"status": "bad_timestamp", **BAD_TIMESTAMP_KEYS}),
    (ANON, "pki_enrollment_info", {"status": "already_submitted", "submitted_on": T1}),
    # no / bad status
    (AUTH, "ping", {"pong": "x"}),
    (AUTH, "ping", {"status": None, "pong": "x"}),
    (AUTH, "ping", {"status": b"ok", "pong": "x"}),
    # wrong types
    (AUTH, "ping", {"status": "ok", "pong": b"x"}),
    (
        AUTH,
        "vlob_read",
        {
            "status": "ok",
            "version": "1",
            "blob": b"",
            "author": "a@b",
            "timestamp": T1,
            "author_last_role_granted_on": T1,
        },
    ),
    (
        AUTH,
        "vlob_read",
        {
            "status": "ok",
            "version": 0,
            "blob": b"",
            "author": "a@b",
            "timestamp": T1,
            "author_last_role_granted_on": T1,
        },
    ),
    (
        AUTH,
        "vlob_read",
        {
            "status": "ok",
            "version": 1,
            "blob": b"",
            "author": "alice",
            "timestamp": T1,
            "author_last_role_granted_on": T1,
        },
    ),
    (
        AUTH,
        "vlob_read",
        {
            "status": "ok",
            "version": 1,
            "blob": b"",
            "author": "a@b",
            "timestamp": T1,
            "author_last_role_granted_on": None,
        },
    ),
    (AUTH, "vlob_poll_changes", {"status": "ok", "changes": {VLOB.hex: 2}, "current_checkpoint": 2}),
    (AUTH, "vlob_poll_changes", {"status": "ok", "changes": {VLOB: "2"}, "current_checkpoint": 2}),
    (AUTH, "vlob_list_versions", {"status": "ok", "versions": {"1": (T1, "alice@dev1")}}),
    (AUTH, "vlob_list_versions", {"status": "ok", "versions": {1: (T1,)}}),
    (AUTH, "vlob_list_versions", {"status": "ok", "versions": {1: ("alice@dev1", T1)}}),
    (
        AUTH,
        "realm_status",
        {
            "status": "ok",
            "in_maintenance": False,
            "maintenance_type": "FOO",
            "maintenance_started_by": None,
            "maintenance_started_on": None,
            "encryption_revision": 1,
        },
    ),
    (
        AUTH,
        "organization_config",
        {"status": "ok", "user_profile_outsider_allowed": 1, "active_users_limit": None},
    ),
    (AUTH, "invite_new", {"status": "ok", "token": TOKEN.hex}),
    (AUTH, "invite_new", {"status": "ok", "token": TOKEN, "email_sent": None}),
    (AUTH, "invite_new", {"status": "ok", "token": TOKEN, "email_sent": "FAILED"}),
    (AUTH, "invite_1_greeter_wait_peer", {"status": "ok", "claimer_public_key": KEY[:31]}),
    (
        AUTH,
        "events_listen",
        {"status": "ok", "event": "realm.roles_updated", "realm_id": REALM, "role": "ADMIN"},
    ),
    (AUTH, "events_listen", {"status": "ok", "event": "unknown.event"}),
    (AUTH, "events_listen", {"status": "ok"}),
    (AUTH, "ping", {"status": "bad_message"}),
    (AUTH, "ping", {"status": "bad_message", "reason": "Invalid message.", "errors": ["x"]}),
    # extra keys, also nested
    (AUTH, "ping", {"status": "ok", "pong": "x", "reason": "x"}),
    (AUTH, "events_listen", {"status": "ok", "event": "pinged", "ping": "x", "realm_id": REALM}),
    (AUTH, "events_listen", {"status": "ok", "event": "pki_enrollment.updated", "organization_id": "Org"}),
    (AUTH, "events_listen", {"status": "no_events", "reason": "x"}),
    (
        AUTH,
        "human_find",
        {
            "status": "ok",
            "results": [{"user_id": "a", "human_handle": None, "revoked": False, "x": 1}],
            "page": 1,
            "per_page": 1,
            "total": 1,
        },
    ),
    (
        AUTH,
        "human_find",
        {
            "status": "ok",
            "results": [{"user_id": "a", "revoked": False}],
            "page": 1,
            "per_page": 1,
            "total": 1,
        },
    ),
    (AUTH, "human_find", {"status": "ok", "results": [], "page": 0, "per_page": 1, "total": 0}),
    (
        AUTH,
        "invite_list",
        {
            "status": "ok",
            "invitations": [
                {"type": "DEVICE", "token": TOKEN, "created_on": T1, "status": "IDLE", "claimer_email": "x"}
            ],
        },
    ),
    (
        AUTH,
        "invite_list",
        {
            "status": "ok",
            "invitations": [{"type": "USER", "token": TOKEN, "created_on": T1, "status": "IDLE"}],
        },
    ),
    (
        AUTH,
        "invite_list",
        {
            "status": "ok",
            "invitations": [{"type": "DEVICE", "token": TOKEN, "created_on": T1, "status": "DELETED"}],
        },
    ),
    (
        INVITED,
        "invite_info",
        {
            "status": "ok",
            "type": "DEVICE",
            "claimer_email": "x",
            "greeter_user_id": "alice",
            "greeter_human_handle": None,
        },
    ),
    (
        INVITED,
        "invite_info",
        {"status": "ok", "type": "USER", "greeter_user_id": "alice", "greeter_human_handle": None},
    ),
    (
        AUTH,
        "user_get",
        {
            "status": "ok",
            "user_certificate": b"",
            "revoked_user_certificate": None,
            "device_certificates": [],
            "trustchain": {"devices": [], "users": []},
        },
    ),
    (
        AUTH,
        "user_get",
        {
            "status": "ok",
            "user_certificate": b"",
            "revoked_user_certificate": None,
            "device_certificates": [],
            "trustchain": {"devices": [], "users": [], "revoked_users": [], "x": []},
        },
    ),
    (
        AUTH,
        "message_get",
        {
            "status": "ok",
            "messages": [{"count": 1, "sender": "a@b", "timestamp": T1, "body": b"", "index": 1}],
        },
    ),
    (
        AUTH,
        "vlob_maintenance_get_reencryption_batch",
        {"status": "ok", "batch": [{"vlob_id": VLOB, "version": 1, "blob": b"", "author": "a@b"}]},
    ),
    (
        AUTH,
        "organization_stats",
        {
            "status": "ok",
            "data_size": 0,
            "metadata_size": 0,
            "realms": 0,
            "users": 0,
            "active_users": 0,
            "users_per_profile_detail": [
                {"profile": "STANDARD", "active": 0, "revoked": 0},
                {"profile": "ADMIN", "active": 0, "revoked": 0},
                {"profile": "OUTSIDER", "active": 0, "revoked": 0},
            ],
        },
    ),
    (
        AUTH,
        "organization_stats",
        {
            "status": "ok",
            "data_size": 0,
            "metadata_size": 0,
            "realms": 0,
            "users": 0,
            "active_users": 0,
            "users_per_profile_detail": [{"profile": "ADMIN", "active": 0, "revoked": 0}],
        },
    ),
    (
        AUTH,
        "pki_enrollment_list",
        {
            "status": "ok",
            "enrollments": [
                {
                    "enrollment_id": ENROLLMENT,
                    "submitted_on": T1,
                    "submitter_der_x509_certificate": b"",
                    "submitter_der_x509_certificate_email": None,
                    "submit_payload_signature": b"",
                    "submit_payload": b"",
                }
            ],
        },
    ),
    (
        ANON,
        "pki_enrollment_info",
        {"status": "ok", "enrollment_status": "SUBMITTED", "submitted_on": T1, "rejected_on": T2},
    ),
    (ANON, "pki_enrollment_info", {"status": "ok", "enrollment_status": "REJECTED", "submitted_on": T1}),
    (ANON, "pki_enrollment_info", {"status": "not_found"}),
    (AUTH, "vlob_create", {"status": "already_exists"}),
    (ANON, "pki_enrollment_submit", {"status": "ok"}),
]
