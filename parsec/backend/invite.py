"""Invitations: management commands, the claimer/greeter conduit, invitation e-mails.

Waiting peers are woken by bus events (`invite.conduit_updated`,
`invite.status_changed`), so the exchange works across server instances. The storage publishes
them with the writes (invitation created/reused or deleted, conduit written).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID

from twisted.internet import defer
from twisted.logger import Logger

from parsec.backend import bus as events
from parsec.backend.bus import BackendEvent
from parsec.backend.command import (
    INVITED,
    AuthenticatedContext,
    InvitedContext,
    Reply,
    api,
    ok,
    status,
)
from parsec.backend.conduit import FIRST_STEP, STEPS, InvalidStateError
from parsec.backend.models import Invitation
from parsec.backend.storage import AlreadyDeletedError, AlreadyMemberError, InviteStorage, NotFoundError
from parsec.mail.render import format_reply_to

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

_log = Logger()

(
    STEP_1,
    STEP_2_1,
    STEP_2_2,
    STEP_2_3,
    STEP_3_1,
    STEP_3_2,
    STEP_4,
) = STEPS


class _ClaimerGone(Exception):
    """The invitation was deleted: the claimer's connection is closed without a reply."""


class _Watch:
    """Wake-ups for one invitation token: a counter so no notification is ever lost."""

    def __init__(self) -> None:
        self.version = 0
        self.waiters: list[defer.Deferred[None]] = []
        self.users = 0

    def notify(self) -> None:
        self.version += 1
        waiters, self.waiters = self.waiters, []
        for waiter in waiters:
            waiter.callback(None)


class InviteComponent:
    def __init__(self, app: BackendApp) -> None:
        self._app = app
        self._watches: dict[tuple[str, UUID], _Watch] = {}
        # Tokens with a claimer connected, as far as this instance knows (docs/protocol/invitations.md §4).
        self._online: set[tuple[str, UUID]] = set()
        app.bus.connect(self._on_event)

    @property
    def _storage(self) -> InviteStorage:
        return self._app.storage.invite

    def _on_event(self, event: BackendEvent) -> None:
        if event.name == events.INVITE_STATUS_CHANGED:
            key = (event.organization_id, event["token"])
            if event["status"] == "READY":
                self._online.add(key)
            else:
                self._online.discard(key)
        elif event.name != events.INVITE_CONDUIT_UPDATED:
            return
        watch = self._watches.get((event.organization_id, event["token"]))
        if watch is not None:
            watch.notify()

    # ---- management ----------------------------------------------------------------------

    @api("invite_new")
    async def api_invite_new(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        send_email = req["send_email"]
        if req["type"] == "USER":
            if ctx.profile != "ADMIN":
                return status("not_allowed")
            claimer_email = req["claimer_email"]
            to_addr = claimer_email
        else:
            claimer_email = None
            if send_email and ctx.human_handle is None:
                return status("not_available")
            to_addr = ctx.human_handle[0] if ctx.human_handle else None
        try:
            invitation = await self._storage.new(
                ctx.organization_id,
                ctx.user_id,
                ctx.human_handle,
                req["type"],
                claimer_email,
                self._app.now(),
            )
        except AlreadyMemberError:
            return status("already_member")
        reply = ok(token=invitation.token)
        if send_email:
            assert to_addr is not None
            reply["email_sent"] = await self._send_email(ctx, invitation, to_addr)
        return reply

    async def _send_email(self, ctx: AuthenticatedContext, invitation: Invitation, to_addr: str) -> str:
        config = self._app.config
        if self._app.send_email is None or config.backend_addr is None:
            return "NOT_AVAILABLE"
        if invitation.type == "USER":
            greeter_name = ctx.human_handle[1] if ctx.human_handle else ctx.user_id
            reply_to = None
            if ctx.human_handle is not None:
                reply_to = format_reply_to(ctx.human_handle[1], ctx.human_handle[0])
        else:
            greeter_name = ctx.human_handle[1] if ctx.human_handle else ctx.user_id
            reply_to = None
        try:
            return await self._app.send_email(
                config=config.email,
                backend_addr=config.backend_addr,
                to_addr=to_addr,
                greeter_name=greeter_name,
                reply_to=reply_to,
                organization_id=ctx.organization_id,
                token=invitation.token,
                invitation_type=invitation.type,
            )
        except defer.CancelledError:
            raise  # the connection is gone: nobody to report to
        except Exception:
            _log.failure("Invitation e-mail could not be sent")
            return "NOT_AVAILABLE"

    @api("invite_delete")
    async def api_invite_delete(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        try:
            await self._storage.delete(
                ctx.organization_id, ctx.user_id, req["token"], self._app.now(), req["reason"]
            )
        except NotFoundError:
            return status("not_found")
        except AlreadyDeletedError:
            return status("already_deleted")
        return ok()

    @api("invite_list")
    async def api_invite_list(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        invitations = await self._storage.list(ctx.organization_id, ctx.user_id)
        items = []
        for inv in invitations:
            item: dict[str, Any] = {
                "type": inv.type,
                "token": inv.token,
                "created_on": inv.created_on,
                "status": "READY" if (ctx.organization_id, inv.token) in self._online else "IDLE",
            }
            if inv.type == "USER":
                item["claimer_email"] = inv.claimer_email
            items.append(item)
        return ok(invitations=items)

    @api("invite_info", kinds=(INVITED,))
    async def api_invite_info(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        reply = ok(
            type=ctx.invitation_type,
            greeter_user_id=ctx.greeter_user_id,
            greeter_human_handle=list(ctx.greeter_human_handle) if ctx.greeter_human_handle else None,
        )
        if ctx.invitation_type == "USER":
            reply["claimer_email"] = ctx.claimer_email
        return reply

    # ---- conduit -------------------------------------------------------------------------

    async def _exchange(self, organization_id: str, token: UUID, greeter: str | None, step: str, payload: bytes) -> bytes:
        """One talk-then-listen exchange. Raises NotFoundError, AlreadyDeletedError, InvalidStateError."""
        key = (organization_id, token)
        watch = self._watches.get(key)
        if watch is None:
            watch = self._watches[key] = _Watch()
        watch.users += 1
        try:
            # Both publish `invite.conduit_updated` when they write the conduit.
            listen_ctx = await self._storage.conduit_talk(organization_id, token, greeter, step, payload)
            while True:
                seen = watch.version
                peer_payload, _ = await self._storage.conduit_listen(organization_id, token, greeter, listen_ctx)
                if peer_payload is not None:
                    return peer_payload
                if watch.version == seen:
                    waiter: defer.Deferred[None] = defer.Deferred()
                    watch.waiters.append(waiter)
                    try:
                        await waiter
                    finally:
                        if waiter in watch.waiters:
                            watch.waiters.remove(waiter)
        finally:
            watch.users -= 1
            if watch.users == 0:
                self._watches.pop(key, None)

    async def _greeter(self, ctx: AuthenticatedContext, token: UUID, steps: list[tuple[str, bytes]]) -> Reply | bytes:
        try:
            result = b""
            for step, payload in steps:
                result = await self._exchange(ctx.organization_id, token, ctx.user_id, step, payload)
            return result
        except NotFoundError:
            return status("not_found")
        except AlreadyDeletedError:
            return status("already_deleted")
        except InvalidStateError:
            return status("invalid_state")

    async def _claimer(self, ctx: InvitedContext, steps: list[tuple[str, bytes]]) -> Reply | bytes:
        try:
            result = b""
            for step, payload in steps:
                result = await self._exchange(ctx.organization_id, ctx.token, None, step, payload)
            return result
        except AlreadyDeletedError:
            # The invitation was deleted: close the claimer's connection, no reply (the
            # returned value is never sent).
            ctx.close()
            return status("invalid_state")
        except NotFoundError:
            # Only reachable if the invitation vanished from storage (docs/protocol/commands.md §8.5).
            return status("not_found")
        except InvalidStateError:
            return status("invalid_state")

    @api("invite_1_greeter_wait_peer", long_poll=True)
    async def api_invite_1_greeter_wait_peer(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        result = await self._greeter(ctx, req["token"], [(STEP_1, req["greeter_public_key"])])
        return result if isinstance(result, dict) else ok(claimer_public_key=result)

    @api("invite_1_claimer_wait_peer", kinds=(INVITED,), cancellable=True)
    async def api_invite_1_claimer_wait_peer(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        result = await self._claimer(ctx, [(FIRST_STEP, req["claimer_public_key"])])
        return result if isinstance(result, dict) else ok(greeter_public_key=result)

    @api("invite_2a_greeter_get_hashed_nonce", long_poll=True)
    async def api_invite_2a_greeter_get_hashed_nonce(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        result = await self._greeter(ctx, req["token"], [(STEP_2_1, b"")])
        return result if isinstance(result, dict) else ok(claimer_hashed_nonce=result)

    @api("invite_2a_claimer_send_hashed_nonce", kinds=(INVITED,), long_poll=True)
    async def api_invite_2a_claimer_send_hashed_nonce(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        result = await self._claimer(ctx, [(STEP_2_1, req["claimer_hashed_nonce"]), (STEP_2_2, b"")])
        return result if isinstance(result, dict) else ok(greeter_nonce=result)

    @api("invite_2b_greeter_send_nonce", long_poll=True)
    async def api_invite_2b_greeter_send_nonce(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        result = await self._greeter(ctx, req["token"], [(STEP_2_2, req["greeter_nonce"]), (STEP_2_3, b"")])
        return result if isinstance(result, dict) else ok(claimer_nonce=result)

    @api("invite_2b_claimer_send_nonce", kinds=(INVITED,), long_poll=True)
    async def api_invite_2b_claimer_send_nonce(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        result = await self._claimer(ctx, [(STEP_2_3, req["claimer_nonce"])])
        return result if isinstance(result, dict) else ok()

    @api("invite_3a_greeter_wait_peer_trust", long_poll=True)
    async def api_invite_3a_greeter_wait_peer_trust(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        result = await self._greeter(ctx, req["token"], [(STEP_3_1, b"")])
        return result if isinstance(result, dict) else ok()

    @api("invite_3a_claimer_signify_trust", kinds=(INVITED,), long_poll=True)
    async def api_invite_3a_claimer_signify_trust(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        result = await self._claimer(ctx, [(STEP_3_1, b"")])
        return result if isinstance(result, dict) else ok()

    @api("invite_3b_greeter_signify_trust", long_poll=True)
    async def api_invite_3b_greeter_signify_trust(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        result = await self._greeter(ctx, req["token"], [(STEP_3_2, b"")])
        return result if isinstance(result, dict) else ok()

    @api("invite_3b_claimer_wait_peer_trust", kinds=(INVITED,), long_poll=True)
    async def api_invite_3b_claimer_wait_peer_trust(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        result = await self._claimer(ctx, [(STEP_3_2, b"")])
        return result if isinstance(result, dict) else ok()

    @api("invite_4_greeter_communicate", long_poll=True)
    async def api_invite_4_greeter_communicate(self, ctx: AuthenticatedContext, req: dict[str, Any]) -> Reply:
        result = await self._greeter(ctx, req["token"], [(STEP_4, req["payload"])])
        return result if isinstance(result, dict) else ok(payload=result)

    @api("invite_4_claimer_communicate", kinds=(INVITED,), long_poll=True)
    async def api_invite_4_claimer_communicate(self, ctx: InvitedContext, req: dict[str, Any]) -> Reply:
        result = await self._claimer(ctx, [(STEP_4, req["payload"])])
        return result if isinstance(result, dict) else ok(payload=result)
