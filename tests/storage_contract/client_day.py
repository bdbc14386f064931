"""The storage calls of a client's (and an administrator's) day, for tests that measure what
each call costs as the data of others grows (tests/postgresql_realm/test_plans.py on
PostgreSQL, tests/storage_contract/test_memory_scale.py on memory): every call goes through
`call(name, coroutine)`, which measures it and returns its result.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import uuid4

from parsec.backend.models import ReencryptionBatchEntry
from parsec.backend.storage import PkiAcceptance, PkiEnrollment
from tests.storage_contract.conftest import World, make_device, make_user

_members = itertools.count(1)

Call = Callable[[str, Awaitable[Any]], Awaitable[Any]]


async def client_day(world: World, call: Call, blocks: Any = None) -> None:
    """A new realm of alice's, shared with a new user, written, read and re-encrypted, blocks,
    messages, devices, an invitation, PKI enrollments, a new organization, a revocation.
    `blocks`: the POSTGRESQL blockstore's `PgBlockBytes`, whose calls are made too."""
    member = f"member{next(_members)}"

    await call("user_create_user", world.add_user(f"{member}@dev1"))
    realm_id = uuid4()
    org = world.org
    await call("realm_create", world.realm.create(org, world.grant(realm_id, "alice@dev1", "alice", "OWNER")))
    await call("realm_update_roles", world.realm.update_roles(
        org, world.grant(realm_id, "alice@dev1", member, "CONTRIBUTOR"), b"message"))
    await call("realm_get_status", world.realm.get_status(org, member, realm_id))
    await call("realm_get_stats", world.realm.get_stats(org, member, realm_id))
    await call("realm_get_role_certificates", world.realm.get_role_certificates(org, member, realm_id))
    await call("realm_get_realms_for_user", world.realm.get_realms_for_user(org, member))
    vlob_id = uuid4()
    await call("vlob_create", world.vlob.create(org, f"{member}@dev1", realm_id, 1, vlob_id, world.ts(), b"v1"))
    await call("vlob_update", world.vlob.update(org, f"{member}@dev1", 1, vlob_id, 2, world.ts(), b"v2"))
    await call("vlob_read", world.vlob.read(org, member, 1, vlob_id, None, None))
    await call("vlob_read_version", world.vlob.read(org, member, 1, vlob_id, 1, None))
    await call("vlob_poll_changes", world.vlob.poll_changes(org, member, realm_id, 0))
    await call("vlob_list_versions", world.vlob.list_versions(org, member, vlob_id))
    block_id = uuid4()
    held = await call("block_claim_create", world.block.claim_create(
        org, f"{member}@dev1", realm_id, block_id, world.ts(), 300.0))
    await call("block_record_create", world.block.record_create(
        org, f"{member}@dev1", realm_id, block_id, 3, world.ts(), held))
    await call("block_check_read", world.block.check_read(org, member, block_id))
    if blocks is not None:
        block_id = uuid4()
        await call(
            "block_create_with_data",
            blocks.create_with_data(org, f"{member}@dev1", realm_id, block_id, b"b", world.ts(), 300.0),
        )
        await call("block_read_with_data", blocks.read_with_data(org, member, block_id))
    await call("message_get", world.message.get(org, member, 0))
    await call("user_get_user", world.user.get_user(org, member))
    await call("user_get_user_with_trustchain", world.user.get_user_with_trustchain(org, member))
    await call("user_get_authenticated_identity", world.user.get_authenticated_identity(org, f"{member}@dev1"))
    await call("user_create_device", world.user.create_device(org, make_device(f"{member}@dev2")))
    await call("user_is_email_used", world.user.is_email_used_by_active_user(org, f"{member}@example.com", world.ts()))
    await call("organization_get", world.organization.get(org))
    invitation = await call("invite_new", world.invite.new(org, member, None, "DEVICE", None, world.ts()))
    await call("invite_info", world.invite.info(org, invitation.token))
    await call("invite_list", world.invite.list(org, member))
    talk = await call(
        "invite_conduit_talk", world.invite.conduit_talk(org, invitation.token, member, "1_WAIT_PEERS", b"k")
    )
    await call("invite_conduit_listen", world.invite.conduit_listen(org, invitation.token, member, talk))
    await call("invite_delete", world.invite.delete(org, member, invitation.token, world.ts(), "CANCELLED"))
    now = world.ts()
    await call("realm_start_reencryption", world.realm.start_reencryption_maintenance(
        org, "alice@dev1", realm_id, 2, {"alice": b"a", member: b"m"}, now, now))
    batch = await call("vlob_get_reencryption_batch", world.vlob.get_reencryption_batch(org, "alice", realm_id, 2, 100))
    await call("vlob_save_reencryption_batch", world.vlob.save_reencryption_batch(
        org, "alice", realm_id, 2, [ReencryptionBatchEntry(e.vlob_id, e.version, b"x") for e in batch]))
    await call("realm_finish_reencryption", world.realm.finish_reencryption_maintenance(org, "alice@dev1", realm_id, 2))
    submitted = PkiEnrollment(uuid4(), f"cert-{member}".encode(), b"sig", b"payload", world.ts())
    await call("pki_submit", world.pki.submit(org, submitted, False, None, world.ts()))
    await call("pki_info", world.pki.info(org, submitted.enrollment_id))
    pki_user, pki_device = make_user(f"{member}pki", "STANDARD")
    acceptance = PkiAcceptance("alice@dev1", b"acert", b"asig", b"apayload", world.ts())
    await call("pki_accept", world.pki.accept(org, submitted.enrollment_id, acceptance, pki_user, pki_device, world.ts()))
    rejected = PkiEnrollment(uuid4(), f"cert-{member}-2".encode(), b"sig", b"payload", world.ts())
    await world.pki.submit(org, rejected, False, None, world.ts())
    await call("pki_reject", world.pki.reject(org, rejected.enrollment_id, world.ts()))
    new_org = f"{member}org"
    await call("organization_create", world.organization.create(new_org, "token", None, True, world.ts()))
    founder, founder_device = make_user("founder", "ADMIN", certifier=None)
    await call(
        "organization_bootstrap",
        world.organization.bootstrap(new_org, "token", b"rvk", founder, founder_device, world.ts()),
    )
    await call("user_revoke", world.user.revoke_user(org, member, b"revoked", "alice@dev1", world.ts()))
