"""PostgreSQL users and devices (`UserStorage`, behaviour of parsec.storage.memory.organization).

Round trips: every method is one statement, i.e. one round trip. The writes that must be
serialized per organization (user creation, revocation) send two statements in one query
string: `SELECT ... FROM organization ... FOR NO KEY UPDATE` then the checks and writes.
PostgreSQL runs a multi-statement query as one implicit transaction (all or nothing) and, in
READ COMMITTED, gives each statement its own snapshot: the checks of the second statement see
every creation committed before the lock was granted. Still one round trip.

The helpers at the top (column lists, row decoding, the new-user checks and inserts) are
shared with the organization (bootstrap) and PKI (accept) storages.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from parsec.backend import bus as events
from parsec.backend.models import (
    AuthenticatedIdentity,
    Device,
    HumanFindResult,
    Organization,
    User,
    UserWithTrustchain,
)
from parsec.backend.storage import (
    ActiveUsersLimitReachedError,
    AlreadyExistsError,
    AlreadyRevokedError,
    NotFoundError,
    UnstorableValueError,
    human_handle_taken_reason,
)
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.events import Notify
from parsec.storage.postgresql.pool import PostgreSQLPool

# ---- shared helpers ------------------------------------------------------------------------

ORGANIZATION_COLUMNS = (
    "organization_id",
    "bootstrap_token",
    "root_verify_key",
    "is_expired",
    "user_profile_outsider_allowed",
    "active_users_limit",
    "created_on",
    "bootstrapped_on",
)
USER_COLUMNS = (
    "user_id",
    "profile",
    "user_certificate",
    "redacted_user_certificate",
    "user_certifier",
    "created_on",
    "human_email",
    "human_label",
    "public_key",
    "revoked_on",
    "revoked_user_certificate",
    "revoked_user_certifier",
)
DEVICE_COLUMNS = (
    "device_id",
    "verify_key",
    "device_certificate",
    "redacted_device_certificate",
    "device_certifier",
    "created_on",
    "device_label",
)
# SQL types of the columns above, for typed NULL placeholders in UNIONs.
_USER_TYPES = ("text", "text", "bytea", "bytea", "text", "timestamptz", "text", "text", "bytea",
               "timestamptz", "bytea", "text")
_DEVICE_TYPES = ("text", "bytea", "bytea", "bytea", "text", "timestamptz", "text")

# Lock taken by every write that must be serialized per organization (user creation and
# revocation, PKI submit/reject/accept). NO KEY UPDATE: the foreign-key checks of the
# organization's other writes (KEY SHARE) do not wait for it.
LOCK_ORGANIZATION = "SELECT 1 FROM organization WHERE organization_id = %(org)s FOR NO KEY UPDATE;\n"

# The largest value a bigint (e.g. `active_users_limit`, LIMIT, OFFSET) can hold.
MAX_BIGINT = 2**63 - 1
MAX_ACTIVE_USERS_LIMIT = MAX_BIGINT


def has_nul(value: str | None) -> bool:
    """PostgreSQL text cannot hold the NUL character (psycopg2 refuses to send it)."""
    return value is not None and "\x00" in value


def storable(field: str, *values: str | None) -> None:
    """Raise UnstorableValueError(field) if one of the texts to store contains NUL."""
    if any(has_nul(value) for value in values):
        raise UnstorableValueError(field)


def comparable(value: str | None) -> str | None:
    """A text only compared with stored texts: one containing NUL equals none of them, as
    NULL does."""
    return None if has_nul(value) else value


def columns(names: tuple[str, ...], alias: str) -> str:
    return ", ".join(f"{alias}.{name}" for name in names)


def null_columns(types: tuple[str, ...]) -> str:
    return ", ".join(f"NULL::{sql_type}" for sql_type in types)


def clamp_limit(limit: int | None) -> int | None:
    return None if limit is None else min(limit, MAX_ACTIVE_USERS_LIMIT)


def organization_from_row(row: tuple[Any, ...]) -> Organization:
    (organization_id, bootstrap_token, root_verify_key, is_expired, outsider_allowed, limit,
     created_on, bootstrapped_on) = row
    return Organization(
        organization_id=organization_id,
        bootstrap_token=bootstrap_token,
        root_verify_key=root_verify_key,
        is_expired=is_expired,
        user_profile_outsider_allowed=outsider_allowed,
        active_users_limit=None if limit is None else int(limit),
        created_on=created_on,
        bootstrapped_on=bootstrapped_on,
    )


def user_from_row(row: tuple[Any, ...]) -> User:
    (user_id, profile, certificate, redacted_certificate, certifier, created_on, email, label,
     public_key, revoked_on, revoked_certificate, revoked_certifier) = row
    return User(
        user_id=user_id,
        profile=profile,
        user_certificate=certificate,
        redacted_user_certificate=redacted_certificate,
        user_certifier=certifier,
        created_on=created_on,
        human_handle=(email, label) if email is not None else None,
        public_key=public_key,
        revoked_on=revoked_on,
        revoked_user_certificate=revoked_certificate,
        revoked_user_certifier=revoked_certifier,
    )


def device_from_row(row: tuple[Any, ...]) -> Device:
    (device_id, verify_key, certificate, redacted_certificate, certifier, created_on, label) = row
    return Device(
        device_id=device_id,
        verify_key=verify_key,
        device_certificate=certificate,
        redacted_device_certificate=redacted_certificate,
        device_certifier=certifier,
        created_on=created_on,
        device_label=label,
    )


def new_user_params(user: User, device: Device) -> dict[str, Any]:
    """Parameters of `insert_user_and_device` (and of the new-user checks). Raises
    UnstorableValueError."""
    email = label = None
    if user.human_handle is not None:
        email, label = user.human_handle
    storable("user_certificate", email, label)
    storable("device_certificate", device.device_label)
    return {
        "user_id": user.user_id,
        "profile": user.profile,
        "human_email": email,
        "human_label": label,
        # human_find compares case-folded text and sorts by lower-cased label, as Python does.
        "human_email_folded": email.casefold() if email is not None else None,
        "human_label_folded": label.casefold() if label is not None else None,
        "human_label_lower": label.lower() if label is not None else None,
        "public_key": user.public_key,
        "user_certificate": user.user_certificate,
        "redacted_user_certificate": user.redacted_user_certificate,
        "user_certifier": user.user_certifier,
        "user_created_on": user.created_on,
        "device_id": device.device_id,
        "device_user_id": device.user_id,
        "device_label": device.device_label,
        "verify_key": device.verify_key,
        "device_certificate": device.device_certificate,
        "redacted_device_certificate": device.redacted_device_certificate,
        "device_certifier": device.device_certifier,
        "device_created_on": device.created_on,
    }


def insert_user_and_device(source: str) -> str:
    """Two CTEs, `new_user` and `new_device`, inserting the user and its first device once per
    row of the CTE `source` (zero or one row). `SELECT count(*) FROM new_device` tells whether
    they were written."""
    return f"""
new_user AS (
    INSERT INTO user_ (organization_id, user_id, profile, human_email, human_label,
                       human_email_folded, human_label_folded, human_label_lower, public_key,
                       user_certificate, redacted_user_certificate, user_certifier, created_on)
    SELECT %(org)s, %(user_id)s, %(profile)s, %(human_email)s, %(human_label)s,
           %(human_email_folded)s, %(human_label_folded)s, %(human_label_lower)s, %(public_key)s,
           %(user_certificate)s, %(redacted_user_certificate)s, %(user_certifier)s, %(user_created_on)s
    FROM {source}
    RETURNING user_id
), new_device AS (
    INSERT INTO device (organization_id, device_id, user_id, device_label, verify_key,
                        device_certificate, redacted_device_certificate, device_certifier, created_on)
    SELECT %(org)s, %(device_id)s, %(device_user_id)s, %(device_label)s, %(verify_key)s,
           %(device_certificate)s, %(redacted_device_certificate)s, %(device_certifier)s,
           %(device_created_on)s
    FROM new_user
    RETURNING device_id
)"""


# The checks of a user creation (memory: `insert_new_user`), evaluated after the organization
# lock: one row `new_user_facts` (none if the organization does not exist; `active_users` NULL
# without a limit), and the CTE `new_user_allowed` (one row iff every check passes).
NEW_USER_FACTS = """
new_user_facts AS (
    SELECT
        o.active_users_limit AS active_users_limit,
        -- Counted only against a limit, and only up to it (not every user at each creation).
        CASE WHEN o.active_users_limit IS NOT NULL THEN (
            SELECT count(*) FROM (
                SELECT 1 FROM user_ u
                WHERE u.organization_id = o.organization_id AND u.revoked_on IS NULL
                LIMIT o.active_users_limit
            ) AS active
        ) END AS active_users,
        EXISTS (SELECT 1 FROM user_ u
                WHERE u.organization_id = o.organization_id AND u.user_id = %(user_id)s) AS user_exists,
        (%(human_email)s::text IS NOT NULL AND EXISTS (
            SELECT 1 FROM user_ u
            WHERE u.organization_id = o.organization_id AND u.human_email = %(human_email)s::text
              AND (u.revoked_on IS NULL OR u.revoked_on > %(now)s::timestamptz))) AS human_taken,
        EXISTS (SELECT 1 FROM device d
                WHERE d.organization_id = o.organization_id AND d.device_id = %(device_id)s) AS device_exists
    FROM organization o
    WHERE o.organization_id = %(org)s
), new_user_allowed AS (
    SELECT 1 FROM new_user_facts
    WHERE (active_users_limit IS NULL OR active_users < active_users_limit)
      AND NOT user_exists AND NOT human_taken AND NOT device_exists
)"""
NEW_USER_FACT_COLUMNS = (
    "f.active_users_limit, f.active_users, f.user_exists, f.human_taken, f.device_exists"
)


def raise_new_user_refusal(facts: tuple[Any, ...], user: User, device: Device) -> None:
    """Raise the error of the first failing new-user check (memory's order), if any."""
    limit, active_users, user_exists, human_taken, device_exists = facts
    if limit is not None and active_users >= limit:
        raise ActiveUsersLimitReachedError()
    if user_exists:
        raise AlreadyExistsError(f"User `{user.user_id}` already exists")
    if human_taken:
        assert user.human_handle is not None
        raise AlreadyExistsError(human_handle_taken_reason(user.human_handle))
    if device_exists:
        raise AlreadyExistsError(f"Device `{device.device_id}` already exists")


# ---- statements ----------------------------------------------------------------------------

# The events of the writes, published by the write statements themselves.
USER_CREATED = Notify("created")
_DEVICE_CREATED = Notify("created")
_USER_REVOKED = Notify("revoked")

# The authenticated handshake, once per websocket connection: one statement, prepared.
_GET_IDENTITY = PreparedStatement(
    f"""
SELECT {columns(ORGANIZATION_COLUMNS, "o")}, {columns(USER_COLUMNS, "u")}, {columns(DEVICE_COLUMNS, "d")}
FROM device d
JOIN user_ u ON u.organization_id = d.organization_id AND u.user_id = d.user_id
JOIN organization o ON o.organization_id = d.organization_id
WHERE d.organization_id = %(org)s AND d.device_id = %(device_id)s
"""
)

_CREATE_USER = (
    LOCK_ORGANIZATION
    + "WITH"
    + NEW_USER_FACTS
    + ","
    + insert_user_and_device("new_user_allowed")
    + f"""
SELECT {NEW_USER_FACT_COLUMNS}, (SELECT count(*) FROM new_device), (SELECT {USER_CREATED.sql} FROM new_device)
FROM new_user_facts f
"""
)

# No organization lock: nothing to count, the primary key settles concurrent creations.
_CREATE_DEVICE = f"""
WITH owner AS (
    SELECT 1 FROM user_ WHERE organization_id = %(org)s AND user_id = %(user_id)s
), created AS (
    INSERT INTO device (organization_id, device_id, user_id, device_label, verify_key,
                        device_certificate, redacted_device_certificate, device_certifier, created_on)
    SELECT %(org)s, %(device_id)s, %(user_id)s, %(device_label)s, %(verify_key)s,
           %(device_certificate)s, %(redacted_device_certificate)s, %(device_certifier)s, %(created_on)s
    FROM owner
    ON CONFLICT (organization_id, device_id) DO NOTHING
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM owner), EXISTS (SELECT 1 FROM created), (SELECT {_DEVICE_CREATED.sql} FROM created)
"""

_REVOKE_USER = (
    LOCK_ORGANIZATION
    + f"""
WITH target AS (
    SELECT revoked_on FROM user_ WHERE organization_id = %(org)s AND user_id = %(user_id)s
), revoked AS (
    UPDATE user_ SET revoked_on = %(revoked_on)s, revoked_user_certificate = %(certificate)s,
                     revoked_user_certifier = %(certifier)s
    WHERE organization_id = %(org)s AND user_id = %(user_id)s AND revoked_on IS NULL
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM revoked), (SELECT {_USER_REVOKED.sql} FROM revoked)
"""
)

_GET_USER = f"""
SELECT {columns(USER_COLUMNS, "u")} FROM user_ u WHERE u.organization_id = %(org)s AND u.user_id = %(user_id)s
"""

# The user, its devices, and the closure of the certifiers of both (each certifier device,
# the certifiers and revoker of its user, ...): rows tagged U (the user), D (its devices),
# C (trustchain devices), T (trustchain users). The chain is a handful of devices, but the
# planner cannot know how many a recursive query finds: joined plainly, each step was a hash
# join over every device of the database. A `LIMIT 1` subquery on a primary key keeps each
# step a lookup (tests/postgresql_realm/test_plans.py).
_USER_NULLS = null_columns(_USER_TYPES)
_DEVICE_NULLS = null_columns(_DEVICE_TYPES)
_GET_USER_WITH_TRUSTCHAIN = f"""
WITH RECURSIVE target AS (
    SELECT * FROM user_ WHERE organization_id = %(org)s AND user_id = %(user_id)s
), own_devices AS (
    SELECT * FROM device WHERE organization_id = %(org)s AND user_id = %(user_id)s
), chain (device_id) AS (
    SELECT certifier FROM (
        SELECT user_certifier FROM target
        UNION ALL SELECT revoked_user_certifier FROM target
        UNION ALL SELECT device_certifier FROM own_devices
    ) AS first (certifier)
    WHERE certifier IS NOT NULL
  UNION
    SELECT next.certifier
    FROM chain
    CROSS JOIN LATERAL (
        SELECT d.device_certifier, u.revoked_user_certifier, u.user_certifier
        FROM device d JOIN user_ u ON u.organization_id = d.organization_id AND u.user_id = d.user_id
        WHERE d.organization_id = %(org)s AND d.device_id = chain.device_id
        LIMIT 1
    ) AS link
    CROSS JOIN LATERAL (VALUES (link.device_certifier), (link.revoked_user_certifier), (link.user_certifier))
        AS next (certifier)
    WHERE next.certifier IS NOT NULL
), chain_devices AS MATERIALIZED (
    SELECT d.* FROM chain
    CROSS JOIN LATERAL (
        SELECT * FROM device d WHERE d.organization_id = %(org)s AND d.device_id = chain.device_id LIMIT 1
    ) AS d
)
SELECT 'U', {columns(USER_COLUMNS, "t")}, {_DEVICE_NULLS} FROM target t
UNION ALL
SELECT 'D', {_USER_NULLS}, {columns(DEVICE_COLUMNS, "d")} FROM own_devices d
UNION ALL
SELECT 'C', {_USER_NULLS}, {columns(DEVICE_COLUMNS, "d")} FROM chain_devices d
UNION ALL
SELECT 'T', {columns(USER_COLUMNS, "u")}, {_DEVICE_NULLS}
FROM (SELECT DISTINCT user_id FROM chain_devices) AS c
CROSS JOIN LATERAL (
    SELECT * FROM user_ u WHERE u.organization_id = %(org)s AND u.user_id = c.user_id LIMIT 1
) AS u
"""

# Humans (matching the query) by lower-cased label then user id, then, without a query, the
# non-human users by id; a page of them and the total count.
_FIND_HUMANS = """
WITH matches AS (
    SELECT user_id, human_email, human_label, revoked_on,
           human_email IS NULL AS non_human, human_label_lower
    FROM user_
    WHERE organization_id = %(org)s
      AND NOT (%(omit_revoked)s AND revoked_on IS NOT NULL AND revoked_on <= %(now)s)
      AND CASE
          WHEN human_email IS NULL THEN %(needle)s::text IS NULL AND NOT %(omit_non_human)s
          ELSE %(needle)s::text IS NULL
               OR strpos(human_label_folded, %(needle)s::text) > 0
               OR strpos(human_email_folded, %(needle)s::text) > 0
      END
)
SELECT user_id, human_email, human_label, revoked_on, count(*) OVER ()
FROM matches
ORDER BY non_human, human_label_lower COLLATE "C", user_id COLLATE "C"
LIMIT %(limit)s OFFSET %(offset)s
"""

_COUNT_MATCHES = """
SELECT count(*) FROM user_
WHERE organization_id = %(org)s
  AND NOT (%(omit_revoked)s AND revoked_on IS NOT NULL AND revoked_on <= %(now)s)
  AND CASE
      WHEN human_email IS NULL THEN %(needle)s::text IS NULL AND NOT %(omit_non_human)s
      ELSE %(needle)s::text IS NULL
           OR strpos(human_label_folded, %(needle)s::text) > 0
           OR strpos(human_email_folded, %(needle)s::text) > 0
  END
"""

_EMAIL_USED = """
SELECT EXISTS (
    SELECT 1 FROM user_
    WHERE organization_id = %(org)s AND human_email = %(email)s
      AND (revoked_on IS NULL OR revoked_on > %(now)s)
)
"""


class PgUserStorage:
    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool

    async def get_authenticated_identity(self, organization_id: str, device_id: str) -> AuthenticatedIdentity:
        row = await self._pool.fetchrow(_GET_IDENTITY, {"org": organization_id, "device_id": device_id})
        if row is None:
            raise NotFoundError()
        org_end = len(ORGANIZATION_COLUMNS)
        user_end = org_end + len(USER_COLUMNS)
        return AuthenticatedIdentity(
            organization_from_row(row[:org_end]),
            user_from_row(row[org_end:user_end]),
            device_from_row(row[user_end:]),
        )

    async def create_user(self, organization_id: str, user: User, device: Device, now: datetime) -> None:
        params = {
            "org": organization_id,
            "now": now,
            **new_user_params(user, device),
            **USER_CREATED.params(events.user_created(organization_id, user.user_id)),
        }
        row = await self._pool.fetchrow(_CREATE_USER, params)
        if row is None:
            raise NotFoundError()
        raise_new_user_refusal(row[:5], user, device)
        assert row[5] == 1, row

    async def create_device(self, organization_id: str, device: Device) -> None:
        storable("device_certificate", device.device_label)
        row = await self._pool.fetchrow(
            _CREATE_DEVICE,
            {
                "org": organization_id,
                "user_id": device.user_id,
                "device_id": device.device_id,
                "device_label": device.device_label,
                "verify_key": device.verify_key,
                "device_certificate": device.device_certificate,
                "redacted_device_certificate": device.redacted_device_certificate,
                "device_certifier": device.device_certifier,
                "created_on": device.created_on,
                **_DEVICE_CREATED.params(events.device_created(organization_id, device.device_id)),
            },
        )
        assert row is not None
        owner_exists, created, _ = row
        if not owner_exists:
            raise NotFoundError()
        if not created:
            raise AlreadyExistsError(f"Device `{device.device_id}` already exists")

    async def revoke_user(
        self,
        organization_id: str,
        user_id: str,
        revoked_user_certificate: bytes,
        revoked_user_certifier: str,
        revoked_on: datetime,
    ) -> None:
        row = await self._pool.fetchrow(
            _REVOKE_USER,
            {
                "org": organization_id,
                "user_id": user_id,
                "revoked_on": revoked_on,
                "certificate": revoked_user_certificate,
                "certifier": revoked_user_certifier,
                **_USER_REVOKED.params(events.user_revoked(organization_id, user_id, revoked_on)),
            },
        )
        assert row is not None
        exists, revoked, _ = row
        if not exists:
            raise NotFoundError()
        if not revoked:
            raise AlreadyRevokedError()

    async def get_user(self, organization_id: str, user_id: str) -> User:
        row = await self._pool.fetchrow(_GET_USER, {"org": organization_id, "user_id": user_id})
        if row is None:
            raise NotFoundError()
        return user_from_row(row)

    async def get_user_with_trustchain(self, organization_id: str, user_id: str) -> UserWithTrustchain:
        rows = await self._pool.fetch(_GET_USER_WITH_TRUSTCHAIN, {"org": organization_id, "user_id": user_id})
        user: User | None = None
        devices: list[Device] = []
        chain_devices: list[Device] = []
        chain_users: list[User] = []
        user_end = 1 + len(USER_COLUMNS)
        for row in rows:
            kind = row[0]
            if kind == "U":
                user = user_from_row(row[1:user_end])
            elif kind == "D":
                devices.append(device_from_row(row[user_end:]))
            elif kind == "C":
                chain_devices.append(device_from_row(row[user_end:]))
            else:
                chain_users.append(user_from_row(row[1:user_end]))
        if user is None:
            raise NotFoundError()
        devices.sort(key=lambda d: (d.created_on, d.device_id))
        chain_devices.sort(key=lambda d: d.device_id)
        chain_users.sort(key=lambda u: u.user_id)
        return UserWithTrustchain(user, devices, chain_users, chain_devices)

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
        needle = query.casefold() if query else None
        if has_nul(needle):
            return [], 0  # no stored e-mail or label contains NUL; non-humans need no query
        params = {
            "org": organization_id,
            "needle": needle,
            "omit_revoked": omit_revoked,
            "omit_non_human": omit_non_human,
            "now": now,
            "limit": min(per_page, MAX_BIGINT),
            "offset": min((page - 1) * per_page, MAX_BIGINT),
        }
        rows = await self._pool.fetch(_FIND_HUMANS, params)
        if rows:
            total = int(rows[0][4])
        elif params["offset"] == 0:
            total = 0
        else:
            # A page past the end: the total still has to be counted (rare, second round trip).
            total = int(await self._pool.fetchval(_COUNT_MATCHES, params))
        return (
            [
                HumanFindResult(
                    user_id,
                    (email, label) if email is not None else None,
                    revoked_on is not None and revoked_on <= now,
                )
                for user_id, email, label, revoked_on, _ in rows
            ],
            total,
        )

    async def is_email_used_by_active_user(self, organization_id: str, email: str, now: datetime) -> bool:
        params = {"org": organization_id, "email": comparable(email), "now": now}
        return bool(await self._pool.fetchval(_EMAIL_USED, params))
