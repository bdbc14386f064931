"""In-memory organizations, users and devices (`--db MOCKED`).

All memory storages share one `MemoryDatastore`; every method runs without
yielding to the reactor between its checks and its writes, which makes it
atomic in a single-threaded process. A write publishes its events on the datastore's bus
once it is done (`MemoryDatastore.publish`), still without yielding.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar, cast

import attrs

from parsec.backend import bus as events
from parsec.backend.bus import BackendEvent, EventBus
from parsec.backend.models import (
    AuthenticatedIdentity,
    Device,
    HumanFindResult,
    Organization,
    OrganizationStats,
    User,
    UserWithTrustchain,
)
from parsec.backend.storage import (
    UNSET,
    ActiveUsersLimitReachedError,
    AlreadyBootstrappedError,
    AlreadyExistsError,
    AlreadyRevokedError,
    NotFoundError,
    Unset,
    human_handle_taken_reason,
)
from parsec.confidential import same_secret

# As the PostgreSQL storage's BIGINT column: the admin API (and the CLI default) accept any
# int >= 0, but `organization_config` must be able to send it back in msgpack. Any larger
# limit means "unlimited in practice", so clamping changes no decision.
MAX_ACTIVE_USERS_LIMIT = 2**63 - 1

_State = TypeVar("_State")


def _clamp_limit(limit: int | None) -> int | None:
    return None if limit is None else min(limit, MAX_ACTIVE_USERS_LIMIT)


@attrs.define
class OrgData:
    organization: Organization
    users: dict[str, User] = attrs.field(factory=dict)
    devices: dict[str, Device] = attrs.field(factory=dict)
    # user id -> its devices, in creation order (`add_device`): a user's devices without a
    # scan of the organization's (user_get reads them on every call).
    devices_of_user: dict[str, list[Device]] = attrs.field(factory=dict)
    # e-mail -> ids of the users whose human handle has it (`add_user`; revoked ones included:
    # revocation is a date): the e-mail checks of user creations and invitations without a
    # scan of the organization's users.
    users_by_email: dict[str, list[str]] = attrs.field(factory=dict)
    # Free-form per-domain state (realms, vlobs, invitations...), keyed by domain name.
    domains: dict[str, Any] = attrs.field(factory=dict)

    def add_user(self, user: User) -> None:
        self.users[user.user_id] = user
        if user.human_handle is not None:
            self.users_by_email.setdefault(user.human_handle[0], []).append(user.user_id)

    def add_device(self, device: Device) -> None:
        self.devices[device.device_id] = device
        self.devices_of_user.setdefault(device.user_id, []).append(device)

    def active_users_count(self) -> int:
        return sum(1 for u in self.users.values() if u.revoked_on is None)


def email_used_by_active_user(data: OrgData, email: str, now: datetime) -> bool:
    """Whether a user not revoked at `now` has a human handle with exactly this e-mail."""
    return any(not data.users[user_id].is_revoked(now) for user_id in data.users_by_email.get(email, ()))


def insert_new_user(data: OrgData, user: User, device: Device, now: datetime) -> None:
    """The checks and writes of a user creation (user_create, PKI accept), without yielding:
    ActiveUsersLimitReachedError, then AlreadyExistsError(reason) for the user id, the human
    handle (held by a user not revoked at `now`) and the device id."""
    limit = data.organization.active_users_limit
    if limit is not None and data.active_users_count() >= limit:
        raise ActiveUsersLimitReachedError()
    if user.user_id in data.users:
        raise AlreadyExistsError(f"User `{user.user_id}` already exists")
    if user.human_handle is not None and email_used_by_active_user(data, user.human_handle[0], now):
        raise AlreadyExistsError(human_handle_taken_reason(user.human_handle))
    if device.device_id in data.devices:
        raise AlreadyExistsError(f"Device `{device.device_id}` already exists")
    data.add_user(user)
    data.add_device(device)


class MemoryDatastore:
    def __init__(self, bus: EventBus) -> None:
        self.orgs: dict[str, OrgData] = {}
        self._bus = bus

    def publish(self, *published: BackendEvent) -> None:
        """The events of a write, once it is done."""
        for event in published:
            self._bus.publish(event)

    def get(self, organization_id: str) -> OrgData:
        try:
            return self.orgs[organization_id]
        except KeyError:
            raise NotFoundError() from None

    def domain(self, organization_id: str, name: str, factory: Callable[[], _State]) -> _State:
        """The organization's state of domain `name` (made by `factory` the first time; always
        the same `name` with the same `factory`)."""
        data = self.get(organization_id)
        state = data.domains.get(name)
        if state is None:
            state = data.domains[name] = factory()
        return cast(_State, state)


class MemoryOrganizationStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    async def create(
        self,
        organization_id: str,
        bootstrap_token: str,
        active_users_limit: int | None,
        user_profile_outsider_allowed: bool,
        created_on: datetime,
    ) -> None:
        existing = self._store.orgs.get(organization_id)
        if existing is not None and existing.organization.is_bootstrapped:
            raise AlreadyExistsError()
        self._store.orgs[organization_id] = OrgData(
            Organization(
                organization_id=organization_id,
                bootstrap_token=bootstrap_token,
                active_users_limit=_clamp_limit(active_users_limit),
                user_profile_outsider_allowed=user_profile_outsider_allowed,
                created_on=created_on,
            )
        )

    async def create_if_missing(
        self,
        organization_id: str,
        bootstrap_token: str,
        created_on: datetime,
        active_users_limit: int | None,
        user_profile_outsider_allowed: bool,
    ) -> Organization:
        existing = self._store.orgs.get(organization_id)
        if existing is None:
            await self.create(
                organization_id, bootstrap_token, active_users_limit, user_profile_outsider_allowed, created_on
            )
            existing = self._store.orgs[organization_id]
        return existing.organization

    async def get(self, organization_id: str) -> Organization:
        return self._store.get(organization_id).organization

    async def update(
        self,
        organization_id: str,
        *,
        is_expired: bool | Unset = UNSET,
        user_profile_outsider_allowed: bool | Unset = UNSET,
        active_users_limit: int | None | Unset = UNSET,
    ) -> None:
        data = self._store.get(organization_id)
        org = data.organization
        if is_expired is not UNSET:
            org = attrs.evolve(org, is_expired=is_expired)
        if user_profile_outsider_allowed is not UNSET:
            org = attrs.evolve(org, user_profile_outsider_allowed=user_profile_outsider_allowed)
        if active_users_limit is not UNSET:
            org = attrs.evolve(org, active_users_limit=_clamp_limit(active_users_limit))
        data.organization = org
        if is_expired is True:
            self._store.publish(events.organization_expired(organization_id))

    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        user: User,
        device: Device,
        bootstrapped_on: datetime,
    ) -> None:
        data = self._store.get(organization_id)
        org = data.organization
        if org.is_bootstrapped:
            raise AlreadyBootstrappedError()
        if not same_secret(org.bootstrap_token, bootstrap_token):
            raise NotFoundError()
        if org.active_users_limit is not None and data.active_users_count() >= org.active_users_limit:
            raise ActiveUsersLimitReachedError()
        data.add_user(user)
        data.add_device(device)
        data.organization = attrs.evolve(
            org, root_verify_key=root_verify_key, bootstrapped_on=bootstrapped_on
        )

    async def stats(self, organization_id: str, now: datetime) -> OrganizationStats:
        data = self._store.get(organization_id)
        per_profile = {p: [0, 0] for p in ("ADMIN", "STANDARD", "OUTSIDER")}
        for user in data.users.values():
            per_profile[user.profile][1 if user.revoked_on is not None else 0] += 1
        # The realm domain's state (if any realm exists) knows its sizes.
        realm_state = data.domains.get("realm")
        data_size, metadata_size, realms = realm_state.stats() if realm_state is not None else (0, 0, 0)
        return OrganizationStats(
            data_size=data_size,
            metadata_size=metadata_size,
            realms=realms,
            users=len(data.users),
            active_users=data.active_users_count(),
            users_per_profile_detail=[(p, a, r) for p, (a, r) in per_profile.items()],
        )


class MemoryUserStorage:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    async def get_authenticated_identity(self, organization_id: str, device_id: str) -> AuthenticatedIdentity:
        data = self._store.get(organization_id)
        device = data.devices.get(device_id)
        if device is None:
            raise NotFoundError()
        return AuthenticatedIdentity(data.organization, data.users[device.user_id], device)

    async def create_user(self, organization_id: str, user: User, device: Device, now: datetime) -> None:
        insert_new_user(self._store.get(organization_id), user, device, now)
        self._store.publish(events.user_created(organization_id, user.user_id))

    async def create_device(self, organization_id: str, device: Device) -> None:
        data = self._store.get(organization_id)
        if device.user_id not in data.users:
            raise NotFoundError()
        if device.device_id in data.devices:
            raise AlreadyExistsError(f"Device `{device.device_id}` already exists")
        data.add_device(device)
        self._store.publish(events.device_created(organization_id, device.device_id))

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: datetime,
    ) -> None:
        data = self._store.get(organization_id)
        user = data.users.get(user_id)
        if user is None:
            raise NotFoundError()
        if user.revoked_on is not None:
            raise AlreadyRevokedError()
        data.users[user_id] = attrs.evolve(
            user,
            revoked_on=revoked_on,
            revoked_user_certificate=revoked_user_certificate,
            revoked_user_certifier=revoked_user_certifier,
        )
        self._store.publish(events.user_revoked(organization_id, user_id, revoked_on))

    async def get_user(self, organization_id: str, user_id: str) -> User:
        data = self._store.get(organization_id)
        try:
            return data.users[user_id]
        except KeyError:
            raise NotFoundError() from None

    async def get_user_with_trustchain(self, organization_id: str, user_id: str) -> UserWithTrustchain:
        data = self._store.get(organization_id)
        user = data.users.get(user_id)
        if user is None:
            raise NotFoundError()
        devices = sorted(data.devices_of_user.get(user_id, ()), key=lambda d: d.created_on)
        chain_users: dict[str, User] = {}
        chain_devices: dict[str, Device] = {}
        todo = [user.user_certifier, user.revoked_user_certifier, *(d.device_certifier for d in devices)]
        while todo:
            device_id = todo.pop()
            if device_id is None or device_id in chain_devices:
                continue
            device = data.devices[device_id]
            chain_devices[device_id] = device
            certifier_user = data.users[device.user_id]
            chain_users[certifier_user.user_id] = certifier_user
            todo += [device.device_certifier, certifier_user.revoked_user_certifier, certifier_user.user_certifier]
        return UserWithTrustchain(user, devices, list(chain_users.values()), list(chain_devices.values()))

    async def find_humans(
        self,
        organization_id: str,
        query: str | None,
        omit_revoked: bool,
        omit_non_human: bool,
        page: int,
        per_page: int,
        now: datetime,
    ) -> tuple[list[HumanFindResult], int]:
        data = self._store.get(organization_id)
        humans: list[User] = []
        non_humans: list[User] = []
        needle = query.casefold() if query else None
        for user in data.users.values():
            if omit_revoked and user.is_revoked(now):
                continue
            if user.human_handle is None:
                if needle is None and not omit_non_human:
                    non_humans.append(user)
                continue
            email, label = user.human_handle
            if needle is not None and needle not in label.casefold() and needle not in email.casefold():
                continue
            humans.append(user)
        humans.sort(key=lambda u: (u.human_handle[1].lower(), u.user_id))  # type: ignore[index]
        non_humans.sort(key=lambda u: u.user_id)
        matches = humans + non_humans
        start = (page - 1) * per_page
        selected = matches[start : start + per_page]
        return (
            [HumanFindResult(u.user_id, u.human_handle, u.is_revoked(now)) for u in selected],
            len(matches),
        )

    async def is_email_used_by_active_user(self, organization_id: str, email: str, now: datetime) -> bool:
        return email_used_by_active_user(self._store.get(organization_id), email, now)
