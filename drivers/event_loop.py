"""An asyncio event loop whose timers fire within tens of microseconds, not a millisecond.

asyncio's default loop on Linux waits in epoll_wait(2), whose timeout is whole
milliseconds: Python rounds every wait up to the next millisecond, so a timer
due in 0.3 ms fires after 1 ms or more. For igrtd that is the room PLC's 1 ms
poll taking 1.3-2 ms a cycle (the interlock figure of issue 13 is mostly that
cycle), and for the couch simulator it is every frame reaching the other end of
the simulated serial line up to a millisecond after its last byte would have
(sim/serial_wire.py), which made the simulated controller answer slower than
the wire allows.

`PreciseEpollSelector` keeps epoll for the file descriptors and, when a timer
is due within `PRECISE_BELOW_S`, waits on the epoll descriptor itself with
select(2), whose timeout is in microseconds (the kernel's default timer slack
for a normal thread is 50 us), then collects the ready events without waiting.
One extra system call per such wake-up; longer or no timeouts (an idle igrtd)
wait in epoll as before. uvloop does not help here: libuv's timers are in
milliseconds too.
"""

from __future__ import annotations

import asyncio
import select
import selectors

# Waits shorter than this are timed by select(2); a longer wait's millisecond of
# rounding is immaterial (standby polls, reconnect back-off, heartbeats).
PRECISE_BELOW_S = 0.05
# select(2) handles descriptors below FD_SETSIZE only; the epoll descriptor is
# one of the first a process opens, so this is a safeguard, not a limit met.
_FD_SETSIZE = 1024


class PreciseEpollSelector(selectors.EpollSelector):
    """EpollSelector whose short timeouts are kept to the microsecond."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        epfd = self.fileno()
        if timeout is not None and 0 < timeout < PRECISE_BELOW_S and epfd < _FD_SETSIZE:
            ready, _, _ = select.select([epfd], [], [], timeout)
            if not ready:
                return []
            timeout = 0
        return super().select(timeout)


def precise_event_loop() -> asyncio.AbstractEventLoop:
    """A new selector event loop on PreciseEpollSelector (a loop_factory)."""
    return asyncio.SelectorEventLoop(PreciseEpollSelector())
