"""Every implementation has every method of its interface, as a coroutine with the same
parameter names (mypy checks the types where the storages are built; this also holds for
keyword names, which a positional-only caller of the checker would not see)."""

from __future__ import annotations

import inspect

import pytest

from parsec.backend import storage as st
from parsec.storage.memory.invite import MemoryInviteStorage
from parsec.storage.memory.organization import MemoryOrganizationStorage, MemoryUserStorage
from parsec.storage.memory.pki import MemoryPkiStorage
from parsec.storage.memory.realm import (
    MemoryBlockStorage,
    MemoryMessageStorage,
    MemoryRealmStorage,
    MemoryVlobStorage,
)
from parsec.storage.postgresql.block import PgBlockStorage
from parsec.storage.postgresql.invite import PgInviteStorage
from parsec.storage.postgresql.message import PgMessageStorage
from parsec.storage.postgresql.organization import PgOrganizationStorage
from parsec.storage.postgresql.pki import PgPkiStorage
from parsec.storage.postgresql.realm import PgRealmStorage
from parsec.storage.postgresql.user import PgUserStorage
from parsec.storage.postgresql.vlob import PgVlobStorage

DOMAINS: dict[str, tuple[type, list[type]]] = {
    "organization": (st.OrganizationStorage, [MemoryOrganizationStorage, PgOrganizationStorage]),
    "user": (st.UserStorage, [MemoryUserStorage, PgUserStorage]),
    "invite": (st.InviteStorage, [MemoryInviteStorage, PgInviteStorage]),
    "realm": (st.RealmStorage, [MemoryRealmStorage, PgRealmStorage]),
    "vlob": (st.VlobStorage, [MemoryVlobStorage, PgVlobStorage]),
    "block": (st.BlockStorage, [MemoryBlockStorage, PgBlockStorage]),
    "message": (st.MessageStorage, [MemoryMessageStorage, PgMessageStorage]),
    "pki": (st.PkiStorage, [MemoryPkiStorage, PgPkiStorage]),
}


def protocol_methods(protocol: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(value)
        for name, value in vars(protocol).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    }


def test_every_storage_field_has_its_domain() -> None:
    assert sorted(DOMAINS) == sorted(field for field in st.Storage.__annotations__)


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_implementations_have_the_interface(domain: str) -> None:
    protocol, implementations = DOMAINS[domain]
    methods = protocol_methods(protocol)
    assert methods, protocol
    for implementation in implementations:
        for name, expected in methods.items():
            method = getattr(implementation, name, None)
            assert method is not None, f"{implementation.__name__} lacks {name}"
            assert inspect.iscoroutinefunction(method), (implementation.__name__, name)
            got = inspect.signature(method)
            assert list(got.parameters) == list(expected.parameters), (implementation.__name__, name)
            kinds = [p.kind for p in got.parameters.values()]
            assert kinds == [p.kind for p in expected.parameters.values()], (implementation.__name__, name)


def test_invite_interface_is_complete() -> None:
    assert sorted(protocol_methods(st.InviteStorage)) == [
        "conduit_listen",
        "conduit_talk",
        "delete",
        "info",
        "list",
        "new",
    ]
