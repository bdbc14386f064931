"""The `--blockstore` grammar of docs/protocol/storage.md §1, example by example, error by error."""

from __future__ import annotations

import pytest

from parsec.blockstore.config import (
    BlockStoreConfigError,
    MockedBlockStoreConfig,
    PostgreSQLBlockStoreConfig,
    RaidBlockStoreConfig,
    S3BlockStoreConfig,
    SwiftBlockStoreConfig,
    parse_blockstore_params,
    split_with_escaping,
)

S3_USAGE = "Invalid S3 config, must be `s3:[<endpoint_url>]:<region>:<bucket>:<key>:<secret>`"
SWIFT_USAGE = "Invalid SWIFT config, must be `swift:<auth_url>:<tenant>:<container>:<user>:<password>`"


@pytest.mark.parametrize(
    "raw, parts",
    [
        # the upstream table of docs/protocol/storage.md §1.1
        ("foo", ["foo"]),
        ("foo:bar", ["foo", "bar"]),
        ("foo\\:bar", ["foo:bar"]),
        ("::", ["", "", ""]),
        ("\\:\\:", ["::"]),
        (":foo:", ["", "foo", ""]),
        ("\\::\\:", [":", ":"]),
        ("\\\\:\\\\", ["\\", "\\"]),
        ("\\n\\", ["\\n\\"]),
        # the rules one by one
        ("", [""]),
        ("a\\\\\\:b", ["a\\:b"]),
        ("a\\", ["a\\"]),
        ("a\\\\", ["a\\"]),
        ("\\x:\\", ["\\x", "\\"]),
    ],
)
def test_split_with_escaping(raw: str, parts: list[str]) -> None:
    assert split_with_escaping(raw) == parts


@pytest.mark.parametrize(
    "values, expected",
    [
        (["MOCKED"], MockedBlockStoreConfig()),
        (["mocked"], MockedBlockStoreConfig()),
        (["Mocked"], MockedBlockStoreConfig()),
        (["POSTGRESQL"], PostgreSQLBlockStoreConfig()),
        (["postgresql"], PostgreSQLBlockStoreConfig()),
        (
            ["s3:http\\://foo.com\\:9000:eu:bkt:key:secret"],
            S3BlockStoreConfig(
                endpoint_url="http://foo.com:9000", region="eu", bucket="bkt", key="key", secret="secret"
            ),
        ),
        (
            ["S3:foo.com:eu:bkt:key:secret"],
            S3BlockStoreConfig(
                endpoint_url="https://foo.com", region="eu", bucket="bkt", key="key", secret="secret"
            ),
        ),
        (
            ["s3:https\\://s3.example\\:8443/prefix:eu-west-3:b:k:s"],
            S3BlockStoreConfig(
                endpoint_url="https://s3.example:8443/prefix",
                region="eu-west-3",
                bucket="b",
                key="k",
                secret="s",
            ),
        ),
        (
            # empty endpoint -> AWS default endpoint
            ["s3::us-east-1:bkt:key:secret"],
            S3BlockStoreConfig(
                endpoint_url=None, region="us-east-1", bucket="bkt", key="key", secret="secret"
            ),
        ),
        (
            # a colon inside a field (the Swift S3 API access key) is escaped
            ["s3:http\\://127.0.0.1\\:8080:us-east-1:blocks:test\\:tester:testing"],
            S3BlockStoreConfig(
                endpoint_url="http://127.0.0.1:8080",
                region="us-east-1",
                bucket="blocks",
                key="test:tester",
                secret="testing",
            ),
        ),
        (
            ["swift:http\\://127.0.0.1\\:8080/auth/v1.0:tester:blocks:test:testing"],
            SwiftBlockStoreConfig(
                auth_url="http://127.0.0.1:8080/auth/v1.0",
                tenant="tester",
                container="blocks",
                user="test",
                password="testing",
            ),
        ),
        (
            ["SWIFT:keystone.example/v1:tenant:cont:user:pass\\\\word"],
            SwiftBlockStoreConfig(
                auth_url="https://keystone.example/v1",
                tenant="tenant",
                container="cont",
                user="user",
                password="pass\\word",
            ),
        ),
        (
            ["RAID0:0:MOCKED"],
            RaidBlockStoreConfig(type="RAID0", nodes=(MockedBlockStoreConfig(),)),
        ),
        (
            ["RAID1:0:MOCKED"],
            RaidBlockStoreConfig(type="RAID1", nodes=(MockedBlockStoreConfig(),)),
        ),
        (
            # node order comes from the indexes, not from the order of the values
            ["raid1:1:POSTGRESQL", "raid1:0:MOCKED"],
            RaidBlockStoreConfig(
                type="RAID1", nodes=(MockedBlockStoreConfig(), PostgreSQLBlockStoreConfig())
            ),
        ),
        (
            [
                "RAID5:2:MOCKED",
                "RAID5:0:s3:http\\://h\\:1:us-east-1:b:k:s",
                "RAID5:1:swift:http\\://h\\:1/auth/v1.0:t:c:u:p",
            ],
            RaidBlockStoreConfig(
                type="RAID5",
                nodes=(
                    S3BlockStoreConfig(
                        endpoint_url="http://h:1", region="us-east-1", bucket="b", key="k", secret="s"
                    ),
                    SwiftBlockStoreConfig(
                        auth_url="http://h:1/auth/v1.0", tenant="t", container="c", user="u", password="p"
                    ),
                    MockedBlockStoreConfig(),
                ),
            ),
        ),
    ],
)
def test_valid_configs(values: list[str], expected: object) -> None:
    config = parse_blockstore_params(values)
    assert config == expected
    if isinstance(config, RaidBlockStoreConfig):
        assert config.partial_create_ok is False  # cannot be enabled from the command line


@pytest.mark.parametrize(
    "values, message",
    [
        (["s3:foo:bar"], S3_USAGE),
        (["s3:a:b:c:d:e:f"], S3_USAGE),
        (["s3"], S3_USAGE),
        (["swift:a:b:c:d"], SWIFT_USAGE),
        (["swift:a:b:c:d:e:f"], SWIFT_USAGE),
        (["dummy"], "Invalid blockstore type `dummy`"),
        (["dummy:a:b"], "Invalid blockstore type `dummy`"),
        (["MOCKED:x"], "Invalid blockstore type `MOCKED`"),
        ([""], "Invalid blockstore type ``"),
        (["MOCKED", "MOCKED"], "Multiple blockstore configs only available for RAID mode"),
        (
            ["raid1:0:MOCKED", "RAID1:1:MOCKED"],
            "Multiple blockstore config with different types: raid1/RAID1",
        ),
        (
            ["RAID0:0:MOCKED", "RAID1:1:MOCKED"],
            "Multiple blockstore config with different types: RAID0/RAID1",
        ),
        (["RAID1:0:MOCKED", "MOCKED"], "Multiple blockstore config with different types: RAID1/MOCKED"),
        (["MOCKED", "RAID1:0:MOCKED"], "Multiple blockstore config with different types: MOCKED/RAID1"),
        # the secret of a non-RAID value is not echoed, only its type
        (
            ["RAID1:0:MOCKED", "s3::r:b:k:topsecret"],
            "Multiple blockstore config with different types: RAID1/s3",
        ),
        (["RAID1:1:MOCKED"], "Missing node index `0` in RAID config"),
        (["RAID1:0:MOCKED", "RAID1:2:MOCKED"], "Missing node index `1` in RAID config"),
        (["RAID1:0:MOCKED", "RAID1:0:MOCKED"], "Multiple configuration for node index `0` in RAID config"),
        (
            ["RAID1:0:MOCKED", "RAID1:1:MOCKED", "RAID1:1:MOCKED"],
            "Multiple configuration for node index `1` in RAID config",
        ),
        (["RAID1:one:MOCKED"], "Invalid node index `one` (must be integer)"),
        (["RAID5::MOCKED"], "Invalid node index `` (must be integer)"),
        (["RAID5:0:MOCKED"], "RAID5 block store needs at least 3 nodes"),
        (["RAID5:0:MOCKED", "RAID5:1:MOCKED"], "RAID5 block store needs at least 3 nodes"),
        # no nesting: the node value is a single store
        (["RAID1:0:RAID1:0:MOCKED"], "Invalid blockstore type `RAID1`"),
        (["RAID0:0:s3:x"], S3_USAGE),
        # fewer than 3 parts: not a RAID member, hence an unknown type
        (["RAID1:0"], "Invalid blockstore type `RAID1`"),
        ([], "Missing blockstore config"),
    ],
)
def test_invalid_configs(values: list[str], message: str) -> None:
    with pytest.raises(BlockStoreConfigError) as excinfo:
        parse_blockstore_params(values)
    assert str(excinfo.value) == message


def test_secrets_not_in_repr() -> None:
    s3 = parse_blockstore_params(["s3:http\\://h:r:b:key:TOPSECRET"])
    swift = parse_blockstore_params(["swift:http\\://h:t:c:u:TOPSECRET"])
    raid = parse_blockstore_params(["RAID1:0:s3:h:r:b:key:TOPSECRET"])
    for config in (s3, swift, raid):
        assert "TOPSECRET" not in repr(config)
