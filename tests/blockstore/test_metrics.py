"""Blockstore metrics (parsec/metrics.py): the configured store and each RAID node, by result."""

from __future__ import annotations

import os
import uuid

import pytest_twisted
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from parsec.blockstore.base import BlockStoreError
from parsec.blockstore.raid import RAID1BlockStore, RAID5BlockStore
from parsec.metrics import Metrics

from .conftest import FakeStore

ORG = "org"
BLOCK = os.urandom(1000)


def operations(metrics: Metrics) -> dict[tuple[str, str, str, str], float]:
    """(backend, node, operation, result) -> count."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            if sample.name == "parsec_blockstore_operations_total" and sample.value:
                labels = sample.labels
                found[(labels["backend"], labels["node"], labels["operation"], labels["result"])] = sample.value
    return found


@pytest_twisted.ensureDeferred
async def test_raid_node_failure_and_cancelled_losers(fake_stores: list[FakeStore]) -> None:
    metrics = Metrics()
    nodes = fake_stores[:2]
    raid = metrics.measure_blockstore(RAID1BlockStore(nodes))
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    nodes[0].fail_read = True
    assert await raid.read(ORG, block_id) == BLOCK  # node 0 fails, node 1 answers
    nodes[0].fail_read = False
    nodes[1].hang_read = True
    assert await raid.read(ORG, block_id) == BLOCK  # node 0 answers, node 1 is cancelled
    nodes[0].fail_read = nodes[1].fail_read = True
    nodes[1].hang_read = False
    try:
        await raid.read(ORG, block_id)
    except BlockStoreError:
        pass
    assert operations(metrics) == {
        ("raid1", "", "create", "ok"): 1,
        ("raid1", "", "read", "ok"): 2,
        ("raid1", "", "read", "error"): 1,
        # The nodes are memory stores here (FakeStore), measured one by one.
        ("memory", "0", "create", "ok"): 1,
        ("memory", "1", "create", "ok"): 1,
        ("memory", "0", "read", "error"): 2,
        ("memory", "0", "read", "ok"): 1,
        ("memory", "1", "read", "ok"): 1,
        ("memory", "1", "read", "cancelled"): 1,
        ("memory", "1", "read", "error"): 1,
    }


@pytest_twisted.ensureDeferred
async def test_raid5_degraded_read(fake_stores: list[FakeStore]) -> None:
    metrics = Metrics()
    nodes = fake_stores[:3]
    raid = metrics.measure_blockstore(RAID5BlockStore(nodes))
    block_id = uuid.uuid4()
    await raid.create(ORG, block_id, BLOCK)
    nodes[1].fail_read = True
    assert await raid.read(ORG, block_id) == BLOCK  # rebuilt from the parity (node 2)
    counts = operations(metrics)
    assert counts[("memory", "1", "read", "error")] == 1
    assert counts[("memory", "2", "read", "ok")] == 1
    assert counts[("raid5", "", "read", "ok")] == 1
