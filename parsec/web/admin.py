"""Administration REST API (docs/protocol/admin-api.md): JSON, bearer token, one error funnel."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from parsec.api import ids
from parsec.backend.confidential import same_secret
from parsec.backend.organization import OrganizationComponent
from parsec.backend.storage import AlreadyExistsError, NotFoundError
from parsec.web.site import ParsecRequest, finish

JSON = b"application/json;charset=utf-8"
_UNSET = object()


class BadData(Exception):
    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def _reply(request: ParsecRequest, code: int, data: dict[str, Any]) -> None:
    finish(request, code, json.dumps(data).encode("utf8"), JSON)


def _load_json_object(request: ParsecRequest) -> dict[str, Any]:
    try:
        data = json.loads(request.body().decode("utf8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: nesting deeper than the interpreter's limit (`[[[[...`), a JSON
        # document no client sends; refused like any other bad JSON.
        raise BadData("Invalid JSON") from None
    if not isinstance(data, dict):
        raise BadData({"_schema": ["Invalid input type."]})
    return data


def _bool_field(data: dict[str, Any], name: str, errors: dict[str, list[str]]) -> Any:
    if name not in data:
        return _UNSET
    value = data[name]
    if value is None:
        errors[name] = ["Field may not be null."]
    elif not isinstance(value, bool):
        errors[name] = ["Not a valid boolean."]
    return value


def _limit_field(data: dict[str, Any], errors: dict[str, list[str]]) -> Any:
    if "active_users_limit" not in data:
        return _UNSET
    value = data["active_users_limit"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors["active_users_limit"] = ["Not a valid integer."]
    elif value < 0:
        errors["active_users_limit"] = ["Must be greater than or equal to 0."]
    return value


def _organization_id(raw: str) -> str | None:
    try:
        return ids.organization_id(raw)
    except ids.InvalidId:
        return None


class AdminResource:
    def __init__(self, app: Any) -> None:
        self._app = app

    def match(
        self, segments: list[str]
    ) -> tuple[tuple[bytes, ...], Callable[[ParsecRequest], Awaitable[None]]] | None:
        if segments == ["organizations"]:
            return (b"POST",), self._guard(self._create)
        if len(segments) == 2 and segments[0] == "organizations":
            org = segments[1]
            return (b"GET", b"PATCH"), self._guard(lambda r: self._config(r, org))
        if len(segments) == 3 and segments[0] == "organizations" and segments[2] == "stats":
            org = segments[1]
            return (b"GET", b"PATCH"), self._guard(lambda r: self._stats(r, org))
        return None

    def _guard(
        self, handler: Callable[[ParsecRequest], Awaitable[None]]
    ) -> Callable[[ParsecRequest], Awaitable[None]]:
        async def guarded(request: ParsecRequest) -> None:
            expected = f"Bearer {self._app.config.administration_token}".encode()
            given = request.getHeader(b"authorization") or b""
            if not same_secret(expected, given):
                _reply(request, 403, {"error": "not_allowed"})
                return
            try:
                await handler(request)
            except BadData as exc:
                _reply(request, 400, {"error": "bad_data", "reason": exc.reason})

        return guarded

    @property
    def _org(self) -> Any:
        return self._app.component(OrganizationComponent)

    async def _create(self, request: ParsecRequest) -> None:
        data = _load_json_object(request)
        errors: dict[str, list[str]] = {}
        organization_id = None
        if "organization_id" not in data:
            errors["organization_id"] = ["Missing data for required field."]
        elif not isinstance(data["organization_id"], str):
            errors["organization_id"] = ["Not a valid string."]
        else:
            organization_id = _organization_id(data["organization_id"])
            if organization_id is None:
                errors["organization_id"] = ["Invalid organization ID."]
        outsider = _bool_field(data, "user_profile_outsider_allowed", errors)
        limit = _limit_field(data, errors)
        if errors:
            raise BadData(errors)
        assert organization_id is not None
        try:
            token = await self._org.create(
                organization_id,
                active_users_limit=None if limit is _UNSET else limit,
                use_default_limit=limit is _UNSET,
                user_profile_outsider_allowed=None if outsider is _UNSET else outsider,
            )
        except AlreadyExistsError:
            _reply(request, 400, {"error": "already_exists"})
            return
        _reply(request, 200, {"bootstrap_token": token})

    async def _config(self, request: ParsecRequest, raw_org: str) -> None:
        if request.method == b"PATCH":
            data = _load_json_object(request)
            errors: dict[str, list[str]] = {}
            expired = _bool_field(data, "is_expired", errors)
            outsider = _bool_field(data, "user_profile_outsider_allowed", errors)
            limit = _limit_field(data, errors)
            if errors:
                raise BadData(errors)
            organization_id = _organization_id(raw_org)
            if organization_id is None:
                _reply(request, 404, {"error": "not_found"})
                return
            changes = {
                key: value
                for key, value in (
                    ("is_expired", expired),
                    ("user_profile_outsider_allowed", outsider),
                    ("active_users_limit", limit),
                )
                if value is not _UNSET
            }
            try:
                await self._org.update(organization_id, **changes)
            except NotFoundError:
                _reply(request, 404, {"error": "not_found"})
                return
            _reply(request, 200, {})
            return
        organization_id = _organization_id(raw_org)
        if organization_id is None:
            _reply(request, 404, {"error": "not_found"})
            return
        try:
            org = await self._app.storage.organization.get(organization_id)
        except NotFoundError:
            _reply(request, 404, {"error": "not_found"})
            return
        _reply(
            request,
            200,
            {
                "is_bootstrapped": org.is_bootstrapped,
                "is_expired": org.is_expired,
                "user_profile_outsider_allowed": org.user_profile_outsider_allowed,
                "active_users_limit": org.active_users_limit,
            },
        )

    async def _stats(self, request: ParsecRequest, raw_org: str) -> None:
        if request.method == b"PATCH":
            _load_json_object(request)
        organization_id = _organization_id(raw_org)
        if organization_id is None:
            _reply(request, 404, {"error": "not_found"})
            return
        try:
            stats = await self._app.storage.organization.stats(organization_id, self._app.now())
        except NotFoundError:
            _reply(request, 404, {"error": "not_found"})
            return
        _reply(
            request,
            200,
            {
                "data_size": stats.data_size,
                "metadata_size": stats.metadata_size,
                "realms": stats.realms,
                "users": stats.users,
                "active_users": stats.active_users,
                "users_per_profile_detail": [
                    {"profile": profile, "active": active, "revoked": revoked}
                    for profile, active, revoked in stats.users_per_profile_detail
                ],
            },
        )
