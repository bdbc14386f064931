"""The throwaway cluster itself: loopback only, unprivileged server, restartable."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg2
import pytest

from tests.pg_cluster import SERVICE_USER, PgCluster
from tests.support import TEMPLATE_DATABASE


def _query(dsn: str, sql: str) -> tuple:
    conn = psycopg2.connect(dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()
    finally:
        conn.close()


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def test_cluster_listens_on_loopback_as_unprivileged_user(pg_cluster: PgCluster) -> None:
    assert pg_cluster.dsn == f"postgresql://parsec@127.0.0.1:{pg_cluster.port}/parsec"
    listen, fsync, server_addr, pid = _query(
        pg_cluster.dsn,
        "SELECT current_setting('listen_addresses'), current_setting('fsync'),"
        " host(inet_server_addr()), pg_backend_pid()",
    )
    assert (listen, fsync, server_addr) == ("127.0.0.1", "off", "127.0.0.1")
    assert _uid_of(pid) != 0  # PostgreSQL refuses root anyway: check we did not cheat
    if os.geteuid() == 0:
        import pwd

        assert pwd.getpwuid(_uid_of(pid)).pw_name == SERVICE_USER
        assert pg_cluster.data_dir.stat().st_uid == pwd.getpwnam(SERVICE_USER).pw_uid


def test_cluster_stop_start_kill_keep_data(restartable_pg_cluster: PgCluster) -> None:
    dsn = restartable_pg_cluster.dsn
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS kept; CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    conn.close()

    restartable_pg_cluster.stop()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=5)
    restartable_pg_cluster.start()
    assert _query(dsn, "SELECT v FROM kept") == (42,)

    restartable_pg_cluster.kill()  # crash: the next start runs recovery
    assert not restartable_pg_cluster.running
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=5)
    restartable_pg_cluster.start()
    assert _query(dsn, "SELECT v FROM kept") == (42,)
    assert restartable_pg_cluster.dsn == dsn  # same port after restarts


def test_create_database_from_template(pg_cluster: PgCluster) -> None:
    dsn = pg_cluster.create_database("copy_of_parsec", template=TEMPLATE_DATABASE)
    try:
        assert _query(dsn, "SELECT count(*) FROM migration")[0] >= 1
    finally:
        pg_cluster.drop_database("copy_of_parsec")
