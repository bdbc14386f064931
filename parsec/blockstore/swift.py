"""OpenStack Swift blockstore over treq, with Swift v1 authentication.

Auth: `GET <auth_url>` with `X-Auth-User: <user>:<tenant>` and `X-Auth-Key: <password>`; the reply
gives `X-Storage-Url` and `X-Auth-Token`. The token is cached, shared by concurrent requests,
and renewed once when a request gets 401. Object `<storage_url>/<container>/<org>/<block uuid>`.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

import attrs
from twisted.internet.defer import DeferredLock

from parsec.blockstore._http import HTTPBlockStore, HTTPReply, HTTPStoreFailure, RequestHeaders, error_reason
from parsec.blockstore.base import object_key
from parsec.blockstore.config import SwiftBlockStoreConfig


@attrs.frozen
class _Session:
    storage_url: str
    token: str = attrs.field(repr=False)


class SwiftBlockStore(HTTPBlockStore):
    def __init__(self, config: SwiftBlockStoreConfig, *, reactor: Any = None, timeout: float = 30.0) -> None:
        super().__init__(
            f"Swift container `{config.container}` at {config.auth_url}", reactor=reactor, timeout=timeout
        )
        self._auth_url = config.auth_url
        self._auth_headers: RequestHeaders = {
            "X-Auth-User": f"{config.user}:{config.tenant}",
            "X-Auth-Key": config.password,
        }
        self._container_path = quote(config.container, safe="")
        self._session: _Session | None = None
        self._auth_lock = DeferredLock()

    async def _authenticated(self, rejected: _Session | None = None) -> _Session:
        """The cached session, or a new one if there is none or if it is the `rejected` one.

        Concurrent callers wait for a single authentication request.
        """
        async with self._auth_lock:
            if self._session is not None and self._session is not rejected:
                return self._session
            self._session = None
            reply = await self._send("GET", self._auth_url, self._auth_headers)
            if reply.code in (401, 403):
                raise HTTPStoreFailure(
                    f"authentication refused ({error_reason(reply)}: check user, tenant and password)"
                )
            if not reply.ok:
                raise HTTPStoreFailure(f"authentication failed ({error_reason(reply)})")
            storage_url = reply.header("X-Storage-Url")
            token = reply.header("X-Auth-Token")
            if not storage_url or not token:
                raise HTTPStoreFailure("authentication reply lacks X-Storage-Url or X-Auth-Token")
            self._session = _Session(storage_url=storage_url.rstrip("/"), token=token)
            return self._session

    async def _call(self, method: str, path: str, body: bytes | None = None) -> HTTPReply:
        """Authenticated request on `<storage_url>/<path>`; one re-authentication on 401."""
        session = await self._authenticated()
        reply = await self._send(
            method, f"{session.storage_url}/{path}", {"X-Auth-Token": session.token}, body
        )
        if reply.code == 401:
            session = await self._authenticated(rejected=session)
            reply = await self._send(
                method, f"{session.storage_url}/{path}", {"X-Auth-Token": session.token}, body
            )
        return reply

    def _object_path(self, organization_id: str, block_id: uuid.UUID) -> str:
        return f"{self._container_path}/{quote(object_key(organization_id, block_id), safe='/')}"

    async def _head_container(self) -> None:
        reply = await self._call("HEAD", self._container_path)
        if reply.code == 404:
            raise HTTPStoreFailure("container does not exist (HTTP 404)")
        if not reply.ok:
            raise HTTPStoreFailure(error_reason(reply))

    async def start(self) -> None:
        await self._start_checked(self._head_container, "start-up check (HEAD container)")

    async def check(self) -> None:
        await self._bounded(self._head_container, "HEAD container")

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        path = self._object_path(organization_id, block_id)

        async def get_object() -> bytes:
            reply = await self._call("GET", path)
            if not reply.ok:
                raise HTTPStoreFailure(f"GET object: {error_reason(reply)}")
            return reply.body

        return await self._block_operation("read", organization_id, block_id, get_object)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        path = self._object_path(organization_id, block_id)

        async def put_object() -> None:
            reply = await self._call("PUT", path, bytes(block))
            if not reply.ok:
                raise HTTPStoreFailure(f"PUT object: {error_reason(reply)}")

        await self._block_operation("create", organization_id, block_id, put_object)
