"""S3, Swift and RAID stores against a real OpenStack Swift (Swift v1 + S3 API) on loopback."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted

from parsec.blockstore.base import BlockStore, BlockStoreError
from parsec.blockstore.config import S3BlockStoreConfig, SwiftBlockStoreConfig, parse_blockstore_params
from parsec.blockstore.factory import build_blockstore
from parsec.blockstore.raid import RAID0BlockStore, RAID1BlockStore, RAID5BlockStore, split_raid5
from parsec.blockstore.s3 import S3BlockStore
from parsec.blockstore.swift import SwiftBlockStore, _Session

from .conftest import ObjectStore, SwiftAdmin

pytestmark = pytest.mark.objectstore

TIMEOUT = 10.0
BLOCK = os.urandom(512 * 1024)
# docs/protocol/storage.md §2.1: block_id hex 0694a211... is stored as `org42/0694a211-7635-4e82-95e2-8a543e5887f9`
KNOWN_ID = uuid.UUID("0694a21176354e8295e28a543e5887f9")
KNOWN_KEY = "org42/0694a211-7635-4e82-95e2-8a543e5887f9"
# organization ids are `[\w-]{1,32}` (unicode included); the others check the key quoting
ORG_IDS = ["org42", "Zoé_Ünï-42", "a b+c%d~e&f=g"]


def s3(objectstore: ObjectStore, bucket: str) -> S3BlockStore:
    return S3BlockStore(objectstore.s3(bucket), timeout=TIMEOUT)


def swift(objectstore: ObjectStore, container: str) -> SwiftBlockStore:
    return SwiftBlockStore(objectstore.swift(container), timeout=TIMEOUT)


class Stores:
    """Stores built by a test, all stopped at teardown."""

    def __init__(self) -> None:
        self.made: list[BlockStore] = []

    def __call__(self, store: Any) -> Any:
        self.made.append(store)
        return store


@pytest_twisted.async_yield_fixture
async def stores() -> Any:
    made = Stores()
    yield made
    for store in made.made:
        await store.stop()


Kind = Callable[[ObjectStore, str], BlockStore]
KINDS = pytest.mark.parametrize("kind", [s3, swift], ids=["s3", "swift"])


@KINDS
@pytest_twisted.ensureDeferred
async def test_store_roundtrip_and_object_names(
    objectstore: ObjectStore, swift_admin: SwiftAdmin, stores: Stores, kind: Kind
) -> None:
    store = stores(kind(objectstore, "blocks"))
    await store.start()
    await store.create("org42", KNOWN_ID, b"known")
    assert await swift_admin.get("blocks", KNOWN_KEY) == b"known"

    for org in ORG_IDS:
        block_id = uuid.uuid4()
        for block in (BLOCK, b"", b"\x00" * 3):
            await store.create(org, block_id, block)  # overwrites: create is idempotent
            assert await store.read(org, block_id) == block
        # the object really is `<org>/<uuid>`, as the other API of the same store sees it
        assert await swift_admin.get("blocks", f"{org}/{block_id}") == b"\x00" * 3


@KINDS
@pytest_twisted.ensureDeferred
async def test_missing_block(
    objectstore: ObjectStore, stores: Stores, kind: Kind, captured_logs: list[dict[str, Any]]
) -> None:
    store = stores(kind(objectstore, "blocks"))
    await store.start()
    block_id = uuid.uuid4()
    with pytest.raises(BlockStoreError, match="404"):
        await store.read("org42", block_id)
    (event,) = [e for e in captured_logs if e.get("log_format", "").startswith("Block read error")]
    assert event["block_id"] == str(block_id) and event["organization_id"] == "org42"
    assert "blocks" in event["store"] and "404" in event["reason"]
    assert objectstore.env["S3_SECRET_KEY"] not in repr(event)


@KINDS
@pytest_twisted.ensureDeferred
async def test_start_fails_on_missing_container(objectstore: ObjectStore, stores: Stores, kind: Kind) -> None:
    store = stores(kind(objectstore, "no-such-container"))
    with pytest.raises(BlockStoreError) as excinfo:
        await store.start()
    message = str(excinfo.value)
    assert "no-such-container" in message and "does not exist" in message and "\n" not in message


@pytest_twisted.ensureDeferred
async def test_start_fails_on_bad_credentials(objectstore: ObjectStore, stores: Stores) -> None:
    s3_config = S3BlockStoreConfig(
        endpoint_url=objectstore.endpoint,
        region="us-east-1",
        bucket="blocks",
        key="test:tester",
        secret="WRONG",
    )
    with pytest.raises(BlockStoreError, match="access denied"):
        await stores(S3BlockStore(s3_config, timeout=TIMEOUT)).start()
    swift_config = SwiftBlockStoreConfig(
        auth_url=objectstore.auth_url, tenant="tester", container="blocks", user="test", password="WRONG"
    )
    with pytest.raises(BlockStoreError, match="authentication refused") as excinfo:
        await stores(SwiftBlockStore(swift_config, timeout=TIMEOUT)).start()
    assert "WRONG" not in str(excinfo.value)


@pytest_twisted.ensureDeferred
async def test_swift_renews_a_rejected_token(objectstore: ObjectStore, stores: Stores) -> None:
    store = stores(swift(objectstore, "blocks"))
    await store.start()
    block_id = uuid.uuid4()
    await store.create("org", block_id, b"data")
    session = store._session
    assert session is not None
    store._session = _Session(storage_url=session.storage_url, token="AUTH_tkexpired")
    assert await store.read("org", block_id) == b"data"
    assert store._session is not None and store._session.token not in ("AUTH_tkexpired",)


@pytest_twisted.ensureDeferred
async def test_from_command_line_values(objectstore: ObjectStore, stores: Stores) -> None:
    port = objectstore.endpoint.rsplit(":", 1)[1]
    values = [
        f"RAID5:0:s3:http\\://127.0.0.1\\:{port}:us-east-1:node0:test\\:tester:testing",
        f"RAID5:1:swift:http\\://127.0.0.1\\:{port}/auth/v1.0:tester:node1:test:testing",
        f"RAID5:2:s3:http\\://127.0.0.1\\:{port}:us-east-1:node2:test\\:tester:testing",
    ]
    raid = stores(build_blockstore(parse_blockstore_params(values), timeout=TIMEOUT))
    await raid.start()
    block_id = uuid.uuid4()
    await raid.create("org", block_id, BLOCK)
    assert await raid.read("org", block_id) == BLOCK


def mixed_nodes(objectstore: ObjectStore, containers: list[str]) -> list[BlockStore]:
    """Alternate S3 and Swift over the given containers."""
    return [(s3 if i % 2 == 0 else swift)(objectstore, c) for i, c in enumerate(containers)]


@pytest_twisted.ensureDeferred
async def test_raid_over_real_stores(
    objectstore: ObjectStore, swift_admin: SwiftAdmin, stores: Stores
) -> None:
    containers = ["node0", "node1", "node2", "node3"]
    raid0 = stores(RAID0BlockStore(mixed_nodes(objectstore, containers[:3])))
    raid1 = stores(RAID1BlockStore(mixed_nodes(objectstore, containers[:2])))
    raid5 = stores(RAID5BlockStore(mixed_nodes(objectstore, containers)))
    for raid in (raid0, raid1, raid5):
        await raid.start()

    for raid in (raid0, raid1, raid5):
        for block in (BLOCK, b"", b"x" * 7):
            block_id = uuid.uuid4()
            await raid.create("org", block_id, block)
            assert await raid.read("org", block_id) == block
            key = f"org/{block_id}"
            held = [await swift_admin.get(c, key) for c in containers]
            if raid is raid0:
                expected: list[bytes | None] = [None] * 4
                expected[block_id.int % 3] = block
            elif raid is raid1:
                expected = [block, block, None, None]
            else:
                expected = list(split_raid5(block, 4))
            assert held == expected


@pytest_twisted.ensureDeferred
async def test_degraded_reads(
    objectstore: ObjectStore, swift_admin: SwiftAdmin, stores: Stores, closed_port_url: str
) -> None:
    healthy = mixed_nodes(objectstore, ["node0", "node1", "node2"])
    raid5 = stores(RAID5BlockStore(healthy))
    raid1 = stores(RAID1BlockStore(healthy[:2]))
    block_ids = [uuid.uuid4() for _ in range(3)]
    for block_id in block_ids:
        await raid5.create("org", block_id, BLOCK)
    mirrored_id = uuid.uuid4()
    await raid1.create("org", mirrored_id, BLOCK)

    missing_container = stores(swift(objectstore, "never-created"))
    refused = stores(
        S3BlockStore(
            S3BlockStoreConfig(
                endpoint_url=closed_port_url, region="us-east-1", bucket="node0", key="k", secret="s"
            ),
            timeout=TIMEOUT,
        )
    )
    for broken in (missing_container, refused):
        for position in range(3):  # each data node, then the parity node
            nodes = list(healthy)
            nodes[position] = broken
            degraded = RAID5BlockStore(nodes)
            for block_id in block_ids:
                assert await degraded.read("org", block_id) == BLOCK
        assert await RAID1BlockStore([broken, healthy[1]]).read("org", mirrored_id) == BLOCK

    two_down = RAID5BlockStore([missing_container, refused, healthy[2]])
    with pytest.raises(BlockStoreError, match="More than 1 nodes have failed"):
        await two_down.read("org", block_ids[0])


@pytest_twisted.ensureDeferred
async def test_deleted_container(objectstore: ObjectStore, swift_admin: SwiftAdmin, stores: Stores) -> None:
    await swift_admin.put_container("doomed")
    nodes = [stores(s3(objectstore, "blocks")), stores(swift(objectstore, "doomed"))]
    raid1 = RAID1BlockStore(nodes)
    await raid1.start()
    block_id = uuid.uuid4()
    await raid1.create("org", block_id, BLOCK)

    await swift_admin.delete_container("doomed")
    assert await raid1.read("org", block_id) == BLOCK
    with pytest.raises(BlockStoreError, match="A node have failed"):
        await raid1.create("org", uuid.uuid4(), BLOCK)
    await RAID1BlockStore(nodes, partial_create_ok=True).create("org", uuid.uuid4(), BLOCK)
    with pytest.raises(BlockStoreError, match="does not exist"):
        await stores(swift(objectstore, "doomed")).start()


@pytest_twisted.ensureDeferred
async def test_raid_with_a_hung_node(objectstore: ObjectStore, hung_server: str, stores: Stores) -> None:
    good = stores(s3(objectstore, "node0"))
    hung = stores(
        S3BlockStore(
            S3BlockStoreConfig(
                endpoint_url=hung_server, region="us-east-1", bucket="node0", key="k", secret="s"
            ),
            timeout=0.5,
        )
    )
    block_id = uuid.uuid4()
    await good.create("org", block_id, BLOCK)
    # the good copy answers: the hung request is cancelled, not waited for
    assert await RAID1BlockStore([hung, good]).read("org", block_id) == BLOCK
    with pytest.raises(BlockStoreError, match="no answer within 0.5 s"):
        await RAID1BlockStore([good, hung]).create("org", uuid.uuid4(), BLOCK)
