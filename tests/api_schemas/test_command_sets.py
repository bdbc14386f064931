"""Command sets per connection type (docs/protocol/commands.md §0) and status index (§13)."""

from __future__ import annotations

import pytest

from parsec.api import protocol
from parsec.api.schema import OneOf, Schema

from ._cases import ANON, APIV1, AUTH, ERROR_FORMS, INVITED, OK_REPLIES, REQUESTS

# docs/protocol/commands.md §0, in the order of the table
EXPECTED_SETS = {
    AUTH: """
        ping events_subscribe events_listen message_get user_get user_create user_revoke
        device_create human_find invite_new invite_delete invite_list invite_1_greeter_wait_peer
        invite_2a_greeter_get_hashed_nonce invite_2b_greeter_send_nonce
        invite_3a_greeter_wait_peer_trust invite_3b_greeter_signify_trust
        invite_4_greeter_communicate block_create block_read vlob_create vlob_read vlob_update
        vlob_poll_changes vlob_list_versions vlob_maintenance_get_reencryption_batch
        vlob_maintenance_save_reencryption_batch realm_create realm_status realm_stats
        realm_get_role_certificates realm_update_roles realm_start_reencryption_maintenance
        realm_finish_reencryption_maintenance organization_stats organization_config
        pki_enrollment_list pki_enrollment_reject pki_enrollment_accept
    """.split(),
    INVITED: """
        ping invite_info invite_1_claimer_wait_peer invite_2a_claimer_send_hashed_nonce
        invite_2b_claimer_send_nonce invite_3a_claimer_signify_trust
        invite_3b_claimer_wait_peer_trust invite_4_claimer_communicate
    """.split(),
    APIV1: ["ping", "organization_bootstrap"],
    ANON: ["organization_bootstrap", "pki_enrollment_submit", "pki_enrollment_info"],
}

TABLES = {
    AUTH: protocol.AUTHENTICATED_COMMANDS,
    INVITED: protocol.INVITED_COMMANDS,
    APIV1: protocol.APIV1_ANONYMOUS_COMMANDS,
    ANON: protocol.ANONYMOUS_COMMANDS,
}

_GREETER = [
    "invite_1_greeter_wait_peer",
    "invite_2a_greeter_get_hashed_nonce",
    "invite_2b_greeter_send_nonce",
    "invite_3a_greeter_wait_peer_trust",
    "invite_3b_greeter_signify_trust",
    "invite_4_greeter_communicate",
]
_CLAIMER = [
    "invite_1_claimer_wait_peer",
    "invite_2a_claimer_send_hashed_nonce",
    "invite_2b_claimer_send_nonce",
    "invite_3a_claimer_signify_trust",
    "invite_3b_claimer_wait_peer_trust",
    "invite_4_claimer_communicate",
]
_VLOB_MAINTENANCE = ["vlob_maintenance_get_reencryption_batch", "vlob_maintenance_save_reencryption_batch"]
_REALM_MAINTENANCE = ["realm_start_reencryption_maintenance", "realm_finish_reencryption_maintenance"]
_VLOB_ALL = [
    "vlob_create",
    "vlob_read",
    "vlob_update",
    "vlob_poll_changes",
    "vlob_list_versions",
    *_VLOB_MAINTENANCE,
]

# docs/protocol/commands.md §13, expanded (`ok` and `bad_message` are produced by every command; the two
# dispatcher statuses belong to no command)
STATUS_INDEX: dict[str, list[str]] = {
    "not_found": [
        "organization_bootstrap",
        "organization_stats",
        "organization_config",
        "user_get",
        "user_revoke",
        "invite_delete",
        *_GREETER,
        *_CLAIMER,
        "realm_status",
        "realm_stats",
        "realm_get_role_certificates",
        "realm_update_roles",
        *_REALM_MAINTENANCE,
        "vlob_read",
        "vlob_update",
        "vlob_poll_changes",
        "vlob_list_versions",
        *_VLOB_MAINTENANCE,
        "block_create",
        "block_read",
        "pki_enrollment_info",
        "pki_enrollment_reject",
        "pki_enrollment_accept",
    ],
    "not_allowed": [
        "organization_stats",
        "user_create",
        "user_revoke",
        "human_find",
        "invite_new",
        "realm_status",
        "realm_stats",
        "realm_get_role_certificates",
        "realm_update_roles",
        *_REALM_MAINTENANCE,
        *_VLOB_ALL,
        "block_create",
        "block_read",
        "pki_enrollment_submit",  # docs/protocol/DECISIONS.md
        "pki_enrollment_list",
        "pki_enrollment_reject",
        "pki_enrollment_accept",
    ],
    "already_exists": [
        "user_create",
        "device_create",
        "realm_create",
        "vlob_create",
        "block_create",
        "pki_enrollment_accept",
    ],
    "already_bootstrapped": ["organization_bootstrap"],
    "invalid_certification": [
        "organization_bootstrap",
        "user_create",
        "device_create",
        "user_revoke",
        "realm_create",
        "realm_update_roles",
        "pki_enrollment_accept",
    ],
    "invalid_data": [
        "organization_bootstrap",
        "user_create",
        "device_create",
        "realm_create",
        "realm_update_roles",
        "pki_enrollment_accept",
    ],
    "bad_user_id": ["device_create"],
    # + organization_bootstrap: docs/protocol/DECISIONS.md (limit 0 at bootstrap)
    "active_users_limit_reached": ["user_create", "pki_enrollment_accept", "organization_bootstrap"],
    "already_revoked": ["user_revoke"],
    "bad_timestamp": [
        "organization_bootstrap",
        "realm_create",
        "realm_update_roles",
        "realm_start_reencryption_maintenance",
        "vlob_create",
        "vlob_update",
    ],
    "require_greater_timestamp": ["realm_update_roles", "vlob_create", "vlob_update"],
    "already_member": ["invite_new"],
    "not_available": ["invite_new"],
    "already_deleted": ["invite_delete", *_GREETER],
    "invalid_state": [*_GREETER, *_CLAIMER],
    "no_events": ["events_listen"],
    "cancelled": ["events_listen"],
    "incompatible_profile": ["realm_update_roles"],
    "user_revoked": ["realm_update_roles"],
    "already_granted": ["realm_update_roles"],
    "in_maintenance": [
        "realm_update_roles",
        "realm_start_reencryption_maintenance",
        "vlob_create",
        "vlob_read",
        "vlob_update",
        "vlob_poll_changes",
        "vlob_list_versions",
        "block_create",
        "block_read",
    ],
    "bad_encryption_revision": [
        *_REALM_MAINTENANCE,
        "vlob_create",
        "vlob_read",
        "vlob_update",
        *_VLOB_MAINTENANCE,
    ],
    "participants_mismatch": ["realm_start_reencryption_maintenance"],
    "not_in_maintenance": ["realm_finish_reencryption_maintenance", *_VLOB_MAINTENANCE],
    "maintenance_error": ["realm_finish_reencryption_maintenance", *_VLOB_MAINTENANCE],
    "bad_version": ["vlob_read", "vlob_update"],
    "timeout": ["block_create", "block_read"],
    "invalid_payload_data": ["pki_enrollment_submit", "pki_enrollment_accept"],
    "enrollment_id_already_used": ["pki_enrollment_submit"],
    "already_submitted": ["pki_enrollment_submit"],
    "already_enrolled": ["pki_enrollment_submit"],
    "email_already_used": ["pki_enrollment_submit"],
    "no_longer_available": ["pki_enrollment_reject", "pki_enrollment_accept"],
}


def _all_specs() -> list[protocol.CommandSpec]:
    return [spec for table in TABLES.values() for spec in table.values()]


@pytest.mark.parametrize("conn", list(EXPECTED_SETS))
def test_command_set_matches_spec(conn: str) -> None:
    table = TABLES[conn]
    assert list(table) == EXPECTED_SETS[conn]
    for name, spec in table.items():
        assert spec.name == name


def test_command_counts() -> None:
    assert len(protocol.AUTHENTICATED_COMMANDS) == 39
    assert len(protocol.INVITED_COMMANDS) == 8
    assert len(protocol.APIV1_ANONYMOUS_COMMANDS) == 2
    assert len(protocol.ANONYMOUS_COMMANDS) == 3
    names = {name for table in TABLES.values() for name in table}
    assert len(names) == 49
    assert protocol.ALL_COMMAND_SETS == {
        "authenticated": protocol.AUTHENTICATED_COMMANDS,
        "invited": protocol.INVITED_COMMANDS,
        "apiv1_anonymous": protocol.APIV1_ANONYMOUS_COMMANDS,
        "anonymous": protocol.ANONYMOUS_COMMANDS,
    }


def test_realm_stats_is_authenticated() -> None:
    # served although the reference's exported name list omits it (README pitfall 6)
    assert "realm_stats" in protocol.AUTHENTICATED_COMMANDS


def test_legacy_commands_absent() -> None:
    legacy = """
        user_find user_invite user_cancel_invitation device_invite device_cancel_invitation
        user_claim user_get_invitation_creator device_claim device_get_invitation_creator
        organization_create organization_status organization_update
    """.split()
    for table in TABLES.values():
        assert not set(legacy) & set(table)
    # organization_stats exists only as the authenticated command
    assert "organization_stats" not in protocol.APIV1_ANONYMOUS_COMMANDS
    assert "ping" not in protocol.ANONYMOUS_COMMANDS


def test_organization_bootstrap_flavours_differ() -> None:
    apiv1 = protocol.APIV1_ANONYMOUS_COMMANDS["organization_bootstrap"].req
    http = protocol.ANONYMOUS_COMMANDS["organization_bootstrap"].req
    assert isinstance(apiv1, Schema) and isinstance(http, Schema)
    assert apiv1 is not http
    assert set(apiv1.fields) == set(http.fields)
    assert not apiv1.fields["redacted_user_certificate"].required
    assert http.fields["redacted_user_certificate"].required


def test_ping_is_the_same_everywhere() -> None:
    specs = [TABLES[conn]["ping"] for conn in (AUTH, INVITED, APIV1)]
    assert all(spec == specs[0] for spec in specs)


def test_test_tables_cover_every_command() -> None:
    for conn, table in TABLES.items():
        assert set(REQUESTS[conn]) == set(table)
        assert set(OK_REPLIES[conn]) == set(table)
        assert set(ERROR_FORMS[conn]) == set(table)


def test_every_command_replies_ok_and_bad_message() -> None:
    for spec in _all_specs():
        assert "ok" in spec.replies
        assert spec.replies["bad_message"] is protocol.GENERIC_REPLIES["bad_message"]
        for status, schema in spec.replies.items():
            assert isinstance(status, str)
            assert isinstance(schema, (Schema, OneOf))


def test_status_index() -> None:
    produced: dict[str, set[str]] = {}
    for spec in _all_specs():
        for status in spec.replies:
            produced.setdefault(status, set()).add(spec.name)
    all_names = {spec.name for spec in _all_specs()}
    assert produced.pop("ok") == all_names
    assert produced.pop("bad_message") == all_names
    assert {status: sorted(names) for status, names in produced.items()} == {
        status: sorted(set(names)) for status, names in STATUS_INDEX.items()
    }
    # 37 statuses in total, counting the two dispatcher-only ones
    statuses = set(STATUS_INDEX) | {"ok", "bad_message"} | set(protocol.GENERIC_REPLIES)
    assert len(statuses) == 37
    assert set(protocol.GENERIC_REPLIES) == {"unknown_command", "invalid_msg_format", "bad_message"}
