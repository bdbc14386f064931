"""InviteStorage contract: invitations (idempotent creation, listing, deletion) and the
conduit (docs/protocol/invitations.md §3), with the events each write publishes."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import pytest
import pytest_twisted

from parsec.backend.conduit import FIRST_STEP, STEPS, InvalidStateError
from parsec.backend.models import Invitation
from parsec.backend.storage import AlreadyDeletedError, AlreadyMemberError, NotFoundError
from tests.storage_contract.conftest import World, make_user

ok = pytest_twisted.ensureDeferred

HANDLE = None  # alice's (a greeter's handle is its user's, read back by `info`)
GINA = ("gina@example.com", "Gina")


def status(greeter: str, token: object, value: str) -> tuple[str, dict[str, object]]:
    return ("invite.status_changed", {"greeter": greeter, "token": token, "status": value})


@ok
async def test_new_is_idempotent_and_publishes_idle(world: World) -> None:
    invite, org = world.invite, world.org
    await world.user.create_user(org, *make_user("gina", email=GINA[0]), world.ts())
    ginas = await invite.new(org, "gina", GINA, "DEVICE", None, world.ts())
    assert (await invite.info(org, ginas.token)).greeter_human_handle == GINA
    now = world.ts()
    invitation, events = await world.published(invite.new(org, "alice", HANDLE, "DEVICE", None, now))
    assert invitation == Invitation(
        token=invitation.token, type="DEVICE", greeter_user_id="alice", greeter_human_handle=HANDLE, created_on=now
    )
    assert events == [status("alice", invitation.token, "IDLE")]
    # The pending invitation of the same greeter, type and claimer e-mail is reused (and
    # announced again).
    again, events = await world.published(invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts()))
    assert again.token == invitation.token and again.created_on == now
    assert events == [status("alice", invitation.token, "IDLE")]
    assert await invite.info(org, invitation.token) == invitation

    user_invitation = await invite.new(org, "alice", HANDLE, "USER", "zack@example.com", world.ts())
    other_claimer = await invite.new(org, "alice", HANDLE, "USER", "yves@example.com", world.ts())
    bobs = await invite.new(org, "bob", None, "DEVICE", None, world.ts())
    assert len({invitation.token, user_invitation.token, other_claimer.token, bobs.token}) == 4
    assert user_invitation.claimer_email == "zack@example.com"
    assert [i.token for i in await invite.list(org, "alice")] == [
        invitation.token,
        user_invitation.token,
        other_claimer.token,
    ]
    assert [i.token for i in await invite.list(org, "bob")] == [bobs.token]
    assert await invite.list(org, "carol") == []
    assert await invite.list(org, "gina") == [ginas]
    with pytest.raises(NotFoundError):
        await invite.info(org, uuid4())
    with pytest.raises(NotFoundError):
        await invite.info("NoSuchOrg", invitation.token)


@ok
async def test_user_invitation_of_a_member(world: World) -> None:
    invite, org = world.invite, world.org
    now = world.ts()
    await world.user.create_user(org, *make_user("mia", email="mia@example.com"), now)
    error, events = await world.published(invite.new(org, "alice", HANDLE, "USER", "mia@example.com", now))
    assert isinstance(error, AlreadyMemberError) and events == []
    # A DEVICE invitation has no claimer e-mail to check; a revoked member may be invited.
    await invite.new(org, "mia", None, "DEVICE", None, now)
    await world.revoke("mia", now + timedelta(seconds=5), "alice@dev1")
    with pytest.raises(AlreadyMemberError):  # not revoked yet at `now`
        await invite.new(org, "alice", HANDLE, "USER", "mia@example.com", now)
    invitation = await invite.new(org, "alice", HANDLE, "USER", "mia@example.com", now + timedelta(seconds=5))
    assert invitation.claimer_email == "mia@example.com"


@ok
async def test_delete_and_its_event(world: World) -> None:
    invite, org = world.invite, world.org
    invitation = await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())
    error, events = await world.published(invite.delete(org, "bob", invitation.token, world.ts(), "CANCELLED"))
    assert isinstance(error, NotFoundError) and events == []  # another greeter's
    with pytest.raises(NotFoundError):
        await invite.delete(org, "alice", uuid4(), world.ts(), "CANCELLED")
    deleted_on = world.ts()
    assert await world.published(invite.delete(org, "alice", invitation.token, deleted_on, "FINISHED")) == (
        None,
        [status("alice", invitation.token, "DELETED")],
    )
    error, events = await world.published(invite.delete(org, "alice", invitation.token, world.ts(), "CANCELLED"))
    assert isinstance(error, AlreadyDeletedError) and events == []
    # Deleted: still known to `info`, no longer listed nor reused.
    info = await invite.info(org, invitation.token)
    assert (info.is_deleted, info.deleted_on, info.deleted_reason) == (True, deleted_on, "FINISHED")
    assert await invite.list(org, "alice") == []
    new = await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())
    assert new.token != invitation.token


@ok
async def test_conduit_exchange_and_events(world: World) -> None:
    invite, org = world.invite, world.org
    token = (await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())).token
    conduit = ("invite.conduit_updated", {"token": token})

    # The greeter speaks first, the claimer answers: each talk publishes.
    greeter_ctx, events = await world.published(invite.conduit_talk(org, token, "alice", FIRST_STEP, b"g1"))
    assert events == [conduit]
    assert await world.published(invite.conduit_listen(org, token, "alice", greeter_ctx)) == ((None, False), [])
    claimer_ctx, events = await world.published(invite.conduit_talk(org, token, None, FIRST_STEP, b"c1"))
    assert events == [conduit]
    # The claimer spoke second: it waits for the greeter to advance the conduit.
    assert await world.published(invite.conduit_listen(org, token, None, claimer_ctx)) == ((None, False), [])
    # The greeter spoke first: it takes the claimer's payload and advances (publishes).
    assert await world.published(invite.conduit_listen(org, token, "alice", greeter_ctx)) == (
        (b"c1", True),
        [conduit],
    )
    assert await world.published(invite.conduit_listen(org, token, None, claimer_ctx)) == ((b"g1", False), [])

    # Next step: the claimer first this time.
    step = STEPS[1]
    claimer_ctx = await invite.conduit_talk(org, token, None, step, b"c2")
    greeter_ctx = await invite.conduit_talk(org, token, "alice", step, b"g2")
    assert await invite.conduit_listen(org, token, None, claimer_ctx) == (b"g2", True)
    assert await invite.conduit_listen(org, token, "alice", greeter_ctx) == (b"c2", False)

    # Out of step: refused, nothing written nor published; step 1 restarts the exchange.
    error, events = await world.published(invite.conduit_talk(org, token, "alice", STEPS[4], b"x"))
    assert isinstance(error, InvalidStateError) and events == []
    restarted, events = await world.published(invite.conduit_talk(org, token, None, FIRST_STEP, b"c1 again"))
    assert events == [conduit] and restarted.peer_payload is None


@ok
async def test_conduit_errors(world: World) -> None:
    invite, org = world.invite, world.org
    token = (await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())).token
    ctx = await invite.conduit_talk(org, token, "alice", FIRST_STEP, b"g1")
    for greeter in ("bob", "nobody"):  # another greeter's invitation: not found
        with pytest.raises(NotFoundError):
            await invite.conduit_talk(org, token, greeter, FIRST_STEP, b"x")
        with pytest.raises(NotFoundError):
            await invite.conduit_listen(org, token, greeter, ctx)
    with pytest.raises(NotFoundError):
        await invite.conduit_talk(org, uuid4(), None, FIRST_STEP, b"x")
    await invite.delete(org, "alice", token, world.ts(), "CANCELLED")
    for greeter in ("alice", None):
        error, events = await world.published(invite.conduit_talk(org, token, greeter, FIRST_STEP, b"x"))
        assert isinstance(error, AlreadyDeletedError) and events == []
        with pytest.raises(AlreadyDeletedError):
            await invite.conduit_listen(org, token, greeter, ctx)


@ok
async def test_deleted_conduit_still_answers_a_listener_whose_peer_spoke(world: World) -> None:
    """docs/protocol/DECISIONS.md: the greeter may delete the invitation right after taking the
    claimer's last payload, before the claimer has read the greeter's."""
    invite, org = world.invite, world.org
    token = (await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())).token
    greeter_ctx = await invite.conduit_talk(org, token, "alice", FIRST_STEP, b"g1")
    claimer_ctx = await invite.conduit_talk(org, token, None, FIRST_STEP, b"c1")
    assert await invite.conduit_listen(org, token, None, claimer_ctx) == (None, False)
    assert await invite.conduit_listen(org, token, "alice", greeter_ctx) == (b"c1", True)
    await invite.delete(org, "alice", token, world.ts(), "FINISHED")
    # Frozen: the claimer reads its answer, nothing is written nor published, again and again.
    for _ in range(2):
        assert await world.published(invite.conduit_listen(org, token, None, claimer_ctx)) == ((b"g1", False), [])
    # Another greeter's invitation stays unknown.
    with pytest.raises(NotFoundError):
        await invite.conduit_listen(org, token, "bob", greeter_ctx)
    # A listener that would still have to wait gets AlreadyDeletedError.
    token = (await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())).token
    greeter_ctx = await invite.conduit_talk(org, token, "alice", FIRST_STEP, b"g1")
    await invite.delete(org, "alice", token, world.ts(), "CANCELLED")
    with pytest.raises(AlreadyDeletedError):
        await invite.conduit_listen(org, token, "alice", greeter_ctx)


@ok
async def test_reads_publish_nothing(world: World) -> None:
    invite, org = world.invite, world.org
    token = (await invite.new(org, "alice", HANDLE, "DEVICE", None, world.ts())).token
    for call in (invite.info(org, token), invite.list(org, "alice")):
        result, events = await world.published(call)
        assert not isinstance(result, Exception) and events == [], result
