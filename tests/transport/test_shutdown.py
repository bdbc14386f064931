"""Graceful shutdown of an in-process server: stop listening, drain, close websockets with 1001."""

from __future__ import annotations

import pytest_twisted

from parsec.backend.invite import InviteComponent
from tests.orgs import bootstrap_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


@ok
async def test_stop_service_closes_websockets_with_1001(server_factory):
    server = await server_factory()
    org = await bootstrap_organization(server)
    idle = await org.connect("alice@dev1")
    listening = await org.connect("alice@dev1")
    assert await listening.cmd("events_subscribe") == {"status": "ok"}
    listening.send({"cmd": "events_listen", "wait": True})
    invited_greeter = await org.connect("alice@dev1")
    token = (await invited_greeter.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    claimer = await WsClient.connect(server.port)
    assert (await claimer.handshake_invited("CoolOrg", "DEVICE", token))["result"] == "ok"

    await server.service.stopService()

    for client in (idle, listening, invited_greeter, claimer):
        code, _ = await client.wait_closed()
        assert code == 1001
    assert server.service.ws_factory.connections == set()


@ok
async def test_waiting_conduit_command_cancelled_at_once(server_factory):
    from twisted.internet import defer, reactor, task

    server = await server_factory()
    org = await bootstrap_organization(server)
    greeter = await org.connect("alice@dev1")
    token = (await greeter.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    # The greeter waits for a peer that never comes: shutdown does not wait for it.
    greeter.send({"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": b"g" * 32})
    await task.deferLater(reactor, 0.1, lambda: None)
    await defer.ensureDeferred(server.service.stopService())
    code, _ = await greeter.wait_closed()
    assert code == 1001
    assert server.app.component(InviteComponent)._watches == {}


class _SlowBlockStore:
    def __init__(self, inner, delay):
        self.inner = inner
        self.delay = delay

    async def create(self, organization_id, block_id, block):
        from twisted.internet import reactor, task

        await task.deferLater(reactor, self.delay, lambda: None)
        await self.inner.create(organization_id, block_id, block)

    async def read(self, organization_id, block_id):
        return await self.inner.read(organization_id, block_id)

    async def start(self):
        pass

    async def stop(self):
        pass


@ok
async def test_in_flight_request_finishes_before_close(server_factory):
    import uuid

    from twisted.internet import defer, reactor, task

    from tests.orgs import now

    server = await server_factory()
    org = await bootstrap_organization(server)
    alice = await org.connect("alice@dev1")
    realm_id = uuid.uuid4()
    cert = org.devices["alice@dev1"].realm_role_certificate(
        realm_id=realm_id, user_id="alice", role="OWNER", timestamp=now()
    )
    assert await alice.cmd("realm_create", role_certificate=cert) == {"status": "ok"}
    server.app.blockstore = _SlowBlockStore(server.app.blockstore, 0.5)
    alice.send({"cmd": "block_create", "block_id": uuid.uuid4(), "realm_id": realm_id, "block": b"data"})
    await task.deferLater(reactor, 0.1, lambda: None)
    stopping = defer.ensureDeferred(server.service.stopService())
    # The write in progress completes and is answered, then the connection closes with 1001.
    assert await alice.recv() == {"status": "ok"}
    code, _ = await alice.wait_closed()
    assert code == 1001
    await stopping
