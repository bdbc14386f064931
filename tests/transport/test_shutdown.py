"""Graceful shutdown of an in-process server: stop listening, drain, close websockets with 1001."""

from __future__ import annotations

import pytest_twisted

from parsec.backend.invite import InviteComponent
from tests.conftest import start_server
from tests.orgs import bootstrap_organization
from tests.wsclient import WsClient

ok = pytest_twisted.ensureDeferred


@ok
async def test_stop_service_closes_websockets_with_1001():
    server = await start_server()
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
async def test_in_flight_request_bounded_by_grace():
    from twisted.internet import defer, reactor, task

    server = await start_server()
    server.service.shutdown_grace = 0.5
    org = await bootstrap_organization(server)
    greeter = await org.connect("alice@dev1")
    token = (await greeter.cmd("invite_new", type="DEVICE", send_email=False))["token"]
    # The greeter waits for a peer that never comes (not cancellable by the client): the
    # shutdown lets it run for the grace period, then cancels it and closes with 1001.
    greeter.send({"cmd": "invite_1_greeter_wait_peer", "token": token, "greeter_public_key": b"g" * 32})
    await task.deferLater(reactor, 0.1, lambda: None)
    await defer.ensureDeferred(server.service.stopService())
    code, _ = await greeter.wait_closed()
    assert code == 1001
    assert server.app.component(InviteComponent)._watches == {}
