"""Administration REST API (docs/protocol/admin-api.md): JSON, bearer token, one error funnel."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from parsec.api import ids
from parsec.backend.organization import OrganizationComponent
from parsec.backend.storage import UNSET, AlreadyExistsError, NotFoundError, Unset
from parsec.confidential import same_secret
from parsec.web.site import ParsecRequest, finish

if TYPE_CHECKING:
    from parsec.backend.app import BackendApp

JSON = b"application/json;charset=utf-8"


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


def _bool_field(data: dict[str, Any], name: str, errors: dict[str, list[str]]) -> bool | Unset:
    """The field's value; UNSET when absent or invalid (the error is then in `errors`)."""
    if name not in data:
        return UNSET
    value = data[name]
    if value is None:
        errors[name] = ["Field may not be null."]
    elif not isinstance(value, bool):
        errors[name] = ["Not a valid boolean."]
    else:
        return value
    return UNSET


def _limit_field(data: dict[str, Any], errors: dict[str, list[str]]) -> int | None | Unset:
    """`active_users_limit`; UNSET when absent or invalid (the error is then in `errors`)."""
    if "active_users_limit" not in data:
        return UNSET
    value = data["active_users_limit"]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        errors["active_users_limit"] = ["Not a valid integer."]
    elif value < 0:
        errors["active_users_limit"] = ["Must be greater than or equal to 0."]
    else:
        return value
    return UNSET


def _organization_id(raw: str) -> str | None:
    try:
        return ids.organization_id(raw)
    except ids.InvalidId:
        return None


class AdminResource:
    """Every operation goes through the organization component (never the storage)."""

    def __init__(self, app: BackendApp) -> None:
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
    def _org(self) -> OrganizationComponent:
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
                active_users_limit=None if limit is UNSET else limit,
                use_default_limit=limit is UNSET,
                user_profile_outsider_allowed=None if outsider is UNSET else outsider,
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
            try:
                await self._org.update(
                    organization_id,
                    is_expired=expired,
                    user_profile_outsider_allowed=outsider,
                    active_users_limit=limit,
                )
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
            org = await self._org.get(organization_id)
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
            stats = await self._org.stats(organization_id)
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
