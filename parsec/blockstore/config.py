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


RAID_TYPES = ("RAID0", "RAID1", "RAID5")

_S3_USAGE = "Invalid S3 config, must be `s3:[<endpoint_url>]:<region>:<bucket>:<key>:<secret>`"
_SWIFT_USAGE = "Invalid SWIFT config, must be `swift:<auth_url>:<tenant>:<container>:<user>:<password>`"


def split_with_escaping(value: str) -> list[str]:
    """Split on `:`; a backslash escapes `:` and `\\`, and is kept before any other character.

    A trailing lone backslash is kept as is. Always returns at least one (maybe empty) part.
    """
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == ":":
            parts.append("".join(current))
            current = []
        elif char == "\\":
            following = next(chars, None)
            if following is None:
                current.append("\\")
            elif following in (":", "\\"):
                current.append(following)
            else:
                current.append("\\" + following)
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _default_https(url: str) -> str:
    # An URL written without scheme means HTTPS; giving `http://` needs escaped colons.
    if url and not url.startswith(("http://", "https://")):
        return f"https://{url}"
    return url


def parse_single_blockstore_param(value: str) -> SingleBlockStoreConfig:
    """One non-RAID value: `MOCKED`, `POSTGRESQL`, `s3:...` or `swift:...` (type is case-insensitive)."""
    if value.upper() == "MOCKED":
        return MockedBlockStoreConfig()
    if value.upper() == "POSTGRESQL":
        return PostgreSQLBlockStoreConfig()
    kind, *fields = split_with_escaping(value)
    if kind.upper() == "S3":
        if len(fields) != 5:
            raise BlockStoreConfigError(_S3_USAGE)
        endpoint_url, region, bucket, key, secret = fields
        return S3BlockStoreConfig(
            endpoint_url=_default_https(endpoint_url) or None,
            region=region,
            bucket=bucket,
            key=key,
            secret=secret,
        )
    if kind.upper() == "SWIFT":
        if len(fields) != 5:
            raise BlockStoreConfigError(_SWIFT_USAGE)
        auth_url, tenant, container, user, password = fields
        return SwiftBlockStoreConfig(
            auth_url=_default_https(auth_url),
            tenant=tenant,
            container=container,
            user=user,
            password=password,
        )
    raise BlockStoreConfigError(f"Invalid blockstore type `{kind}`")


def _type_label(value: str) -> str:
    # Names a non-RAID value in an error message. The reference prints the whole value, which
    # for s3/swift would put the secret on the terminal; the type word is enough to see the clash.
    return split_with_escaping(value)[0]


def parse_blockstore_params(values: list[str]) -> BlockStoreConfig:
    """Parse the (possibly repeated) `--blockstore` values. Raises BlockStoreConfigError."""
    if not values:
        raise BlockStoreConfigError("Missing blockstore config")
    # RAID keyword as written (compared case-sensitively) or None -> [(node index, node value)]
    groups: dict[str | None, list[tuple[int | None, str]]] = {}
    for value in values:
        head = value.split(":", 2)
        if len(head) == 3 and head[0].upper() in RAID_TYPES:
            node_raid_type, raw_index, node_value = head
            try:
                index: int | None = int(raw_index)
            except ValueError:
                raise BlockStoreConfigError(f"Invalid node index `{raw_index}` (must be integer)") from None
            groups.setdefault(node_raid_type, []).append((index, node_value))
        else:
            groups.setdefault(None, []).append((None, value))

    if len(groups) != 1:
        labels = [key if key is not None else _type_label(members[0][1]) for key, members in groups.items()]
        raise BlockStoreConfigError(f"Multiple blockstore config with different types: {'/'.join(labels)}")

    ((raid_type, members),) = groups.items()
    if raid_type is None:
        if len(members) != 1:
            raise BlockStoreConfigError("Multiple blockstore configs only available for RAID mode")
        return parse_single_blockstore_param(members[0][1])

    nodes: list[SingleBlockStoreConfig] = []
    for expected in range(len(members)):
        candidates = [node_value for index, node_value in members if index == expected]
        if not candidates:
            raise BlockStoreConfigError(f"Missing node index `{expected}` in RAID config")
        if len(candidates) > 1:
            raise BlockStoreConfigError(f"Multiple configuration for node index `{expected}` in RAID config")
        nodes.append(parse_single_blockstore_param(candidates[0]))

    normalized = raid_type.upper()
    if normalized == "RAID5" and len(nodes) < 3:
        raise BlockStoreConfigError("RAID5 block store needs at least 3 nodes")
    return RaidBlockStoreConfig(type=normalized, nodes=tuple(nodes))
