"""The blockstore's readiness probe (`check()`, behind GET /ready).

* RAID: ready while every block can still be read: RAID0 with every node, RAID1 with one
  node, RAID5 with all nodes but one;
* the real object store: a server on an S3 bucket answers /ready 200 (curl); once the bucket
  is gone (deleted behind its back), 503 naming the store and the reason; 200 again once the
  bucket is back.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from parsec.blockstore.base import BlockStoreError
from parsec.blockstore.raid import RAID0BlockStore, RAID1BlockStore, RAID5BlockStore
from parsec.config import BackendAddr, BackendConfig
from tests.blockstore.conftest import FakeStore
from tests.conftest import start_server
from tests.tools import curl, ready_becomes

ok = pytest_twisted.ensureDeferred


@pytest.mark.parametrize(
    "raid, failing, ready",
    [
        (RAID0BlockStore, 0, True),
        (RAID0BlockStore, 1, False),
        (RAID1BlockStore, 2, True),
        (RAID1BlockStore, 3, False),
        (RAID5BlockStore, 1, True),
        (RAID5BlockStore, 2, False),
    ],
)
@ok
async def test_raid_check_tolerates_what_reads_tolerate(raid, failing: int, ready: bool) -> None:
    nodes = [FakeStore(f"node{i}") for i in range(3)]
    for node in nodes[:failing]:
        node.fail_check = True
    store = raid(nodes)
    if ready:
        await store.check()
    else:
        with pytest.raises(BlockStoreError, match="check refused by the test"):
            await store.check()


@pytest.mark.objectstore
@ok
async def test_ready_follows_the_s3_bucket(objectstore, swift_admin) -> None:
    bucket = "parsec-ready"
    await swift_admin.put_container(bucket)
    backend = BackendConfig(
        backend_addr=BackendAddr("127.0.0.1", 6777, use_ssl=False), blockstore=objectstore.s3(bucket)
    )
    server = await start_server(backend)
    try:
        assert (await curl(f"{server.url}/ready")).status == 200
        await swift_admin.delete_container(bucket)
        result = await ready_becomes(server.url, 503)
        assert result.body.startswith(f"not ready: blockstore: S3 bucket `{bucket}` at "), result
        assert result.body.endswith("HEAD bucket: bucket does not exist (HTTP 404)\n"), result
        await swift_admin.put_container(bucket)
        await ready_becomes(server.url, 200)
    finally:
        await server.service.stopService()
        await swift_admin.delete_container(bucket)
