"""Server storage variants of the interop tests: which `--db` / `--blockstore` the server runs on.

| variant    | server options (after `--dev`)                                                        |
|------------|---------------------------------------------------------------------------------------|
| `memory`   | none (`--dev` = `--db MOCKED --blockstore MOCKED`)                                    |
| `pg`       | `--db <fresh migrated database> --blockstore POSTGRESQL`                              |
| `pg-s3`    | `--db <fresh database> --blockstore s3:http\\://127.0.0.1\\:P:us-east-1:interop-s3:...` |
| `pg-swift` | `--db <fresh database> --blockstore swift:http\\://127.0.0.1\\:P/auth/v1.0:tester:...`  |
| `pg-raid5` | `--db <fresh database> -b RAID5:0:s3:... -b RAID5:1:swift:... -b RAID5:2:s3:...`       |

Every server gets its own database, a copy (`CREATE DATABASE ... TEMPLATE`) of a template:
ours is the run's (tests/support.py), the reference's is migrated once per session with the
client venv's `parsec backend migrate --db DSN`. The PostgreSQL cluster (the run's,
tests/conftest.py) and the object store (tests/objectstore.py) are session-wide and started
only when a selected test needs them.
"""

from __future__ import annotations

import itertools
import subprocess
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from tests.objectstore import (
    INTEROP_RAID5_CONTAINERS,
    INTEROP_S3_BUCKET,
    INTEROP_SWIFT_CONTAINER,
    ObjectStore,
)
from tests.pg_cluster import PgCluster
from tests.support import TEMPLATE_DATABASE

from .harness import HarnessError, client_base_env

MEMORY = "memory"
PG = "pg"
PG_S3 = "pg-s3"
PG_SWIFT = "pg-swift"
PG_RAID5 = "pg-raid5"
ALL_VARIANTS = (MEMORY, PG, PG_S3, PG_SWIFT, PG_RAID5)
# Tests that store no blocks (organizations, invitations) gain nothing from object stores.
DEFAULT_VARIANTS = (MEMORY, PG)
# With PARSEC_INTEROP_SERVER_ARGS alone, the tests run once on exactly what it says.
CUSTOM = "custom"

MIGRATE_TIMEOUT = 120


def needs_postgresql(name: str) -> bool:
    return name.startswith("pg")


def needs_objectstore(name: str) -> bool:
    return name in (PG_S3, PG_SWIFT, PG_RAID5)


def selected_variants(env_value: str | None, server_args_set: bool) -> tuple[str, ...]:
    """Variants allowed by PARSEC_INTEROP_VARIANTS (`memory,pg-s3`, `all`); unset: all of them,
    or only `custom` when PARSEC_INTEROP_SERVER_ARGS is set."""
    if not (env_value or "").strip():
        return (CUSTOM,) if server_args_set else ALL_VARIANTS
    names: list[str] = []
    for raw in env_value.replace(",", " ").split():  # type: ignore[union-attr]
        name = raw.strip().lower()
        expanded = ALL_VARIANTS if name == "all" else (name,)
        for item in expanded:
            if item not in (*ALL_VARIANTS, CUSTOM):
                raise ValueError(
                    f"unknown interop variant {item!r} in PARSEC_INTEROP_VARIANTS "
                    f"(known: {', '.join(ALL_VARIANTS)}, all, {CUSTOM})"
                )
            if item not in names:
                names.append(item)
    return tuple(names)


class PgDatabases:
    """A fresh migrated database for every server, on the run's PostgreSQL cluster
    (tests/conftest.py): ours copies our template, the reference's its own, migrated once by its
    `parsec backend migrate`."""

    def __init__(self, cluster: PgCluster, client_venv: Path | None) -> None:
        self.cluster = cluster
        self.client_venv = client_venv
        self._templates: dict[str, str] = {"ours": TEMPLATE_DATABASE}
        self._counter = itertools.count(1)
        self._session = uuid.uuid4().hex[:8]

    def _migrate_command(self, kind: str, dsn: str) -> tuple[list[str], dict[str, str]]:
        if kind != "reference" or self.client_venv is None:
            raise HarnessError(f"no migrate command for {kind!r} (the reference server needs the client venv)")
        return [str(self.client_venv / "bin" / "parsec"), "backend", "migrate", "--db", dsn], client_base_env()

    def _template(self, kind: str) -> str:
        """The database migrated by `kind`'s own `parsec backend migrate` (once per session)."""
        if kind not in self._templates:
            name = f"interop_template_{kind}_{self._session}"
            dsn = self.cluster.create_database(name)
            command, env = self._migrate_command(kind, dsn)
            result = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=MIGRATE_TIMEOUT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise HarnessError(
                    f"{' '.join(command)} failed (exit {result.returncode})\n--- stdout ---\n"
                    f"{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}"
                )
            self._templates[kind] = name
        return self._templates[kind]

    def new_database(self, kind: str) -> str:
        """DSN of a new database, a copy of the migrated template."""
        template = self._template(kind)
        name = f"interop_{kind}_{self._session}_{next(self._counter)}"
        return str(self.cluster.create_database(name, template=template))


@attrs.define
class ServerVariant:
    """The storage a variant gives to each server it starts (value of `interop_variant`)."""

    name: str
    pg: PgDatabases | None = None
    objectstore: ObjectStore | None = None
    databases: list[str] = attrs.field(factory=list)  # DSNs handed out, for reports

    def server_args(self, kind: str) -> list[str]:
        """Options appended to one server's command line (a new database for each call)."""
        if not needs_postgresql(self.name):
            return []
        assert self.pg is not None
        dsn = self.pg.new_database(kind)
        self.databases.append(dsn)
        args = ["--db", dsn]
        for value in self.blockstore_values():
            args += ["--blockstore", value]
        return args

    def blockstore_values(self) -> list[str]:
        if self.name == PG:
            return ["POSTGRESQL"]
        store = self.objectstore
        assert store is not None, self.name
        if self.name == PG_S3:
            return [store.s3_param(INTEROP_S3_BUCKET)]
        if self.name == PG_SWIFT:
            return [store.swift_param(INTEROP_SWIFT_CONTAINER)]
        if self.name == PG_RAID5:
            node0, node1, node2 = INTEROP_RAID5_CONTAINERS
            return [
                f"RAID5:0:{store.s3_param(node0)}",
                f"RAID5:1:{store.swift_param(node1)}",
                f"RAID5:2:{store.s3_param(node2)}",
            ]
        return []

    @property
    def block_containers(self) -> tuple[str, ...]:
        """The object-store containers where this variant's server writes blocks."""
        return {
            PG_S3: (INTEROP_S3_BUCKET,),
            PG_SWIFT: (INTEROP_SWIFT_CONTAINER,),
            PG_RAID5: INTEROP_RAID5_CONTAINERS,
        }.get(self.name, ())

    def stored_objects(self, organization_id: str) -> dict[str, list[str]]:
        """{container: names of the objects under `<organization_id>/`} for the object-store
        variants; {} for the others (blocks in memory or in the database)."""
        if not self.block_containers:
            return {}
        assert self.objectstore is not None
        return {
            container: self.objectstore.object_names(container, prefix=f"{organization_id}/")
            for container in self.block_containers
        }


def make_variant(
    name: str,
    pg: Callable[[], PgDatabases],
    objectstore: Callable[[], ObjectStore],
) -> ServerVariant:
    """Build a variant, starting only the services it needs (through the callables)."""
    return ServerVariant(
        name=name,
        pg=pg() if needs_postgresql(name) else None,
        objectstore=objectstore() if needs_objectstore(name) else None,
    )


def variant_marks(name: str) -> Sequence[str]:
    """Markers carried by the tests of a variant (`-m "client and not objectstore"`)."""
    marks = []
    if needs_postgresql(name):
        marks.append("postgresql")
    if needs_objectstore(name):
        marks.append("objectstore")
    return marks
