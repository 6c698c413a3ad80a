"""Work done once per event-loop step, after it.

Some work asked for many times within one step of igrtd's event loop need
only be done once, when the step is over: the state snapshot after several
transitions (daemon/room.py), the wake-up of the group commit's flusher after
several records (daemon/group_commit.py). Done at each request, it would sit
in the step that asked for it: on the confirm's way to a GO, before the TARGET
is written (issue 13, item 6).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class AfterThisStep:
    """Calling it runs `fn` once the current event-loop step is done; called again
    before then, `fn` still runs once. Called where no loop runs (another thread,
    a synchronous caller): `fn` runs at once."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._pending = False  # touched only by the loop's thread

    def __call__(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._fn()
            return
        if not self._pending:
            self._pending = True
            loop.call_soon(self._run)

    def _run(self) -> None:
        self._pending = False
        self._fn()
