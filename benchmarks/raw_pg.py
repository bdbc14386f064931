"""Baseline for server_bench.py: raw psycopg2 INSERT / SELECT of 1 KiB rows, N connections.

    .venv/bin/python benchmarks/raw_pg.py DSN insert|select CONNECTIONS WARMUP DURATION [ROW_BYTES]

What the PostgreSQL cluster of the run can do at most for one-row writes and reads: one thread
per connection (psycopg2 releases the GIL while it waits), each looping on its statement in
autocommit mode (an INSERT is one commit, like one of our writes). The table
`raw_bench (id bigserial PRIMARY KEY, data bytea)` is created if missing; `select` reads rows
by random id among those present (2,000 are inserted first when there are fewer).

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

import psycopg2

SEED_ROWS = 2000


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


def main() -> None:
    dsn, mode, conns_text, warmup_text, duration_text, *rest = sys.argv[1:]
    conns, warmup, duration = int(conns_text), float(warmup_text), float(duration_text)
    row = os.urandom(int(rest[0]) if rest else 1024)
    setup = psycopg2.connect(dsn)
    setup.autocommit = True
    with setup.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS raw_bench (id bigserial PRIMARY KEY, data bytea)")
        cursor.execute("SELECT count(*), coalesce(max(id), 0) FROM raw_bench")
        count, _ = cursor.fetchone()
        if mode == "select" and count < SEED_ROWS:
            cursor.executemany("INSERT INTO raw_bench (data) VALUES (%s)", [(row,)] * (SEED_ROWS - count))
        cursor.execute("SELECT min(id), max(id) FROM raw_bench")
        low, high = cursor.fetchone()
    # Kept open until the end: a backend that exits during the window would take its CPU time
    # out of the parent's sum over the cluster's processes.

    start = time.perf_counter() + warmup
    end = start + duration
    latencies: list[list[float]] = [[] for _ in range(conns)]
    errors: list[str] = []
    ready = threading.Barrier(conns + 1)

    def worker(index: int) -> None:
        try:
            conn = psycopg2.connect(dsn)
            conn.autocommit = True
            cursor = conn.cursor()
        except psycopg2.Error as exc:
            errors.append(str(exc).splitlines()[0])
            ready.abort()
            return
        ready.wait()
        mine = latencies[index]
        rng = random.Random(index)
        try:
            while True:
                began = time.perf_counter()
                if began >= end:
                    break
                if mode == "insert":
                    cursor.execute("INSERT INTO raw_bench (data) VALUES (%s)", (row,))
                else:
                    cursor.execute("SELECT data FROM raw_bench WHERE id = %s", (rng.randint(low, high),))
                    cursor.fetchone()
                done = time.perf_counter()
                if began >= start and done <= end:
                    mine.append(done - began)
        except psycopg2.Error as exc:
            errors.append(str(exc).splitlines()[0])
        finally:
            conn.close()

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
