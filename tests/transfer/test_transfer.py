"""`parsec backend import` / `export` on synthetic upstream databases (tests/transfer/upstream_data.py
on a schema built by the upstream server's own migrate): the round trip, what the import
computes, every refusal, the verification, all-or-nothing."""

from __future__ import annotations

import functools
import io
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import psycopg2
import psycopg2.extras
import pytest

from parsec import cli
from parsec.api.certificates import unsecure_load_device_certificate, unsecure_load_user_certificate
from parsec.transfer.importer import IMPORT_PLANS
from parsec.transfer.pgcopy import TransferError
from parsec.transfer.run import TransferResult, run_export, run_import
from tests.transfer.conftest import NewDb


@contextmanager
def connection(dsn: str) -> Iterator[Any]:
    conn = psycopg2.connect(dsn, options="-c TimeZone=UTC")
    psycopg2.extras.register_uuid(conn_or_curs=conn)
    try:
        yield conn
    finally:
        conn.close()


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with connection(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        conn.commit()
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in rows]


def execute(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    query(dsn, sql, params)


def tables_of(dsn: str) -> set[str]:
    return {name for (name,) in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def upstream_dump(dsn: str) -> dict[str, list[str]]:
    """Every row of every upstream table, `_id`s left out and every reference replaced by the
    natural key of the row it points at: equal dumps = same content, whatever the numbering."""
    with connection(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text
               FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
               WHERE c.contype = 'f'"""
        )
        references = {(table, column): target for table, column, target in cur.fetchall()}
        keys: dict[str, dict[int, Any]] = {}

        def natural(table: str, sql: str) -> None:
            cur.execute(sql)
            keys[table] = {row[0]: tuple(row[1:]) for row in cur.fetchall()}

        natural("organization", "SELECT _id, organization_id FROM organization")
        natural("user_", "SELECT u._id, o.organization_id, u.user_id FROM user_ u JOIN organization o ON o._id = u.organization")
        natural("device", "SELECT d._id, o.organization_id, d.device_id FROM device d JOIN organization o ON o._id = d.organization")
        natural("human", "SELECT h._id, o.organization_id, h.email FROM human h JOIN organization o ON o._id = h.organization")
        natural("realm", "SELECT r._id, o.organization_id, r.realm_id FROM realm r JOIN organization o ON o._id = r.organization")
        natural("vlob_encryption_revision", """SELECT v._id, o.organization_id, r.realm_id, v.encryption_revision
            FROM vlob_encryption_revision v JOIN realm r ON r._id = v.realm JOIN organization o ON o._id = r.organization""")
        natural("vlob_atom", """SELECT a._id, o.organization_id, a.vlob_id, v.encryption_revision, a.version
            FROM vlob_atom a JOIN vlob_encryption_revision v ON v._id = a.vlob_encryption_revision
            JOIN organization o ON o._id = a.organization""")
        dump: dict[str, list[str]] = {}
        for table in ("organization", "human", "user_", "device", "invitation", "pki_enrollment", "message",
                      "realm", "realm_user_role", "realm_user_change", "vlob_encryption_revision", "vlob_atom",
                      "realm_vlob_update", "block", "block_data"):
            cur.execute(f"SELECT * FROM {table}")
            names = [column.name for column in cur.description]
            rows = []
            for row in cur.fetchall():
                values = {}
                for name, value in zip(names, row, strict=True):
                    if name == "_id":
                        continue
                    target = references.get((table, name))
                    if target is not None and value is not None:
                        value = keys[target][value]
                    values[name] = bytes(value) if isinstance(value, memoryview) else value
                rows.append(repr(sorted(values.items())))
            dump[table] = sorted(rows)
        return dump


def do_import(source: str, target: str, **kwargs: Any) -> tuple[TransferResult, str]:
    out = io.StringIO()
    result = run_import(source, target, out=out, **kwargs)
    return result, out.getvalue()


def do_export(source: str, target: str, **kwargs: Any) -> tuple[TransferResult, str]:
    out = io.StringIO()
    result = run_export(source, target, out=out, **kwargs)
    return result, out.getvalue()


# ---------------------------------------------------------------------------------------------


def test_round_trip_import_then_export_gives_the_same_upstream_database(
    new_db: NewDb, populated_upstream: dict[str, int]
) -> None:
    upstream = new_db("populated")
    before = upstream_dump(upstream)
    ours = new_db("empty")

    result, output = do_import(upstream, ours)
    assert result.ok, output
    assert all(check.ok for check in result.checks)
    assert "creating this server's schema" in output
    # every upstream row landed: the verification compared the same facts on both sides
    by_name = {check.name: check for check in result.checks}
    assert by_name["vlob atoms (every version's blob)"].target_rows == populated_upstream["vlob_atom"]
    assert by_name["block data (POSTGRESQL blockstore)"].target_rows == populated_upstream["block_data"] > 0
    assert by_name["PKI enrollments"].target_rows == populated_upstream["pki_enrollment"]
    assert by_name["invitations"].target_rows == populated_upstream["invitation"]
    assert by_name["messages"].target_rows == populated_upstream["message"]
    assert upstream_dump(upstream) == before, "the source was modified"

    back = new_db("upstream")
    result, output = do_export(ours, back)
    assert result.ok, output
    assert upstream_dump(back) == before

    # the upstream server numbers new rows after the exported ones
    for table in ("user_", "vlob_atom", "message"):
        (next_id,) = query(back, f"SELECT nextval(pg_get_serial_sequence('{table}', '_id'))")[0]
        (max_id,) = query(back, f"SELECT max(_id) FROM {table}")[0]
        assert next_id == max_id + 1


def test_import_computes_what_our_server_keeps(new_db: NewDb) -> None:
    upstream = new_db("populated")
    ours = new_db("ours")
    result, output = do_import(upstream, ours)
    assert result.ok, output
    assert "creating" not in output

    # users: keys from the certificates, folded handles, human label of upstream's human row,
    # message counts
    users = query(ours, """SELECT organization_id, user_id, user_certificate, public_key, human_email, human_label,
                                  human_email_folded, human_label_folded, human_label_lower, message_count
                           FROM user_""")
    assert users
    for org, user_id, certificate, public_key, email, label, email_f, label_f, label_l, count in users:
        assert public_key == unsecure_load_user_certificate(certificate).public_key
        if email is not None:
            assert (email_f, label_f, label_l) == (email.casefold(), label.casefold(), label.lower())
        expected = query(upstream, """SELECT count(*) FROM message m JOIN user_ u ON u._id = m.recipient
                                      JOIN organization o ON o._id = u.organization
                                      WHERE o.organization_id = %s AND u.user_id = %s""", (org, user_id))[0][0]
        assert count == expected
    folded = {(org, user_id): (label_f, label_l) for org, user_id, *_, label_f, label_l, _ in users}
    assert folded[("Org0", "user1")] == ("ösçar outsider", "ösçar outsider")
    # the later holder of a re-used e-mail shows the label upstream shows (the first one)
    reused = query(ours, "SELECT user_id, human_label, revoked_on IS NOT NULL FROM user_ "
                         "WHERE organization_id = 'Org0' AND human_email = 'reused@example.com' ORDER BY user_id")
    assert reused == [("user3", "First Holder", True), ("user4", "First Holder", False)]
    devices = query(ours, "SELECT device_certificate, verify_key FROM device")
    assert devices and all(unsecure_load_device_certificate(c).verify_key == key for c, key in devices)

    # realms: checkpoint = last upstream index, re-encryption state, sizes of the written versions
    realms = {
        (org, str(realm)): row for org, realm, *row in query(
            ours, "SELECT organization_id, realm_id, encryption_revision, maintenance_type, checkpoint, vlobs_size "
                  "FROM realm")
    }
    expected_realms = {
        (org, str(realm)): [revision, maintenance, checkpoint, size] for org, realm, revision, maintenance, checkpoint, size in query(
            upstream, """SELECT o.organization_id, r.realm_id, r.encryption_revision, r.maintenance_type::text,
                                max(u.index), sum(a.size)
                         FROM realm r JOIN organization o ON o._id = r.organization
                         JOIN realm_vlob_update u ON u.realm = r._id JOIN vlob_atom a ON a._id = u.vlob_atom
                         GROUP BY 1, 2, 3, 4""")
    }
    assert realms == expected_realms
    assert sorted((row[0], row[1] or "") for row in realms.values()) == (
        [(1, "")] * 2 + [(2, "")] * 2 + [(2, "REENCRYPTION")] * 2
    )
    revisions = query(ours, """SELECT v.encryption_revision, v.finished_on IS NULL, r.maintenance_type
                               FROM vlob_encryption_revision v JOIN realm r USING (organization_id, realm_id)""")
    # only the revision of a running re-encryption is unfinished
    assert {(rev, unfinished) for rev, unfinished, maintenance in revisions if maintenance} == {(1, False), (2, True)}
    assert all(not unfinished for rev, unfinished, maintenance in revisions if not maintenance)

    # vlobs: latest version of each, whichever revision holds it
    vlobs = query(ours, "SELECT organization_id, vlob_id, latest_version FROM vlob")
    expected_vlobs = query(upstream, """SELECT o.organization_id, a.vlob_id, max(a.version) FROM vlob_atom a
                                        JOIN organization o ON o._id = a.organization GROUP BY 1, 2""")
    assert sorted(vlobs) == sorted(expected_vlobs)
    assert {version for *_, version in vlobs} == {3, 6}  # 3 versions, or 3 more after the re-encryption

    # current roles: the latest certificate of each (realm, user), a removed role included
    roles = query(ours, "SELECT role, count(*) FROM realm_user GROUP BY role")
    assert (None, 2) in roles  # removed in realm 0 of both bootstrapped organizations

    # messages numbered 1, 2, ... per recipient
    indexes = query(ours, "SELECT DISTINCT message_index FROM message ORDER BY 1")
    assert indexes == [(1,), (2,)]

    # invitations keep their state; PKI its facts
    pending = query(ours, "SELECT type, claimer_email FROM invitation WHERE organization_id = 'Org0' AND deleted_on IS NULL ORDER BY seq")
    assert pending == [("USER", "newcomer@example.com"), ("DEVICE", None), ("USER", "midway@example.com")]
    states = query(ours, "SELECT state, count(*) FROM pki_enrollment WHERE organization_id = 'Org0' GROUP BY state ORDER BY state")
    assert states == [("ACCEPTED", 1), ("CANCELLED", 1), ("REJECTED", 1), ("SUBMITTED", 2)]
    accepted = query(ours, "SELECT accepter, accepted, accept_payload FROM pki_enrollment WHERE state = 'ACCEPTED' AND organization_id = 'Org0'")
    assert accepted == [("admin@laptop", "user5@dev1", b"accept payload")]

    # organizations: never bootstrapped, expired
    orgs = query(ours, "SELECT organization_id, root_verify_key IS NULL, bootstrapped_on IS NULL, is_expired FROM organization ORDER BY 1")
    assert ("NeverBootstrapped", True, True, False) in orgs
    assert ("ExpiredOrg", False, False, True) in orgs


def test_refuses_an_unknown_upstream_revision(new_db: NewDb) -> None:
    upstream = new_db("upstream")
    execute(upstream, "INSERT INTO migration (_id, name, applied) VALUES (11, 'add_sequester', now())")
    target = new_db("empty")
    with pytest.raises(TransferError, match=r"upstream schema revision 0011_add_sequester, unknown"):
        do_import(upstream, target)
    assert tables_of(target) == set(), "the refused import left something behind"

    upstream = new_db("upstream")
    execute(upstream, "DELETE FROM migration WHERE _id = 10")
    with pytest.raises(TransferError, match=r"lacks upstream schema revision 0010_add_pki_certificate_table"):
        do_import(upstream, target)


def test_refuses_wrong_kinds_of_databases(new_db: NewDb) -> None:
    upstream, ours, empty = new_db("upstream"), new_db("ours"), new_db("empty")
    with pytest.raises(TransferError, match="source database holds this server's schema.*export"):
        do_import(ours, new_db("empty"))
    with pytest.raises(TransferError, match="source database is empty"):
        do_import(empty, new_db("empty"))
    with pytest.raises(TransferError, match="target database holds the upstream server's schema"):
        do_import(upstream, new_db("upstream"))
    with pytest.raises(TransferError, match="target database is empty: create the upstream schema"):
        do_export(ours, empty)
    with pytest.raises(TransferError, match="target database holds this server's schema"):
        do_export(ours, new_db("ours"))
    stale = new_db("ours")
    execute(stale, "DELETE FROM migration")
    execute(stale, "INSERT INTO migration (id, name) VALUES (999, 'future')")
    with pytest.raises(TransferError, match="newer than this program"):
        do_import(upstream, stale)


def test_refuses_a_non_empty_target_unless_told_to_overwrite(new_db: NewDb) -> None:
    upstream = new_db("populated")
    ours = new_db("empty")
    result, _ = do_import(upstream, ours)
    assert result.ok
    before = query(ours, "SELECT count(*), sum(octet_length(blob)) FROM vlob_atom")

    # a second import would mix two databases: refused, nothing changed
    with pytest.raises(TransferError, match=r"target database is not empty \(rows in .*vlob_atom.*--overwrite"):
        do_import(upstream, ours)
    assert query(ours, "SELECT count(*), sum(octet_length(blob)) FROM vlob_atom") == before

    # --overwrite replaces the content (same source: same content, fresh sequences)
    execute(ours, "INSERT INTO organization (organization_id, bootstrap_token, created_on) VALUES ('Extra', 't', now())")
    result, output = do_import(upstream, ours, overwrite=True)
    assert result.ok, output
    assert "--overwrite: deleting" in output
    assert query(ours, "SELECT count(*) FROM organization WHERE organization_id = 'Extra'") == [(0,)]
    assert query(ours, "SELECT count(*), sum(octet_length(blob)) FROM vlob_atom") == before

    back = new_db("upstream")
    assert do_export(ours, back)[0].ok
    with pytest.raises(TransferError, match="target database is not empty"):
        do_export(ours, back)
    result, _ = do_export(ours, back, overwrite=True)
    assert result.ok
    assert upstream_dump(back) == upstream_dump(upstream)


def test_verification_fails_loudly_and_nothing_is_committed(
    new_db: NewDb, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    upstream = new_db("populated")
    ours = new_db("empty")
    # A faulty copy of one vlob version (as a bug in a plan, or bytes mangled on the way,
    # would give): the verification must see it and roll everything back.
    plans = tuple(
        attrs.evolve(plan, select=plan.select.replace(
            "a.blob,", "CASE WHEN a.version = 2 AND a.vlob_id = (SELECT vlob_id FROM vlob_atom ORDER BY 1 LIMIT 1) "
                       "THEN a.blob || '\\x00'::bytea ELSE a.blob END,"))
        if plan.table == "vlob_atom" else plan
        for plan in IMPORT_PLANS
    )
    assert plans != IMPORT_PLANS
    result, output = do_import(upstream, ours, plans=plans)
    assert not result.ok
    failed = [check.name for check in result.checks if not check.ok]
    assert failed == ["vlob atoms (every version's blob)"]
    assert re.search(r"vlob atoms \(every version's blob\) +\d+ +\d+ +DIFFERENT", output), output
    assert "Verification FAILED" in output
    assert tables_of(ours) == set(), "the schema created for the import must be rolled back too"

    # Into a migrated target, through the command line: exit status 1, `Error:` on stderr, the
    # tables stay empty.
    ours_migrated = new_db("ours")
    monkeypatch.setattr("parsec.transfer.run.run_import", functools.partial(run_import, plans=plans))
    assert cli.main(["backend", "import", "--from", upstream, "--db", ours_migrated], environ={}) == 1
    out, err = capsys.readouterr()
    assert "DIFFERENT" in out and "Verification FAILED" in out
    assert err == "Error: verification failed; the import was cancelled\n"
    assert query(ours_migrated, "SELECT count(*) FROM organization") == [(0,)]


def test_a_row_our_schema_refuses_aborts_the_whole_import(new_db: NewDb) -> None:
    upstream = new_db("populated")
    # Two pending invitations for the same greeter and e-mail: our schema allows one (upstream
    # checks it without a lock, so a race may have left two).
    execute(upstream, """INSERT INTO invitation (organization, token, type, greeter, claimer_email, created_on)
                         SELECT organization, %s, type, greeter, claimer_email, now() FROM invitation
                         WHERE claimer_email = 'newcomer@example.com' LIMIT 1""", (uuid.uuid4(),))
    ours = new_db("ours")
    with pytest.raises(TransferError, match=r"^table invitation: duplicate key value violates unique constraint"):
        do_import(upstream, ours)
    assert query(ours, "SELECT count(*) FROM organization") == [(0,)]


def test_command_line(new_db: NewDb, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = new_db("populated")
    ours = new_db("empty")
    assert cli.main(["backend", "import", "--from", upstream, "--db", ours], environ={}) == 0
    out, err = capsys.readouterr()
    assert err == ""
    # not a terminal: one line per table, then the verification's summary
    assert re.search(r"^vlob_atom: [\d,]+ rows in [\d.]+ s \([\d,]+ rows/s\)$", out, re.MULTILINE), out
    assert "Import done:" in out and "verified, committed" in out
    assert out.startswith("Importing from 127.0.0.1:") and "parsec@" not in out  # no user name, no password

    # refused: exit status 1, one `Error:` line, the database named without credentials
    assert cli.main(["backend", "import", "--from", upstream, "--db", ours], environ={}) == 1
    out, err = capsys.readouterr()
    assert err.startswith("Error: The target database is not empty")
    assert err.count("\n") == 1

    back = new_db("upstream")
    assert cli.main(["backend", "export", "--to", back], environ={"PARSEC_DB": ours}) == 0
    out, err = capsys.readouterr()
    assert "Export done:" in out and err == ""
    assert upstream_dump(back) == upstream_dump(upstream)

    # the other option errors, in the style of the other subcommands
    assert cli.main(["backend", "export", "--db", ours], environ={}) == 1
    assert capsys.readouterr().err == "Error: Missing option '--to'\n"
    assert cli.main(["backend", "import", "--from", "mysql://x", "--db", ours], environ={}) == 1
    assert capsys.readouterr().err == "Error: Invalid value for '--from': Must start with `postgresql://` or `postgres://`\n"
    assert cli.main(["backend", "import", "--from", upstream, "--db", ours, "--port", "1"], environ={}) == 1
    assert capsys.readouterr().err == "Error: No such option: --port\n"
    assert cli.main(["backend", "import", "--from", "postgresql://nobody:secret@127.0.0.1:1/x", "--db", ours],
                    environ={}) == 1
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot connect to the source database 127.0.0.1:1/x") and "secret" not in err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["backend", "--help"], environ={}) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^  import +Import a database of the upstream server", listing, re.MULTILINE)
    assert re.search(r"^  export +Export to a database of the upstream server", listing, re.MULTILINE)
    for command, options in (("import", ("--from", "--db", "--overwrite")), ("export", ("--db", "--to", "--overwrite"))):
        assert cli.main(["backend", command, "--help"], environ={}) == 0
        text = capsys.readouterr().out
        assert text.startswith(f"Usage: parsec backend {command} [OPTIONS]\n")
        for option in options:
            assert re.search(rf"^  {option}( URL)?$", text, re.MULTILINE), (option, text)


def test_plans_fill_every_column_of_both_schemas(new_db: NewDb) -> None:
    """A column or table added to either schema must get a plan (and a check) here: this
    test names it."""
    from parsec.transfer.exporter import EXPORT_PLANS
    from parsec.transfer.schema import UPSTREAM_TABLES

    def writable_columns(dsn: str) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for table, column in query(dsn, """
                SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname <> 'migration'
                  AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' AND a.attidentity = ''"""):
            found.setdefault(table, set()).add(column)
        return found

    assert {plan.table: set(plan.columns) for plan in IMPORT_PLANS} == writable_columns(new_db("ours"))
    upstream = writable_columns(new_db("upstream"))
    assert {plan.table: set(plan.columns) for plan in EXPORT_PLANS} == upstream
    assert set(UPSTREAM_TABLES) == set(upstream)


def test_a_source_error_in_the_middle_of_a_table_aborts_the_whole_import(new_db: NewDb) -> None:
    """The source fails after some rows of vlob_atom went through the pipe: the error is the
    source's, and the target is left as it was."""
    upstream = new_db("populated")
    plans = tuple(
        attrs.evolve(plan, select=plan.select.replace("a.version, r.realm_id", "a.version / (3 - a.version) * 0 + a.version, r.realm_id"))
        if plan.table == "vlob_atom" else plan
        for plan in IMPORT_PLANS
    )
    assert plans != IMPORT_PLANS
    ours = new_db("ours")
    with pytest.raises(TransferError, match=r"^table vlob_atom: division by zero$"):
        do_import(upstream, ours, plans=plans)
    assert query(ours, "SELECT count(*) FROM organization") == [(0,)]


def test_a_target_still_in_use_is_not_waited_for_forever(new_db: NewDb) -> None:
    """A server still running on the target (here: a transaction that read a table) holds
    locks the load needs: the import gives up after its lock timeout, changing nothing."""
    upstream = new_db("populated")
    ours = new_db("ours")
    with connection(ours) as busy, busy.cursor() as cur:
        cur.execute("SELECT count(*) FROM vlob_atom")  # keeps its lock until the transaction ends
        with pytest.raises(TransferError, match=r"tables stayed in use for 200ms: stop the server using it first"):
            do_import(upstream, ours, lock_timeout="200ms")
        busy.rollback()
    assert query(ours, "SELECT count(*) FROM organization") == [(0,)]
    assert do_import(upstream, ours)[0].ok
