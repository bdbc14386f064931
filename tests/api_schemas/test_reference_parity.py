"""Differential check against the real parsec-cloud 2.10.0 serializers.

Every request case of the other tests is also loaded by the reference server's request
schemas (same outcome, same error texts), and every reply we accept is loaded by the
reference client's reply schemas then dumped back by the reference server's (the client
accepts it, and the reference would have sent exactly the same map).

Needs the client virtualenv (tests/interop/install-client-venv.sh); its location is
$PARSEC_CLIENT_VENV or <repo>/.client-venv. Skipped when absent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from parsec.api import codec, protocol
from parsec.api.schema import ValidationError

from ._cases import (
    ANON,
    APIV1,
    AUTH,
    DOCUMENTED_REPLIES,
    ERROR_FORM_EXAMPLES,
    ERROR_FORMS,
    INVITED,
    OK_REPLIES,
    kind_of,
    request_variants,
)

pytestmark = pytest.mark.client

REPO = Path(__file__).resolve().parents[2]
ORACLE = Path(__file__).with_name("reference_oracle.py")
VENV = Path(os.environ.get("PARSEC_CLIENT_VENV", REPO / ".client-venv"))
PYTHON = VENV / "bin" / "python"

TABLES = {
    AUTH: protocol.AUTHENTICATED_COMMANDS,
    INVITED: protocol.INVITED_COMMANDS,
    APIV1: protocol.APIV1_ANONYMOUS_COMMANDS,
    ANON: protocol.ANONYMOUS_COMMANDS,
}

# Requests where we deliberately differ from the reference, by case id.
KNOWN_REQUEST_DIVERGENCES: dict[str, str] = {
    # marshmallow's Integer converts numeric strings (and floats, bools); our Int does not
    "authenticated:message_get.offset=bad1": 'reference accepts offset "0"',
}


def _serializer_name(conn: str, cmd: str) -> str:
    return f"apiv1_{cmd}" if (conn, cmd) == (APIV1, "organization_bootstrap") else cmd


def _request_cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    cases = []
    for variant in request_variants():
        base = variant.valid_request()
        cases.append((f"{variant}", variant.conn, variant.cmd, base))
        for name, tag in variant.fields.items():
            kind, nullable, optional = kind_of(tag)
            for index, value in enumerate(kind.valid[1:]):
                cases.append(
                    (f"{variant}.{name}=valid{index}", variant.conn, variant.cmd, {**base, name: value})
                )
            for index, (value, _) in enumerate(kind.invalid):
                cases.append(
                    (f"{variant}.{name}=bad{index}", variant.conn, variant.cmd, {**base, name: value})
                )
            cases.append((f"{variant}.{name}=nil", variant.conn, variant.cmd, {**base, name: None}))
            cases.append(
                (
                    f"{variant}.{name}=absent",
                    variant.conn,
                    variant.cmd,
                    {k: v for k, v in base.items() if k != name},
                )
            )
        if variant.fixed:
            cases.append((f"{variant}=no-fields", variant.conn, variant.cmd, dict(variant.fixed)))
        else:
            cases.append((f"{variant}=empty", variant.conn, variant.cmd, {}))
    for index, discriminator in enumerate([None, "", "FOO", 42, "user"]):
        cases.append(
            (f"invite_new.type={index}", AUTH, "invite_new", {"type": discriminator, "send_email": True})
        )
    return cases


def _reply_cases() -> list[tuple[str, str, str, dict[str, Any]]]:
    cases = []
    for conn, commands in OK_REPLIES.items():
        for cmd, replies in commands.items():
            for index, reply in enumerate(replies):
                cases.append((f"{conn}:{cmd}:ok-{index}", conn, cmd, {"status": "ok", **reply}))
    for conn, commands in ERROR_FORMS.items():
        for cmd, statuses in commands.items():
            for status, form in statuses.items():
                for index, extra in enumerate(ERROR_FORM_EXAMPLES[form][0]):
                    cases.append((f"{conn}:{cmd}:{status}-{index}", conn, cmd, {"status": status, **extra}))
    for index, (conn, cmd, reply) in enumerate(DOCUMENTED_REPLIES):
        cases.append((f"documented-{index}:{cmd}:{reply['status']}", conn, cmd, reply))
    return cases


REQUEST_CASES = _request_cases()
REPLY_CASES = _reply_cases()


@pytest.fixture(scope="module")
def reference_results() -> dict[str, list[dict[str, Any]]]:
    if not PYTHON.exists():
        pytest.skip(f"no parsec-cloud 2.10.0 client virtualenv at {VENV}")
    cases = [
        {"op": "req", "ser": _serializer_name(conn, cmd), "data": {"cmd": cmd, **data}}
        for _, conn, cmd, data in REQUEST_CASES
    ] + [
        {"op": "rep", "ser": _serializer_name(conn, cmd), "data": data} for _, conn, cmd, data in REPLY_CASES
    ]
    completed = subprocess.run(
        [str(PYTHON), str(ORACLE)],
        input=codec.packb({"cases": cases}),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    results = codec.unpackb(completed.stdout)["results"]
    assert len(results) == len(cases)
    return {"req": results[: len(REQUEST_CASES)], "rep": results[len(REQUEST_CASES) :]}


def _ours(conn: str, cmd: str, data: dict[str, Any]) -> dict[str, Any]:
    try:
        TABLES[conn][cmd].req.load(data)
    except ValidationError as exc:
        return {"ok": False, "errors": exc.errors}
    return {"ok": True}


def _normalized(value: Any) -> Any:
    return codec.unpackb(codec.packb(value))


@pytest.mark.parametrize("index", range(len(REQUEST_CASES)), ids=[case[0] for case in REQUEST_CASES])
def test_request_same_as_reference(index: int, reference_results: dict[str, list[dict[str, Any]]]) -> None:
    case_id, conn, cmd, data = REQUEST_CASES[index]
    ours = _ours(conn, cmd, data)
    theirs = reference_results["req"][index]
    assert "crash" not in theirs, theirs
    if case_id in KNOWN_REQUEST_DIVERGENCES:
        assert ours != theirs, f"divergence gone: {KNOWN_REQUEST_DIVERGENCES[case_id]}"
    else:
        assert ours == _normalized(theirs)


@pytest.mark.parametrize("index", range(len(REPLY_CASES)), ids=[case[0] for case in REPLY_CASES])
def test_reply_accepted_and_reproduced_by_reference(
    index: int, reference_results: dict[str, list[dict[str, Any]]]
) -> None:
    _, _, _, reply = REPLY_CASES[index]
    theirs = reference_results["rep"][index]
    assert theirs.get("ok") is True, theirs
    assert theirs["dumped"] == _normalized(reply)
