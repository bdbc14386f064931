"""S3 blockstore: path-style requests over treq, signed (SigV4) by botocore's signer.

Object `<endpoint>/<bucket>/<organization_id>/<block uuid>`. No redirect is followed and no
other endpoint or region is ever tried (botocore's own client would retry a wrong-region
request against AWS: traffic off the machine).
"""

from __future__ import annotations

import re
import uuid
from typing import Any
from urllib.parse import quote

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from parsec.blockstore._http import HTTPBlockStore, HTTPReply, HTTPStoreFailure, RequestHeaders, error_reason
from parsec.blockstore.base import object_key
from parsec.blockstore.config import S3BlockStoreConfig

_DEFAULT_REGION = "us-east-1"
_ERROR_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")


def _s3_error(reply: HTTPReply) -> str:
    match = _ERROR_CODE.search(reply.body)
    return error_reason(reply, match.group(1).decode("utf-8", "replace") if match else "")


class S3BlockStore(HTTPBlockStore):
    def __init__(self, config: S3BlockStoreConfig, *, reactor: Any = None, timeout: float = 30.0) -> None:
        region = config.region or _DEFAULT_REGION
        endpoint = (config.endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")
        super().__init__(f"S3 bucket `{config.bucket}` at {endpoint}", reactor=reactor, timeout=timeout)
        self._bucket_url = f"{endpoint}/{quote(config.bucket, safe='')}"
        # S3SigV4Auth is SigV4Auth with S3's rules: x-amz-content-sha256 header, path not re-encoded
        # (so the URL must already carry the exact encoding that is sent).
        self._signer = S3SigV4Auth(Credentials(config.key, config.secret), "s3", region)

    def _object_url(self, organization_id: str, block_id: uuid.UUID) -> str:
        # AWS URI encoding: everything but unreserved characters is %-encoded, `/` kept.
        return f"{self._bucket_url}/{quote(object_key(organization_id, block_id), safe='/')}"

    async def _signed(self, method: str, url: str, body: bytes | None = None) -> HTTPReply:
        request = AWSRequest(method=method, url=url, data=body or b"")
        self._signer.add_auth(request)
        headers: RequestHeaders = {name: value for name, value in request.headers.items()}
        return await self._send(method, url, headers, body)

    async def _head_bucket(self) -> None:
        reply = await self._signed("HEAD", self._bucket_url)
        if reply.code == 404:
            raise HTTPStoreFailure("bucket does not exist (HTTP 404)")
        if reply.code == 403:
            raise HTTPStoreFailure("access denied (HTTP 403: check the key, secret and region)")
        if not reply.ok:
            raise HTTPStoreFailure(error_reason(reply))

    async def start(self) -> None:
        await self._start_checked(self._head_bucket, "start-up check (HEAD bucket)")

    async def check(self) -> None:
        await self._bounded(self._head_bucket, "HEAD bucket")

    async def read(self, organization_id: str, block_id: uuid.UUID) -> bytes:
        url = self._object_url(organization_id, block_id)

        async def get_object() -> bytes:
            reply = await self._signed("GET", url)
            if not reply.ok:
                raise HTTPStoreFailure(f"GET object: {_s3_error(reply)}")
            return reply.body

        return await self._block_operation("read", organization_id, block_id, get_object)

    async def create(self, organization_id: str, block_id: uuid.UUID, block: bytes) -> None:
        url = self._object_url(organization_id, block_id)

        async def put_object() -> None:
            reply = await self._signed("PUT", url, bytes(block))
            if not reply.ok:
                raise HTTPStoreFailure(f"PUT object: {_s3_error(reply)}")

        await self._block_operation("create", organization_id, block_id, put_object)
