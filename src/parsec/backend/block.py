"""block commands (see commands.md)."""

from __future__ import annotations

from typing import Any


class BlockComponent:
    def __init__(self, app: Any) -> None:
        self._app = app
