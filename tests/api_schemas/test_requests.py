"""Request schemas: fields, required/nil rules, types, ranges, unions, msgpack round trip."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from parsec.api import codec, protocol
from parsec.api.schema import OneOf, Schema, ValidationError

from ._cases import (
    ANON,
    APIV1,
    AUTH,
    INVITED,
    KEY,
    MISSING,
    NULL,
    REALM,
    T1,
    VLOB,
    Variant,
    kind_of,
    request_variants,
)

TABLES = {
    AUTH: protocol.AUTHENTICATED_COMMANDS,
    INVITED: protocol.INVITED_COMMANDS,
    APIV1: protocol.APIV1_ANONYMOUS_COMMANDS,
    ANON: protocol.ANONYMOUS_COMMANDS,
}
VARIANTS = request_variants()


def _spec(variant: Variant) -> protocol.CommandSpec:
    return TABLES[variant.conn][variant.cmd]


def _load(variant: Variant, data: dict[str, Any]) -> dict[str, Any]:
    return _spec(variant).req.load(data)


def _errors(variant: Variant, data: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(ValidationError) as ctx:
        _load(variant, data)
    return ctx.value.errors


def _field_cases(predicate: Any = None) -> list[Any]:
    cases = []
    for variant in VARIANTS:
        for name, tag in variant.fields.items():
            kind, nullable, optional = kind_of(tag)
            if predicate is None or predicate(kind, nullable, optional):
                cases.append(pytest.param(variant, name, id=f"{variant}.{name}"))
    return cases


def _value_cases(attribute: str) -> list[Any]:
    cases = []
    for variant in VARIANTS:
        for name, tag in variant.fields.items():
            for index, item in enumerate(getattr(kind_of(tag)[0], attribute)):
                cases.append(pytest.param(variant, name, item, id=f"{variant}.{name}-{index}"))
    return cases


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_request_fields_match_spec(variant: Variant) -> None:
    req = _spec(variant).req
    if variant.fixed:
        assert isinstance(req, OneOf)
        (discriminator, value), *_ = variant.fixed.items()
        assert req.discriminator == discriminator
        schema = req.choices[value]
    else:
        assert isinstance(req, Schema)
        schema = req
    assert set(schema.fields) == set(variant.fields) | set(variant.fixed)
    assert "cmd" not in schema.fields
    for name, tag in variant.fields.items():
        _, nullable, optional = kind_of(tag)
        assert schema.fields[name].required is not optional, name
        assert schema.fields[name].allow_none is nullable, name


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_valid_request_loads(variant: Variant) -> None:
    request = variant.valid_request()
    # `cmd` and unknown keys are ignored
    loaded = _load(variant, {"cmd": variant.cmd, **request, "unknown_key": 42})
    assert loaded == request


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_request_round_trip_through_msgpack(variant: Variant) -> None:
    request = variant.valid_request()
    raw = codec.packb({"cmd": variant.cmd, **request})
    decoded = codec.unpackb(raw)
    assert decoded["cmd"] == variant.cmd
    assert _load(variant, decoded) == request


@pytest.mark.parametrize(("variant", "name", "value"), _value_cases("valid"))
def test_every_valid_value_loads(variant: Variant, name: str, value: Any) -> None:
    request = {**variant.valid_request(), name: value}
    assert _load(variant, request)[name] == value
    assert _load(variant, codec.unpackb(codec.packb(request)))[name] == value


@pytest.mark.parametrize(("variant", "name", "value"), _value_cases("invalid"))
def test_wrong_value_error(variant: Variant, name: str, value: tuple[Any, Any]) -> None:
    bad, expected = value
    request = {**variant.valid_request(), name: bad}
    assert _errors(variant, request) == {name: expected}


@pytest.mark.parametrize(("variant", "name"), _field_cases(lambda kind, nullable, optional: not optional))
def test_missing_required_field(variant: Variant, name: str) -> None:
    request = variant.valid_request()
    del request[name]
    assert _errors(variant, request) == {name: MISSING}


@pytest.mark.parametrize(("variant", "name"), _field_cases(lambda kind, nullable, optional: optional))
def test_optional_field_may_be_absent(variant: Variant, name: str) -> None:
    request = variant.valid_request()
    del request[name]
    assert name not in _load(variant, request)


@pytest.mark.parametrize(("variant", "name"), _field_cases())
def test_nil(variant: Variant, name: str) -> None:
    _, nullable, _ = kind_of(variant.fields[name])
    request = {**variant.valid_request(), name: None}
    if nullable:
        assert _load(variant, request)[name] is None
    else:
        assert _errors(variant, request) == {name: NULL}


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_empty_request_reports_every_required_field(variant: Variant) -> None:
    required = {name for name, tag in variant.fields.items() if not kind_of(tag)[2]}
    if variant.fixed:
        # the discriminator alone selects the variant
        assert _errors(variant, dict(variant.fixed)) == dict.fromkeys(required, MISSING)
    elif required:
        assert _errors(variant, {}) == dict.fromkeys(required, MISSING)
    else:
        assert _load(variant, {"cmd": variant.cmd}) == {}


def test_all_errors_reported_at_once() -> None:
    spec = protocol.AUTHENTICATED_COMMANDS["human_find"]
    with pytest.raises(ValidationError) as ctx:
        spec.req.load({"query": 42, "omit_revoked": None, "page": 0, "per_page": 101})
    assert ctx.value.errors == {
        "query": ["Not a valid string."],
        "omit_revoked": NULL,
        "omit_non_human": MISSING,
        "page": ["Invalid value."],
        "per_page": ["Invalid value."],
    }


def test_user_create_missing_redacted_device_certificate() -> None:
    # docs/protocol/commands.md §6.3 tests
    spec = protocol.AUTHENTICATED_COMMANDS["user_create"]
    with pytest.raises(ValidationError) as ctx:
        spec.req.load(
            {"user_certificate": b"u", "device_certificate": b"d", "redacted_user_certificate": b"ru"}
        )
    assert ctx.value.errors == {"redacted_device_certificate": MISSING}


# --- nil rules -------------------------------------------------------------------------


def test_vlob_read_version_and_timestamp_are_required_but_nullable() -> None:
    req = protocol.AUTHENTICATED_COMMANDS["vlob_read"].req
    base = {"encryption_revision": 1, "vlob_id": VLOB}
    assert req.load({**base, "version": None, "timestamp": None}) == {
        **base,
        "version": None,
        "timestamp": None,
    }
    assert req.load({**base, "version": 2, "timestamp": T1}) == {**base, "version": 2, "timestamp": T1}
    with pytest.raises(ValidationError) as ctx:
        req.load(base)
    assert ctx.value.errors == {"version": MISSING, "timestamp": MISSING}
    with pytest.raises(ValidationError) as ctx:
        req.load({**base, "version": 0, "timestamp": None})
    assert ctx.value.errors == {"version": ["Must be at least 1."]}


def test_realm_update_roles_recipient_message() -> None:
    req = protocol.AUTHENTICATED_COMMANDS["realm_update_roles"].req
    assert req.load({"role_certificate": b"c", "recipient_message": None})["recipient_message"] is None
    with pytest.raises(ValidationError) as ctx:
        req.load({"role_certificate": b"c"})
    assert ctx.value.errors == {"recipient_message": MISSING}


@pytest.mark.parametrize("query", [None, "", "bob", "황"])
def test_human_find_query(query: str | None) -> None:
    req = protocol.AUTHENTICATED_COMMANDS["human_find"].req
    request = {"query": query, "omit_revoked": False, "omit_non_human": True, "page": 1, "per_page": 100}
    assert req.load(request) == request


def test_pki_submit_email_absent_nil_or_str() -> None:
    req = protocol.ANONYMOUS_COMMANDS["pki_enrollment_submit"].req
    base = {
        "enrollment_id": REALM,
        "force": False,
        "submitter_der_x509_certificate": b"der",
        "submit_payload_signature": b"sig",
        "submit_payload": b"payload",
    }
    assert "submitter_der_x509_certificate_email" not in req.load(base)
    for email in (None, "", "alice@example.com"):
        assert (
            req.load({**base, "submitter_der_x509_certificate_email": email})[
                "submitter_der_x509_certificate_email"
            ]
            == email
        )


def test_apiv1_bootstrap_redacted_optional_but_not_nil() -> None:
    req = protocol.APIV1_ANONYMOUS_COMMANDS["organization_bootstrap"].req
    base = {
        "bootstrap_token": "",
        "root_verify_key": KEY,
        "user_certificate": b"u",
        "device_certificate": b"d",
    }
    assert req.load(base) == base
    assert req.load({**base, "redacted_user_certificate": b"ru"}) == {
        **base,
        "redacted_user_certificate": b"ru",
    }
    with pytest.raises(ValidationError) as ctx:
        req.load({**base, "redacted_user_certificate": None, "redacted_device_certificate": None})
    assert ctx.value.errors == {"redacted_user_certificate": NULL, "redacted_device_certificate": NULL}


def test_http_bootstrap_redacted_required() -> None:
    req = protocol.ANONYMOUS_COMMANDS["organization_bootstrap"].req
    with pytest.raises(ValidationError) as ctx:
        req.load(
            {
                "bootstrap_token": "",
                "root_verify_key": KEY,
                "user_certificate": b"u",
                "device_certificate": b"d",
            }
        )
    assert ctx.value.errors == {"redacted_user_certificate": MISSING, "redacted_device_certificate": MISSING}


# --- identifiers -------------------------------------------------------------------------


def test_user_id_is_nfc_normalized() -> None:
    req = protocol.AUTHENTICATED_COMMANDS["user_get"].req
    decomposed = "e\u0301" * 16
    assert unicodedata.normalize("NFC", decomposed) == "é" * 16
    assert req.load({"user_id": decomposed}) == {"user_id": "é" * 16}


def test_user_id_trailing_newline_refused() -> None:
    # docs/protocol/DECISIONS.md: full match (the reference accepts "alice\n")
    req = protocol.AUTHENTICATED_COMMANDS["user_get"].req
    with pytest.raises(ValidationError) as ctx:
        req.load({"user_id": "alice\n"})
    assert ctx.value.errors == {"user_id": ["Invalid data"]}


def test_per_participant_message_keys_are_user_ids() -> None:
    req = protocol.AUTHENTICATED_COMMANDS["realm_start_reencryption_maintenance"].req
    request = {"realm_id": REALM, "encryption_revision": 2, "timestamp": T1, "per_participant_message": {}}
    ok = req.load({**request, "per_participant_message": {"alice": b"a", "bob": b"b"}})
    assert ok["per_participant_message"] == {"alice": b"a", "bob": b"b"}
    with pytest.raises(ValidationError) as ctx:
        req.load({**request, "per_participant_message": {"alice@dev1": b"a"}})
    assert ctx.value.errors == {"per_participant_message": ["Invalid data"]}


# --- discriminated union: invite_new ----------------------------------------------------

INVITE_NEW = protocol.AUTHENTICATED_COMMANDS["invite_new"]


@pytest.mark.parametrize(
    ("request_", "errors"),
    [
        ({}, {"type": MISSING}),
        ({"send_email": True}, {"type": MISSING}),
        ({"type": None, "send_email": True}, {"type": MISSING}),
        ({"type": "", "send_email": True}, {"type": MISSING}),
        ({"type": "FOO", "send_email": True}, {"type": ["Unsupported value: FOO"]}),
        ({"type": "user", "send_email": True}, {"type": ["Unsupported value: user"]}),
        ({"type": 42, "send_email": True}, {"type": ["Unsupported value: 42"]}),
        ({"type": ["USER"], "send_email": True}, {"type": ["Invalid value: ['USER']"]}),
        ({"type": "USER", "send_email": True}, {"claimer_email": MISSING}),
        ({"type": "USER"}, {"claimer_email": MISSING, "send_email": MISSING}),
        (
            {"type": "USER", "claimer_email": None, "send_email": "yes"},
            {"claimer_email": NULL, "send_email": ["Not a valid boolean."]},
        ),
        ({"type": "DEVICE"}, {"send_email": MISSING}),
    ],
)
def test_invite_new_errors(request_: dict[str, Any], errors: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as ctx:
        INVITE_NEW.req.load(request_)
    assert ctx.value.errors == errors


def test_invite_new_variants() -> None:
    assert INVITE_NEW.req.load(
        {"type": "USER", "claimer_email": "zack@example.com", "send_email": False}
    ) == {
        "type": "USER",
        "claimer_email": "zack@example.com",
        "send_email": False,
    }
    # claimer_email is not validated (any string)
    assert (
        INVITE_NEW.req.load({"type": "USER", "claimer_email": "abc", "send_email": True})["claimer_email"]
        == "abc"
    )
    # ignored for DEVICE
    assert INVITE_NEW.req.load({"type": "DEVICE", "claimer_email": 42, "send_email": True}) == {
        "type": "DEVICE",
        "send_email": True,
    }


# --- ranges ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "name", "good", "bad", "message"),
    [
        ("human_find", "page", [1, 2, 10**6], [0, -1], "Invalid value."),
        ("human_find", "per_page", [1, 50, 100], [0, 101, -1], "Invalid value."),
        ("message_get", "offset", [0, 1, 10**6], [-1], "Invalid value."),
        (
            "vlob_maintenance_get_reencryption_batch",
            "size",
            [0, 500, 1000],
            [-1, 1001],
            "Must be between 0 and 1000.",
        ),
        ("vlob_read", "version", [1, 2], [0, -3], "Must be at least 1."),
        ("vlob_update", "version", [1, 2], [0, -3], "Must be at least 1."),
    ],
)
def test_ranges(cmd: str, name: str, good: list[int], bad: list[int], message: str) -> None:
    variant = next(v for v in VARIANTS if v.conn == AUTH and v.cmd == cmd)
    for value in good:
        assert _load(variant, {**variant.valid_request(), name: value})[name] == value
    for value in bad:
        assert _errors(variant, {**variant.valid_request(), name: value}) == {name: [message]}
    # bool is not an int
    assert _errors(variant, {**variant.valid_request(), name: True}) == {name: ["Not a valid integer."]}


def test_batch_entries() -> None:
    variant = next(v for v in VARIANTS if v.cmd == "vlob_maintenance_save_reencryption_batch")
    entries = [
        {"vlob_id": VLOB, "version": 0, "blob": b""},
        {"vlob_id": REALM, "version": 3, "blob": b"x", "extra": 1},
    ]
    loaded = _load(variant, {**variant.valid_request(), "batch": entries})
    assert loaded["batch"] == [entries[0], {"vlob_id": REALM, "version": 3, "blob": b"x"}]
