"""Blockstore configuration objects and the `--blockstore` URL grammar."""

from __future__ import annotations

import attrs


@attrs.frozen
class MockedBlockStoreConfig:
    type: str = "MOCKED"


@attrs.frozen
class PostgreSQLBlockStoreConfig:
    type: str = "POSTGRESQL"


@attrs.frozen
class S3BlockStoreConfig:
    endpoint_url: str | None  # None = AWS default endpoint (never used in tests)
    region: str
    bucket: str
    key: str
    secret: str = attrs.field(repr=False)
    type: str = "S3"


@attrs.frozen
class SwiftBlockStoreConfig:
    auth_url: str
    tenant: str
    container: str
    user: str
    password: str = attrs.field(repr=False)
    type: str = "SWIFT"


SingleBlockStoreConfig = (
    MockedBlockStoreConfig | PostgreSQLBlockStoreConfig | S3BlockStoreConfig | SwiftBlockStoreConfig
)


@attrs.frozen
class RaidBlockStoreConfig:
    type: str  # "RAID0" | "RAID1" | "RAID5"
    nodes: tuple[SingleBlockStoreConfig, ...]
    partial_create_ok: bool = False


BlockStoreConfig = SingleBlockStoreConfig | RaidBlockStoreConfig


class BlockStoreConfigError(ValueError):
    pass


def parse_blockstore_params(values: list[str]) -> BlockStoreConfig:
    """Parse the (possibly repeated) `--blockstore` values. Raises BlockStoreConfigError."""
    raise NotImplementedError  # filled in by the blockstore work
