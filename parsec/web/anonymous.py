"""Anonymous HTTP commands: `GET|POST /anonymous/<organization_id>` (docs/protocol/transport.md §5)."""

from __future__ import annotations

from time import perf_counter
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred

from parsec.api import ids
from parsec.api.codec import DecodeError, packb, unpackb
from parsec.backend.command import ANONYMOUS, AnonymousContext
from parsec.backend.organization import OrganizationComponent
from parsec.backend.storage import NotFoundError
from parsec.metrics import UNKNOWN_COMMAND as UNKNOWN_COMMAND_LABEL
from parsec.web.site import ParsecRequest, finish

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

MSGPACK = b"application/msgpack"
EMPTY = packb({})


def _reply(request: ParsecRequest, code: int, body: bytes) -> None:
    finish(request, code, body, MSGPACK)


class AnonymousResource:
    def __init__(self, app: BackendApp) -> None:
        self._app = app

    async def handle(self, request: ParsecRequest, raw_organization_id: str) -> None:
        app = self._app
        try:
            organization_id = ids.organization_id(raw_organization_id)
        except ids.InvalidId:
            _reply(request, 404, EMPTY)
            return
        organizations = app.component(OrganizationComponent)
        try:
            await organizations.get(organization_id)
            exists = True
        except NotFoundError:
            exists = False
        if request.method == b"GET":
            _reply(request, 200 if exists else 404, EMPTY)
            return
        if not exists and not app.config.spontaneous_organization_bootstrap:
            _reply(request, 404, EMPTY)
            return
        try:
            msg = unpackb(request.body())
        except DecodeError:
            _reply(request, 200, packb({"status": "invalid_msg_format"}))
            return
        cmd = msg.get("cmd")
        if not exists:
            if cmd != "organization_bootstrap":
                # Spontaneous bootstrap only creates organizations for a bootstrap.
                _reply(request, 404, EMPTY)
                return
            await organizations.spontaneous_create(organization_id)
        route = app.route(ANONYMOUS, cmd)
        if route is None:
            app.metrics.command(UNKNOWN_COMMAND_LABEL).done("unknown_command", 0.0)
            _reply(request, 200, packb({"status": "unknown_command"}))
            return
        ctx = AnonymousContext(organization_id=organization_id, kind=ANONYMOUS, api_version=(2, 7))
        metrics = app.metrics.command(route.meta.name, route.meta.long_poll)
        started = perf_counter()
        try:
            answer = await app.dispatch(ctx, route, msg)
            reply = await answer if isinstance(answer, Deferred) else answer
        except BaseException:
            metrics.done("crashed", perf_counter() - started)
            raise
        metrics.done(str(reply.get("status")), perf_counter() - started)
        _reply(request, 200, packb(reply))
