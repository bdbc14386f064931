"""The invitation conduit state machine (docs/protocol/invitations.md §3), as pure functions over its slots.

Storage implementations hold a `ConduitSlots` per invitation (in memory, or a
row locked FOR UPDATE in PostgreSQL) and call `conduit_talk` / `conduit_listen`
on it atomically; waiting and wake-ups are the component's business.
"""

from __future__ import annotations

import attrs

STEPS = (
    "1_WAIT_PEERS",
    "2_1_CLAIMER_HASHED_NONCE",
    "2_2_GREETER_NONCE",
    "2_3_CLAIMER_NONCE",
    "3_1_CLAIMER_TRUST",
    "3_2_GREETER_TRUST",
    "4_COMMUNICATE",
)
FIRST_STEP = STEPS[0]


def next_step(step: str) -> str:
    index = STEPS.index(step)
    return STEPS[min(index + 1, len(STEPS) - 1)]


class InvalidStateError(Exception):
    pass


@attrs.define
class ConduitSlots:
    state: str = FIRST_STEP
    greeter_payload: bytes | None = None
    claimer_payload: bytes | None = None


@attrs.frozen
class ConduitListenCtx:
    is_greeter: bool
    state: str
    payload: bytes
    peer_payload: bytes | None  # the peer's slot when we talked (None = we spoke first)


def _slots(conduit: ConduitSlots, is_greeter: bool) -> tuple[bytes | None, bytes | None]:
    if is_greeter:
        return conduit.greeter_payload, conduit.claimer_payload
    return conduit.claimer_payload, conduit.greeter_payload


def conduit_talk(conduit: ConduitSlots, is_greeter: bool, state: str, payload: bytes) -> ConduitListenCtx:
    ours, peers = _slots(conduit, is_greeter)
    if conduit.state != state or ours is not None:
        if state != FIRST_STEP:
            raise InvalidStateError()
        # Step 1 by either side (re)starts the exchange from scratch.
        conduit.state = FIRST_STEP
        conduit.greeter_payload = conduit.claimer_payload = None
        peers = None
    if is_greeter:
        conduit.greeter_payload = payload
    else:
        conduit.claimer_payload = payload
    return ConduitListenCtx(is_greeter, state, payload, peers)


def answer_after_deletion(conduit: ConduitSlots, ctx: ConduitListenCtx) -> bytes | None:
    """The conduit of a deleted invitation is frozen, but a listener whose peer had spoken
    before the deletion still gets that answer (nothing is written): the greeter deletes the
    invitation right after its last exchange, possibly before the claimer has read it.
    None: the listener would still have to wait, so the deletion ends its exchange."""
    try:
        peer_payload, _ = conduit_listen(attrs.evolve(conduit), ctx)
    except InvalidStateError:
        return None
    return peer_payload


def conduit_listen(conduit: ConduitSlots, ctx: ConduitListenCtx) -> tuple[bytes | None, bool]:
    """Returns (peer payload or None if still waiting, whether the conduit changed)."""
    ours, peers = _slots(conduit, ctx.is_greeter)
    if ctx.peer_payload is None:
        # We spoke first: we advance the conduit once the peer has spoken.
        if conduit.state != ctx.state or ours != ctx.payload:
            raise InvalidStateError()
        if peers is None:
            return None, False
        conduit.state = next_step(ctx.state)
        conduit.greeter_payload = conduit.claimer_payload = None
        return peers, True
    # We spoke second: the peer (first speaker) advances the conduit.
    if conduit.state == next_step(ctx.state) and ours is None:
        return ctx.peer_payload, False
    if conduit.state != ctx.state or ours != ctx.payload or peers != ctx.peer_payload:
        raise InvalidStateError()
    return None, False
