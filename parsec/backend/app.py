"""The backend application: components wired to storage, bus and blockstore, and the dispatcher.

Transport code (websocket, HTTP) only talks to `BackendApp`: it performs the
handshake lookups, dispatches decoded requests and registers connections so
that server-side events (revocation, expiration, invitation deletion) can close
them.

Revocation is final (docs/protocol/DECISIONS.md):
* a handshake is refused for any recorded revocation, whatever its date;
* a connection of a user whose revocation is recorded (`user.revoked`) is closed at the
  revocation's instant: at once when it is past, by a timer when it lies ahead (a
  certificate may be dated up to the ballpark ahead), the timer being cancelled when the
  connection goes away;
* a revocation recorded while a handshake runs is not missed: the handshake watches its
  organization's `user.revoked` events from before its identity lookup until its end, and
  refuses the user if one is heard (it was recorded before the handshake ended). The lookup
  sees a revocation committed before it; the event of one committed after it reaches this
  server after the watch began (on PostgreSQL through the LISTEN session, once committed; on
  memory at once), so either the watch hears it or, once the handshake is over, the
  registered connection does. Hence no second lookup once registered (it was a second
  database round trip per connection). While the event feed is down, every websocket is
  closed and none is accepted (parsec.service).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from uuid import UUID

import attrs
from twisted.logger import Logger

from parsec.api import protocol
from parsec.api import schema as s
from parsec.api.handshake import (
    HELP_INVITATION_DELETED,
    HELP_INVITATION_NOT_FOUND,
    HELP_ORGANIZATION_EXPIRED,
    HELP_REVOKED_DEVICE,
    HELP_RVK_MISMATCH,
    AnonymousV1Answer,
    AuthenticatedAnswer,
    HandshakeFailed,
    InvitedAnswer,
    ServerHandshake,
    bad_identity,
)
from parsec.backend import bus as events
from parsec.backend.block import BlockComponent
from parsec.backend.bus import BackendEvent, EventBus
from parsec.backend.command import (
    ANONYMOUS,
    APIV1_ANONYMOUS,
    AUTHENTICATED,
    INVITED,
    AnonymousContext,
    Answer,
    ApiMeta,
    AuthenticatedContext,
    ClientContext,
    Handler,
    InvitedContext,
    collect_handlers,
    not_admin,
    status,
)
from parsec.backend.events import EventsComponent
from parsec.backend.invite import InviteComponent
from parsec.backend.message import MessageComponent
from parsec.backend.organization import OrganizationComponent
from parsec.backend.ping import PingComponent
from parsec.backend.pki import PkiComponent
from parsec.backend.realm import RealmComponent
from parsec.backend.storage import NotFoundError, Storage, UnstorableValueError
from parsec.backend.user import UserComponent
from parsec.backend.vlob import VlobComponent
from parsec.blockstore.base import BlockStore
from parsec.config import BackendAddr, BackendConfig, EmailConfig
from parsec.metrics import NO_METRICS, NoMetrics

_log = Logger()

COMMAND_SPECS: dict[str, dict[str, protocol.CommandSpec]] = {
    AUTHENTICATED: protocol.AUTHENTICATED_COMMANDS,
    INVITED: protocol.INVITED_COMMANDS,
    APIV1_ANONYMOUS: protocol.APIV1_ANONYMOUS_COMMANDS,
    ANONYMOUS: protocol.ANONYMOUS_COMMANDS,
}


class InvitationMailer(Protocol):
    """Sends an invitation e-mail (parsec.mail.delivery.send_invitation_email); returns the
    `email_sent` status. Never raises but for a cancellation."""

    async def __call__(
        self,
        *,
        config: EmailConfig,
        backend_addr: BackendAddr,
        to_addr: str,
        greeter_name: str,
        reply_to: str | None,
        organization_id: str,
        token: UUID,
        invitation_type: str,
    ) -> str: ...


# POSTs the organization bootstrap webhook (parsec.webhooks); never raises.
Webhook = Callable[[dict[str, Any]], Awaitable[object]]

_Component = TypeVar("_Component")


@attrs.frozen
class Route:
    meta: ApiMeta
    handler: Handler
    spec: protocol.CommandSpec


def utcnow() -> datetime:
    return datetime.now(tz=UTC)


@attrs.define
class _HandshakeWatch:
    running: int = 0  # authenticated handshakes of the organization waiting for their lookup
    revoked: set[str] = attrs.Factory(set)  # users whose revocation was heard meanwhile


class BackendApp:
    def __init__(
        self,
        config: BackendConfig,
        storage: Storage,
        bus: EventBus,
        blockstore: BlockStore,
        *,
        now: Callable[[], datetime] = utcnow,
        send_email: InvitationMailer | None = None,
        webhook: Webhook | None = None,
        reactor: Any = None,
        metrics: NoMetrics = NO_METRICS,
    ) -> None:
        if reactor is None:
            # The global reactor only when none is given: importing it installs the default one.
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor  # IReactorTime of the server-side timers (revocations)
        self.config = config
        self.storage = storage
        self.bus = bus
        self.blockstore = blockstore
        self.now = now
        self.send_email = send_email
        self.webhook = webhook
        self.metrics = metrics  # parsec.metrics: counted by the transports and the events
        # Whether requests are served (the service clears it while starting and while the
        # event feed is down, with the reason given to refused requests).
        self.ready = True
        self.unavailable_reason: str | None = None
        self._conn_ids = itertools.count(1)
        # organization_id -> the authenticated handshakes running there, and the users whose
        # revocation they heard meanwhile (see the module doc).
        self._handshaking: dict[str, _HandshakeWatch] = {}
        # organization_id -> connection contexts, to close them on server-side events
        self._connections: dict[str, set[ClientContext]] = {}

        self.events = EventsComponent(self)
        self.components: list[object] = [
            PingComponent(self),
            self.events,
            OrganizationComponent(self),
            UserComponent(self),
            InviteComponent(self),
            MessageComponent(self),
            RealmComponent(self),
            VlobComponent(self),
            BlockComponent(self),
            PkiComponent(self),
        ]
        self.routes: dict[str, dict[str, Route]] = {kind: {} for kind in COMMAND_SPECS}
        for component in self.components:
            for meta, handler in collect_handlers(component):
                for kind in meta.kinds:
                    spec = COMMAND_SPECS[kind].get(meta.name)
                    if spec is None:
                        raise RuntimeError(f"No schema for {kind} command {meta.name}")
                    self.routes[kind][meta.name] = Route(meta, handler, spec)
        self.bus.connect(self._on_event)

    # ---- component lookup ----------------------------------------------------------------

    def component(self, cls: type[_Component]) -> _Component:
        for component in self.components:
            if isinstance(component, cls):
                return component
        raise LookupError(cls)

    # ---- dispatch ------------------------------------------------------------------------

    def route(self, kind: str, cmd: object) -> Route | None:
        if not isinstance(cmd, str):
            return None
        return self.routes[kind].get(cmd)

    async def dispatch(self, ctx: ClientContext, route: Route, msg: dict[str, Any]) -> Answer:
        meta = route.meta
        if isinstance(ctx, AuthenticatedContext):
            if meta.admin_only and ctx.profile != "ADMIN":
                return not_admin(ctx)
            if meta.outsider_reason is not None and ctx.profile == "OUTSIDER":
                return status("not_allowed", meta.outsider_reason)
        try:
            req = route.spec.req.load(msg)
        except s.ValidationError as exc:
            return {"status": "bad_message", "reason": "Invalid message.", "errors": exc.errors}
        try:
            return await route.handler(ctx, req)
        except UnstorableValueError as exc:
            return {
                "status": "bad_message",
                "reason": "Invalid message.",
                "errors": {exc.field: ["Cannot contain the NUL character."]},
            }

    # ---- connections ---------------------------------------------------------------------

    def register(self, ctx: ClientContext) -> None:
        ctx.conn_id = next(self._conn_ids)
        self._connections.setdefault(ctx.organization_id, set()).add(ctx)

    def close_at_revocation(self, ctx: AuthenticatedContext, revoked_on: datetime | None) -> None:
        """Close `ctx` when its user's revocation takes effect (None: at once)."""
        delay = 0.0 if revoked_on is None else (revoked_on - self.now()).total_seconds()
        if delay <= 0:
            self._cancel_revocation_timer(ctx)
            ctx.close()
            return
        timer = ctx.revocation_timer
        if timer is not None and timer.active():
            if timer.getTime() <= self.reactor.seconds() + delay:
                return  # an earlier closing is already planned
            timer.cancel()
        ctx.revocation_timer = self.reactor.callLater(delay, self._revocation_due, ctx)

    def _revocation_due(self, ctx: AuthenticatedContext) -> None:
        ctx.revocation_timer = None
        ctx.close()

    @staticmethod
    def _cancel_revocation_timer(ctx: AuthenticatedContext) -> None:
        timer, ctx.revocation_timer = ctx.revocation_timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def unregister(self, ctx: ClientContext) -> None:
        conns = self._connections.get(ctx.organization_id)
        if conns is not None:
            conns.discard(ctx)
            if not conns:
                del self._connections[ctx.organization_id]
        if isinstance(ctx, AuthenticatedContext):
            self._cancel_revocation_timer(ctx)
            self.events.unsubscribe(ctx)
        elif isinstance(ctx, InvitedContext):
            # The claimer left (tied to no write: published directly).
            self.bus.publish(
                events.invite_status_changed(ctx.organization_id, ctx.greeter_user_id, ctx.token, "IDLE")
            )

    def connections(self, organization_id: str) -> list[ClientContext]:
        return list(self._connections.get(organization_id, ()))

    def _on_event(self, event: BackendEvent) -> None:
        if event.name == events.ORGANIZATION_EXPIRED:
            for ctx in self.connections(event.organization_id):
                if isinstance(ctx, AuthenticatedContext):
                    ctx.close()
        elif event.name == events.USER_REVOKED:
            watch = self._handshaking.get(event.organization_id)
            if watch is not None:
                watch.revoked.add(event["user_id"])
            revoked_on = event.data.get("revoked_on")
            for ctx in self.connections(event.organization_id):
                if isinstance(ctx, AuthenticatedContext) and ctx.user_id == event["user_id"]:
                    self.close_at_revocation(ctx, revoked_on if isinstance(revoked_on, datetime) else None)
        elif event.name == events.INVITE_STATUS_CHANGED and event["status"] == "DELETED":
            for ctx in self.connections(event.organization_id):
                if isinstance(ctx, InvitedContext) and ctx.token == event["token"]:
                    ctx.close_when_idle()

    # ---- handshake -----------------------------------------------------------------------

    async def handshake(self, hs: ServerHandshake, raw: bytes | bytearray) -> ClientContext:
        """Process the client's answer; returns the context or raises HandshakeFailed."""
        answer = hs.process_answer(raw)
        assert hs.backend_api_version is not None
        if isinstance(answer, AuthenticatedAnswer):
            return await self._handshake_authenticated(hs, answer)
        if isinstance(answer, InvitedAnswer):
            return await self._handshake_invited(hs, answer)
        return await self._handshake_anonymous_v1(answer)

    def _expired(self, organization_id: str) -> HandshakeFailed:
        self.bus.publish(events.organization_expired(organization_id))
        return HandshakeFailed("organization_expired", HELP_ORGANIZATION_EXPIRED)

    async def _handshake_authenticated(
        self, hs: ServerHandshake, answer: AuthenticatedAnswer
    ) -> AuthenticatedContext:
        # Revocations heard from before the lookup on (module doc). The watch ends with this
        # call; the websocket registers the context as soon as it returns, with no reactor
        # turn in between, and from then on the connection hears revocations itself.
        watch = self._handshaking.get(answer.organization_id)
        if watch is None:
            watch = self._handshaking[answer.organization_id] = _HandshakeWatch()
        watch.running += 1
        try:
            identity = await self.storage.user.get_authenticated_identity(
                answer.organization_id, answer.device_id
            )
        except NotFoundError:
            raise bad_identity() from None
        finally:
            watch.running -= 1
            if not watch.running:
                del self._handshaking[answer.organization_id]
        org, user, device = identity.organization, identity.user, identity.device
        if org.root_verify_key != answer.rvk:
            raise HandshakeFailed("rvk_mismatch", HELP_RVK_MISMATCH)
        if org.is_expired:
            raise self._expired(org.organization_id)
        if user.revoked_on is not None or user.user_id in watch.revoked:
            # Whatever its date: a revocation dated ahead must not let its user in until then
            # (docs/protocol/DECISIONS.md).
            raise HandshakeFailed("revoked_device", HELP_REVOKED_DEVICE)
        hs.check_signature(answer, device.verify_key)
        assert hs.backend_api_version is not None
        # An idle connection keeps its context: the organization id and the profile are the
        # same strings for all connections (the database's rows give new ones each time).
        return AuthenticatedContext(
            organization_id=sys.intern(org.organization_id),
            device_id=device.device_id,
            user_id=user.user_id,
            profile=sys.intern(user.profile),
            human_handle=user.human_handle,
            verify_key=device.verify_key,
            api_version=hs.backend_api_version,
        )

    async def _handshake_invited(self, hs: ServerHandshake, answer: InvitedAnswer) -> InvitedContext:
        try:
            org = await self.storage.organization.get(answer.organization_id)
        except NotFoundError:
            raise bad_identity() from None
        if org.is_expired:
            raise self._expired(org.organization_id)
        try:
            invitation = await self.storage.invite.info(answer.organization_id, answer.token)
        except NotFoundError:
            raise bad_identity(HELP_INVITATION_NOT_FOUND) from None
        if invitation.is_deleted:
            raise bad_identity(HELP_INVITATION_DELETED)
        if invitation.type != answer.invitation_type:
            raise bad_identity()
        assert hs.backend_api_version is not None
        return InvitedContext(
            organization_id=org.organization_id,
            token=invitation.token,
            invitation_type=invitation.type,
            greeter_user_id=invitation.greeter_user_id,
            greeter_human_handle=invitation.greeter_human_handle,
            claimer_email=invitation.claimer_email,
            api_version=hs.backend_api_version,
        )

    async def _handshake_anonymous_v1(self, answer: AnonymousV1Answer) -> AnonymousContext:
        try:
            org = await self.storage.organization.get(answer.organization_id)
        except NotFoundError:
            if not self.config.spontaneous_organization_bootstrap:
                raise bad_identity() from None
            org = await self.component(OrganizationComponent).spontaneous_create(answer.organization_id)
        if org.is_expired:
            raise self._expired(org.organization_id)
        if answer.rvk is not None and answer.rvk != org.root_verify_key:
            raise HandshakeFailed("rvk_mismatch", HELP_RVK_MISMATCH)
        return AnonymousContext(organization_id=org.organization_id)

    def on_handshake_done(self, ctx: ClientContext) -> None:
        """Called once the `ok` result is sent and the context registered."""
        if isinstance(ctx, InvitedContext):
            # The claimer joined (tied to no write: published directly).
            self.bus.publish(
                events.invite_status_changed(ctx.organization_id, ctx.greeter_user_id, ctx.token, "READY")
            )

