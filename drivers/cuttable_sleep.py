"""A sleep another task can end early, for device loops whose period can change
(a faster PLC poll rate, a fresh read asked for, a shorter heartbeat interval)."""

from __future__ import annotations

import asyncio


class CuttableSleep:
    """asyncio.sleep for one loop at a time, and `cut()` to end it now."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[None] | None = None

    async def sleep(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        handle = loop.call_later(max(seconds, 0.0), _resolve, waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._waiter = None

    def cut(self) -> None:
        """End the sleep in progress, if any (a no-op otherwise)."""
        if self._waiter is not None:
            _resolve(self._waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
