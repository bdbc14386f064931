"""The backend event bus: every state change is published here.

Events are small: a name, the organization they belong to and a flat map of
values that the parsec msgpack codec can encode (str, int, bool, None, bytes,
UUID, datetime). The memory bus delivers them in-process, synchronously; the
PostgreSQL bus sends them through NOTIFY so that every server instance
(including the publishing one) hears them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

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
