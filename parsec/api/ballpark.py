"""The ballpark of client timestamps (docs/protocol/handshake.md §6): the one definition.

A client timestamp `ts` is acceptable at server time `now` iff
`-BALLPARK_CLIENT_EARLY_OFFSET < now - ts < BALLPARK_CLIENT_LATE_OFFSET` (seconds, both bounds
strict). The handshake challenge announces both offsets; certificate checks
(parsec.api.certificates) and timestamped commands (parsec.backend.command) apply the check;
`bad_timestamp` replies carry the offsets back.
"""

from __future__ import annotations

from datetime import datetime

__all__ = ["BALLPARK_CLIENT_EARLY_OFFSET", "BALLPARK_CLIENT_LATE_OFFSET", "timestamp_in_ballpark"]

BALLPARK_CLIENT_EARLY_OFFSET = 50.0
BALLPARK_CLIENT_LATE_OFFSET = 70.0


def timestamp_in_ballpark(ts: datetime, now: datetime) -> bool:
    """True iff ``-50 s < now - ts < 70 s`` (both bounds strict; both datetimes aware)."""
    seconds = (now - ts).total_seconds()
    return -BALLPARK_CLIENT_EARLY_OFFSET < seconds < BALLPARK_CLIENT_LATE_OFFSET
