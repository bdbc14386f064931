"""The pure conduit state machine (parsec.backend.conduit, docs/protocol/invitations.md §3.2).

The wire tests cannot produce every interleaving with the in-memory storage and bus (where
a peer's wake-up runs synchronously), e.g. the greeter speaking first in 2_2 or a second
speaker that only listens after the first speaker started the next step. PostgreSQL and
multi-instance deployments can: these orders are checked here.
"""

from __future__ import annotations

import pytest

from parsec.backend.conduit import (
    FIRST_STEP,
    STEPS,
    ConduitSlots,
    InvalidStateError,
    conduit_listen,
    conduit_talk,
    next_step,
)

SIDES = {"greeter": True, "claimer": False}


@pytest.mark.parametrize("state", STEPS)
@pytest.mark.parametrize("first", ["greeter", "claimer"])
@pytest.mark.parametrize("second_listens_late", [False, True])
def test_exchange_any_order(state: str, first: str, second_listens_late: bool) -> None:
    second = "claimer" if first == "greeter" else "greeter"
    conduit = ConduitSlots(state=state)
    ctx_first = conduit_talk(conduit, SIDES[first], state, b"first")
    assert ctx_first.peer_payload is None
    assert conduit_listen(conduit, ctx_first) == (None, False)  # waits

    ctx_second = conduit_talk(conduit, SIDES[second], state, b"")  # empty payloads are payloads
    assert ctx_second.peer_payload == b"first"
    if not second_listens_late:
        assert conduit_listen(conduit, ctx_second) == (None, False)  # waits for the first to advance

    assert conduit_listen(conduit, ctx_first) == (b"", True)
    assert conduit == ConduitSlots(state=next_step(state))
    if second_listens_late:
        # The first speaker already spoke in the next step (step 4: a new round).
        conduit_talk(conduit, SIDES[first], next_step(state), b"next")
    assert conduit_listen(conduit, ctx_second) == (b"first", False)


def test_next_step() -> None:
    assert [next_step(s) for s in STEPS] == [*STEPS[1:], STEPS[-1]]


@pytest.mark.parametrize("state", STEPS[1:])
@pytest.mark.parametrize("side", ["greeter", "claimer"])
def test_wrong_step_or_replay(state: str, side: str) -> None:
    conduit = ConduitSlots(state=state)
    index = STEPS.index(state)
    for other_state in STEPS[1:]:
        if other_state != state:
            with pytest.raises(InvalidStateError):
                conduit_talk(conduit, SIDES[side], other_state, b"x")
    conduit_talk(conduit, SIDES[side], state, b"x")
    with pytest.raises(InvalidStateError):
        conduit_talk(conduit, SIDES[side], state, b"x")  # replay: own slot filled
    assert conduit.state == STEPS[index]


_RESETS = [
    (state, waiter, resetter, waiter_spoke)
    for state in STEPS
    for waiter in ("greeter", "claimer")
    for resetter in ("greeter", "claimer")
    for waiter_spoke in ("first", "second")
    # (the peer's step 1 while the waiter is first in step 1 is the normal pairing)
    if not (state == FIRST_STEP and resetter != waiter and waiter_spoke == "first")
]


@pytest.mark.parametrize("state,waiter,resetter,waiter_spoke", _RESETS)
def test_step_1_resets(state: str, waiter: str, resetter: str, waiter_spoke: str) -> None:
    peer = "claimer" if waiter == "greeter" else "greeter"
    conduit = ConduitSlots(state=state)
    if waiter_spoke == "second":
        conduit_talk(conduit, SIDES[peer], state, b"peer")
    ctx = conduit_talk(conduit, SIDES[waiter], state, b"waiter")
    # `resetter` (the peer, or the waiter's side from another connection) starts again.
    conduit_talk(conduit, SIDES[resetter], FIRST_STEP, b"new key")
    assert conduit.state == FIRST_STEP
    with pytest.raises(InvalidStateError):
        conduit_listen(conduit, ctx)
