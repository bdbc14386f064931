"""PostgreSQL organizations (`OrganizationStorage`, behaviour of parsec.storage.memory).

One statement (one round trip) per method. Concurrency:
* (re)creation is an upsert whose update applies only to a non-bootstrapped row;
* the bootstrap first reads the organization's token and compares it with the client's in
  constant time (`hmac.compare_digest`: the client's token never meets the stored one in
  SQL, whose `=` stops at the first differing byte); then an `UPDATE ... WHERE
  root_verify_key IS NULL AND bootstrap_token = <the token just read>` that also inserts the
  first user and device: concurrent bootstraps serialize on the row lock and PostgreSQL
  re-checks the condition on the row the winner committed, so exactly one succeeds. When the
  statement's snapshot cannot explain a refusal (it predates the winner's commit, or the
  organization was re-created with a new token meanwhile), both steps run again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from parsec.backend import bus as events
from parsec.backend.models import Device, Organization, OrganizationStats, User
from parsec.backend.storage import (
    UNSET,
    ActiveUsersLimitReachedError,
    AlreadyBootstrappedError,
    AlreadyExistsError,
    NotFoundError,
    Unset,
)
from parsec.confidential import same_secret
from parsec.storage.postgresql.connection import PreparedStatement
from parsec.storage.postgresql.events import Notify
from parsec.storage.postgresql.pool import PostgreSQLPool
from parsec.storage.postgresql.user import (
    ORGANIZATION_COLUMNS,
    clamp_limit,
    columns,
    insert_user_and_device,
    new_user_params,
    organization_from_row,
)

_PROFILES = ("ADMIN", "STANDARD", "OUTSIDER")

# A non-bootstrapped organization holds nothing but PKI enrollments (anonymous submissions):
# re-creating it starts from scratch, as a brand new organization.
_CREATE = """
WITH upserted AS (
    INSERT INTO organization (organization_id, bootstrap_token, active_users_limit,
                              user_profile_outsider_allowed, created_on)
    VALUES (%(org)s, %(token)s, %(limit)s, %(outsider)s, %(now)s)
    ON CONFLICT (organization_id) DO UPDATE
        SET bootstrap_token = excluded.bootstrap_token,
            active_users_limit = excluded.active_users_limit,
            user_profile_outsider_allowed = excluded.user_profile_outsider_allowed,
            created_on = excluded.created_on,
            is_expired = false,
            expired_on = NULL
        WHERE organization.root_verify_key IS NULL
    RETURNING organization_id
), forgotten AS (
    DELETE FROM pki_enrollment
    WHERE organization_id = %(org)s AND EXISTS (SELECT 1 FROM upserted)
)
SELECT count(*) FROM upserted
"""

# The inserted row, or else the existing one. When a concurrent creation commits while this
# statement waits on it, neither is visible to the statement's snapshot: no row, run it again.
_CREATE_IF_MISSING = f"""
WITH inserted AS (
    INSERT INTO organization (organization_id, bootstrap_token, active_users_limit,
                              user_profile_outsider_allowed, created_on)
    VALUES (%(org)s, %(token)s, %(limit)s, %(outsider)s, %(now)s)
    ON CONFLICT (organization_id) DO NOTHING
    RETURNING {", ".join(ORGANIZATION_COLUMNS)}
)
SELECT {", ".join(ORGANIZATION_COLUMNS)} FROM inserted
UNION ALL
SELECT {columns(ORGANIZATION_COLUMNS, "o")} FROM organization o
WHERE o.organization_id = %(org)s AND NOT EXISTS (SELECT 1 FROM inserted)
"""

# Every websocket handshake but the authenticated one reads this: prepared.
_GET = PreparedStatement(
    f"SELECT {', '.join(ORGANIZATION_COLUMNS)} FROM organization WHERE organization_id = %(org)s"
)

# Not PREPAREd: a bootstrap happens once per organization.
_BOOTSTRAP_STATE = (
    "SELECT root_verify_key IS NOT NULL, bootstrap_token FROM organization WHERE organization_id = %(org)s"
)

_BOOTSTRAP = (
    """
WITH bootstrapped AS (
    UPDATE organization SET root_verify_key = %(root_verify_key)s, bootstrapped_on = %(bootstrapped_on)s
    WHERE organization_id = %(org)s AND root_verify_key IS NULL AND bootstrap_token = %(token)s
      AND (active_users_limit IS NULL OR active_users_limit > (
          SELECT count(*) FROM user_ WHERE organization_id = %(org)s AND revoked_on IS NULL))
    RETURNING organization_id
),"""
    + insert_user_and_device("bootstrapped")
    + """
SELECT o.root_verify_key IS NOT NULL, o.bootstrap_token = %(token)s,
       o.active_users_limit IS NOT NULL AND o.active_users_limit <= (
           SELECT count(*) FROM user_ WHERE organization_id = %(org)s AND revoked_on IS NULL),
       (SELECT count(*) FROM new_device)
FROM organization o
WHERE o.organization_id = %(org)s
"""
)

_STATS = """
SELECT
    (SELECT coalesce(sum(size), 0) FROM block WHERE organization_id = o.organization_id),
    (SELECT coalesce(sum(size), 0) FROM vlob_atom WHERE organization_id = o.organization_id),
    (SELECT count(*) FROM realm WHERE organization_id = o.organization_id),
    u.*
FROM organization o
CROSS JOIN LATERAL (
    SELECT
        count(*),
        count(*) FILTER (WHERE revoked_on IS NULL),
        count(*) FILTER (WHERE profile = 'ADMIN' AND revoked_on IS NULL),
        count(*) FILTER (WHERE profile = 'ADMIN' AND revoked_on IS NOT NULL),
        count(*) FILTER (WHERE profile = 'STANDARD' AND revoked_on IS NULL),
        count(*) FILTER (WHERE profile = 'STANDARD' AND revoked_on IS NOT NULL),
        count(*) FILTER (WHERE profile = 'OUTSIDER' AND revoked_on IS NULL),
        count(*) FILTER (WHERE profile = 'OUTSIDER' AND revoked_on IS NOT NULL)
    FROM user_ WHERE organization_id = o.organization_id
) AS u
WHERE o.organization_id = %(org)s
"""

_RACE_RETRIES = 5

# Setting `is_expired` to true publishes `organization.expired` (with the update).
_EXPIRED = Notify("expired")


class PgOrganizationStorage:
    def __init__(self, pool: PostgreSQLPool) -> None:
        self._pool = pool

    async def create(
        self,
        organization_id: str,
        bootstrap_token: str,
        active_users_limit: int | None,
        user_profile_outsider_allowed: bool,
        created_on: datetime,
    ) -> None:
        written = await self._pool.fetchval(
            _CREATE,
            {
                "org": organization_id,
                "token": bootstrap_token,
                "limit": clamp_limit(active_users_limit),
                "outsider": user_profile_outsider_allowed,
                "now": created_on,
            },
        )
        if not written:
            raise AlreadyExistsError()

    async def create_if_missing(
        self,
        organization_id: str,
        bootstrap_token: str,
        created_on: datetime,
        active_users_limit: int | None,
        user_profile_outsider_allowed: bool,
    ) -> Organization:
        params = {
            "org": organization_id,
            "token": bootstrap_token,
            "limit": clamp_limit(active_users_limit),
            "outsider": user_profile_outsider_allowed,
            "now": created_on,
        }
        for _ in range(_RACE_RETRIES):
            row = await self._pool.fetchrow(_CREATE_IF_MISSING, params)
            if row is not None:
                return organization_from_row(row)
        raise RuntimeError(f"organization {organization_id!r} neither created nor found")

    async def get(self, organization_id: str) -> Organization:
        row = await self._pool.fetchrow(_GET, {"org": organization_id})
        if row is None:
            raise NotFoundError()
        return organization_from_row(row)

    async def update(
        self,
        organization_id: str,
        *,
        is_expired: bool | Unset = UNSET,
        user_profile_outsider_allowed: bool | Unset = UNSET,
        active_users_limit: int | None | Unset = UNSET,
    ) -> None:
        assignments = ["organization_id = organization_id"]
        params: dict[str, Any] = {"org": organization_id}
        if is_expired is not UNSET:
            assignments.append("is_expired = %(is_expired)s")
            # Informative: when it last became expired.
            assignments.append("expired_on = CASE WHEN %(is_expired)s THEN now() ELSE expired_on END")
            params["is_expired"] = is_expired
        if user_profile_outsider_allowed is not UNSET:
            assignments.append("user_profile_outsider_allowed = %(outsider)s")
            params["outsider"] = user_profile_outsider_allowed
        if active_users_limit is not UNSET:
            assignments.append("active_users_limit = %(limit)s")
            params["limit"] = clamp_limit(active_users_limit)
        notify = "NULL"
        if is_expired is True:
            notify = _EXPIRED.sql
            params.update(_EXPIRED.params(events.organization_expired(organization_id)))
        updated = await self._pool.fetchval(
            f"WITH updated AS (UPDATE organization SET {', '.join(assignments)} WHERE organization_id = %(org)s"
            f" RETURNING 1) SELECT (SELECT count(*) FROM updated), (SELECT {notify} FROM updated)",
            params,
        )
        if not updated:
            raise NotFoundError()

    async def bootstrap(
        self,
        organization_id: str,
        bootstrap_token: str,
        root_verify_key: bytes,
        user: User,
        device: Device,
        bootstrapped_on: datetime,
    ) -> None:
        params = {
            "org": organization_id,
            "root_verify_key": root_verify_key,
            "bootstrapped_on": bootstrapped_on,
            **new_user_params(user, device),
        }
        for _ in range(_RACE_RETRIES):
            state = await self._pool.fetchrow(_BOOTSTRAP_STATE, {"org": organization_id})
            if state is None:
                raise NotFoundError()
            bootstrapped, stored_token = state
            if bootstrapped:
                raise AlreadyBootstrappedError()
            if not same_secret(stored_token, bootstrap_token):
                raise NotFoundError()
            # The stored token, not the client's: the update applies only if it is unchanged.
            row = await self._pool.fetchrow(_BOOTSTRAP, {**params, "token": stored_token})
            if row is None:
                raise NotFoundError()
            already_bootstrapped, token_matches, limit_reached, written = row
            if written:
                return
            if already_bootstrapped:
                raise AlreadyBootstrappedError()
            if not token_matches:
                continue  # re-created with a new token meanwhile: compare again
            if limit_reached:
                raise ActiveUsersLimitReachedError()
            # Refused on a row committed after this statement's snapshot: read it again.
        raise RuntimeError(f"bootstrap of {organization_id!r} kept racing")

    async def stats(self, organization_id: str, now: datetime) -> OrganizationStats:
        row = await self._pool.fetchrow(_STATS, {"org": organization_id})
        if row is None:
            raise NotFoundError()
        data_size, metadata_size, realms, users, active_users, *per_profile = (int(value) for value in row)
        return OrganizationStats(
            data_size=data_size,
            metadata_size=metadata_size,
            realms=realms,
            users=users,
            active_users=active_users,
            users_per_profile_detail=[
                (profile, per_profile[2 * index], per_profile[2 * index + 1])
                for index, profile in enumerate(_PROFILES)
            ],
        )
