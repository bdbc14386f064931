"""Reply schemas and `validate_reply`."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from parsec.api import codec, protocol
from parsec.api.protocol import InvalidReply, validate_reply

from ._cases import (
    ANON,
    APIV1,
    AUTH,
    BAD_REPLIES,
    DOCUMENTED_REPLIES,
    ERROR_FORM_EXAMPLES,
    ERROR_FORMS,
    INVITED,
    OK_REPLIES,
    T1,
    TOKEN,
)

TABLES = {
    AUTH: protocol.AUTHENTICATED_COMMANDS,
    INVITED: protocol.INVITED_COMMANDS,
    APIV1: protocol.APIV1_ANONYMOUS_COMMANDS,
    ANON: protocol.ANONYMOUS_COMMANDS,
}
# a value that no field accepts
ALIEN = msgpack.ExtType(5, b"x")
# keys that may be absent from an ok reply
OPTIONAL_OK_KEYS = {("invite_new", "email_sent")}
MISSING_LIST = ["Missing data for required field."]


def _ok_cases() -> list[Any]:
    return [
        pytest.param(conn, cmd, reply, id=f"{conn}:{cmd}-{index}")
        for conn, commands in OK_REPLIES.items()
        for cmd, replies in commands.items()
        for index, reply in enumerate(replies)
    ]


def _error_cases(which: int) -> list[Any]:
    cases = []
    for conn, commands in ERROR_FORMS.items():
        for cmd, statuses in commands.items():
            for status, form in statuses.items():
                for index, extra in enumerate(ERROR_FORM_EXAMPLES[form][which]):
                    reply = {"status": status, **extra}
                    cases.append(pytest.param(conn, cmd, reply, id=f"{conn}:{cmd}:{status}-{index}"))
    return cases


def _check(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    validate_reply(TABLES[conn][cmd], reply)


def _refused(conn: str, cmd: str, reply: dict[str, Any]) -> InvalidReply:
    with pytest.raises(InvalidReply) as ctx:
        _check(conn, cmd, reply)
    return ctx.value


@pytest.mark.parametrize(("conn", "cmd"), [(conn, cmd) for conn in ERROR_FORMS for cmd in ERROR_FORMS[conn]])
def test_statuses_of_each_command(conn: str, cmd: str) -> None:
    assert set(TABLES[conn][cmd].replies) == {"ok", "bad_message", *ERROR_FORMS[conn][cmd]}


@pytest.mark.parametrize(("conn", "cmd", "reply"), _ok_cases())
def test_ok_reply_accepted(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    _check(conn, cmd, {"status": "ok", **reply})
    # and once more after a trip through msgpack (tuples become arrays, keys keep their type)
    _check(conn, cmd, codec.unpackb(codec.packb({"status": "ok", **reply})))


@pytest.mark.parametrize(("conn", "cmd", "reply"), _ok_cases())
def test_ok_reply_with_extra_key_refused(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    error = _refused(conn, cmd, {"status": "ok", **reply, "unexpected": 1})
    assert error.errors == {"unexpected": ["Unknown field."]}


@pytest.mark.parametrize(("conn", "cmd", "reply"), _ok_cases())
def test_ok_reply_with_missing_key_refused(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    for key in reply:
        partial = {"status": "ok", **{k: v for k, v in reply.items() if k != key}}
        if (cmd, key) in OPTIONAL_OK_KEYS:
            _check(conn, cmd, partial)
        else:
            _refused(conn, cmd, partial)


@pytest.mark.parametrize(("conn", "cmd", "reply"), _ok_cases())
def test_ok_reply_with_wrong_type_refused(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    for key in reply:
        _refused(conn, cmd, {"status": "ok", **reply, key: ALIEN})


@pytest.mark.parametrize(("conn", "cmd", "reply"), _error_cases(0))
def test_error_reply_accepted(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    _check(conn, cmd, reply)
    _check(conn, cmd, codec.unpackb(codec.packb(reply)))


@pytest.mark.parametrize(("conn", "cmd", "reply"), _error_cases(1))
def test_error_reply_of_wrong_form_refused(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    _refused(conn, cmd, reply)


@pytest.mark.parametrize(
    ("conn", "cmd", "reply"),
    [pytest.param(*case, id=f"{case[0]}:{case[1]}:{case[2]['status']}") for case in DOCUMENTED_REPLIES],
)
def test_documented_reply_accepted(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    _check(conn, cmd, reply)
    _check(conn, cmd, codec.unpackb(codec.packb(reply)))


@pytest.mark.parametrize(
    ("conn", "cmd", "reply"),
    [pytest.param(*case, id=f"{index}-{case[1]}") for index, case in enumerate(BAD_REPLIES)],
)
def test_bad_reply_refused(conn: str, cmd: str, reply: dict[str, Any]) -> None:
    _refused(conn, cmd, reply)


@pytest.mark.parametrize("conn", list(TABLES))
def test_bad_message_accepted_for_every_command(conn: str) -> None:
    for spec in TABLES[conn].values():
        validate_reply(
            spec, {"status": "bad_message", "reason": "Invalid message.", "errors": {"x": MISSING_LIST}}
        )
        validate_reply(spec, {"status": "bad_message", "reason": "Some protocol error"})
        with pytest.raises(InvalidReply):
            validate_reply(spec, {"status": "bad_message", "errors": {}})


def test_nested_errors_in_bad_message() -> None:
    spec = protocol.AUTHENTICATED_COMMANDS["vlob_maintenance_save_reencryption_batch"]
    reply = {
        "status": "bad_message",
        "reason": "Invalid message.",
        "errors": {"batch": {0: {"version": ["Must be at least 0."]}}},
    }
    validate_reply(spec, reply)
    validate_reply(spec, codec.unpackb(codec.packb(reply)))


@pytest.mark.parametrize(
    "reply",
    [
        {"status": "unknown_command", "reason": "Unknown command"},
        {"status": "unknown_command"},
        {"status": "invalid_msg_format", "reason": "Invalid message format"},
        {"status": "invalid_msg_format"},
        {"status": "bad_message", "reason": "Invalid message.", "errors": {"cmd": MISSING_LIST}},
    ],
)
def test_generic_replies_accepted(reply: dict[str, Any]) -> None:
    validate_reply(None, reply)


@pytest.mark.parametrize(
    "reply",
    [
        {"status": "ok"},
        {"status": "not_found"},
        {"status": "unknown_command", "reason": "Unknown command", "errors": {}},
        {"status": "invalid_msg_format", "reason": None},
        {"status": "bad_message"},
    ],
)
def test_generic_replies_refused(reply: dict[str, Any]) -> None:
    with pytest.raises(InvalidReply):
        validate_reply(None, reply)


@pytest.mark.parametrize("reply", [None, [], "ok", b"", {}])
def test_reply_must_be_a_map_with_a_status(reply: Any) -> None:
    with pytest.raises(InvalidReply):
        validate_reply(protocol.AUTHENTICATED_COMMANDS["ping"], reply)


def test_invalid_reply_reports_errors() -> None:
    spec = protocol.AUTHENTICATED_COMMANDS["invite_new"]
    with pytest.raises(InvalidReply) as ctx:
        validate_reply(spec, {"status": "ok", "token": TOKEN.hex, "email_sent": "MAYBE", "x": 1})
    assert ctx.value.errors == {
        "token": ["Not an UUID"],
        "email_sent": ["Invalid role `MAYBE`"],
        "x": ["Unknown field."],
    }
    assert isinstance(ctx.value, ValueError)
    with pytest.raises(InvalidReply, match="status `already_member` is not a reply of `ping`"):
        validate_reply(protocol.AUTHENTICATED_COMMANDS["ping"], {"status": "already_member"})


def test_events_listen_union_requires_known_event() -> None:
    spec = protocol.AUTHENTICATED_COMMANDS["events_listen"]
    with pytest.raises(InvalidReply) as ctx:
        validate_reply(spec, {"status": "ok", "event": "realm.vlobs_updated", "realm_id": TOKEN})
    assert ctx.value.errors == {
        "checkpoint": MISSING_LIST,
        "src_id": MISSING_LIST,
        "src_version": MISSING_LIST,
    }
    with pytest.raises(InvalidReply) as ctx:
        validate_reply(spec, {"status": "ok", "event": "foo"})
    assert ctx.value.errors == {"event": ["Unsupported value: foo"]}


def test_vlob_list_versions_keys_are_ints_after_msgpack() -> None:
    spec = protocol.AUTHENTICATED_COMMANDS["vlob_list_versions"]
    raw = codec.packb({"status": "ok", "versions": {1: (T1, "alice@dev1")}})
    decoded = codec.unpackb(raw)
    assert decoded["versions"] == {1: [T1, "alice@dev1"]}
    validate_reply(spec, decoded)
