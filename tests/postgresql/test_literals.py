"""The arguments of an EXECUTE, written by `execute_literals` instead of psycopg2's adaptation
(parsec.storage.postgresql.connection): every value must reach PostgreSQL as the same value
psycopg2's own quoting gives, and whatever it does not write must go through psycopg2."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras
import pytest
import pytest_twisted

from parsec.storage.postgresql.binary import PqConnection
from parsec.storage.postgresql.connection import (
    PgConnection,
    PreparedStatement,
    Transaction,
    execute_literals,
    render_statement,
)
from parsec.storage.postgresql.pool import PostgreSQLPool

ID = uuid.UUID("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
STRINGS = [
    "",
    "plain",
    "it's",
    "''",
    "back\\slash",
    "\\' both \\\\'",
    "é unicode ☃ \U0001f600",
    "new\nline\ttab\r",
    "-- comment",
    "/* comment */",
    "$$ dollar $tag$",
    "%s %(name)s %% percent",
    "E'x'",
    "'); DROP TABLE realm; --",
]
VALUES: list[Any] = [
    *STRINGS,
    ID,
    uuid.uuid4(),
    0,
    1,
    -1,
    2**31,
    -(2**63),
    2**63,  # beyond bigint: a numeric for both
    None,
    True,
    False,
    b"",
    bytes(range(256)),
    b"\\x00'\\",
    datetime(2026, 12, 6, 20, 30, 1, 234567, tzinfo=UTC),
    datetime(2026, 12, 6, 22, 30, 1, tzinfo=timezone(timedelta(hours=2))),
    datetime(1999, 1, 2, 3, 4, 5),
    ["OWNER", "it's", "back\\slash"],
    [ID, uuid.uuid4()],
    [1, -2, 2**40],
    [None, "x"],
    [b"\x00\xff", b""],
]


@pytest.fixture
def cursor(pg_dsn: str) -> Iterator[Any]:
    psycopg2.extras.register_uuid()
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            yield cur
    finally:
        conn.close()


@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
def test_each_value_reaches_postgresql_as_psycopg2_sends_it(cursor: Any, value: Any) -> None:
    assert cursor.connection.get_parameter_status("standard_conforming_strings") == "on"
    literal = execute_literals([value])
    assert literal is not None
    cursor.execute("SELECT %s, pg_typeof(%s)::text", (value, value))
    expected = cursor.fetchone()
    cursor.execute(f"SELECT ({literal}), pg_typeof({literal})::text")
    assert cursor.fetchone() == expected


def test_an_argument_list_and_a_negative_number_after_a_minus(cursor: Any) -> None:
    literals = execute_literals(["a", -5, None, ID])
    cursor.execute(f"SELECT {literals}")
    assert cursor.fetchone() == ("a", -5, None, ID)
    cursor.execute(f"SELECT 1-{execute_literals([-1])}")  # `1--1` would be 1 and a comment
    assert cursor.fetchone() == (2,)


def test_other_types_are_left_to_psycopg2() -> None:
    assert execute_literals([1.5]) is None
    assert execute_literals(["a", [[1]]]) is None
    assert execute_literals([bytearray(b"x")]) is None
    assert execute_literals([psycopg2.extensions.AsIs("1")]) is None
    with pytest.raises(ValueError, match="NUL"):  # as psycopg2 refuses it, nothing sent
        execute_literals(["a\x00b"])


_ECHO = PreparedStatement(
    "SELECT %(text)s::text, %(id)s::uuid, %(number)s::bigint, %(data)s::bytea, %(when)s::timestamptz, %(roles)s::text[]"
)
_WHEN = datetime(2026, 12, 6, 20, 30, tzinfo=UTC)
_ECHO_PARAMS: dict[str, Any] = {
    "text": "back\\slash 'quote'", "id": ID, "number": -3, "data": b"\\'\x00", "when": _WHEN,
    "roles": ["a\\b", "c'd"],
}
_ECHO_EXPECTED = ("back\\slash 'quote'", ID, -3, b"\\'\x00", _WHEN, ["a\\b", "c'd"])


@pytest_twisted.ensureDeferred
async def test_prepared_statements_on_a_psycopg2_session_with_and_without_standard_conforming_strings(
    pool: PostgreSQLPool,
) -> None:
    params, expected = _ECHO_PARAMS, _ECHO_EXPECTED
    conn = await pool.open_dedicated()  # the LISTEN session's kind: psycopg2
    try:
        assert type(conn) is PgConnection
        assert await conn.fetchrow(_ECHO, params) == expected
        # A session where backslashes escape in strings: psycopg2 writes the arguments.
        await conn.execute("SET standard_conforming_strings = off")
        try:
            assert await conn.fetchrow(_ECHO, params) == expected
        finally:
            await conn.execute("RESET standard_conforming_strings")
        assert await conn.fetchrow(_ECHO, {**params, "number": 1.5}) == (*expected[:2], 2, *expected[3:])
        with pytest.raises(ValueError, match="NUL"):
            await conn.fetchrow(_ECHO, {**params, "text": "\x00"})
        assert await conn.fetchrow(_ECHO, params) == expected  # the session is fine
    finally:
        conn.close()


@pytest_twisted.ensureDeferred
async def test_pool_sessions_send_parameters_apart_and_refuse_literals_without_standard_strings(
    pool: PostgreSQLPool,
) -> None:
    params, expected = _ECHO_PARAMS, _ECHO_EXPECTED
    async with pool.connection() as conn:
        assert type(conn) is PqConnection
        assert await conn.fetchrow(_ECHO, params) == expected
        # The first statement of a transaction goes with its BEGIN: EXECUTE with literals.
        tx = Transaction(conn, None, False)
        assert await tx.fetchrow(_ECHO, params) == expected
        assert await tx.fetchrow(_ECHO, params) == expected  # then on its own, in the transaction
        await tx._commit()
        await conn.execute("SET standard_conforming_strings = off")
        try:
            # Protocol-level parameters do not depend on it; literals would: refused, unsent.
            assert await conn.fetchrow(_ECHO, params) == expected
            with pytest.raises(psycopg2.ProgrammingError, match="standard_conforming_strings"):
                await conn.fetchrow("SELECT %s", ("it's",))
        finally:
            await conn.execute("RESET standard_conforming_strings")
        with pytest.raises(psycopg2.errors.InvalidTextRepresentation):
            await conn.fetchrow(_ECHO, {**params, "number": 1.5})  # no client-side cast
        with pytest.raises(ValueError, match="NUL"):  # libpq would cut it there: refused
            await conn.fetchrow(_ECHO, {**params, "text": "\x00"})
        with pytest.raises(ValueError, match="NUL"):
            await conn.fetchrow("SELECT %s", ("a\x00b",))
        assert await conn.fetchrow(_ECHO, params) == expected  # the session is fine


def _as_pool_reads(row: Any) -> tuple[Any, ...]:
    """psycopg2's row as the pool returns it: bytea as bytes (the pool's own cast)."""

    def one(value: Any) -> Any:
        if type(value) is memoryview:
            return bytes(value)
        if type(value) is list:
            return [one(item) for item in value]
        return value

    return tuple(one(value) for value in row)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("value", VALUES, ids=lambda v: type(v).__name__)
async def test_each_value_written_in_a_pool_statement_reads_back_as_through_psycopg2(
    pool: PostgreSQLPool, cursor: Any, value: Any
) -> None:
    cursor.execute("SELECT %s, pg_typeof(%s)::text", (value, value))
    expected = _as_pool_reads(cursor.fetchone())
    assert await pool.fetchrow("SELECT %s, pg_typeof(%s)::text", (value, value)) == expected
    assert await pool.fetchrow("SELECT %(v)s, pg_typeof(%(v)s)::text", {"v": value}) == expected


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    "value",
    [(1, 2, None), ("a", "it's"), 1.5, -0.0, float("inf"), float("nan"), Decimal("12.50"), Decimal("NaN"),
     date(2026, 12, 6), bytearray(b"\x00\xff"), memoryview(b"ab")],
    ids=lambda v: type(v).__name__,
)
async def test_the_other_statement_parameter_types_read_back_as_through_psycopg2(
    pool: PostgreSQLPool, cursor: Any, value: Any
) -> None:
    sql = "SELECT 1 WHERE %s IN %s" if type(value) is tuple else "SELECT %s, pg_typeof(%s)::text"
    params = (value[0], value) if type(value) is tuple else (value, value)
    cursor.execute(sql, params)
    expected = cursor.fetchall()
    got = await pool.fetch(sql, params)
    if value != value:  # NaN
        assert got[0][1] == expected[0][1] and got[0][0] != got[0][0]
    else:
        assert got == [_as_pool_reads(row) for row in expected]


def test_statement_placeholders_as_psycopg2_reads_them() -> None:
    assert render_statement("SELECT '%%' || %s", ("x",)) == "SELECT '%' || 'x'"
    assert render_statement("SELECT '%%'", None) == "SELECT '%%'"  # no parameters: as it is
    assert render_statement("SELECT %(a)s, %(a)s, %%", {"a": 1}) == "SELECT 1, 1, %"
    with pytest.raises(KeyError):
        render_statement("SELECT %(a)s", {})
    with pytest.raises(TypeError):
        render_statement("SELECT %s, %s", (1,))
    with pytest.raises(TypeError):
        render_statement("SELECT %s", (1, 2))
    with pytest.raises(TypeError):
        render_statement("SELECT %s", {"a": 1})
    with pytest.raises(ValueError):
        render_statement("SELECT %d", (1,))
    with pytest.raises(TypeError, match="no SQL literal"):
        render_statement("SELECT %s", (object(),))
