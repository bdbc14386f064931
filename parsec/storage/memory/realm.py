"""In-memory realms, vlobs, block metadata and messages (`--db MOCKED`).

Per organization, the `realm` domain holds a `MemoryRealmState` (realms, vlobs, block
metadata, sizes) and the `message` domain a `MemoryMessageState`. Each method gathers the
facts the rules of `parsec.backend.realm_rules` need, lets them decide, then writes, without
awaiting anything in between: in a single-threaded reactor that makes every method atomic.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from parsec.api.ids import user_of
from parsec.backend import bus as events
from parsec.backend import realm_rules as rules
from parsec.backend.models import (
    Message,
    RealmGrant,
    RealmStats,
    RealmStatus,
    ReencryptionBatchEntry,
    VlobChanges,
    VlobVersion,
    VlobWrite,
)
from parsec.backend.realm_rules import RealmState, RoleUpdateFacts
from parsec.backend.storage import (
    DEFAULT_MESSAGE_BOUNDS,
    AlreadyExistsError,
    BlockClaimedError,
    MessageBounds,
    MessageBoxFullError,
)
from parsec.storage.memory.organization import MemoryDatastore, OrgData

REALM_DOMAIN = "realm"
MESSAGE_DOMAIN = "message"


# ---- state -----------------------------------------------------------------------------------


@attrs.define
class _Atom:
    """One version of a vlob at one encryption revision."""

    blob: bytes = attrs.field(repr=False)
    author: str
    timestamp: datetime


@attrs.define
class _Vlob:
    realm_id: UUID
    # encryption revision -> version -> atom, each revision's versions in ascending order (a
    # vlob_update appends the next version; a re-encryption batch, which may come in any order,
    # re-sorts what it filled), so that the latest version is the last key, found without a
    # scan of every version (`_latest`)
    revisions: dict[int, dict[int, _Atom]] = attrs.field(factory=dict)


@attrs.define
class _Block:
    realm_id: UUID
    author: str
    size: int
    created_on: datetime


@attrs.frozen
class _BlockClaim:
    claim: UUID
    author: str  # device id
    claimed_on: datetime


@attrs.define
class _Realm:
    realm_id: UUID
    encryption_revision: int = 1
    maintenance_type: str | None = None
    maintenance_started_on: datetime | None = None
    maintenance_started_by: str | None = None
    grants: list[RealmGrant] = attrs.field(factory=list)
    roles: dict[str, RealmGrant] = attrs.field(factory=dict)  # user -> latest grant
    # changes[i] = (vlob id, version) written at checkpoint i + 1
    changes: list[tuple[UUID, int]] = attrs.field(factory=list)
    vlob_ids: list[UUID] = attrs.field(factory=list)  # creation order
    last_vlob_update: dict[str, datetime] = attrs.field(factory=dict)  # user -> latest write
    last_role_change: dict[str, datetime] = attrs.field(factory=dict)  # user -> latest grant made
    vlobs_size: int = 0  # versions as written (re-encrypted copies not counted)
    blocks_size: int = 0

    @property
    def checkpoint(self) -> int:
        return len(self.changes)

    @property
    def state(self) -> RealmState:
        return RealmState(self.encryption_revision, self.maintenance_type)

    def role_of(self, user_id: str) -> str | None:
        grant = self.roles.get(user_id)
        return grant.role if grant is not None else None

    def last_role_granted_on(self, user_id: str) -> datetime | None:
        grant = self.roles.get(user_id)
        return grant.granted_on if grant is not None else None

    def add_grant(self, grant: RealmGrant) -> None:
        self.grants.append(grant)
        self.roles[grant.user_id] = grant
        author_user = user_of(grant.granted_by)
        previous = self.last_role_change.get(author_user)
        if previous is None or previous < grant.granted_on:
            self.last_role_change[author_user] = grant.granted_on

    def record_write(self, vlob_id: UUID, version: int, author: str, timestamp: datetime, size: int) -> int:
        self.changes.append((vlob_id, version))
        self.vlobs_size += size
        author_user = user_of(author)
        previous = self.last_vlob_update.get(author_user)
        if previous is None or previous < timestamp:
            self.last_vlob_update[author_user] = timestamp
        return self.checkpoint


class MemoryRealmState:
    """The `realm` domain of one organization."""

    def __init__(self) -> None:
        self.realms: dict[UUID, _Realm] = {}
        self.vlobs: dict[UUID, _Vlob] = {}  # vlob ids are unique per organization
        self.blocks: dict[UUID, _Block] = {}
        self.block_claims: dict[UUID, _BlockClaim] = {}  # block creations in progress
        self.metadata_size = 0  # every stored vlob atom, re-encrypted copies included
        # user -> the realms where it was ever granted a role (`grant`): a user's realms
        # without a scan of the organization's (read on every events_subscribe).
        self.realms_of_user: dict[str, dict[UUID, _Realm]] = {}

    def grant(self, realm: _Realm, grant: RealmGrant) -> None:
        realm.add_grant(grant)
        self.realms_of_user.setdefault(grant.user_id, {})[realm.realm_id] = realm

    def stats(self) -> tuple[int, int, int]:
        """(data_size, metadata_size, realms), read by the organization stats."""
        return sum(b.size for b in self.blocks.values()), self.metadata_size, len(self.realms)


class MemoryMessageState:
    """The `message` domain of one organization: each user's append-only list, and how far
    the user read it (`MessageBounds`)."""

    def __init__(self) -> None:
        self.by_user: dict[str, list[Message]] = {}
        self.read: dict[str, int] = {}  # user -> highest offset given to message_get

    def append(self, recipient: str, sender: str, timestamp: datetime, body: bytes) -> int:
        messages = self.by_user.setdefault(recipient, [])
        index = len(messages) + 1
        messages.append(Message(index=index, sender=sender, timestamp=timestamp, body=body))
        return index

    def can_take(self, recipient: str, bodies: list[bytes], bounds: MessageBounds) -> bool:
        """Whether `bodies` may be appended for `recipient` within its unread `bounds`."""
        unread = self.by_user.get(recipient, [])[self.read.get(recipient, 0) :]
        return (
            len(unread) + len(bodies) <= bounds.count
            and sum(len(m.body) for m in unread) + sum(len(b) for b in bodies) <= bounds.size
        )

    def get(self, user_id: str, offset: int, bounds: MessageBounds) -> list[Message]:
        messages = self.by_user.get(user_id, [])
        self.read[user_id] = max(self.read.get(user_id, 0), min(offset, len(messages)))
        page: list[Message] = []
        size = 0
        for message in messages[offset:]:
            size += len(message.body)
            if page and (len(page) >= bounds.count or size > bounds.size):
                break
            page.append(message)
        return page


class _Base:
    def __init__(self, store: MemoryDatastore) -> None:
        self._store = store

    def _realms(self, organization_id: str) -> MemoryRealmState:
        state: MemoryRealmState = self._store.domain(organization_id, REALM_DOMAIN, MemoryRealmState)
        return state

    def _messages(self, organization_id: str) -> MemoryMessageState:
        state: MemoryMessageState = self._store.domain(organization_id, MESSAGE_DOMAIN, MemoryMessageState)
        return state

    @staticmethod
    def _realm_of_vlob(data: MemoryRealmState, vlob_id: UUID) -> tuple[_Vlob | None, _Realm | None]:
        vlob = data.vlobs.get(vlob_id)
        if vlob is None:
            return None, None
        return vlob, data.realms[vlob.realm_id]


# A claim only has to differ from every other claim of this process (it never leaves it):
# numbered, it costs no random bytes (`uuid4()`, 1.6 us, was about 2 % of the server CPU of
# a 4 KiB `block_create`).
_claim_numbers = itertools.count(1)


def _timestamp_of(atom: _Atom) -> datetime:
    return atom.timestamp


def _latest(atoms: dict[int, _Atom]) -> int:
    """The latest version of a non-empty revision: its last key (see `_Vlob.revisions`)."""
    return next(reversed(atoms))


def _roles_updated(organization_id: str, grant: RealmGrant) -> events.BackendEvent:
    return events.realm_roles_updated(organization_id, grant.granted_by, grant.realm_id, grant.user_id, grant.role)


def _state(realm: _Realm | None) -> RealmState | None:
    return realm.state if realm is not None else None


def _role(realm: _Realm | None, user_id: str) -> str | None:
    return realm.role_of(user_id) if realm is not None else None


# ---- realms ------------------------------------------------------------------------------------


class MemoryRealmStorage(_Base):
    async def create(self, organization_id: str, grant: RealmGrant) -> None:
        data = self._realms(organization_id)
        if grant.realm_id in data.realms:
            raise AlreadyExistsError()
        realm = _Realm(grant.realm_id)
        data.grant(realm, grant)
        data.realms[grant.realm_id] = realm
        self._store.publish(_roles_updated(organization_id, grant))

    def _member_realm(self, organization_id: str, user_id: str, realm_id: UUID) -> _Realm:
        realm = self._realms(organization_id).realms.get(realm_id)
        rules.check_realm_member(_state(realm), _role(realm, user_id))
        assert realm is not None
        return realm

    async def get_status(self, organization_id: str, user_id: str, realm_id: UUID) -> RealmStatus:
        realm = self._member_realm(organization_id, user_id, realm_id)
        return RealmStatus(
            encryption_revision=realm.encryption_revision,
            maintenance_type=realm.maintenance_type,
            maintenance_started_on=realm.maintenance_started_on,
            maintenance_started_by=realm.maintenance_started_by,
        )

    async def get_stats(self, organization_id: str, user_id: str, realm_id: UUID) -> RealmStats:
        realm = self._member_realm(organization_id, user_id, realm_id)
        return RealmStats(blocks_size=realm.blocks_size, vlobs_size=realm.vlobs_size)

    async def get_role_certificates(self, organization_id: str, user_id: str, realm_id: UUID) -> list[bytes]:
        realm = self._member_realm(organization_id, user_id, realm_id)
        # sorted() is stable: equal timestamps keep their insertion order.
        return [g.certificate for g in sorted(realm.grants, key=lambda g: g.granted_on)]

    async def update_roles(
        self,
        organization_id: str,
        grant: RealmGrant,
        recipient_message: bytes | None,
        bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS,
    ) -> int | None:
        org: OrgData = self._store.get(organization_id)
        data = self._realms(organization_id)
        target = org.users.get(grant.user_id)
        realm = data.realms.get(grant.realm_id)
        author_user = user_of(grant.granted_by)
        facts = RoleUpdateFacts(
            target_profile=target.profile if target is not None else None,
            target_revoked=target is not None and target.revoked_on is not None,
            realm=_state(realm),
            author_role=_role(realm, author_user),
            target_role=_role(realm, grant.user_id),
            target_last_role_granted_on=realm.last_role_granted_on(grant.user_id) if realm else None,
            target_last_vlob_update=realm.last_vlob_update.get(grant.user_id) if realm else None,
            target_last_role_change=realm.last_role_change.get(grant.user_id) if realm else None,
        )
        rules.check_update_roles(facts, grant.role, grant.granted_on)
        assert realm is not None
        messages = self._messages(organization_id)
        # Production stores no message for nil nor for an empty one.
        if recipient_message and not messages.can_take(grant.user_id, [recipient_message], bounds):
            raise MessageBoxFullError()
        data.grant(realm, grant)
        if not recipient_message:
            self._store.publish(_roles_updated(organization_id, grant))
            return None
        index = messages.append(grant.user_id, grant.granted_by, grant.granted_on, recipient_message)
        self._store.publish(
            _roles_updated(organization_id, grant),
            events.message_received(organization_id, grant.granted_by, grant.user_id, index),
        )
        return index

    async def start_reencryption_maintenance(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        encryption_revision: int,
        per_participant_message: dict[str, bytes],
        timestamp: datetime,
        now: datetime,
        bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS,
    ) -> list[tuple[str, int]]:
        org: OrgData = self._store.get(organization_id)
        realm = self._realms(organization_id).realms.get(realm_id)
        participants: list[str] = []
        if realm is not None:
            for user_id, grant in realm.roles.items():
                user = org.users.get(user_id)
                if grant.role is not None and user is not None and not user.is_revoked(now):
                    participants.append(user_id)
        rules.check_start_reencryption(
            _state(realm), _role(realm, user_of(author)), encryption_revision, participants, per_participant_message
        )
        assert realm is not None
        messages = self._messages(organization_id)
        for recipient, body in per_participant_message.items():
            if not messages.can_take(recipient, [body], bounds):
                raise MessageBoxFullError()
        realm.encryption_revision = encryption_revision
        realm.maintenance_type = rules.REENCRYPTION
        realm.maintenance_started_by = author
        realm.maintenance_started_on = timestamp
        indexes = [
            (recipient, messages.append(recipient, author, timestamp, body))
            for recipient, body in per_participant_message.items()
        ]
        self._store.publish(
            events.realm_maintenance(
                events.REALM_MAINTENANCE_STARTED, organization_id, author, realm_id, encryption_revision
            ),
            *(events.message_received(organization_id, author, recipient, index) for recipient, index in indexes),
        )
        return indexes

    async def finish_reencryption_maintenance(
        self, organization_id: str, author: str, realm_id: UUID, encryption_revision: int
    ) -> None:
        data = self._realms(organization_id)
        realm = data.realms.get(realm_id)
        over = True
        if realm is not None:
            previous = realm.encryption_revision - 1
            for vlob_id in realm.vlob_ids:
                revisions = data.vlobs[vlob_id].revisions
                if revisions.get(previous, {}).keys() - revisions.get(realm.encryption_revision, {}).keys():
                    over = False
                    break
        rules.check_finish_reencryption(_state(realm), _role(realm, user_of(author)), encryption_revision, over)
        assert realm is not None
        realm.maintenance_type = None
        realm.maintenance_started_by = None
        realm.maintenance_started_on = None
        self._store.publish(
            events.realm_maintenance(
                events.REALM_MAINTENANCE_FINISHED, organization_id, author, realm_id, encryption_revision
            )
        )

    async def get_realms_for_user(self, organization_id: str, user_id: str) -> dict[UUID, str]:
        data = self._store.get(organization_id).domains.get(REALM_DOMAIN)
        if data is None:
            return {}
        return {
            realm_id: role
            for realm_id, realm in data.realms_of_user.get(user_id, {}).items()
            if (role := realm.role_of(user_id)) is not None
        }


# ---- vlobs -------------------------------------------------------------------------------------


class MemoryVlobStorage(_Base):
    async def create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        encryption_revision: int,
        vlob_id: UUID,
        timestamp: datetime,
        blob: bytes,
    ) -> VlobWrite:
        data = self._realms(organization_id)
        realm = data.realms.get(realm_id)
        author_user = user_of(author)
        rules.check_vlob_create(
            _state(realm),
            _role(realm, author_user),
            realm.last_role_granted_on(author_user) if realm else None,
            encryption_revision,
            timestamp,
            vlob_id in data.vlobs,
        )
        assert realm is not None
        vlob = _Vlob(realm_id)
        vlob.revisions[realm.encryption_revision] = {1: _Atom(blob, author, timestamp)}
        data.vlobs[vlob_id] = vlob
        data.metadata_size += len(blob)
        realm.vlob_ids.append(vlob_id)
        checkpoint = realm.record_write(vlob_id, 1, author, timestamp, len(blob))
        self._store.publish(events.realm_vlobs_updated(organization_id, author, realm_id, checkpoint, vlob_id, 1))
        return VlobWrite(realm_id=realm_id, checkpoint=checkpoint)

    async def update(
        self,
        organization_id: str,
        author: str,
        encryption_revision: int,
        vlob_id: UUID,
        version: int,
        timestamp: datetime,
        blob: bytes,
    ) -> VlobWrite:
        data = self._realms(organization_id)
        vlob, realm = self._realm_of_vlob(data, vlob_id)
        author_user = user_of(author)
        latest_version, latest_timestamp = 0, None
        if vlob is not None and realm is not None:
            atoms = vlob.revisions.get(rules.readable_revision(realm.state), {})
            if atoms:
                latest_version = _latest(atoms)
                latest_timestamp = atoms[latest_version].timestamp
        rules.check_vlob_update(
            _state(realm),
            _role(realm, author_user),
            realm.last_role_granted_on(author_user) if realm else None,
            encryption_revision,
            timestamp,
            latest_version,
            latest_timestamp,
            version,
        )
        assert vlob is not None and realm is not None
        vlob.revisions.setdefault(realm.encryption_revision, {})[version] = _Atom(blob, author, timestamp)
        data.metadata_size += len(blob)
        checkpoint = realm.record_write(vlob_id, version, author, timestamp, len(blob))
        self._store.publish(
            events.realm_vlobs_updated(organization_id, author, vlob.realm_id, checkpoint, vlob_id, version)
        )
        return VlobWrite(realm_id=vlob.realm_id, checkpoint=checkpoint)

    async def read(
        self,
        organization_id: str,
        user_id: str,
        encryption_revision: int,
        vlob_id: UUID,
        version: int | None,
        timestamp: datetime | None,
    ) -> VlobVersion:
        data = self._realms(organization_id)
        vlob, realm = self._realm_of_vlob(data, vlob_id)
        rules.check_vlob_read(_state(realm), _role(realm, user_id), encryption_revision)
        assert vlob is not None and realm is not None
        atoms = vlob.revisions.get(rules.readable_revision(realm.state), {})
        selected = rules.select_vlob_version(atoms, _timestamp_of, version, timestamp)
        atom = atoms[selected]
        granted_on = realm.last_role_granted_on(user_of(atom.author))
        return VlobVersion(
            version=selected,
            blob=atom.blob,
            author=atom.author,
            timestamp=atom.timestamp,
            # Always known: writing the version required a role in this realm.
            author_last_role_granted_on=granted_on if granted_on is not None else atom.timestamp,
        )

    async def poll_changes(
        self, organization_id: str, user_id: str, realm_id: UUID, last_checkpoint: int
    ) -> VlobChanges:
        realm = self._realms(organization_id).realms.get(realm_id)
        rules.check_poll_changes(_state(realm), _role(realm, user_id))
        assert realm is not None
        changes: dict[UUID, int] = {}
        for vlob_id, version in realm.changes[max(last_checkpoint, 0) :]:
            changes[vlob_id] = version
        return VlobChanges(current_checkpoint=realm.checkpoint, changes=changes)

    async def list_versions(
        self, organization_id: str, user_id: str, vlob_id: UUID
    ) -> dict[int, tuple[datetime, str]]:
        data = self._realms(organization_id)
        vlob, realm = self._realm_of_vlob(data, vlob_id)
        rules.check_vlob_read(_state(realm), _role(realm, user_id), None)
        assert vlob is not None and realm is not None
        atoms = vlob.revisions.get(rules.readable_revision(realm.state), {})
        return {v: (atoms[v].timestamp, atoms[v].author) for v in sorted(atoms)}

    def _maintenance_realm(
        self, data: MemoryRealmState, user_id: str, realm_id: UUID, encryption_revision: int
    ) -> _Realm:
        realm = data.realms.get(realm_id)
        rules.check_reencryption_batch(_state(realm), _role(realm, user_id), encryption_revision)
        assert realm is not None
        return realm

    async def get_reencryption_batch(
        self, organization_id: str, user_id: str, realm_id: UUID, encryption_revision: int, size: int
    ) -> list[ReencryptionBatchEntry]:
        data = self._realms(organization_id)
        realm = self._maintenance_realm(data, user_id, realm_id, encryption_revision)
        batch: list[ReencryptionBatchEntry] = []
        for vlob_id in realm.vlob_ids:
            revisions = data.vlobs[vlob_id].revisions
            done = revisions.get(encryption_revision, {})
            for version, atom in sorted(revisions.get(encryption_revision - 1, {}).items()):
                if len(batch) >= size:
                    return batch
                if version not in done:
                    batch.append(ReencryptionBatchEntry(vlob_id, version, atom.blob))
        return batch

    async def save_reencryption_batch(
        self,
        organization_id: str,
        user_id: str,
        realm_id: UUID,
        encryption_revision: int,
        batch: list[ReencryptionBatchEntry],
    ) -> tuple[int, int]:
        data = self._realms(organization_id)
        realm = self._maintenance_realm(data, user_id, realm_id, encryption_revision)
        unordered: dict[int, dict[int, _Atom]] = {}  # revisions this batch filled out of order
        for entry in batch:
            vlob = data.vlobs.get(entry.vlob_id)
            if vlob is None or vlob.realm_id != realm_id:
                continue
            original = vlob.revisions.get(encryption_revision - 1, {}).get(entry.version)
            done = vlob.revisions.setdefault(encryption_revision, {})
            if original is None or entry.version in done:
                continue
            if done and entry.version < _latest(done):
                unordered[id(done)] = done
            done[entry.version] = _Atom(entry.blob, original.author, original.timestamp)
            data.metadata_size += len(entry.blob)
        for done in unordered.values():
            # Back to ascending versions (see `_Vlob.revisions`), once per vlob and batch.
            ordered = sorted(done.items())
            done.clear()
            done.update(ordered)
        total = done_count = 0
        for vlob_id in realm.vlob_ids:
            revisions = data.vlobs[vlob_id].revisions
            total += len(revisions.get(encryption_revision - 1, {}))
            done_count += len(revisions.get(encryption_revision, {}))
        return total, done_count


# ---- blocks ------------------------------------------------------------------------------------


class MemoryBlockStorage(_Base):
    async def claim_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        now: datetime,
        claim_seconds: float,
    ) -> UUID:
        data = self._realms(organization_id)
        realm = data.realms.get(realm_id)
        rules.check_block_create(_state(realm), _role(realm, user_of(author)), block_id in data.blocks)
        held = data.block_claims.get(block_id)
        if held is not None and held.author != author and held.claimed_on + timedelta(seconds=claim_seconds) > now:
            raise BlockClaimedError()
        claim = UUID(int=next(_claim_numbers))
        data.block_claims[block_id] = _BlockClaim(claim, author, now)
        return claim

    async def record_create(
        self,
        organization_id: str,
        author: str,
        realm_id: UUID,
        block_id: UUID,
        size: int,
        created_on: datetime,
        claim: UUID,
    ) -> None:
        data = self._realms(organization_id)
        held = data.block_claims.get(block_id)
        if held is None or held.claim != claim:
            if block_id in data.blocks:
                raise AlreadyExistsError()
            raise BlockClaimedError()
        del data.block_claims[block_id]
        realm = data.realms.get(realm_id)
        rules.check_block_create(_state(realm), _role(realm, user_of(author)), block_id in data.blocks)
        assert realm is not None
        data.blocks[block_id] = _Block(realm_id, author, size, created_on)
        realm.blocks_size += size

    async def check_read(self, organization_id: str, user_id: str, block_id: UUID) -> None:
        data = self._realms(organization_id)
        block = data.blocks.get(block_id)
        realm = data.realms[block.realm_id] if block is not None else None
        rules.check_block_read(_state(realm), _role(realm, user_id))


# ---- messages ----------------------------------------------------------------------------------


class MemoryMessageStorage(_Base):
    async def get(
        self, organization_id: str, user_id: str, offset: int, bounds: MessageBounds = DEFAULT_MESSAGE_BOUNDS
    ) -> list[Message]:
        if MESSAGE_DOMAIN not in self._store.get(organization_id).domains:
            return []
        return self._messages(organization_id).get(user_id, offset, bounds)
