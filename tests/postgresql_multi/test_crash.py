"""`kill -9` of a server while clients write: every acknowledged write survives, and nothing is
half-written (each request is one transaction; block bytes are stored before their metadata).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest_twisted
from twisted.internet import defer

from tests.orgs import Org, bootstrap_organization, now
from tests.postgresql_multi.conftest import connect, wait_until
from tests.wsclient import ClosedError, WsClient

ok = pytest_twisted.ensureDeferred

WRITERS = 4
ACKED_BEFORE_KILL = 60


@attrs.define
class Acked:
    vlobs: dict[UUID, dict[int, bytes]] = attrs.field(factory=dict)  # vlob -> version -> blob
    blocks: dict[UUID, bytes] = attrs.field(factory=dict)

    @property
    def count(self) -> int:
        return sum(len(versions) for versions in self.vlobs.values()) + len(self.blocks)


async def writer(client: WsClient, index: int, realm_id: UUID, acked: Acked) -> None:
    """Write until the connection dies: a vlob, its next versions, a block, and again."""
    try:
        round_ = 0
        while True:
            round_ += 1
            vlob_id = uuid4()
            blob = f"w{index}-r{round_}-v1".encode()
            rep = await client.cmd(
                "vlob_create", realm_id=realm_id, encryption_revision=1, vlob_id=vlob_id, timestamp=now(), blob=blob
            )
            assert rep == {"status": "ok"}, rep
            acked.vlobs[vlob_id] = {1: blob}
            for version in (2, 3):
                blob = f"w{index}-r{round_}-v{version}".encode()
                rep = await client.cmd(
                    "vlob_update", encryption_revision=1, vlob_id=vlob_id, version=version, timestamp=now(), blob=blob
                )
                assert rep == {"status": "ok"}, rep
                acked.vlobs[vlob_id][version] = blob
            block_id = uuid4()
            data = f"block w{index} r{round_}".encode() * 100
            rep = await client.cmd("block_create", block_id=block_id, realm_id=realm_id, block=data)
            assert rep == {"status": "ok"}, rep
            acked.blocks[block_id] = data
    except ClosedError:
        return  # the server died


@ok
async def test_kill_9_while_writing(servers, database, pg_pool):
    server = await servers.start(database)
    org: Org = await bootstrap_organization(server)
    owner = await connect(org, server, "alice@dev1")
    realm_id = uuid4()
    cert = org.devices["alice@dev1"].realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=now()
    )
    assert await owner.cmd("realm_create", role_certificate=cert) == {"status": "ok"}

    acked = Acked()
    clients = [await connect(org, server, "alice@dev1") for _ in range(WRITERS)]
    writing = defer.DeferredList(
        [defer.ensureDeferred(writer(client, index, realm_id, acked)) for index, client in enumerate(clients)],
        fireOnOneErrback=True,
        consumeErrors=True,
    )
    # Kill while every writer has requests in flight.
    await wait_until(lambda: acked.count >= ACKED_BEFORE_KILL, "writes acknowledged")
    server.kill()
    await writing
    assert acked.count >= ACKED_BEFORE_KILL

    # A new server on the same database: every acknowledged write is there.
    restarted = await servers.start(database)
    reader = await connect(org, restarted, "alice@dev1")
    for vlob_id, versions in acked.vlobs.items():
        for version, blob in versions.items():
            rep = await reader.cmd(
                "vlob_read", encryption_revision=1, vlob_id=vlob_id, version=version, timestamp=None
            )
            assert rep["status"] == "ok" and rep["blob"] == blob, (vlob_id, version, rep)
    for block_id, data in acked.blocks.items():
        assert await reader.cmd("block_read", block_id=block_id) == {"status": "ok", "block": data}

    # Nothing half-written, acknowledged or not.
    pool = await pg_pool(database)
    await check_consistency(pool, org.organization_id, realm_id)
    rep = await reader.cmd("vlob_poll_changes", realm_id=realm_id, last_checkpoint=0)
    assert rep["status"] == "ok"
    assert set(acked.vlobs) <= set(rep["changes"])
    await reader.close()


async def check_consistency(pool: Any, organization_id: str, realm_id: UUID) -> None:
    params = {"org": organization_id, "realm": realm_id}
    # Versions of each vlob: 1..latest, without a hole; latest = what the vlob row says.
    holes = await pool.fetch(
        """
        SELECT v.vlob_id, v.latest_version, count(a.version), max(a.version)
        FROM vlob v LEFT JOIN vlob_atom a USING (organization_id, vlob_id)
        WHERE v.organization_id = %(org)s
        GROUP BY v.vlob_id, v.latest_version
        HAVING count(a.version) <> v.latest_version OR max(a.version) <> v.latest_version
        """,
        params,
    )
    assert holes == []
    # One checkpoint per write, gap-free, and the realm's counter agrees.
    checkpoint, updates, highest = await pool.fetchrow(
        """
        SELECT r.checkpoint, count(u.checkpoint), coalesce(max(u.checkpoint), 0)
        FROM realm r LEFT JOIN realm_vlob_update u USING (organization_id, realm_id)
        WHERE r.organization_id = %(org)s AND r.realm_id = %(realm)s
        GROUP BY r.checkpoint
        """,
        params,
    )
    atoms = await pool.fetchval(
        "SELECT count(*) FROM vlob_atom WHERE organization_id = %(org)s AND realm_id = %(realm)s", params
    )
    assert checkpoint == updates == highest == atoms
    # Every block the server knows has its bytes (bytes without metadata are invisible).
    orphans = await pool.fetchval(
        """
        SELECT count(*) FROM block b
        WHERE b.organization_id = %(org)s
          AND NOT EXISTS (SELECT 1 FROM block_data d WHERE d.organization_id = b.organization_id
                          AND d.block_id = b.block_id)
        """,
        params,
    )
    assert orphans == 0


@ok
async def test_kill_9_after_an_acknowledged_revocation(servers, database):
    """The revocation and its `user.revoked` event commit together: instance A is killed as
    soon as it has acknowledged `user_revoke`, and instance B still closes every connection of
    the revoked user (and only those)."""
    a = await servers.start(database)
    b = await servers.start(database)
    org = await bootstrap_organization(a)
    await org.new_user("alice@dev1", "bob@dev1")
    await org.new_device("bob@dev1", "dev2")
    await org.new_user("alice@dev1", "carol@dev1")
    bob_on_b = [await connect(org, b, "bob@dev1"), await connect(org, b, "bob@dev2")]
    carol_on_b = await connect(org, b, "carol@dev1")
    for client in (*bob_on_b, carol_on_b):  # B serves them
        assert await client.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}

    admin_on_a = await connect(org, a, "alice@dev1")
    certificate = org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    rep = await admin_on_a.cmd("user_revoke", revoked_user_certificate=certificate)
    a.kill()  # at once: nothing A would have sent after its reply goes out
    assert rep == {"status": "ok"}, rep

    for client in bob_on_b:
        await client.wait_closed()
    assert await carol_on_b.cmd("ping", ping="still here") == {"status": "ok", "pong": "still here"}
    # And B refuses the revoked user from now on.
    refused = await WsClient.connect(b.port)
    result = await refused.handshake_authenticated(
        org.organization_id, "bob@dev1", org.devices["bob@dev1"].signing_key, org.root_verify_key
    )
    assert result["result"] == "revoked_device", result
    await refused.close()
    await carol_on_b.close()
