"""What a transfer copies: one `TablePlan` per target table."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from parsec.transfer.pgcopy import Row


@attrs.frozen
class TablePlan:
    """Fill `table` (target) with the rows of `select` (source).

    `select` yields one value per entry of `columns`, in that order. Without `transform`, the
    rows are piped with binary COPY (each value cast to the target column's type); with it,
    they go through `transform` in Python, in batches. `count` (source SQL, one integer) gives
    the expected number of rows for the progress bar."""

    table: str
    columns: tuple[str, ...]
    select: str
    count: str
    transform: Callable[[Row], Row] | None = None
