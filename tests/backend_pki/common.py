"""Helpers for the PKI enrollment tests: build requests, send them over the wire, and check
every reply against the command's reply schema."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from parsec.api import protocol
from tests import httpclient
from tests.api.certgen import OMIT, LocalDevice, new_user_certificates, pki_accept_payload, pki_submit_payload
from tests.orgs import Org, now
from tests.wsclient import WsClient


def new_der_certificate() -> bytes:
    """The X.509 certificate is opaque to the server: random bytes are enough."""
    return b"0\x82" + os.urandom(62)


async def anonymous(server: Any, organization_id: str, msg: dict[str, Any]) -> dict[str, Any]:
    rep = await httpclient.anonymous(server.port, organization_id, msg)
    assert rep.status == 200, (rep.status, rep.body)
    assert rep.headers["content-type"] == "application/msgpack"
    reply = rep.msgpack()
    spec = protocol.ANONYMOUS_COMMANDS.get(msg.get("cmd"))  # type: ignore[arg-type]
    protocol.validate_reply(spec, reply)
    return reply


def submit_request(
    enrollment_id: UUID | None = None,
    *,
    certificate: bytes | None = None,
    email: Any = OMIT,
    force: bool = False,
    payload: bytes | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "cmd": "pki_enrollment_submit",
        "enrollment_id": enrollment_id or uuid4(),
        "force": force,
        "submitter_der_x509_certificate": certificate if certificate is not None else new_der_certificate(),
        "submit_payload_signature": b"signature of the submit payload",
        "submit_payload": payload if payload is not None else pki_submit_payload(),
    }
    if email is not OMIT:
        msg["submitter_der_x509_certificate_email"] = email
    msg.update(overrides)
    return {key: value for key, value in msg.items() if value is not OMIT}


async def submit(server: Any, organization_id: str, **kwargs: Any) -> dict[str, Any]:
    return await anonymous(server, organization_id, submit_request(**kwargs))


async def info(server: Any, organization_id: str, enrollment_id: UUID) -> dict[str, Any]:
    return await anonymous(
        server, organization_id, {"cmd": "pki_enrollment_info", "enrollment_id": enrollment_id}
    )


async def cmd(client: WsClient, name: str, **fields: Any) -> dict[str, Any]:
    """Authenticated command whose reply is checked against its reply schema."""
    reply = await client.cmd(name, **fields)
    protocol.validate_reply(protocol.AUTHENTICATED_COMMANDS[name], reply)
    return reply


def accept_request(
    accepter: LocalDevice,
    new_device: LocalDevice,
    enrollment_id: UUID,
    *,
    timestamp: datetime | None = None,
    signing_key: Any = None,
    accept_payload: bytes | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Fields of `pki_enrollment_accept` creating ``new_device``'s user, signed by
    ``accepter`` (or by ``signing_key`` while claiming ``accepter`` as author)."""
    blobs = new_user_certificates(
        signing_key or accepter.signing_key,
        accepter.device_id,
        new_device,
        timestamp=timestamp or now(),
    )
    fields: dict[str, Any] = {
        "enrollment_id": enrollment_id,
        "accepter_der_x509_certificate": b"accepter der certificate",
        "accept_payload_signature": b"accept payload signature",
        "accept_payload": (
            accept_payload
            if accept_payload is not None
            else pki_accept_payload(
                device_id=new_device.device_id,
                device_label=new_device.device_label,
                human_handle=new_device.human_handle,
                profile=new_device.profile,
            )
        ),
        **blobs.as_request(),
    }
    fields.update(overrides)
    return {key: value for key, value in fields.items() if value is not OMIT}


async def accept(
    org: Org, accepter: str, new_device: LocalDevice, enrollment_id: UUID, **kwargs: Any
) -> dict[str, Any]:
    """Accept over a fresh connection of ``accepter``; on success the new device is added to
    ``org`` so that it can connect."""
    client = await org.connect(accepter)
    try:
        reply = await cmd(
            client,
            "pki_enrollment_accept",
            **accept_request(org.devices[accepter], new_device, enrollment_id, **kwargs),
        )
    finally:
        await client.close()
    if reply == {"status": "ok"}:
        org.devices[new_device.device_id] = new_device
    return reply


async def admin_cmd(org: Org, device: str, name: str, **fields: Any) -> dict[str, Any]:
    client = await org.connect(device)
    try:
        return await cmd(client, name, **fields)
    finally:
        await client.close()


async def revoke(org: Org, author: str, user_id: str) -> None:
    rep = await admin_cmd(
        org,
        author,
        "user_revoke",
        revoked_user_certificate=org.devices[author].revoked_user_certificate(
            user_id=user_id, timestamp=now()
        ),
    )
    assert rep == {"status": "ok"}, rep


async def patch_organization(server: Any, organization_id: str, **fields: Any) -> None:
    rep = await httpclient.admin(
        server.port, "PATCH", f"/administration/organizations/{organization_id}", fields
    )
    assert rep.status == 200, (rep.status, rep.body)


def new_local_device(device_id: str, *, email: str | None = None, profile: str = "STANDARD") -> LocalDevice:
    human_handle = (email, email.split("@")[0].title()) if email is not None else None
    return LocalDevice.generate(
        device_id, profile=profile, human_handle=human_handle, device_label="Enrolled machine"
    )
