"""Moving rows between two PostgreSQL connections with bounded memory.

Two ways, both ending in `COPY <table> (<columns>) FROM STDIN` on the target:

* `pipe_table`: the source runs `COPY (<select>) TO STDOUT` in a helper thread, the target
  reads the same byte stream in the calling thread. Binary format: bytea travels as raw bytes
  (no hex doubling) and nothing is parsed in Python. Between the two sits `_Pipe`, a queue of
  at most `PIPE_CHUNKS` chunks of about `PIPE_CHUNK_SIZE` bytes: memory stays flat whatever
  the table size (plus the largest single row, which libpq hands over in one piece). The
  binary format wants each source column to have exactly the target column's type, so the
  select is wrapped in casts to the target's column types (`target_casts`).
* `batch_table`: a server-side cursor reads the source `BATCH_ROWS` rows at a time, a Python
  function rewrites each row (certificate decoding, Unicode case folding, SHA-1...), and each
  batch goes to the target as COPY text. For the small tables that need Python.

psycopg2 releases the GIL while it waits on the network, so the two connections of a pipe
work in parallel. Both functions return the number of rows the target accepted and call
`on_rows(count)` from the calling thread as rows flow, for the progress display.
"""

from __future__ import annotations

import datetime
import io
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras

PIPE_CHUNK_SIZE = 256 * 1024
PIPE_CHUNKS = 8
COPY_READ_SIZE = 64 * 1024
BATCH_ROWS = 1000
_WAIT = 0.25  # seconds between two checks of the other side of a pipe

Row = tuple[Any, ...]
OnRows = Callable[[int], None]


class TransferError(Exception):
    """A refusal or a failure, explained in one line for the administrator."""


def connect(dsn: str, application_name: str) -> psycopg2.extensions.connection:
    """A psycopg2 connection in UTC with ISO dates (both sides print timestamps the same way,
    which the verification's row texts rely on); bytea as bytes, uuid as uuid.UUID."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.Error:
        # libpq's message may quote the DSN, password included: do not chain it.
        raise TransferError("invalid PostgreSQL URL") from None
    params.setdefault("application_name", application_name)
    params["options"] = (params.get("options", "") + " -c TimeZone=UTC -c DateStyle=ISO,YMD").strip()
    conn: psycopg2.extensions.connection = psycopg2.connect(**params)
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    psycopg2.extensions.register_type(_BYTES, conn)
    return conn


def _bytes(value: str | bytes | None, cursor: Any) -> bytes | None:
    return None if value is None else bytes(psycopg2.BINARY(value, cursor))


_BYTES = psycopg2.extensions.new_type(psycopg2.BINARY.values, "TRANSFER_BYTES", _bytes)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# Target column types


def target_casts(conn: psycopg2.extensions.connection, table: str, columns: Sequence[str]) -> list[str]:
    """For each column, the SQL type a source value must be cast to so that its binary COPY
    representation is the one the target column reads: the column's base type without its
    modifier (a varchar(32) column reads `character varying` and still enforces its length;
    casting to varchar(32) would silently truncate), `text` for enums (an enum reads its
    label as text)."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT a.attname, format_type(a.atttypid, NULL), t.typtype
            FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
            WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped
            """,
            (table,),
        )
        found = {name: (sql_type, kind) for name, sql_type, kind in cur.fetchall()}
    casts = []
    for column in columns:
        if column not in found:
            raise TransferError(f"the target table {table} has no column {column}")
        sql_type, kind = found[column]
        if kind == "e":
            casts.append("text")
        elif kind in ("b", "d"):
            casts.append(sql_type)
        else:
            raise TransferError(f"column {table}.{column} has a type binary COPY cannot feed ({sql_type})")
    return casts


# ---------------------------------------------------------------------------------------------
# COPY pipe


class _Aborted(Exception):
    """The reading side gave up: the writing side must stop."""


_EOF = object()


class _Pipe:
    """Bounded byte pipe: written by psycopg2's COPY TO (one `write` per CopyData message,
    i.e. per row), read by psycopg2's COPY FROM (`read(size)`)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=PIPE_CHUNKS)
        self._buffer = bytearray()
        self._current = memoryview(b"")
        self._offset = 0
        self._aborted = threading.Event()
        self._finished = False
        self.messages = 0  # CopyData messages written so far (~ rows)

    # -- writer side (source thread)
    def write(self, data: bytes) -> int:
        if self._aborted.is_set():
            raise _Aborted()
        self.messages += 1
        self._buffer += data
        if len(self._buffer) >= PIPE_CHUNK_SIZE:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def _put(self, item: object) -> None:
        while True:
            if self._aborted.is_set():
                raise _Aborted()
            try:
                self._queue.put(item, timeout=_WAIT)
                return
            except queue.Full:
                continue

    def close(self, error: BaseException | None = None) -> None:
        """End of the stream (or its failure, raised on the reading side)."""
        try:
            if error is None and self._buffer:
                self._put(bytes(self._buffer))
            self._buffer.clear()
            self._put(_EOF if error is None else error)
        except _Aborted:
            pass

    # -- reader side (calling thread)
    def read(self, size: int = -1) -> bytes:
        while self._offset >= len(self._current):
            if self._finished:
                return b""
            item = self._queue.get()
            if item is _EOF:
                self._finished = True
                return b""
            if isinstance(item, BaseException):
                self._finished = True
                raise item
            assert isinstance(item, bytes)
            self._current = memoryview(item)
            self._offset = 0
        if size is None or size < 0:
            size = len(self._current) - self._offset
        chunk = self._current[self._offset : self._offset + size]
        self._offset += len(chunk)
        return bytes(chunk)

    def readline(self, size: int = -1) -> bytes:  # never called for binary COPY
        return self.read(size)

    def abort(self) -> None:
        """Reading side failed: unblock and stop the writer."""
        self._aborted.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class _ProgressReader(io.RawIOBase):
    """What psycopg2's COPY FROM reads: the pipe, reporting progress between reads."""

    def __init__(self, pipe: _Pipe, on_rows: OnRows) -> None:
        super().__init__()
        self._pipe = pipe
        self._on_rows = on_rows

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self._pipe.read(size)
        # Binary COPY: the header rides with the first row, the trailer comes alone.
        self._on_rows(max(self._pipe.messages - 1, 0))
        return data


def pipe_table(
    source: psycopg2.extensions.connection,
    target: psycopg2.extensions.connection,
    select: str,
    table: str,
    columns: Sequence[str],
    on_rows: OnRows,
) -> int:
    """Stream the rows of `select` (one expression per target column, in order) into
    `table`; returns the number of rows the target accepted."""
    casts = target_casts(target, table, columns)
    column_list = ", ".join(quote_ident(column) for column in columns)
    cast_list = ", ".join(f"src.{quote_ident(column)}::{cast}" for column, cast in zip(columns, casts, strict=True))
    copy_out = f"COPY (SELECT {cast_list} FROM ({select}) AS src ({column_list})) TO STDOUT (FORMAT binary)"
    copy_in = f"COPY {quote_ident(table)} ({column_list}) FROM STDIN (FORMAT binary)"

    pipe = _Pipe()
    source_error: list[BaseException] = []

    def produce() -> None:
        try:
            with source.cursor() as cur:
                cur.copy_expert(copy_out, pipe, size=COPY_READ_SIZE)
        except _Aborted:
            pipe.close(_Aborted())
        except BaseException as exc:  # noqa: B036 - handed to the reading side
            source_error.append(exc)
            pipe.close(exc)
        else:
            pipe.close()

    thread = threading.Thread(target=produce, name=f"copy-out-{table}", daemon=True)
    thread.start()
    try:
        with target.cursor() as cur:
            cur.copy_expert(copy_in, _ProgressReader(pipe, on_rows), size=COPY_READ_SIZE)
            copied = cur.rowcount
    except BaseException as exc:
        pipe.abort()
        # The source may still be computing its first row (a sort, say): cancel its query
        # rather than wait for it (libpq's cancel request is safe from another thread).
        source.cancel()
        thread.join()
        if source_error and not isinstance(source_error[0], psycopg2.errors.QueryCanceled):
            # The target only saw "error in .read() call": the cause is on the source side.
            raise source_error[0] from exc
        raise
    thread.join()
    if source_error:
        raise source_error[0]
    on_rows(copied)
    return int(copied)


# ---------------------------------------------------------------------------------------------
# Batches through Python


def _copy_text(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, int | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # bytea hex input `\x...`, its backslash doubled by COPY's own escaping
        return "\\\\x" + bytes(value).hex()
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, str):
        return (
            value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        )
    raise TypeError(f"no COPY text form for {type(value).__name__}")


def copy_text_rows(rows: Iterable[Row]) -> str:
    return "".join("\t".join(_copy_text(value) for value in row) + "\n" for row in rows)


def batch_table(
    source: psycopg2.extensions.connection,
    target: psycopg2.extensions.connection,
    select: str,
    table: str,
    columns: Sequence[str],
    transform: Callable[[Row], Row],
    on_rows: OnRows,
) -> int:
    """Read `select` through a server-side cursor, `transform` each row into the target
    columns' values, write each batch with COPY (text); returns the rows written."""
    column_list = ", ".join(quote_ident(column) for column in columns)
    copy_in = f"COPY {quote_ident(table)} ({column_list}) FROM STDIN"
    copied = 0
    with source.cursor(name=f"transfer_{table}") as src, target.cursor() as dst:
        src.itersize = BATCH_ROWS
        src.execute(select)
        while True:
            rows = src.fetchmany(BATCH_ROWS)
            if not rows:
                break
            dst.copy_expert(copy_in, io.StringIO(copy_text_rows(transform(row) for row in rows)))
            copied += len(rows)
            on_rows(copied)
    return copied
