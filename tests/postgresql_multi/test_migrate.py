"""`parsec backend migrate` is idempotent; the server never migrates and refuses a database
that is not migrated, with one line telling the administrator what to do, and status 1."""

from __future__ import annotations

import subprocess

import pytest_twisted

from parsec.storage.postgresql.migrations import list_migrations
from tests.postgresql_multi.conftest import BIN

ok = pytest_twisted.ensureDeferred

RUN_ARGS = (
    "--blockstore", "POSTGRESQL",
    "--administration-token", "T",
    "--backend-addr", "parsec://127.0.0.1:6777?no_ssl=true",
    "--email-host", "MOCKED",
    "--host", "127.0.0.1",
    "--port", "0",
)


def migrate(dsn: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "parsec"), "backend", "migrate", "--db", dsn, *extra],
        capture_output=True, text=True, timeout=60,
    )


def test_migrate_is_idempotent(empty_database):
    names = [m.file_name for m in list_migrations()]
    assert names[0] == "0001_initial.sql"
    dry = migrate(empty_database, "--dry-run")
    assert dry.returncode == 0, dry
    assert dry.stdout.splitlines() == [f"{name} (dry run)" for name in names]

    first = migrate(empty_database)
    assert first.returncode == 0, first
    assert first.stdout.splitlines() == [f"{name} ✔" for name in names]

    for _ in range(2):
        again = migrate(empty_database)
        assert again.returncode == 0, again
        assert again.stdout.splitlines() == [f"{name} (already applied)" for name in names]
        assert again.stderr == ""


def test_run_refuses_an_unmigrated_database(empty_database, tmp_path):
    for front_end in (
        [str(BIN / "twistd"), "-n", "--pidfile=", "parsec"],
        [str(BIN / "parsec"), "backend", "run"],
    ):
        result = subprocess.run(
            [*front_end, "--db", empty_database, *RUN_ARGS],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert result.returncode == 1, result
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        # One `Error: ...` line naming the command to run (twistd turns it into a log line).
        missing = ", ".join(m.file_name for m in list_migrations())
        expected = (
            f"Database schema is not up to date (missing migrations: {missing}): "
            "run `parsec backend migrate` first"
        )
        errors = [line for line in output.splitlines() if "Error: " in line]
        assert len(errors) == 1 and f"Error: {expected}" in errors[0], output


@ok
async def test_run_serves_once_migrated(empty_database, servers):
    assert migrate(empty_database).returncode == 0
    server = await servers.start(empty_database)
    assert await server.serving()
