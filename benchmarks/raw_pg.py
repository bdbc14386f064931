"""Baseline for server_bench.py: raw INSERT / SELECT of one row, N connections.

    .venv/bin/python benchmarks/raw_pg.py DSN MODE CONNECTIONS WARMUP DURATION [ROW_BYTES]

What the PostgreSQL cluster of the run can do at most for one-row writes and reads: one thread
per connection (the drivers release the GIL while they wait), each looping on its statement in
autocommit mode (an INSERT is one commit, like one of our writes). MODE:

* `insert` / `select`: psycopg2, as a client of the 1 KiB rows (vlobs) would use it, on the
  table `raw_bench (id bigserial PRIMARY KEY, data bytea)`;
* `block_insert` / `block_select`: libpq through psycopg 3's `psycopg.pq`, a prepared statement
  with the bytes as a binary parameter and a binary result (what the POSTGRESQL blockstore
  sends, without anything else): the database's own cost of storing and returning a block of
  ROW_BYTES (512 KiB in server_bench.py), on `raw_block`, whose column is out of line and
  uncompressed like the blockstore's (`STORAGE EXTERNAL`).

The table is created if missing; `select` modes read rows by random id among those present
(2,000 rows, 64 blocks, are inserted first when there are fewer).

Protocol with the parent (one line each on stdout): `window-start` when the measured window
opens, then `window-end {json}` with ops, duration and latency percentiles when it closes (the
parent samples CPU at both lines).
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg2

SEED_ROWS = 2000
SEED_BLOCKS = 64


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


Step = Callable[[], None]


def text_step(dsn: str, mode: str, row: bytes, rng: random.Random, low: int, high: int) -> tuple[Step, Step]:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cursor = conn.cursor()

    def insert() -> None:
        cursor.execute("INSERT INTO raw_bench (data) VALUES (%s)", (row,))

    def select() -> None:
        cursor.execute("SELECT data FROM raw_bench WHERE id = %s", (rng.randint(low, high),))
        cursor.fetchone()

    return (insert if mode == "insert" else select), conn.close


def binary_step(dsn: str, mode: str, row: bytes, rng: random.Random, low: int, high: int) -> tuple[Step, Step]:
    from psycopg import pq

    conn = pq.PGconn.connect(dsn.encode())
    if conn.status != pq.ConnStatus.OK:
        raise RuntimeError(conn.get_error_message())

    def check(result: Any, status: Any) -> Any:
        if result.status != status:
            raise RuntimeError(result.get_error_message())
        return result

    if mode == "block_insert":
        check(conn.prepare(b"raw", b"INSERT INTO raw_block (data) VALUES ($1)"), pq.ExecStatus.COMMAND_OK)

        def step() -> None:
            check(conn.exec_prepared(b"raw", [row], [1], result_format=1), pq.ExecStatus.COMMAND_OK)

    else:
        check(conn.prepare(b"raw", b"SELECT data FROM raw_block WHERE id = $1"), pq.ExecStatus.COMMAND_OK)

        def step() -> None:
            key = str(rng.randint(low, high)).encode()
            result = check(conn.exec_prepared(b"raw", [key], [0], result_format=1), pq.ExecStatus.TUPLES_OK)
            if len(result.get_value(0, 0) or b"") != len(row):
                raise RuntimeError("wrong block size")

    return step, conn.finish


def main() -> None:
    dsn, mode, conns_text, warmup_text, duration_text, *rest = sys.argv[1:]
    conns, warmup, duration = int(conns_text), float(warmup_text), float(duration_text)
    row = os.urandom(int(rest[0]) if rest else 1024)
    blocks = mode.startswith("block_")
    table, seed = ("raw_block", SEED_BLOCKS) if blocks else ("raw_bench", SEED_ROWS)
    setup = psycopg2.connect(dsn)
    setup.autocommit = True
    with setup.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {table} (id bigserial PRIMARY KEY, data bytea)")
        if blocks:
            cursor.execute(f"ALTER TABLE {table} ALTER COLUMN data SET STORAGE EXTERNAL")
        cursor.execute(f"SELECT count(*) FROM {table}")
        (count,) = cursor.fetchone()
        if mode.endswith("select") and count < seed:
            cursor.executemany(f"INSERT INTO {table} (data) VALUES (%s)", [(row,)] * (seed - count))
        cursor.execute(f"SELECT min(id), max(id) FROM {table}")
        low, high = cursor.fetchone()
    # Kept open until the end: a backend that exits during the window would take its CPU time
    # out of the parent's sum over the cluster's processes.

    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[list[float]] = [[] for _ in range(conns)]
    errors: list[str] = []
    ready = threading.Barrier(conns + 1)
    sampled = threading.Event()

    def worker(index: int) -> None:
        try:
            step, close = (binary_step if blocks else text_step)(dsn, mode, row, random.Random(index), low, high)
        except Exception as exc:
            errors.append(str(exc).splitlines()[0])
            ready.abort()
            return
        ready.wait()
        mine = latencies[index]
        try:
            while True:
                began = time.perf_counter()
                if began >= end:
                    break
                step()
                done = time.perf_counter()
                if began >= start and done <= end:
                    mine.append(done - began)
        except Exception as exc:
            errors.append(str(exc).splitlines()[0])
        finally:
            # The backend must outlive the parent's last CPU sample (an exited backend's CPU
            # drops out of the difference).
            sampled.wait(10)
            close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        print("window-end " + json.dumps({"error": errors[0] if errors else "connection failed"}), flush=True)
        return
    time.sleep(max(0.0, start - time.perf_counter()))
    print("window-start", flush=True)
    time.sleep(max(0.0, end - time.perf_counter()))
    print("window-end-mark", flush=True)
    time.sleep(0.5)  # the parent samples CPU when it reads that line
    sampled.set()
    for thread in threads:
        thread.join()
    setup.close()
    merged = [value for values in latencies for value in values]
    print(
        "window-end "
        + json.dumps(
            {
                "ops": len(merged),
                "duration": duration,
                "p50": percentile(merged, 0.5),
                "p99": percentile(merged, 0.99),
                "errors": errors[:5],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
