"""A real OpenStack Swift (+ S3 API) on loopback, shared by every test of a session.

Started by tests/objectstore_swift.py (the repository's own throwaway store: Swift servers and
memcached from Debian's packages swift swift-proxy swift-account swift-container swift-object
memcached, everything under a pytest tmp directory, loopback only) the first time a test needs
it, and stopped, every process of it, when its last user exits. Both the blockstore tests
(tests/blockstore/conftest.py) and the real-client interop tests (tests/interop/conftest.py)
define their `objectstore` session fixture as

    with shared_objectstore(tmp_path_factory) as store:
        yield store

so a session running both directories starts ONE store (reference counted here).

Every container/bucket any test uses is created at start-up (`CONTAINERS`): stores check their
container with a HEAD request when they start. Tests keep apart through their organization ids
(object keys are `<organization_id>/<block uuid>`).
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import Iterator
from urllib.parse import quote

import attrs
import pytest

from parsec.blockstore.config import S3BlockStoreConfig, SwiftBlockStoreConfig
from tests.objectstore_swift import SwiftError, SwiftStore, start_swift

# Blockstore tests: "blocks", "node0".."node3". Interop tests: one bucket per single-store
# variant and one per RAID5 node (S3 bucket names must be DNS-compatible).
BLOCKSTORE_CONTAINERS = ("blocks", "node0", "node1", "node2", "node3")
INTEROP_S3_BUCKET = "interop-s3"
INTEROP_SWIFT_CONTAINER = "interop-swift"
INTEROP_RAID5_CONTAINERS = ("interop-raid5-0", "interop-raid5-1", "interop-raid5-2")
CONTAINERS = (
    *BLOCKSTORE_CONTAINERS,
    INTEROP_S3_BUCKET,
    INTEROP_SWIFT_CONTAINER,
    *INTEROP_RAID5_CONTAINERS,
)

START_TIMEOUT = 180  # seconds until every server answers (about 3 s on an idle machine)
STOP_TIMEOUT = 60
_HTTP_TIMEOUT = 30

# Loopback only: never let an http_proxy of the environment see these requests.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def escape_param(value: str) -> str:
    """Escape one field of a `--blockstore` value (docs/protocol/storage.md §1.1: `\\:` and `\\\\`)."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


@attrs.frozen
class ObjectStore:
    """How to reach the store: `env` is tests/objectstore_swift.py's `SwiftStore.env`
    (SWIFT_AUTH_URL, SWIFT_USER, SWIFT_KEY, S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY, ...)."""

    env: dict[str, str]

    @property
    def endpoint(self) -> str:
        return self.env["S3_ENDPOINT"]

    @property
    def auth_url(self) -> str:
        return self.env["SWIFT_AUTH_URL"]

    def _swift_identity(self) -> tuple[str, str]:
        # tempauth's `<account>:<user>` (test:tester) is parsec's `<user>:<tenant>`
        account, user = self.env["SWIFT_USER"].split(":", 1)
        return account, user

    # --- configuration objects (in-process stores)
    def s3(self, bucket: str) -> S3BlockStoreConfig:
        return S3BlockStoreConfig(
            endpoint_url=self.endpoint,
            region=self.env["S3_REGION"],
            bucket=bucket,
            key=self.env["S3_ACCESS_KEY"],
            secret=self.env["S3_SECRET_KEY"],
        )

    def swift(self, container: str) -> SwiftBlockStoreConfig:
        account, user = self._swift_identity()
        return SwiftBlockStoreConfig(
            auth_url=self.auth_url,
            tenant=user,
            container=container,
            user=account,
            password=self.env["SWIFT_KEY"],
        )

    # --- `--blockstore` command-line values (servers started as processes)
    def s3_param(self, bucket: str) -> str:
        """`s3:<endpoint>:<region>:<bucket>:<key>:<secret>`, every field escaped."""
        fields = (
            self.endpoint,
            self.env["S3_REGION"],
            bucket,
            self.env["S3_ACCESS_KEY"],
            self.env["S3_SECRET_KEY"],
        )
        return "s3:" + ":".join(escape_param(field) for field in fields)

    def swift_param(self, container: str) -> str:
        """`swift:<auth_url>:<tenant>:<container>:<user>:<password>`, every field escaped."""
        account, user = self._swift_identity()
        fields = (self.auth_url, user, container, account, self.env["SWIFT_KEY"])
        return "swift:" + ":".join(escape_param(field) for field in fields)

    # --- looking behind the stores' back (plain Swift v1 calls, synchronous)
    def object_names(self, container: str, prefix: str = "") -> list[str]:
        """Names of the objects of `container` starting with `prefix` (sorted)."""
        auth = urllib.request.Request(
            self.auth_url,
            headers={"X-Auth-User": self.env["SWIFT_USER"], "X-Auth-Key": self.env["SWIFT_KEY"]},
        )
        with _opener.open(auth, timeout=_HTTP_TIMEOUT) as response:
            token = response.headers["X-Auth-Token"]
            storage_url = response.headers["X-Storage-Url"]
        names: list[str] = []
        marker = ""
        while True:  # listings are paginated (10000 names per page by default)
            listing = urllib.request.Request(
                f"{storage_url}/{quote(container, safe='')}?format=json"
                f"&prefix={quote(prefix, safe='')}&marker={quote(marker, safe='')}",
                headers={"X-Auth-Token": token},
            )
            with _opener.open(listing, timeout=_HTTP_TIMEOUT) as response:
                body = response.read()
            page = [entry["name"] for entry in json.loads(body)] if body.strip() else []
            if not page:
                return sorted(names)
            names.extend(page)
            marker = page[-1]


# --- session-wide lifecycle -------------------------------------------------------------------


@attrs.define
class _Shared:
    store: ObjectStore | None = None
    swift: SwiftStore | None = None
    users: int = 0


_shared = _Shared()


def _start(tmp_path_factory: pytest.TempPathFactory) -> SwiftStore:
    try:
        return start_swift(tmp_path_factory.mktemp("swift"), CONTAINERS, timeout=START_TIMEOUT)
    except SwiftError as exc:  # SwiftUnavailable included: the message names the packages
        pytest.fail(f"cannot start the Swift object store: {exc}", pytrace=False)


@contextlib.contextmanager
def shared_objectstore(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """The session's object store: started on first use, stopped when its last user exits."""
    if _shared.store is None:
        _shared.swift = _start(tmp_path_factory)
        _shared.store = ObjectStore(env=dict(_shared.swift.env))
    _shared.users += 1
    try:
        yield _shared.store
    finally:
        _shared.users -= 1
        if _shared.users == 0 and _shared.swift is not None:
            swift = _shared.swift
            _shared.store = None
            _shared.swift = None
            swift.stop(timeout=STOP_TIMEOUT)
