"""`events_subscribe` / `events_listen` (docs/protocol/events.md).

One bus listener for the whole process routes each backend event to the
subscribed connections of its organization, converting it to the API event
the client sees. Each subscription has a FIFO queue bounded in count and in bytes
(`event_queue_events`, `event_queue_bytes`: a client that does not listen cannot make the
server hold more; beyond, new events are dropped, with one warning per overflow) and at most
one pending `events_listen(wait=true)`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any
from uuid import UUID

from twisted.internet import defer
from twisted.logger import Logger

from parsec import limits as limits_module
from parsec.backend.bus import BackendEvent
from parsec.backend.command import Answer, AuthenticatedContext, Reply, SharedReply, api, ok, status

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

_log = Logger()


def _size(reply: Reply) -> int:
    """What a queued event costs, roughly its encoded size (its texts and bytes dominate)."""
    size = 32
    for key, value in reply.items():
        size += len(key) + (len(value) if isinstance(value, (str, bytes)) else 16)
    return size


def _not_counted(event: str) -> None:
    pass


_NO_REALMS: frozenset[UUID] = frozenset()


class Subscription:
    """One connection's subscription. Slotted, its queue and realm set created on first use:
    most subscriptions sit idle with a waiting `events_listen` and no realm event queued, and
    an empty deque costs 624 bytes, an empty set 216 (benchmarks/server_bench.py, idle)."""

    __slots__ = (
        "changes_while_loading",
        "ctx",
        "delivered",
        "dropped",
        "max_bytes",
        "max_events",
        "queue",
        "queued_bytes",
        "realms",
        "waiter",
    )

    def __init__(
        self,
        ctx: AuthenticatedContext,
        max_events: int,
        max_bytes: int,
        delivered: Callable[[str], None] = _not_counted,
    ) -> None:
        self.ctx = ctx
        self.delivered = delivered  # counts each event handed to this connection (metrics)
        self.queue: deque[tuple[Reply, int]] | None = None  # (event, its size); None: empty
        self.queued_bytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.dropped = 0  # events dropped since the queue was last emptied
        self.realms: set[UUID] | frozenset[UUID] = _NO_REALMS
        # The pending `events_listen(wait=true)`, if any; a cancelled one (the client sent
        # another request, or left) is already called and is skipped.
        self.waiter: defer.Deferred[Reply] | None = None
        # While the user's realms load: the role changes heard meanwhile (realm -> role, None
        # when removed), applied over the loaded set, which may predate them.
        self.changes_while_loading: dict[UUID, str | None] | None = None

    def _realm_set(self) -> set[UUID]:
        if not isinstance(self.realms, set):
            self.realms = set()
        return self.realms

    def role_changed(self, realm_id: UUID, role: str | None) -> None:
        if self.changes_while_loading is not None:
            self.changes_while_loading[realm_id] = role
        if role is None:
            if realm_id in self.realms:
                self._realm_set().discard(realm_id)
        else:
            self._realm_set().add(realm_id)

    def loaded(self, realms: Iterable[UUID]) -> None:
        changes, self.changes_while_loading = self.changes_while_loading or {}, None
        realms = list(realms)
        if realms:
            self._realm_set().update(realms)
        for realm_id, role in changes.items():
            self.role_changed(realm_id, role)

    def push(self, reply: Reply) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.called:
                self.delivered(reply["event"])
                waiter.callback(reply)
                return
        queue = self.queue
        if queue is None:
            queue = self.queue = deque()
        size = _size(reply)
        if len(queue) >= self.max_events or self.queued_bytes + size > self.max_bytes:
            limits_module.hit("event_queue_events" if len(queue) >= self.max_events else "event_queue_bytes")
            if self.dropped == 0:
                _log.warn(
                    "Event queue full for {device_id} ({count} events, {size} bytes): events dropped",
                    device_id=self.ctx.device_id,
                    count=len(queue),
                    size=self.queued_bytes,
                )
            self.dropped += 1
            return
        self.delivered(reply["event"])
        queue.append((reply, size))
        self.queued_bytes += size

    def pop(self) -> Reply:
        queue = self.queue
        assert queue is not None
        reply, size = queue.popleft()
        self.queued_bytes -= size
        if not queue:
            self.queue = None
            if self.dropped:
                _log.info(
                    "Event queue of {device_id} emptied; {count} event(s) had been dropped",
                    device_id=self.ctx.device_id,
                    count=self.dropped,
                )
                self.dropped = 0
        return reply


class EventsComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app
        self._by_org: dict[str, dict[int, Subscription]] = {}
        app.bus.connect(self._on_event)

    def unsubscribe(self, ctx: AuthenticatedContext) -> None:
        subs = self._by_org.get(ctx.organization_id)
        if subs is None:
            return
        sub = subs.pop(ctx.conn_id, None)
        if not subs:
            del self._by_org[ctx.organization_id]
        if sub is not None and sub.waiter is not None:
            waiter, sub.waiter = sub.waiter, None
            waiter.cancel()  # nothing if it was already cancelled

    @api("events_subscribe")
    async def api_events_subscribe(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        subs = self._by_org.setdefault(ctx.organization_id, {})
        if ctx.conn_id in subs:
            return ok()
        limits = self._app.config.limits
        sub = Subscription(
            ctx, limits.event_queue_events, limits.event_queue_bytes, self._app.metrics.event_delivered
        )
        subs[ctx.conn_id] = sub
        # Realm roles changing from now on are tracked by `realm.roles_updated`; load the
        # current ones. A change heard while they load may be newer than what the load saw
        # (on PostgreSQL the load is a round trip): it is applied again over the loaded set,
        # so a role removed meanwhile is not brought back.
        sub.changes_while_loading = {}
        realms = await self._app.storage.realm.get_realms_for_user(ctx.organization_id, ctx.user_id)
        sub.loaded(realms)
        return ok()

    @api("events_listen", cancellable=True)
    async def api_events_listen(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Answer:
        sub: Subscription | None = self._by_org.get(ctx.organization_id, {}).get(ctx.conn_id)
        if sub is not None and sub.queue:
            return sub.pop()
        if not req["wait"]:
            return status("no_events")
        # Returned, not awaited (parsec.backend.command.Answer): the transport cancels it when
        # the client sends another request; `push` then skips it.
        waiter: defer.Deferred[Reply] = defer.Deferred()
        if sub is not None:
            sub.waiter = waiter
        return waiter

    # ---- routing -------------------------------------------------------------------------

    def _on_event(self, event: BackendEvent) -> None:
        self._app.metrics.event_received(event.name)
        subs = self._by_org.get(event.organization_id)
        if not subs:
            return
        name = event.name
        data = event.data
        # The reply of the events every subscriber sees alike, built (and framed) once.
        shared: SharedReply | None = None
        for sub in list(subs.values()):
            ctx = sub.ctx
            if name == "pinged":
                if data["author"] != ctx.device_id:
                    if shared is None:
                        shared = SharedReply(event="pinged", ping=data["ping"])
                    sub.push(shared)
            elif name == "message.received":
                if data["recipient"] == ctx.user_id:
                    sub.push(ok(event="message.received", index=data["index"]))
            elif name == "invite.status_changed":
                if data["greeter"] == ctx.user_id:
                    sub.push(
                        ok(
                            event="invite.status_changed",
                            token=data["token"],
                            invitation_status=data["status"],
                        )
                    )
            elif name == "realm.roles_updated":
                if data["user"] == ctx.user_id:
                    sub.role_changed(data["realm_id"], data["role"])
                    sub.push(ok(event="realm.roles_updated", realm_id=data["realm_id"], role=data["role"]))
            elif name == "realm.vlobs_updated":
                if data["author"] != ctx.device_id and data["realm_id"] in sub.realms:
                    if shared is None:
                        shared = SharedReply(
                            event="realm.vlobs_updated",
                            realm_id=data["realm_id"],
                            checkpoint=data["checkpoint"],
                            src_id=data["src_id"],
                            src_version=data["src_version"],
                        )
                    sub.push(shared)
            elif name in ("realm.maintenance_started", "realm.maintenance_finished"):
                if data["author"] != ctx.device_id and data["realm_id"] in sub.realms:
                    if shared is None:
                        shared = SharedReply(
                            event=name, realm_id=data["realm_id"], encryption_revision=data["encryption_revision"]
                        )
                    sub.push(shared)
            elif name == "pki_enrollment.updated":
                # docs/protocol/DECISIONS.md: only the ADMINs of the same organization.
                if ctx.profile == "ADMIN":
                    sub.push(ok(event="pki_enrollment.updated"))
