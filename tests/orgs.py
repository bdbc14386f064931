"""Build organizations, users and devices on a running server through the real wire protocol."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import attrs
from nacl.signing import SigningKey

from tests import httpclient
from tests.api.certgen import LocalDevice, new_device_certificates, new_user_certificates
from tests.wsclient import WsClient


def now() -> datetime:
    return datetime.now(tz=UTC)


@attrs.define
class Org:
    server: Any
    organization_id: str
    root_key: SigningKey
    devices: dict[str, LocalDevice] = attrs.field(factory=dict)

    @property
    def root_verify_key(self) -> bytes:
        return bytes(self.root_key.verify_key)

    async def connect(self, device: LocalDevice | str, **kwargs: Any) -> WsClient:
        if isinstance(device, str):
            device = self.devices[device]
        client = await WsClient.connect(self.server.port)
        result = await client.handshake_authenticated(
            self.organization_id, device.device_id, device.signing_key, self.root_verify_key, **kwargs
        )
        assert result == {"handshake": "result", "result": "ok"}, result
        return client

    async def new_user(
        self,
        author: str,
        device_id: str,
        *,
        profile: str = "STANDARD",
        human_handle: tuple[str, str] | None = None,
        device_label: str | None = None,
    ) -> LocalDevice:
        creator = self.devices[author]
        device = LocalDevice.generate(
            device_id, profile=profile, human_handle=human_handle, device_label=device_label
        )
        blobs = new_user_certificates(creator.signing_key, creator.device_id, device, timestamp=now())
        client = await self.connect(creator)
        try:
            rep = await client.cmd("user_create", **blobs.as_request())
        finally:
            await client.close()
        assert rep == {"status": "ok"}, rep
        self.devices[device_id] = device
        return device

    async def new_device(self, author: str, device_name: str, device_label: str | None = None) -> LocalDevice:
        creator = self.devices[author]
        device = creator.new_device(device_name, device_label=device_label)
        cert, redacted = new_device_certificates(creator, device, timestamp=now())
        client = await self.connect(creator)
        try:
            rep = await client.cmd(
                "device_create", device_certificate=cert, redacted_device_certificate=redacted
            )
        finally:
            await client.close()
        assert rep == {"status": "ok"}, rep
        self.devices[device.device_id] = device
        return device


async def create_organization(server: Any, organization_id: str, **fields: Any) -> str:
    rep = await httpclient.admin(
        server.port, "POST", "/administration/organizations", {"organization_id": organization_id, **fields}
    )
    assert rep.status == 200, (rep.status, rep.body)
    return rep.json()["bootstrap_token"]


async def bootstrap_organization(
    server: Any,
    organization_id: str = "CoolOrg",
    *,
    first_device: str = "alice@dev1",
    human_handle: tuple[str, str] | None = ("alice@example.com", "Alicey McAliceFace"),
    device_label: str | None = "My dev1 machine",
    **create_fields: Any,
) -> Org:
    token = await create_organization(server, organization_id, **create_fields)
    root_key = SigningKey.generate()
    alice = LocalDevice.generate(
        first_device, profile="ADMIN", human_handle=human_handle, device_label=device_label
    )
    blobs = new_user_certificates(root_key, None, alice, timestamp=now())
    rep = await httpclient.anonymous(
        server.port,
        organization_id,
        {
            "cmd": "organization_bootstrap",
            "bootstrap_token": token,
            "root_verify_key": bytes(root_key.verify_key),
            **blobs.as_request(),
        },
    )
    assert rep.status == 200 and rep.msgpack() == {"status": "ok"}, (rep.status, rep.body)
    org = Org(server, organization_id, root_key)
    org.devices[alice.device_id] = alice
    return org
