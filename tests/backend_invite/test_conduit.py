"""The claimer/greeter conduit over the wire (docs/protocol/invitations.md §3, docs/protocol/commands.md §8.5, docs/protocol/transport.md §6.1-6.2)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import pytest_twisted

from tests.backend_invite.conftest import Conn, InviteEnv, no_reply_yet, until
from tests.backend_invite.exchange import (
    CLAIMER_CMDS,
    CLAIMER_KEY,
    CLAIMER_NONCE,
    GREETER_CMDS,
    GREETER_KEY,
    GREETER_NONCE,
    HASHED_NONCE,
    INVALID_STATE,
    STATE,
    Exchange,
    claimer_fields,
    greeter_fields,
    send_claimer,
    send_greeter,
)
from tests.orgs import bootstrap_organization

ok = pytest_twisted.ensureDeferred

GREETER_KEY2 = b"\x42" * 32
CLAIMER_KEY2 = b"\x43" * 32

# Where a side can be left blocked in the conduit (docs/protocol/invitations.md §3.1 state names, shortened):
# the claimer's 2a also waits in 2_2 for the greeter's nonce, the greeter's 2b in 2_3 for the
# claimer's nonce.
CLAIMER_POINTS = ["1", "2_1", "2_2", "3_1", "3_2", "4"]
GREETER_POINTS = ["1", "2_1", "2_3", "3_1", "3_2", "4"]
ALL_POINTS = [("claimer", p) for p in CLAIMER_POINTS] + [("greeter", p) for p in GREETER_POINTS]
LATER_POINTS = [(side, point) for side, point in ALL_POINTS if point != "1"]

_POINT_STEP = {"1": "1", "2_1": "2a", "2_2": "2b", "2_3": "2b", "3_1": "3a", "3_2": "3b", "4": "4"}


def other(side: str) -> str:
    return "claimer" if side == "greeter" else "greeter"


async def setup(org: InviteEnv, invitation_type: str = "DEVICE") -> Exchange:
    greeter = await org.connect("alice@dev1")
    token = await org.new_invitation(greeter, invitation_type)
    claimer = await org.claimer(token, invitation_type)
    return Exchange(org, token, greeter, claimer)


def conn_of(ex: Exchange, side: str) -> Conn:
    return ex.greeter if side == "greeter" else ex.claimer


def send_step(ex: Exchange, side: str, step: str, **kwargs: Any) -> None:
    if side == "greeter":
        send_greeter(ex.greeter, step, ex.token, **kwargs)
    else:
        send_claimer(ex.claimer, step, **kwargs)


async def bring_to(ex: Exchange, side: str, point: str) -> None:
    """Run the exchange until `side` is blocked (first speaker) at `point`; the other side is idle."""
    if point == "1":
        send_step(ex, side, "1")
        await ex.env.blocked(ex.token, side, "1_WAIT_PEERS")
        return
    await ex.step1()
    if point == "2_1":
        send_step(ex, side, "2a")
        await ex.env.blocked(ex.token, side, "2_1_CLAIMER_HASHED_NONCE")
        return
    await ex.step2a()
    if point == "2_2":
        assert side == "claimer"
        return  # the claimer's 2a waits for the greeter's nonce
    await ex.step2b_greeter()
    if point == "2_3":
        assert side == "greeter"
        return  # the greeter's 2b waits for the claimer's nonce
    await ex.step2b_claimer()
    for step in ("3a", "3b", "4"):
        if point == {"3a": "3_1", "3b": "3_2", "4": "4"}[step]:
            send_step(ex, side, step)
            await ex.env.blocked(ex.token, side, STATE[step])
            await no_reply_yet(conn_of(ex, side))
            return
        await ex._simple(step, "greeter")
    raise AssertionError(point)


async def pair_step1(ex: Exchange, first: str, greeter_key: bytes, claimer_key: bytes) -> None:
    """`first` already sent step 1 (and waits): the other side sends it too, both get the keys."""
    await ex.env.blocked(ex.token, first, "1_WAIT_PEERS")
    if first == "greeter":
        send_claimer(ex.claimer, "1", key=claimer_key)
    else:
        send_greeter(ex.greeter, "1", ex.token, key=greeter_key)
    assert await ex.greeter.recv() == {"status": "ok", "claimer_public_key": claimer_key}
    assert await ex.claimer.recv() == {"status": "ok", "greeter_public_key": greeter_key}


async def finish(ex: Exchange, *, delete: bool = True) -> None:
    """Steps 2 to 4 (step 1 done), then the greeter deletes the invitation (FINISHED)."""
    await ex.step2("claimer")
    await ex.step3a("claimer")
    await ex.step3b("greeter")
    await ex.step4("claimer", b"request", b"")
    await ex.step4("greeter", b"confirmation", b"")
    if delete:
        assert await ex.greeter.cmd("invite_delete", token=ex.token, reason="FINISHED") == {"status": "ok"}
        await ex.claimer.expect_closed_without_reply()


# ---- the good path -----------------------------------------------------------------------------


@ok
@pytest.mark.parametrize("leader", ["greeter", "claimer"])
@pytest.mark.parametrize("invitation_type", ["DEVICE", "USER"])
async def test_full_exchange(org: InviteEnv, leader: str, invitation_type: str) -> None:
    ex = await setup(org, invitation_type)
    await ex.step1(leader)
    await ex.step2a(leader)
    # 2b: the claimer cannot send its nonce before its 2a got the greeter's nonce, i.e. before
    # the greeter's 2b started; the other orders of 2_2/2_3 are in test_conduit_state.py.
    await ex.step2b_greeter()
    await ex.step2b_claimer()
    await ex.step3a(leader)
    await ex.step3b(leader)
    # Step 4 can be repeated any number of times, with either leader, empty payloads included.
    await ex.step4(leader, b"greeter payload 1", b"claimer payload 1")
    await ex.step4(leader, b"", b"")
    await ex.step4(other(leader), b"", b"claimer payload 3")
    await ex.step4(other(leader), b"greeter payload 4", b"")
    await ex.step4(leader, b"\x00" * 1000, b"\xff" * 3)
    assert await ex.greeter.cmd("invite_delete", token=ex.token, reason="FINISHED") == {"status": "ok"}
    await ex.claimer.expect_closed_without_reply()
    await org.assert_no_leak()


@ok
async def test_payloads_are_opaque(org: InviteEnv) -> None:
    ex = await setup(org)
    await ex.step1()
    # Hashed nonce and nonces of any length (empty included): never inspected.
    send_greeter(ex.greeter, "2a", ex.token)
    ex.claimer.send(CLAIMER_CMDS["2a"], claimer_hashed_nonce=b"")
    assert await ex.greeter.recv() == {"status": "ok", "claimer_hashed_nonce": b""}
    ex.greeter.send(GREETER_CMDS["2b"], token=ex.token, greeter_nonce=b"x" * 5000)
    assert await ex.claimer.recv() == {"status": "ok", "greeter_nonce": b"x" * 5000}
    ex.claimer.send(CLAIMER_CMDS["2b"], claimer_nonce=b"")
    assert await ex.claimer.recv() == {"status": "ok"}
    assert await ex.greeter.recv() == {"status": "ok", "claimer_nonce": b""}
    await org.assert_no_leak()


@ok
async def test_public_keys_must_be_32_bytes(org: InviteEnv) -> None:
    ex = await setup(org)
    rep = await ex.greeter.cmd(GREETER_CMDS["1"], token=ex.token, greeter_public_key=b"short")
    assert rep["status"] == "bad_message"
    rep = await ex.claimer.cmd(CLAIMER_CMDS["1"], claimer_public_key=b"x" * 33)
    assert rep["status"] == "bad_message"
    # Nothing was written in the conduit.
    assert (await ex.env.conduit(ex.token)).greeter_payload is None
    assert (await ex.env.conduit(ex.token)).claimer_payload is None
    await ex.step1()
    await org.assert_no_leak()


@ok
async def test_two_invitations_are_independent(org: InviteEnv) -> None:
    ex1 = await setup(org, "DEVICE")
    greeter2 = await org.connect("alice@dev2")
    token2 = await org.new_invitation(greeter2, "USER")
    ex2 = Exchange(org, token2, greeter2, await org.claimer(token2, "USER"))
    send_greeter(ex1.greeter, "1", ex1.token)
    await org.blocked(ex1.token, "greeter", "1_WAIT_PEERS")
    await ex2.step1("claimer", GREETER_KEY2, CLAIMER_KEY2)
    await no_reply_yet(ex1.greeter)
    send_claimer(ex1.claimer, "1")
    assert await ex1.greeter.recv() == {"status": "ok", "claimer_public_key": CLAIMER_KEY}
    assert await ex1.claimer.recv() == {"status": "ok", "greeter_public_key": GREETER_KEY}
    await finish(ex1)
    await finish(ex2)
    await org.assert_no_leak()


# ---- resets ------------------------------------------------------------------------------------


@ok
@pytest.mark.parametrize("waiter,point", LATER_POINTS)
@pytest.mark.parametrize("resetter", ["peer", "same side, other connection"])
async def test_reset_while_waiting(org: InviteEnv, waiter: str, point: str, resetter: str) -> None:
    ex = await setup(org)
    await bring_to(ex, waiter, point)
    waiting = conn_of(ex, waiter)

    if resetter == "peer":
        reset_side = other(waiter)
        reset_conn = conn_of(ex, reset_side)
    else:
        reset_side = waiter
        if waiter == "greeter":
            reset_conn = await org.connect("alice@dev2")
        else:
            reset_conn = await org.claimer(ex.token)
    if reset_side == "greeter":
        send_greeter(reset_conn, "1", ex.token, key=GREETER_KEY2)
    else:
        send_claimer(reset_conn, "1", key=CLAIMER_KEY2)

    # The waiting peer learns that the exchange was reset.
    assert await waiting.recv() == INVALID_STATE
    await org.blocked(ex.token, reset_side, "1_WAIT_PEERS")
    await no_reply_yet(reset_conn)

    # Both restart at step 1, then go to the end.
    if resetter == "peer":
        send_step(ex, waiter, "1", key=GREETER_KEY2 if waiter == "greeter" else CLAIMER_KEY2)
        assert await ex.greeter.recv() == {"status": "ok", "claimer_public_key": CLAIMER_KEY2}
        assert await ex.claimer.recv() == {"status": "ok", "greeter_public_key": GREETER_KEY2}
    else:
        if waiter == "greeter":
            ex.greeter = reset_conn
            await pair_step1(ex, "greeter", GREETER_KEY2, CLAIMER_KEY)
        else:
            ex.claimer = reset_conn
            await pair_step1(ex, "claimer", GREETER_KEY, CLAIMER_KEY2)
    await finish(ex)
    await org.assert_no_leak()


@ok
@pytest.mark.parametrize("side", ["greeter", "claimer"])
async def test_reset_at_step_1_by_another_connection(org: InviteEnv, side: str) -> None:
    ex = await setup(org)
    await bring_to(ex, side, "1")
    first = conn_of(ex, side)
    if side == "greeter":
        second = await org.connect("alice@dev2")
        send_greeter(second, "1", ex.token, key=GREETER_KEY2)
    else:
        second = await org.claimer(ex.token)
        send_claimer(second, "1", key=CLAIMER_KEY2)
    assert await first.recv() == INVALID_STATE
    if side == "greeter":
        ex.greeter = second
        await pair_step1(ex, "greeter", GREETER_KEY2, CLAIMER_KEY)
    else:
        ex.claimer = second
        await pair_step1(ex, "claimer", GREETER_KEY, CLAIMER_KEY2)
    await finish(ex)
    await org.assert_no_leak()


@ok
async def test_replaying_a_step_is_invalid_state(org: InviteEnv) -> None:
    ex = await setup(org)
    alice2 = await org.connect("alice@dev2")
    await ex.step1()
    await ex.step2()
    # The conduit is now in 3_1: replaying step 2 (or jumping ahead) fails at once, without reset.
    for step in ("2a", "2b", "3b", "4"):
        assert await ex.greeter.cmd(GREETER_CMDS[step], **greeter_fields(step, ex.token)) == INVALID_STATE
        assert await ex.claimer.cmd(CLAIMER_CMDS[step], **claimer_fields(step)) == INVALID_STATE
    assert (await ex.env.conduit(ex.token)).state == "3_1_CLAIMER_TRUST"

    # Replaying the step one is waiting in (own slot already filled) fails too; the original waits on.
    send_greeter(ex.greeter, "3a", ex.token)
    await org.blocked(ex.token, "greeter", "3_1_CLAIMER_TRUST")
    assert await alice2.cmd(GREETER_CMDS["3a"], token=ex.token) == INVALID_STATE
    await no_reply_yet(ex.greeter)
    send_claimer(ex.claimer, "3a")
    assert await ex.greeter.recv() == {"status": "ok"}
    assert await ex.claimer.recv() == {"status": "ok"}
    # ... and an already completed step.
    assert await ex.claimer.cmd(CLAIMER_CMDS["3a"]) == INVALID_STATE

    await ex.step3b("claimer")
    # Step 4: a second payload from the same side while the first waits.
    send_claimer(ex.claimer, "4", payload=b"first")
    await org.blocked(ex.token, "claimer", "4_COMMUNICATE")
    other_claimer = await org.claimer(ex.token)
    assert await other_claimer.cmd(CLAIMER_CMDS["4"], payload=b"second") == INVALID_STATE
    send_greeter(ex.greeter, "4", ex.token, payload=b"g")
    assert await ex.claimer.recv() == {"status": "ok", "payload": b"g"}
    assert await ex.greeter.recv() == {"status": "ok", "payload": b"first"}

    # After a replay failure, the peers recover by restarting at step 1.
    assert await ex.greeter.cmd(GREETER_CMDS["3a"], token=ex.token) == INVALID_STATE
    await ex.step1("claimer", GREETER_KEY2, CLAIMER_KEY2)
    await finish(ex)
    await org.assert_no_leak()


# ---- connections -------------------------------------------------------------------------------


@ok
async def test_claimer_step_1_retry_over_a_new_connection(org: InviteEnv) -> None:
    ex = await setup(org)
    send_claimer(ex.claimer, "1")
    await org.blocked(ex.token, "claimer", "1_WAIT_PEERS")
    await ex.claimer.close()
    await until(lambda: org.waiters(ex.token) == 0, "abandoned step 1 cleaned up")

    ex.claimer = await org.claimer(ex.token)
    send_claimer(ex.claimer, "1", key=CLAIMER_KEY2)
    await pair_step1(ex, "claimer", GREETER_KEY, CLAIMER_KEY2)
    await finish(ex)
    await org.assert_no_leak()


@ok
async def test_same_key_retry_over_a_new_connection(org: InviteEnv) -> None:
    # The 2.10 client retries with the same key: the retry still pairs with the greeter.
    ex = await setup(org)
    send_claimer(ex.claimer, "1")
    await org.blocked(ex.token, "claimer", "1_WAIT_PEERS")
    await org.close_and_wait(ex.claimer)
    ex.claimer = await org.claimer(ex.token)
    await ex.step1("claimer")
    await finish(ex)
    await org.assert_no_leak()


@ok
async def test_greeter_and_claimer_switch_connections(org: InviteEnv) -> None:
    ex = await setup(org)
    alice1 = ex.greeter
    alice2 = await org.connect("alice@dev2")
    await ex.step1("greeter")
    ex.greeter = alice2
    await ex.step2("claimer")
    ex.greeter = alice1
    ex.claimer = await org.claimer(ex.token)  # the claimer reconnects
    await ex.step3a("greeter")
    ex.greeter = await org.connect("alice@dev1")  # another, brand new, connection
    await ex.step3b("claimer")
    ex.greeter = alice2
    ex.claimer = await org.claimer(ex.token)
    await ex.step4("greeter", b"a", b"b")
    ex.greeter = alice1
    await ex.step4("claimer", b"c", b"d")
    await org.assert_no_leak()


@ok
async def test_claimer_wait_peer_is_cancelled_by_a_new_request(org: InviteEnv) -> None:
    ex = await setup(org)
    send_claimer(ex.claimer, "1")
    await org.blocked(ex.token, "claimer", "1_WAIT_PEERS")
    ex.claimer.send("ping", ping="hello")
    ex.claimer.forget(CLAIMER_CMDS["1"])
    # No reply for the abandoned command: the next reply is the new request's.
    assert await ex.claimer.recv() == {"status": "ok", "pong": "hello"}
    await until(lambda: org.waiters(ex.token) == 0, "abandoned step 1 cleaned up")
    assert await ex.claimer.cmd("invite_info") == {
        "status": "ok",
        "type": "DEVICE",
        "greeter_user_id": "alice",
        "greeter_human_handle": ["alice@example.com", "Alicey McAliceFace"],
    }
    # The claimer starts step 1 again, the greeter joins.
    await ex.step1("claimer", GREETER_KEY, CLAIMER_KEY2)
    await no_reply_yet(ex.claimer)
    await finish(ex)
    await org.assert_no_leak()


@ok
async def test_cancelled_twice_then_greeter_first(org: InviteEnv) -> None:
    ex = await setup(org)
    for _ in range(2):
        send_claimer(ex.claimer, "1")
        await org.blocked(ex.token, "claimer", "1_WAIT_PEERS")
        ex.claimer.send("ping", ping="p")
        ex.claimer.forget(CLAIMER_CMDS["1"])
        assert await ex.claimer.recv() == {"status": "ok", "pong": "p"}
    # The greeter arrives while the claimer is gone: it pairs with the stale claimer key and waits
    # for the claimer to confirm; the claimer's next step 1 resets, so the greeter must restart.
    send_greeter(ex.greeter, "1", ex.token)
    await until(lambda: org.waiters(ex.token) == 1, "greeter waiting")
    send_claimer(ex.claimer, "1", key=CLAIMER_KEY2)
    assert await ex.greeter.recv() == INVALID_STATE
    send_greeter(ex.greeter, "1", ex.token, key=GREETER_KEY2)
    assert await ex.greeter.recv() == {"status": "ok", "claimer_public_key": CLAIMER_KEY2}
    assert await ex.claimer.recv() == {"status": "ok", "greeter_public_key": GREETER_KEY2}
    await finish(ex)
    await org.assert_no_leak()


async def release(ex: Exchange, side: str, point: str) -> None:
    """`side` waits at `point`: its partner does its part, `side`'s pending command replies."""
    waiting = conn_of(ex, side)
    if side == "claimer":
        if point == "2_1":
            send_greeter(ex.greeter, "2a", ex.token)
            assert await ex.greeter.recv() == {"status": "ok", "claimer_hashed_nonce": HASHED_NONCE}
        if point in ("2_1", "2_2"):
            send_greeter(ex.greeter, "2b", ex.token)
            assert await waiting.recv() == {"status": "ok", "greeter_nonce": GREETER_NONCE}
            return
    elif point == "2_1":
        send_claimer(ex.claimer, "2a")
        assert await waiting.recv() == {"status": "ok", "claimer_hashed_nonce": HASHED_NONCE}
        return
    elif point == "2_3":
        send_claimer(ex.claimer, "2b")
        assert await ex.claimer.recv() == {"status": "ok"}
        assert await waiting.recv() == {"status": "ok", "claimer_nonce": CLAIMER_NONCE}
        return
    step = _POINT_STEP[point]
    send_step(ex, other(side), step, payload=b"from partner")
    expected: dict[str, Any] = {"status": "ok"}
    if step == "4":
        expected["payload"] = b"from partner"
    assert await waiting.recv() == expected
    partner_rep = await conn_of(ex, other(side)).recv()
    assert partner_rep["status"] == "ok"


@ok
@pytest.mark.parametrize("side,point", LATER_POINTS)
async def test_other_conduit_commands_are_not_cancellable(org: InviteEnv, side: str, point: str) -> None:
    # A request sent while a conduit command (other than the claimer's step 1) waits is queued:
    # it is answered after the waiting command, which is not abandoned.
    ex = await setup(org)
    await bring_to(ex, side, point)
    conn_of(ex, side).send("ping", ping="queued")
    await no_reply_yet(conn_of(ex, side))
    await release(ex, side, point)
    assert await conn_of(ex, side).recv() == {"status": "ok", "pong": "queued"}
    await org.assert_no_leak()


# ---- a peer disconnecting mid-exchange ---------------------------------------------------------


@ok
@pytest.mark.parametrize("waiter,point", ALL_POINTS)
async def test_idle_peer_disconnects_while_other_waits(org: InviteEnv, waiter: str, point: str) -> None:
    ex = await setup(org)
    await bring_to(ex, waiter, point)
    waiting = conn_of(ex, waiter)
    gone = other(waiter)
    await org.close_and_wait(conn_of(ex, gone))
    await no_reply_yet(waiting)

    # The peer comes back (new connection) and restarts at step 1.
    if gone == "greeter":
        ex.greeter = await org.connect("alice@dev2")
        send_greeter(ex.greeter, "1", ex.token, key=GREETER_KEY2)
    else:
        ex.claimer = await org.claimer(ex.token)
        send_claimer(ex.claimer, "1", key=CLAIMER_KEY2)
    keys = {"greeter": GREETER_KEY2, "claimer": CLAIMER_KEY2}
    if point == "1":
        # The waiter was itself in step 1: that is a normal pairing, no reset.
        await pair_step1_done(ex, GREETER_KEY if waiter == "greeter" else GREETER_KEY2,
                              CLAIMER_KEY if waiter == "claimer" else CLAIMER_KEY2)
    else:
        assert await waiting.recv() == INVALID_STATE
        send_step(ex, waiter, "1", key=keys[waiter])
        await pair_step1_done(ex, GREETER_KEY2, CLAIMER_KEY2)
    await finish(ex)
    await org.assert_no_leak()


async def pair_step1_done(ex: Exchange, greeter_key: bytes, claimer_key: bytes) -> None:
    assert await ex.greeter.recv() == {"status": "ok", "claimer_public_key": claimer_key}
    assert await ex.claimer.recv() == {"status": "ok", "greeter_public_key": greeter_key}


@ok
@pytest.mark.parametrize("side,point", ALL_POINTS)
async def test_waiting_peer_disconnects(org: InviteEnv, side: str, point: str) -> None:
    """`side` blocks at `point` and disconnects; its partner then does its part of that step."""
    ex = await setup(org)
    await bring_to(ex, side, point)
    await conn_of(ex, side).close()
    await until(lambda: org.waiters(ex.token) == 0, "the disconnected peer's waiter is gone")

    # The partner talks to a conduit whose other slot is stale: it waits (no timeout)...
    partner = other(side)
    send_step(ex, partner, _POINT_STEP[point])
    waiting = conn_of(ex, partner)
    await until(lambda: org.waiters(ex.token) == 1, "partner waiting")
    await no_reply_yet(waiting)

    # ... until the peer comes back and restarts at step 1, which resets: the partner restarts too.
    if side == "greeter":
        ex.greeter = await org.connect("alice@dev2")
        send_greeter(ex.greeter, "1", ex.token, key=GREETER_KEY2)
    else:
        ex.claimer = await org.claimer(ex.token)
        send_claimer(ex.claimer, "1", key=CLAIMER_KEY2)
    assert await waiting.recv() == INVALID_STATE
    keys = {"greeter": GREETER_KEY2, "claimer": CLAIMER_KEY2}
    send_step(ex, partner, "1", key=keys[partner])
    await pair_step1_done(ex, GREETER_KEY2, CLAIMER_KEY2)
    await finish(ex)
    await org.assert_no_leak()


@ok
async def test_everybody_leaves_mid_exchange(org: InviteEnv) -> None:
    ex = await setup(org)
    await ex.step1()
    await ex.step2a()  # the claimer waits in 2a (2_2)
    alice2 = await org.connect("alice@dev2")
    send_greeter(alice2, "1", ex.token, key=GREETER_KEY2)  # reset -> the claimer gets invalid_state
    assert await ex.claimer.recv() == INVALID_STATE
    send_claimer(ex.claimer, "1")
    assert await alice2.recv() == {"status": "ok", "claimer_public_key": CLAIMER_KEY}
    assert await ex.claimer.recv() == {"status": "ok", "greeter_public_key": GREETER_KEY2}
    send_greeter(ex.greeter, "2a", ex.token)
    await org.blocked(ex.token, "greeter", "2_1_CLAIMER_HASHED_NONCE")
    send_claimer(ex.claimer, "2a")
    assert await ex.greeter.recv() == {"status": "ok", "claimer_hashed_nonce": HASHED_NONCE}
    send_greeter(alice2, "3a", ex.token)  # too early: invalid_state, nothing changes
    assert await alice2.recv() == INVALID_STATE
    send_greeter(alice2, "1", ex.token)  # reset while the claimer waits in its 2a
    assert await ex.claimer.recv() == INVALID_STATE
    await org.blocked(ex.token, "greeter", "1_WAIT_PEERS")
    # Everybody leaves while the greeter waits.
    await org.assert_no_leak()


# ---- not found / deleted -----------------------------------------------------------------------


@ok
async def test_greeter_commands_unknown_or_foreign_token(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    bob = await org.connect("bob@dev1")
    bob_token = await org.new_invitation(bob)
    other_org = await bootstrap_organization(org.server, "OtherOrg")
    other_env = InviteEnv(org.server, other_org)
    mallory = await other_env.connect("alice@dev1")
    other_token = await other_env.new_invitation(mallory)
    for token in (uuid.uuid4(), bob_token, other_token):
        for step, cmd in GREETER_CMDS.items():
            assert await alice.cmd(cmd, **greeter_fields(step, token)) == {"status": "not_found"}, (cmd, token)
    # The invitations were not touched.
    assert (await org.conduit(bob_token)).greeter_payload is None
    await other_env.close_all()
    await org.assert_no_leak()


@ok
async def test_greeter_commands_on_deleted_invitation(org: InviteEnv) -> None:
    alice = await org.connect("alice@dev1")
    token = await org.new_invitation(alice)
    assert await alice.cmd("invite_delete", token=token, reason="CANCELLED") == {"status": "ok"}
    for step, cmd in GREETER_CMDS.items():
        assert await alice.cmd(cmd, **greeter_fields(step, token)) == {"status": "already_deleted"}, cmd
    await org.assert_no_leak()


@ok
@pytest.mark.parametrize("step", list(CLAIMER_CMDS))
async def test_claimer_command_on_deleted_invitation_closes_the_connection(org: InviteEnv, step: str) -> None:
    """The deletion was not (yet) notified to this server (another server instance deleted it)."""
    ex = await setup(org)
    if step != "1":
        await ex.step1()
    # Deleted, the event not arrived yet: the claimer connection stays open...
    await org.delete_unnotified(ex.token)
    assert not ex.claimer.closed
    # ... until its next conduit command, which gets no reply (checked before any state check).
    send_claimer(ex.claimer, step)
    await ex.claimer.expect_closed_without_reply()
    # Greeter commands report it.
    assert await ex.greeter.cmd(GREETER_CMDS["3a"], token=ex.token) == {"status": "already_deleted"}
    await org.assert_no_leak()


@ok
@pytest.mark.parametrize("waiter,point", ALL_POINTS)
async def test_delete_during_a_conduit_step(org: InviteEnv, waiter: str, point: str) -> None:
    ex = await setup(org)
    await bring_to(ex, waiter, point)
    alice2 = await org.connect("alice@dev2")
    assert await alice2.cmd("invite_delete", token=ex.token, reason="CANCELLED") == {"status": "ok"}
    # The claimer connection is closed without reply, waiting or not.
    await ex.claimer.expect_closed_without_reply()
    if waiter == "greeter":
        assert await ex.greeter.recv() == {"status": "already_deleted"}
    else:
        await no_reply_yet(ex.greeter)
        assert await ex.greeter.cmd(GREETER_CMDS["1"], **greeter_fields("1", ex.token)) == {
            "status": "already_deleted"
        }
    await org.assert_no_leak()


@ok
async def test_claimer_gets_its_last_answer_when_the_greeter_deletes_right_away(org: InviteEnv) -> None:
    """The greeter spoke first in step 4; the claimer answers and waits for the greeter to take
    its payload; the greeter does, gets its reply and deletes the invitation (FINISHED) before
    the claimer's woken exchange re-reads the conduit. The claimer still gets the greeter's
    payload, then its connection is closed (docs/protocol/DECISIONS.md)."""
    from twisted.internet import defer

    ex = await setup(org)
    await ex.step1()
    await ex.step2()
    await ex.step3a()
    await ex.step3b()
    send_greeter(ex.greeter, "4", ex.token, payload=b"greeter's last")
    await org.blocked(ex.token, "greeter", "4_COMMUNICATE")
    # Let the claimer's first read of the conduit through (it must wait), hold its re-read.
    storage = org.server.app.storage.invite
    gate: defer.Deferred[None] = defer.Deferred()
    real_listen = storage.conduit_listen
    claimer_reads: list[uuid.UUID] = []

    async def gated_listen(organization_id: str, token: uuid.UUID, greeter: str | None, ctx: Any) -> Any:
        if greeter is None:
            claimer_reads.append(token)
            if len(claimer_reads) > 1:
                await gate
        return await real_listen(organization_id, token, greeter, ctx)

    storage.conduit_listen = gated_listen
    try:
        send_claimer(ex.claimer, "4", payload=b"claimer's last")
        assert await ex.greeter.recv() == {"status": "ok", "payload": b"claimer's last"}
        assert await ex.greeter.cmd("invite_delete", token=ex.token, reason="FINISHED") == {"status": "ok"}
        # (In memory the claimer's first read may already come after the greeter's: nothing
        # to hold then, its answer is on its way.)
        await until(lambda: len(claimer_reads) == 2 or bool(ex.claimer.client.proto.inbox), "claimer woken")
        if len(claimer_reads) == 2:
            await no_reply_yet(ex.claimer)
            assert not ex.claimer.closed  # its request is still in flight
    finally:
        del storage.conduit_listen
        gate.callback(None)
    assert await ex.claimer.recv() == {"status": "ok", "payload": b"greeter's last"}
    code, _ = await ex.claimer.client.wait_closed()
    assert code == 1000
    await org.assert_no_leak()


@ok
async def test_claimer_wait_peer_cancelled_by_a_retry(org: InviteEnv) -> None:
    # The client gives up waiting and sends step 1 again on the same connection.
    ex = await setup(org)
    send_claimer(ex.claimer, "1")
    await org.blocked(ex.token, "claimer", "1_WAIT_PEERS")
    ex.claimer.forget(CLAIMER_CMDS["1"])
    send_claimer(ex.claimer, "1", key=CLAIMER_KEY2)
    async def retry_spoke() -> bool:
        return (await org.conduit(ex.token)).claimer_payload == CLAIMER_KEY2

    await until(retry_spoke, "retry spoke")
    await pair_step1(ex, "claimer", GREETER_KEY, CLAIMER_KEY2)
    assert not ex.claimer.client.proto.inbox
    await finish(ex)
    await org.assert_no_leak()


@ok
async def test_conduit_with_api_v3(org: InviteEnv) -> None:
    from tests.wsclient import WsClient

    greeter = await org.connect("alice@dev1")
    token = await org.new_invitation(greeter, "USER")
    client = await WsClient.connect(org.server.port)
    rep = await client.handshake_invited("CoolOrg", "USER", token, api_version=(3, 1))
    assert rep == {"handshake": "result", "result": "ok"}
    claimer = Conn(client, "invited")
    org.conns.append(claimer)
    ex = Exchange(org, token, greeter, claimer)
    await ex.full("claimer")
    await org.assert_no_leak()


@ok
async def test_claimer_bad_messages(org: InviteEnv) -> None:
    ex = await setup(org)
    for step, cmd in CLAIMER_CMDS.items():
        fields = claimer_fields(step)
        if not fields:
            continue
        rep = await ex.claimer.cmd(cmd, **{key: 42 for key in fields})
        assert rep["status"] == "bad_message", (cmd, rep)
    for step, cmd in GREETER_CMDS.items():
        rep = await ex.greeter.cmd(cmd, **{**greeter_fields(step, ex.token), "token": "not a uuid"})
        assert rep["status"] == "bad_message", (cmd, rep)
    # The conduit was not touched: a normal exchange follows.
    await ex.full()
    await org.assert_no_leak()


@ok
async def test_claimer_command_on_vanished_invitation(org: InviteEnv) -> None:
    # "invitation vanished" cannot happen through the protocol (invitations are never removed,
    # only marked deleted); simulate it: the claimer gets `not_found` (docs/protocol/commands.md §8.5).
    ex = await setup(org)
    await org.vanish(ex.token)
    assert await ex.claimer.cmd(CLAIMER_CMDS["1"], **claimer_fields("1")) == {"status": "not_found"}
    assert await ex.claimer.cmd("ping", ping="still open") == {"status": "ok", "pong": "still open"}
    assert await ex.greeter.cmd(GREETER_CMDS["1"], **greeter_fields("1", ex.token)) == {"status": "not_found"}
    await org.assert_no_leak()


@ok
@pytest.mark.parametrize("side,point", [("claimer", "2_2"), ("greeter", "2_3"), ("claimer", "4"), ("greeter", "3_1")])
async def test_waiting_peer_connection_aborted(org: InviteEnv, side: str, point: str) -> None:
    # TCP reset, no Close frame: the server still cancels the waiting command.
    ex = await setup(org)
    await bring_to(ex, side, point)
    conn_of(ex, side).client.proto.transport.abortConnection()
    await until(lambda: org.waiters(ex.token) == 0, "waiter of the aborted connection gone")
    await org.assert_no_leak()


@ok
async def test_greeter_revoked_while_waiting(org: InviteEnv) -> None:
    from tests.orgs import now

    bob = await org.connect("bob@dev1")
    token = await org.new_invitation(bob, "DEVICE")
    ex = Exchange(org, token, bob, await org.claimer(token))
    await bring_to(ex, "greeter", "3_1")
    alice = await org.connect("alice@dev1")
    cert = org.org.devices["alice@dev1"].revoked_user_certificate(user_id="bob", timestamp=now())
    assert await alice.cmd("user_revoke", revoked_user_certificate=cert) == {"status": "ok"}
    # The revoked greeter's connection is closed, its waiting command dropped without reply.
    await bob.expect_closed_without_reply()
    await until(lambda: org.waiters(ex.token) == 0, "greeter's waiter gone")
    # The claimer's connection stays open (invitations have no link to the greeter's status).
    assert await ex.claimer.cmd("ping", ping="x") == {"status": "ok", "pong": "x"}
    await org.assert_no_leak()
