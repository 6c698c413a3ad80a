"""One direction of a serial line at its configured speed, for the couch simulator.

A pty hands a write to the other end at once; a UART does not. At B baud with
8N1 framing every byte is 10 bit times on the wire (start bit, 8 data bits,
stop bit), 87 us at 115200: a 49-byte STATUS takes 4.3 ms, and a STOP written
right behind a TARGET that is already going out waits for the TARGET's last
byte. Without this the simulator flatters every latency that crosses the line
(docs/protocols/couch-serial.md "Wire time").

`SerialWire` models one direction (the line is full duplex, so the simulator
keeps one per direction and they share nothing): bytes written at time t start
on the wire at max(t, when the wire is free), follow each other without gaps,
and are handed to `deliver(data, arrival)` when the last of them has arrived,
in the order they were written. The receiver of a frame can only act on it
once its CRC, the last bytes, is in, so delivering a write whole at its last
byte's arrival loses nothing. `baudrate=None` is the old instant pty (delivery
inside `send`), for tests that want no wire at all.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable

BITS_PER_BYTE_8N1 = 10  # start + 8 data + stop; no parity


def byte_time_s(baudrate: int) -> float:
    """Seconds one 8N1 byte occupies the wire."""
    return BITS_PER_BYTE_8N1 / baudrate


def wire_time_s(n_bytes: int, baudrate: int) -> float:
    """Seconds `n_bytes` sent back to back occupy the wire."""
    return n_bytes * byte_time_s(baudrate)


class SerialWire:
    """One direction of a UART line; call from the event loop's thread only."""

    def __init__(self, baudrate: int | None, deliver: Callable[[bytes, float], None]) -> None:
        if baudrate is not None and baudrate <= 0:
            raise ValueError(f"baud rate {baudrate} must be > 0")
        self.baudrate = baudrate
        self._deliver = deliver
        self._free_at = 0.0  # time.monotonic() when the last byte written so far has arrived
        # (arrival, data, timer) in write order: arrival times strictly increase,
        # and popping the head keeps delivery in write order whatever the timers do.
        self._queue: collections.deque[tuple[float, bytes, asyncio.TimerHandle]] = (
            collections.deque())

    def occupy(self, n_bytes: int, start: float) -> float:
        """Take the wire for `n_bytes` written at `start`; return when the last arrives."""
        if self.baudrate is None:
            return start
        begin = max(self._free_at, start)
        self._free_at = begin + wire_time_s(n_bytes, self.baudrate)
        return self._free_at

    def send(self, data: bytes, start: float) -> float:
        """Write `data` at `start` (time.monotonic()); it is delivered at the returned
        arrival time (at once, inside this call, for an instant wire)."""
        arrival = self.occupy(len(data), start)
        if self.baudrate is None:
            self._deliver(data, arrival)
            return arrival
        loop = asyncio.get_running_loop()
        # loop.time() is time.monotonic() for the default loop; convert anyway so
        # another loop clock cannot shift deliveries.
        when = loop.time() + (arrival - time.monotonic())
        self._queue.append((arrival, data, loop.call_at(when, self._arrived)))
        return arrival

    def _arrived(self) -> None:
        arrival, data, _ = self._queue.popleft()
        self._deliver(data, arrival)

    def deliver_due(self, now: float) -> None:
        """Deliver at once everything that has arrived by `now` whose timer has not
        fired yet (a loaded loop runs timers late). Call before anything that must
        see the line's effects in time order: a physics tick, an injected fault."""
        while self._queue and self._queue[0][0] <= now:
            arrival, data, timer = self._queue.popleft()
            timer.cancel()
            self._deliver(data, arrival)

    @property
    def in_flight(self) -> int:
        """Bytes written but not yet delivered."""
        return sum(len(d) for _, d, _ in self._queue)

    def close(self) -> None:
        """Forget everything still on the wire (the port is closing)."""
        for _, _, timer in self._queue:
            timer.cancel()
        self._queue.clear()
