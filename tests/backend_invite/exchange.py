"""Drive the claimer/greeter conduit step by step over the wire (docs/protocol/invitations.md §3).

`Exchange.step*` methods send the two peers' commands in the requested order
("leader" first) and wait, between the two, until the leader is really blocked
in the conduit, so that the leader is the first speaker of the exchange.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import attrs

from tests.backend_invite.conftest import Conn, InviteEnv, no_reply_yet

GREETER_KEY = bytes(range(32))
CLAIMER_KEY = bytes(range(100, 132))
HASHED_NONCE = b"claimer hashed nonce" * 2
GREETER_NONCE = b"greeter nonce" * 3
CLAIMER_NONCE = b"claimer nonce" * 4

# The (command, request fields) of each side, per step.
GREETER_CMDS: dict[str, str] = {
    "1": "invite_1_greeter_wait_peer",
    "2a": "invite_2a_greeter_get_hashed_nonce",
    "2b": "invite_2b_greeter_send_nonce",
    "3a": "invite_3a_greeter_wait_peer_trust",
    "3b": "invite_3b_greeter_signify_trust",
    "4": "invite_4_greeter_communicate",
}
CLAIMER_CMDS: dict[str, str] = {
    "1": "invite_1_claimer_wait_peer",
    "2a": "invite_2a_claimer_send_hashed_nonce",
    "2b": "invite_2b_claimer_send_nonce",
    "3a": "invite_3a_claimer_signify_trust",
    "3b": "invite_3b_claimer_wait_peer_trust",
    "4": "invite_4_claimer_communicate",
}


def greeter_fields(step: str, token: UUID, key: bytes = GREETER_KEY, payload: bytes = b"g") -> dict[str, Any]:
    fields: dict[str, Any] = {"token": token}
    if step == "1":
        fields["greeter_public_key"] = key
    elif step == "2b":
        fields["greeter_nonce"] = GREETER_NONCE
    elif step == "4":
        fields["payload"] = payload
    return fields


def claimer_fields(step: str, key: bytes = CLAIMER_KEY, payload: bytes = b"c") -> dict[str, Any]:
    if step == "1":
        return {"claimer_public_key": key}
    if step == "2a":
        return {"claimer_hashed_nonce": HASHED_NONCE}
    if step == "2b":
        return {"claimer_nonce": CLAIMER_NONCE}
    if step == "4":
        return {"payload": payload}
    return {}


def send_greeter(conn: Conn, step: str, token: UUID, **kwargs: Any) -> None:
    conn.send(GREETER_CMDS[step], **greeter_fields(step, token, **kwargs))


def send_claimer(conn: Conn, step: str, **kwargs: Any) -> None:
    conn.send(CLAIMER_CMDS[step], **claimer_fields(step, **kwargs))


# The conduit state each step starts in (the claimer's 2a then also speaks in 2_2, the
# greeter's 2b in 2_2 then 2_3).
STATE = {
    "1": "1_WAIT_PEERS",
    "2a": "2_1_CLAIMER_HASHED_NONCE",
    "2b": "2_2_GREETER_NONCE",
    "3a": "3_1_CLAIMER_TRUST",
    "3b": "3_2_GREETER_TRUST",
    "4": "4_COMMUNICATE",
}

INVALID_STATE = {"status": "invalid_state"}


@attrs.define
class Exchange:
    env: InviteEnv
    token: UUID
    greeter: Conn
    claimer: Conn

    async def step1(
        self, leader: str = "greeter", greeter_key: bytes = GREETER_KEY, claimer_key: bytes = CLAIMER_KEY
    ) -> None:
        if leader == "greeter":
            send_greeter(self.greeter, "1", self.token, key=greeter_key)
            await self.env.blocked(self.token, "greeter", "1_WAIT_PEERS")
            send_claimer(self.claimer, "1", key=claimer_key)
        else:
            send_claimer(self.claimer, "1", key=claimer_key)
            await self.env.blocked(self.token, "claimer", "1_WAIT_PEERS")
            send_greeter(self.greeter, "1", self.token, key=greeter_key)
        assert await self.greeter.recv() == {"status": "ok", "claimer_public_key": claimer_key}
        assert await self.claimer.recv() == {"status": "ok", "greeter_public_key": greeter_key}

    async def step2a(self, leader: str = "greeter") -> None:
        """Greeter gets the hashed nonce; the claimer's 2a stays pending (waits for the nonce)."""
        if leader == "greeter":
            send_greeter(self.greeter, "2a", self.token)
            await self.env.blocked(self.token, "greeter", "2_1_CLAIMER_HASHED_NONCE")
            send_claimer(self.claimer, "2a")
        else:
            send_claimer(self.claimer, "2a")
            await self.env.blocked(self.token, "claimer", "2_1_CLAIMER_HASHED_NONCE")
            await no_reply_yet(self.claimer)
            send_greeter(self.greeter, "2a", self.token)
        assert await self.greeter.recv() == {"status": "ok", "claimer_hashed_nonce": HASHED_NONCE}
        # The claimer now waits, in the same command, for the greeter's nonce.
        await self.env.blocked(self.token, "claimer", "2_2_GREETER_NONCE")
        await no_reply_yet(self.claimer)

    async def step2b_greeter(self) -> None:
        """Greeter sends its nonce: the claimer's 2a completes; the greeter waits for the claimer nonce."""
        send_greeter(self.greeter, "2b", self.token)
        assert await self.claimer.recv() == {"status": "ok", "greeter_nonce": GREETER_NONCE}
        await self.env.blocked(self.token, "greeter", "2_3_CLAIMER_NONCE")
        await no_reply_yet(self.greeter)

    async def step2b_claimer(self) -> None:
        send_claimer(self.claimer, "2b")
        assert await self.claimer.recv() == {"status": "ok"}
        assert await self.greeter.recv() == {"status": "ok", "claimer_nonce": CLAIMER_NONCE}

    async def step2(self, leader: str = "greeter") -> None:
        await self.step2a(leader)
        await self.step2b_greeter()
        await self.step2b_claimer()

    async def _simple(self, step: str, leader: str) -> None:
        if leader == "greeter":
            send_greeter(self.greeter, step, self.token)
            await self.env.blocked(self.token, "greeter", STATE[step])
            await no_reply_yet(self.greeter)
            send_claimer(self.claimer, step)
        else:
            send_claimer(self.claimer, step)
            await self.env.blocked(self.token, "claimer", STATE[step])
            await no_reply_yet(self.claimer)
            send_greeter(self.greeter, step, self.token)
        assert await self.greeter.recv() == {"status": "ok"}
        assert await self.claimer.recv() == {"status": "ok"}

    async def step3a(self, leader: str = "greeter") -> None:
        await self._simple("3a", leader)

    async def step3b(self, leader: str = "greeter") -> None:
        await self._simple("3b", leader)

    async def step4(self, leader: str = "greeter", greeter_payload: bytes = b"g", claimer_payload: bytes = b"c") -> None:
        if leader == "greeter":
            send_greeter(self.greeter, "4", self.token, payload=greeter_payload)
            await self.env.blocked(self.token, "greeter", "4_COMMUNICATE")
            send_claimer(self.claimer, "4", payload=claimer_payload)
        else:
            send_claimer(self.claimer, "4", payload=claimer_payload)
            await self.env.blocked(self.token, "claimer", "4_COMMUNICATE")
            send_greeter(self.greeter, "4", self.token, payload=greeter_payload)
        assert await self.greeter.recv() == {"status": "ok", "payload": claimer_payload}
        assert await self.claimer.recv() == {"status": "ok", "payload": greeter_payload}

    async def full(self, leader: str = "greeter") -> None:
        await self.step1(leader)
        await self.step2(leader)
        await self.step3a(leader)
        await self.step3b(leader)
        await self.step4(leader)
