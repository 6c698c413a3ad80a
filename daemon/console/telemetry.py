"""Rate-limited telemetry on `igrt/{room}/telemetry` (QoS 0).

Couch samples can arrive far faster than a console needs them, so they are
sent at most `max_hz` times a second. Latest wins: a burst is coalesced and
the newest sample is sent at the next slot, so the last pose is never lost.
A sample that does not fit the telemetry schema is logged and dropped, never
raised into the caller.
"""

from __future__ import annotations

import asyncio
import logging
import time

from daemon.console.schemas import TelemetryMessage, dumps, topic
from daemon.console.tasks import LOGGER, GuardedTasks, Publish
from daemon.jsontypes import JsonMapping

log = logging.getLogger(LOGGER)


class TelemetryThrottle:
    """Telemetry of one room, at most `max_hz`, latest sample wins."""

    def __init__(self, room: str, max_hz: float, publish: Publish, tasks: GuardedTasks) -> None:
        self._room = room
        self._period = 1.0 / max_hz
        self._publish = publish
        self._tasks = tasks
        self._seq = 0
        self._last = 0.0
        self._pending: JsonMapping | None = None
        self._flush_scheduled = False

    async def offer(self, data: JsonMapping) -> None:
        """Send `data` now if its slot has come, else at the next slot unless a
        newer sample replaces it first."""
        self._pending = data
        wait = self._last + self._period - time.monotonic()
        if wait <= 0:
            await self._flush()
        elif not self._flush_scheduled and self._tasks.running:
            self._flush_scheduled = True
            self._tasks.spawn(self._flush_later(wait), "telemetry")

    async def _flush_later(self, wait: float) -> None:
        try:
            await asyncio.sleep(wait)
        finally:
            self._flush_scheduled = False
        await self._flush()

    async def _flush(self) -> None:
        data, self._pending = self._pending, None
        if data is None:
            return
        self._last = time.monotonic()
        self._seq += 1
        header: JsonMapping = {"room": self._room, "seq": self._seq, "ts": time.time()}
        try:
            clash = header.keys() & data.keys()
            if clash:  # the sample may not name the header fields (as keyword arguments could not)
                raise TypeError(f"sample sets {', '.join(sorted(clash))}")
            msg = TelemetryMessage.model_validate({**data, **header})
        except (TypeError, ValueError) as exc:
            log.error("telemetry sample dropped, does not fit the schema: %s", exc)
            return
        await self._publish(topic(self._room, "telemetry"), dumps(msg), qos=0)
