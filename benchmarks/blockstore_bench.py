"""Blockstore throughput: block create and read, per store type, for 512 KiB blocks.

    python benchmarks/blockstore_bench.py [--blocks 64] [--concurrency 8] [--block-size 524288]

Uses the object store described by the environment (S3_ENDPOINT, S3_REGION, S3_ACCESS_KEY,
S3_SECRET_KEY, SWIFT_AUTH_URL, SWIFT_USER, SWIFT_KEY, as in the `env` of the test-suite's
tests/objectstore_swift.py) with containers bench0, bench1 and bench2 existing; without
S3_ENDPOINT it starts a throwaway Swift on loopback with tests/objectstore_swift.py (Debian
packages swift swift-proxy swift-account swift-container swift-object memcached) and stops it at
the end.

Stores measured: MOCKED, S3 (bench0), SWIFT (bench0), RAID1 and RAID5 over 3 containers with
S3 and Swift alternating (S3 bench0, Swift bench1, S3 bench2). Each store gets `--blocks` creates
then as many reads, `--concurrency` requests in flight. MB/s counts block bytes (1 MB = 10^6 B).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `tests.objectstore_swift`

from twisted.internet import defer, task  # noqa: E402

from parsec.blockstore.base import BlockStore  # noqa: E402
from parsec.blockstore.config import S3BlockStoreConfig, SwiftBlockStoreConfig  # noqa: E402
from parsec.blockstore.memory import MemoryBlockStore  # noqa: E402
from parsec.blockstore.raid import RAID1BlockStore, RAID5BlockStore  # noqa: E402
from parsec.blockstore.s3 import S3BlockStore  # noqa: E402
from parsec.blockstore.swift import SwiftBlockStore  # noqa: E402
from tests.objectstore_swift import SwiftError, SwiftStore, start_swift  # noqa: E402

CONTAINERS = ("bench0", "bench1", "bench2")
ORG = "bench"


def start_objectstore() -> tuple[dict[str, str], SwiftStore | None]:
    """The environment's store, or a throwaway one (stopped by the caller, also on failure)."""
    if os.environ.get("S3_ENDPOINT"):
        return dict(os.environ), None
    run_dir = Path(tempfile.mkdtemp(prefix="parsec-bench-swift-"))
    try:
        store = start_swift(run_dir / "swift", CONTAINERS)
    except SwiftError as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        sys.exit(f"cannot start the Swift object store: {exc}")
    return dict(store.env), store


def make_stores(env: dict[str, str], timeout: float) -> dict[str, Callable[[], BlockStore]]:
    account, user = env["SWIFT_USER"].split(":", 1)

    def s3(bucket: str) -> BlockStore:
        config = S3BlockStoreConfig(
            endpoint_url=env["S3_ENDPOINT"],
            region=env.get("S3_REGION", "us-east-1"),
            bucket=bucket,
            key=env["S3_ACCESS_KEY"],
            secret=env["S3_SECRET_KEY"],
        )
        return S3BlockStore(config, timeout=timeout)

    def swift(container: str) -> BlockStore:
        config = SwiftBlockStoreConfig(
            auth_url=env["SWIFT_AUTH_URL"],
            tenant=user,
            container=container,
            user=account,
            password=env["SWIFT_KEY"],
        )
        return SwiftBlockStore(config, timeout=timeout)

    def mixed() -> list[BlockStore]:
        return [s3(CONTAINERS[0]), swift(CONTAINERS[1]), s3(CONTAINERS[2])]

    return {
        "MOCKED": MemoryBlockStore,
        "S3": lambda: s3(CONTAINERS[0]),
        "SWIFT": lambda: swift(CONTAINERS[0]),
        "RAID1": lambda: RAID1BlockStore(mixed()),
        "RAID5": lambda: RAID5BlockStore(mixed()),
    }


async def timed(jobs: list[Callable[[], Awaitable[object]]], concurrency: int) -> float:
    pending = iter(jobs)

    async def worker() -> None:
        for job in pending:
            await job()

    started = time.perf_counter()
    await defer.gatherResults(
        [defer.Deferred.fromCoroutine(worker()) for _ in range(concurrency)], consumeErrors=True
    )
    return time.perf_counter() - started


async def measure(name: str, store: BlockStore, args: argparse.Namespace) -> tuple[float, float]:
    """(create seconds, read seconds) for `args.blocks` random blocks; reads are checked."""
    blocks = {uuid.uuid4(): os.urandom(args.block_size) for _ in range(args.blocks)}

    async def create(block_id: uuid.UUID) -> None:
        await store.create(ORG, block_id, blocks[block_id])

    async def read(block_id: uuid.UUID) -> None:
        if await store.read(ORG, block_id) != blocks[block_id]:
            raise AssertionError(f"{name}: block {block_id} read back differs")

    create_seconds = await timed([partial(create, block_id) for block_id in blocks], args.concurrency)
    read_seconds = await timed([partial(read, block_id) for block_id in blocks], args.concurrency)
    return create_seconds, read_seconds


async def bench(reactor: object, args: argparse.Namespace) -> None:
    env, swift = start_objectstore()
    try:
        print(
            f"{args.blocks} blocks of {args.block_size} B per store, {args.concurrency} in flight, "
            f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs"
        )
        print(f"{'store':8} {'create MB/s':>12} {'create op/s':>12} {'read MB/s':>10} {'read op/s':>10}")
        for name, factory in make_stores(env, args.timeout).items():
            store = factory()
            await store.start()
            try:
                create_seconds, read_seconds = await measure(name, store, args)
            finally:
                await store.stop()
            volume = args.blocks * args.block_size / 1e6
            print(
                f"{name:8} {volume / create_seconds:12.1f} {args.blocks / create_seconds:12.1f} "
                f"{volume / read_seconds:10.1f} {args.blocks / read_seconds:10.1f}"
            )
    finally:
        if swift is not None:
            swift.stop()
            shutil.rmtree(swift.run_dir.parent, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--blocks", type=int, default=64, help="blocks created then read per store (default 64)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    parser.add_argument(
        "--block-size", type=int, default=512 * 1024, help="bytes per block (default 512 KiB)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    args = parser.parse_args()
    if not 1 <= args.blocks <= 10_000 or not 1 <= args.concurrency <= 256:
        parser.error("--blocks must be in 1..10000 and --concurrency in 1..256")
    task.react(lambda reactor: defer.ensureDeferred(bench(reactor, args)))


if __name__ == "__main__":
    main()
