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

The loop's thread also runs with a timer slack of 1 ns instead of the default
50 us (prctl(2) PR_SET_TIMERSLACK, a per-thread setting, made on the first
select in the thread that runs the loop). The kernel may otherwise fire a
select(2) timeout up to the slack late to batch wake-ups: in the couch
simulator every frame then reached the other end of the simulated line about
50 us after its last byte would have (a confirmation's TARGET_ECHO, at p50, 0.19
ms after its modelled arrival with the slack, 0.14 ms without; issue 13, item
6). A device's UART has no such slack, and igrtd's PLC poll keeps its period
more exactly. Where prctl is not there (not Linux) the default slack stays.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import select
import selectors
import threading

# Waits shorter than this are timed by select(2); a longer wait's millisecond of
# rounding is immaterial (standby polls, reconnect back-off, heartbeats).
PRECISE_BELOW_S = 0.05
# select(2) handles descriptors below FD_SETSIZE only; the epoll descriptor is
# one of the first a process opens, so this is a safeguard, not a limit met.
_FD_SETSIZE = 1024
_PR_SET_TIMERSLACK = 29  # linux/prctl.h
TIMER_SLACK_NS = 1


@functools.cache
def _process_symbols() -> ctypes.CDLL:
    # The symbols already loaded (libc among them): ctypes.util.find_library would
    # run ldconfig in a subprocess, 3 ms, at every loop's first wait.
    return ctypes.CDLL(None, use_errno=True)


def _set_timer_slack(ns: int) -> bool:
    """This thread's timer slack to `ns`; False where prctl(2) is not there or refuses."""
    try:
        return int(_process_symbols().prctl(_PR_SET_TIMERSLACK, ns, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


class PreciseEpollSelector(selectors.EpollSelector):
    """EpollSelector whose short timeouts are kept to the microsecond."""

    _slack_thread: int | None = None  # the thread whose timer slack was set

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self._slack_thread != (me := threading.get_ident()):
            self._slack_thread = me
            _set_timer_slack(TIMER_SLACK_NS)
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
