"""The backend event bus: every state change is published here.

Events are small: a name, the organization they belong to and a flat map of
values that the parsec msgpack codec can encode (str, int, bool, None, bytes,
UUID, datetime). The memory bus delivers them in-process, synchronously; the
PostgreSQL bus sends them through NOTIFY so that every server instance
(including the publishing one) hears them.

Who publishes (docs/protocol/events.md §5):
* an event that describes a write is published by the storage, together with the write (in
  the same PostgreSQL transaction: it exists if and only if the write committed). The
  constructors below give every storage the same event shapes;
* the few events tied to no write (`pinged`, a claimer joining or leaving, an expired
  organization met at handshake) are published by the backend with `EventBus.publish`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import attrs
from twisted.logger import Logger

_log = Logger()


@attrs.frozen
class BackendEvent:
    name: str
    organization_id: str
    data: dict[str, Any] = attrs.field(factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


Listener = Callable[[BackendEvent], None]


# ---- the events (docs/protocol/events.md §5) -------------------------------------------------

PINGED = "pinged"
MESSAGE_RECEIVED = "message.received"
INVITE_STATUS_CHANGED = "invite.status_changed"
INVITE_CONDUIT_UPDATED = "invite.conduit_updated"
REALM_ROLES_UPDATED = "realm.roles_updated"
REALM_VLOBS_UPDATED = "realm.vlobs_updated"
REALM_MAINTENANCE_STARTED = "realm.maintenance_started"
REALM_MAINTENANCE_FINISHED = "realm.maintenance_finished"
PKI_ENROLLMENT_UPDATED = "pki_enrollment.updated"
USER_CREATED = "user.created"
DEVICE_CREATED = "device.created"
USER_REVOKED = "user.revoked"
ORGANIZATION_EXPIRED = "organization.expired"


def pinged(organization_id: str, author: str, ping: str) -> BackendEvent:
    return BackendEvent(PINGED, organization_id, {"author": author, "ping": ping})


def message_received(organization_id: str, author: str, recipient: str, index: int) -> BackendEvent:
    return BackendEvent(
        MESSAGE_RECEIVED, organization_id, {"author": author, "recipient": recipient, "index": index}
    )


def invite_status_changed(organization_id: str, greeter: str, token: UUID, status: str) -> BackendEvent:
    return BackendEvent(
        INVITE_STATUS_CHANGED, organization_id, {"greeter": greeter, "token": token, "status": status}
    )


def invite_conduit_updated(organization_id: str, token: UUID) -> BackendEvent:
    return BackendEvent(INVITE_CONDUIT_UPDATED, organization_id, {"token": token})


def realm_roles_updated(
    organization_id: str, author: str, realm_id: UUID, user: str, role: str | None
) -> BackendEvent:
    return BackendEvent(
        REALM_ROLES_UPDATED,
        organization_id,
        {"author": author, "realm_id": realm_id, "user": user, "role": role},
    )


def realm_vlobs_updated(
    organization_id: str, author: str, realm_id: UUID, checkpoint: int, src_id: UUID, src_version: int
) -> BackendEvent:
    return BackendEvent(
        REALM_VLOBS_UPDATED,
        organization_id,
        {
            "author": author,
            "realm_id": realm_id,
            "checkpoint": checkpoint,
            "src_id": src_id,
            "src_version": src_version,
        },
    )


def realm_maintenance(
    name: str, organization_id: str, author: str, realm_id: UUID, encryption_revision: int
) -> BackendEvent:
    """`realm.maintenance_started` or `realm.maintenance_finished`."""
    assert name in (REALM_MAINTENANCE_STARTED, REALM_MAINTENANCE_FINISHED)
    return BackendEvent(
        name,
        organization_id,
        {"author": author, "realm_id": realm_id, "encryption_revision": encryption_revision},
    )


def pki_enrollment_updated(organization_id: str) -> BackendEvent:
    return BackendEvent(PKI_ENROLLMENT_UPDATED, organization_id, {})


def user_created(organization_id: str, user_id: str) -> BackendEvent:
    return BackendEvent(USER_CREATED, organization_id, {"user_id": user_id})


def device_created(organization_id: str, device_id: str) -> BackendEvent:
    return BackendEvent(DEVICE_CREATED, organization_id, {"device_id": device_id})


def user_revoked(organization_id: str, user_id: str, revoked_on: datetime) -> BackendEvent:
    """`revoked_on`: when the revocation takes effect (connections close then)."""
    return BackendEvent(USER_REVOKED, organization_id, {"user_id": user_id, "revoked_on": revoked_on})


def organization_expired(organization_id: str) -> BackendEvent:
    return BackendEvent(ORGANIZATION_EXPIRED, organization_id, {})


class EventBus(Protocol):
    def publish(self, event: BackendEvent) -> None:
        """Send an event to every listener of every instance (fire and forget)."""

    def connect(self, listener: Listener) -> None: ...

    def disconnect(self, listener: Listener) -> None: ...


class ListenerSet:
    """Fan-out helper shared by every bus implementation."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def connect(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def disconnect(self, listener: Listener) -> None:
        try:
            self._listeners.remove(listener)
        except ValueError:
            pass

    def dispatch(self, event: BackendEvent) -> None:
        # Copy: a listener may disconnect itself (e.g. a closing connection).
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                _log.failure("Event listener failed on {name}", name=event.name)


class MemoryEventBus(ListenerSet):
    """In-process bus, used with `--db MOCKED`."""

    def publish(self, event: BackendEvent) -> None:
        self.dispatch(event)
