"""Import and export throughput and memory: `parsec backend import` / `export` on a synthetic
upstream database.

    .venv/bin/python benchmarks/import_bench.py                      # 100,000 vlob versions, ~1 min
    .venv/bin/python benchmarks/import_bench.py --vlob-versions 1000000 --block-data
    .venv/bin/python benchmarks/import_bench.py --dsn postgresql://user@127.0.0.1:5432/postgres

1. A database gets the upstream schema from the upstream server's own `parsec backend migrate`
   (parsec-cloud 2.10.0 in `<repo>/.client-venv`, see tests/interop/install-client-venv.sh),
   then synthetic content (tests/transfer/upstream_data.py): by default 1,000 users with
   their devices and certificates, 100,000 vlob versions (512-byte blobs) plus the copies of
   two re-encryptions, one checkpoint per version, 10,000 blocks metadata, messages,
   invitations, PKI enrollments. `--block-data` also stores the blocks' bytes, as the upstream
   POSTGRESQL blockstore does.
2. `parsec backend import --from <it> --db <empty database>` runs as a child process.
3. `parsec backend export --db <that> --to <fresh upstream database>` likewise.

For each direction it prints the rows copied, the copy's rows/s (what the command itself
reports: the tables' copy alone), the whole command's wall time (connections, checks, foreign
keys, ANALYZE and the verification included) and the child's peak RSS (getrusage), against the
targets: 20,000 rows/s each way and RSS under 200 MiB. PostgreSQL runs on the same machine and
shares its cores: the figures are those of the whole, client and servers.

PostgreSQL: `--dsn` names a cluster where the script may create and drop databases; without it
a throwaway cluster is started with tests/pg_cluster.py (tuned for tests: fsync off, small
shared buffers). Everything stays on 127.0.0.1 and every database or cluster created is removed.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.pg_cluster, tests.transfer.upstream_data

import psycopg2  # noqa: E402

TARGET_ROWS_PER_SECOND = 20_000
TARGET_RSS_MIB = 200
_DONE = re.compile(r"(Import|Export) done: ([\d,]+) rows in ([\d.]+) s \(([\d,]+) rows/s\)")


def _run(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, float, float]:
    """Run a child; (exit status, output, wall seconds, peak RSS MiB)."""
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd="/")
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, output, time.monotonic() - started, usage.ru_maxrss / 1024


class Databases:
    def __init__(self, dsn: str | None, work: Path) -> None:
        self.cluster: Any = None
        if dsn is None:
            from tests.pg_cluster import start_cluster

            self.cluster = start_cluster(work / "pg")
            dsn = self.cluster.dsn
        self.admin_dsn = dsn
        self.created: list[str] = []

    def _admin(self, sql: str) -> None:
        conn = psycopg2.connect(self.admin_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def new(self, label: str) -> str:
        name = f"import_bench_{label}_{uuid.uuid4().hex[:8]}"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return _dsn_url(psycopg2.extensions.make_dsn(self.admin_dsn, dbname=name))

    def close(self) -> None:
        for name in self.created:
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except psycopg2.Error as exc:
                print(f"could not drop {name}: {exc}")
        if self.cluster is not None:
            self.cluster.destroy()


def _dsn_url(dsn: str) -> str:
    """`parsec backend import` wants a URL: build one from libpq keywords."""
    params = psycopg2.extensions.parse_dsn(dsn)
    user = params.get("user", "")
    password = f":{params['password']}" if params.get("password") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgresql://{auth}{params.get('host', '127.0.0.1')}:{params.get('port', '5432')}/{params['dbname']}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vlob-versions", type=int, default=100_000, help="vlob versions written (default 100,000)")
    parser.add_argument("--blocks", type=int, default=10_000, help="blocks metadata (default 10,000)")
    parser.add_argument("--users", type=int, default=1_000, help="users (default 1,000)")
    parser.add_argument("--blob-size", type=int, default=512, help="bytes per vlob version (default 512)")
    parser.add_argument("--block-data", action="store_true", help="store the blocks' bytes in block_data too")
    parser.add_argument("--block-size", type=int, default=4096, help="bytes per block with --block-data")
    parser.add_argument("--dsn", help="existing cluster where databases may be created and dropped")
    parser.add_argument("--client-venv", type=Path, default=REPO / ".client-venv")
    args = parser.parse_args()

    from tests.transfer.upstream_data import Scale, populate_upstream

    organizations, realms, versions = 2, 10, 5
    scale = Scale(
        organizations=organizations,
        users=max(5, args.users // organizations),
        realms=realms,
        vlobs=max(1, args.vlob_versions // (organizations * realms * versions)),
        versions=versions,
        blocks=max(1, args.blocks // (organizations * realms)),
        messages=2,
        blob_size=max(16, args.blob_size // 16 * 16),
        block_size=max(16, args.block_size // 16 * 16),
    )
    parsec = str(Path(sys.executable).parent / "parsec")
    upstream_parsec = args.client_venv / "bin" / "parsec"
    if not upstream_parsec.exists():
        print(f"no upstream server in {args.client_venv} (tests/interop/install-client-venv.sh)")
        return 2
    client_env = {k: v for k, v in os.environ.items() if not k.startswith(("PARSEC_", "PYTHON", "VIRTUAL_ENV"))}
    with tempfile.TemporaryDirectory(prefix="import-bench-") as work:
        databases = Databases(args.dsn, Path(work))
        try:
            upstream = databases.new("upstream")
            code, output, _, _ = _run([str(upstream_parsec), "backend", "migrate", "--db", upstream], client_env)
            if code != 0:
                print(output)
                return 1
            print(f"populating the upstream database ({scale})...", flush=True)
            started = time.monotonic()
            conn = psycopg2.connect(upstream)
            try:
                counts = populate_upstream(conn, scale, block_data=args.block_data)
            finally:
                conn.close()
            print(f"  {sum(counts.values()):,} rows in {time.monotonic() - started:.1f} s: "
                  + ", ".join(f"{table} {count:,}" for table, count in counts.items() if count))

            ours = databases.new("ours")
            back = databases.new("back")
            code, output, _, _ = _run([str(upstream_parsec), "backend", "migrate", "--db", back], client_env)
            assert code == 0, output
            results = []
            for name, command in (
                ("import", [parsec, "backend", "import", "--from", upstream, "--db", ours]),
                ("export", [parsec, "backend", "export", "--db", ours, "--to", back]),
            ):
                print(f"running {name}...", flush=True)
                code, output, wall, rss = _run(command)
                match = _DONE.search(output)
                if code != 0 or match is None:
                    print(output)
                    return 1
                rows = int(match.group(2).replace(",", ""))
                rate = int(match.group(4).replace(",", ""))
                results.append((name, rows, float(match.group(3)), rate, wall, rss))
        finally:
            databases.close()

    print()
    print(f"{'':8}{'rows':>10}{'copy s':>9}{'rows/s':>10}{'wall s':>9}{'peak RSS':>11}   targets")
    ok = True
    for name, rows, seconds, rate, wall, rss in results:
        good = rate >= TARGET_ROWS_PER_SECOND and rss < TARGET_RSS_MIB
        ok = ok and good
        print(f"{name:8}{rows:>10,}{seconds:>9.1f}{rate:>10,}{wall:>9.1f}{rss:>8.0f} MiB   "
              f"{'met' if good else 'MISSED'} (>= {TARGET_ROWS_PER_SECOND:,} rows/s, < {TARGET_RSS_MIB} MiB)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
