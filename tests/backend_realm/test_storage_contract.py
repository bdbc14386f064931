"""The running server's storage (memory today, PostgreSQL when the `server` fixture is
parametrized) implements the realm/vlob/block/message Protocols with the same signatures."""

from __future__ import annotations

import inspect

import pytest
import pytest_twisted

from parsec.backend import storage as storage_module

ok = pytest_twisted.ensureDeferred

PROTOCOLS = {
    "realm": storage_module.RealmStorage,
    "vlob": storage_module.VlobStorage,
    "block": storage_module.BlockStorage,
    "message": storage_module.MessageStorage,
}


def protocol_methods(protocol: type) -> list[str]:
    return [
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    ]


@pytest.mark.parametrize("domain", sorted(PROTOCOLS))
@ok
async def test_storage_implements_protocol(server, domain):
    protocol = PROTOCOLS[domain]
    implementation = getattr(server.app.storage, domain)
    methods = protocol_methods(protocol)
    assert methods
    for name in methods:
        method = getattr(implementation, name, None)
        assert method is not None, f"{type(implementation).__name__} lacks {name}"
        assert inspect.iscoroutinefunction(method), name
        expected = list(inspect.signature(getattr(protocol, name)).parameters)[1:]  # without self
        assert list(inspect.signature(method).parameters) == expected, name
