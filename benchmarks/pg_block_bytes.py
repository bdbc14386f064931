"""What the bytes of a block cost on PostgreSQL, one encoding against the other.

psycopg2 has no binary parameters nor results: a block travels as text in the statement and
comes back as text. The POSTGRESQL blockstore therefore runs its statements on binary
sessions (parsec.storage.postgresql.binary, psycopg 3's libpq binding): the block is a binary
parameter and a binary result. This script measures, on a throwaway cluster
(tests/pg_cluster.py):

  compose   our side of a write: psycopg2 writing the block into a statement (CPU per
            statement): a base64 str (psycopg2 encodes and escapes it), the prebuilt
            `Base64Literal` below (what the server used before the binary sessions), the
            bytea hex literal of `psycopg2.Binary`
  write     PostgreSQL's CPU (all its processes, from /proc) per block_create with
            `--sessions` concurrent sessions, each on its own realm: the three steps (claim,
            bytes, record) and the one statement of the POSTGRESQL blockstore, the bytes as
            base64 or as hex (psycopg2) or as a binary parameter (the server's way)
  read      a block_read's bytes, CPU of our side and of PostgreSQL: the bytea as hex
            (psycopg2's C conversion), `encode(data, 'base64')` decoded by Python, and a
            binary result (the server's way)

The schema is the server's (its migrations); the realm and role rows are inserted with
`session_replication_role = replica`, which skips the foreign keys (no organization, user or
device rows are needed; the same for every variant). CPU time moves with the machine's load:
compare the variants of one run, interleaved (`--rounds`).

    .venv/bin/python benchmarks/pg_block_bytes.py [--sizes 4096,524288] [--count 40] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from psycopg import pq  # noqa: E402

from parsec.storage.postgresql import block as pg_block  # noqa: E402
from parsec.storage.postgresql.binary import encode_params  # noqa: E402
from parsec.storage.postgresql.connection import PreparedStatement  # noqa: E402
from parsec.storage.postgresql.realm_common import RULE_PARAMS  # noqa: E402
from tests.pg_cluster import start_cluster  # noqa: E402

ONE_STATEMENT = pg_block._BLOCK_CREATE_WITH_DATA  # the block as `%(data)s::bytea`
ONE_STATEMENT_BASE64 = PreparedStatement(
    ONE_STATEMENT.sql.replace("%(data)s::bytea", "decode(%(data)s::text, 'base64')")
)
READ = pg_block._READ
BYTES_BASE64 = (
    "INSERT INTO block_data (organization_id, block_id, data) VALUES (%s, %s, decode(%s, 'base64'))"
    " ON CONFLICT (organization_id, block_id) DO NOTHING"
)
TICK = os.sysconf("SC_CLK_TCK")


class Base64Literal:
    """A block as a SQL string literal of its base64, which psycopg2 writes into the statement
    as it is (base64 has neither quote nor backslash: nothing to escape)."""

    def __init__(self, block: bytes) -> None:
        self._quoted = b"'" + base64.b64encode(block) + b"'"

    def __conform__(self, protocol: object) -> Base64Literal:
        return self

    def getquoted(self) -> bytes:
        return self._quoted
NOW = datetime.datetime.now(datetime.UTC)


def postgres_cpu() -> float:
    """CPU seconds of every running postgres process (their sessions must still be open)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if Path(f"/proc/{entry}/comm").read_text().strip() != "postgres":
                continue
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


class Session:
    def __init__(self, dsn: str, realm: uuid.UUID) -> None:
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True
        self.cursor = self.conn.cursor()
        self.cursor.execute("SET session_replication_role = replica")
        self.realm = realm
        self.prepared: set[str] = set()
        self.binary = pq.PGconn.connect(dsn.encode())  # the server's way: libpq, binary
        self.binary.exec_(b"SET session_replication_role = replica")
        self.binary_prepared: set[str] = set()

    def run_binary(self, statement: PreparedStatement, params: dict[str, Any]) -> Any:
        name = statement.name.encode()
        if statement.name not in self.binary_prepared:
            self.binary.prepare(name, statement.body.encode())
            self.binary_prepared.add(statement.name)
        values, formats = encode_params(statement.bind({**RULE_PARAMS, **params}))
        result = self.binary.exec_prepared(name, values, formats, result_format=1)
        assert result.status in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK), result.error_message
        return result

    def close(self) -> None:
        self.conn.close()
        self.binary.finish()

    def run(self, statements: list[PreparedStatement], params: dict[str, Any]) -> tuple[Any, ...]:
        for statement in statements:
            if statement.name not in self.prepared:
                self.cursor.execute(statement.prepare_sql)
                self.prepared.add(statement.name)
        values = [value for s in statements for value in s.bind({**RULE_PARAMS, **params})]
        self.cursor.execute("; ".join(s.execute_sql for s in statements), values)
        row = self.cursor.fetchone()
        assert row is not None
        return tuple(row)

    def params(self, size: int) -> dict[str, Any]:
        return {
            "org": "O", "realm": self.realm, "user": "alice", "block": uuid.uuid4(), "author": "alice@dev1",
            "size": size, "created_on": NOW, "now": NOW, "expired": NOW - datetime.timedelta(seconds=300),
            "claim": uuid.uuid4(),
        }  # fmt: skip


def three_steps(session: Session, block: bytes) -> None:
    params = session.params(len(block))
    assert session.run([pg_block._BLOCK_CLAIM, pg_block._BLOCK_CLAIM_CHECK], params)[-1]
    session.cursor.execute(BYTES_BASE64, ("O", params["block"], Base64Literal(block)))
    assert session.run([pg_block._BLOCK_RECORD_CREATE], params)[-2]


def one_statement_base64(session: Session, block: bytes) -> None:
    params = {**session.params(len(block)), "data": Base64Literal(block)}
    assert session.run([ONE_STATEMENT_BASE64], params)[-1]


def one_statement_hex(session: Session, block: bytes) -> None:
    params = {**session.params(len(block)), "data": psycopg2.Binary(block)}
    assert session.run([ONE_STATEMENT], params)[-1]


def one_statement_binary(session: Session, block: bytes) -> None:
    result = session.run_binary(ONE_STATEMENT, {**session.params(len(block)), "data": block})
    assert result.get_value(0, result.nfields - 1) == b"\x01"


WRITES: dict[str, Callable[[Session, bytes], None]] = {
    "3 steps, base64": three_steps,
    "1 statement, base64": one_statement_base64,
    "1 statement, hex": one_statement_hex,
    "1 statement, binary": one_statement_binary,
}


def write_many(write: Callable[[Session, bytes], None], session: Session, block: bytes, count: int) -> None:
    for _ in range(count):
        write(session, block)


def compose(dsn: str, size: int, count: int) -> None:
    conn = psycopg2.connect(dsn)
    cursor = conn.cursor()
    block = os.urandom(size)
    variants: dict[str, Callable[[], Any]] = {
        "base64 str": lambda: base64.b64encode(block).decode("ascii"),
        "Base64Literal": lambda: Base64Literal(block),
        "psycopg2.Binary (hex)": lambda: psycopg2.Binary(block),
    }
    for name, make in variants.items():
        started = time.process_time()
        for _ in range(count):
            cursor.mogrify("EXECUTE x(%s, %s)", ("O", make()))
        print(f"  compose {size:>7} B  {name:22} {1e6 * (time.process_time() - started) / count:8.0f} us/statement")
    conn.close()


def writes(dsn: str, realms: list[uuid.UUID], size: int, count: int, rounds: int) -> None:
    block = os.urandom(size)
    results: dict[str, list[float]] = {name: [] for name in WRITES}
    for _ in range(rounds):
        for name, write in WRITES.items():
            sessions = [Session(dsn, realm) for realm in realms]
            for session in sessions:  # PREPAREs and the first plans, outside the window
                for _ in range(6):
                    write(session, block)
            before = postgres_cpu()
            threads = [threading.Thread(target=write_many, args=(write, session, block, count)) for session in sessions]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            results[name].append(1e6 * (postgres_cpu() - before) / (count * len(sessions)))
            for session in sessions:
                session.cursor.execute("TRUNCATE block, block_data, block_claim")
                session.close()
    for name, figures in results.items():
        shown = " ".join(f"{figure:7.0f}" for figure in figures)
        print(f"  write   {size:>7} B  {name:22} PostgreSQL {shown} us/op ({len(realms)} sessions)")


def reads(dsn: str, realm: uuid.UUID, size: int, count: int) -> None:
    session = Session(dsn, realm)
    block = os.urandom(size)
    block_id = uuid.uuid4()
    session.cursor.execute(BYTES_BASE64, ("O", block_id, Base64Literal(block)))
    psycopg2.extensions.register_type(psycopg2.BINARY, session.cursor)  # memoryviews, C conversion
    variants: dict[str, tuple[str, Callable[[Any], bytes]]] = {
        "hex": ("SELECT data FROM block_data WHERE organization_id = 'O' AND block_id = %s", bytes),
        "encode(base64)": (
            "SELECT encode(data, 'base64') FROM block_data WHERE organization_id = 'O' AND block_id = %s",
            base64.b64decode,
        ),
    }
    for name, (sql, convert) in variants.items():
        ours, theirs = time.process_time(), postgres_cpu()
        for _ in range(count):
            session.cursor.execute(sql, (block_id,))
            row = session.cursor.fetchone()
            assert row is not None and convert(row[0]) == block
        ours, theirs = time.process_time() - ours, postgres_cpu() - theirs
        print(f"  read    {size:>7} B  {name:22} ours {1e6 * ours / count:6.0f} + PostgreSQL {1e6 * theirs / count:6.0f} us/op")
    ours, theirs = time.process_time(), postgres_cpu()
    for _ in range(count):
        result = session.run_binary(READ, {"org": "O", "block": block_id})
        assert result.get_value(0, 0) == block
    ours, theirs = time.process_time() - ours, postgres_cpu() - theirs
    print(f"  read    {size:>7} B  {'binary':22} ours {1e6 * ours / count:6.0f} + PostgreSQL {1e6 * theirs / count:6.0f} us/op")
    session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4096,524288", help="block sizes in bytes, comma-separated")
    parser.add_argument("--count", type=int, default=40, help="operations per session and window (x20 for 4 KiB)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved windows per write variant")
    parser.add_argument("--sessions", type=int, default=4, help="concurrent writing sessions")
    args = parser.parse_args()
    cluster = start_cluster(Path(tempfile.mkdtemp(prefix="parsec-block-bytes-")))
    try:
        setup = psycopg2.connect(cluster.dsn)
        setup.autocommit = True
        cursor = setup.cursor()
        for migration in sorted((REPO / "parsec/storage/postgresql/migrations").glob("*.sql")):
            cursor.execute(migration.read_text())
        cursor.execute("SET session_replication_role = replica")
        realms = [uuid.uuid4() for _ in range(args.sessions)]
        for realm in realms:
            cursor.execute("INSERT INTO realm (organization_id, realm_id, created_on) VALUES ('O', %s, now())", (realm,))
            cursor.execute(
                "INSERT INTO realm_user (organization_id, realm_id, user_id, role, role_certified_on)"
                " VALUES ('O', %s, 'alice', 'OWNER', now())",
                (realm,),
            )
        setup.close()
        for size in (int(value) for value in args.sizes.split(",")):
            count = args.count * (20 if size <= 65536 else 1)
            compose(cluster.dsn, size, count)
            writes(cluster.dsn, realms, size, count, args.rounds)
            reads(cluster.dsn, realms[0], size, count)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    psycopg2.extras.register_uuid()
    main()
