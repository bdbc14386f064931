"""realm commands (see commands.md)."""

from __future__ import annotations

from typing import Any


class RealmComponent:
    def __init__(self, app: Any) -> None:
        self._app = app
