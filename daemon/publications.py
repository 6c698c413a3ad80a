"""Console publications held back while a command that may start motion runs.

Every audit record also goes to the consoles as an event, and every state
change as a state snapshot: a task, a pydantic message, JSON and an MQTT
publish each, 0.1-0.5 ms of igrtd's one event-loop thread. A confirmation
on its way to a GO writes half a dozen of them (the command verified, the
confirmation, the CONFIRMED transition, the TARGET command), and their
publishing ran in the loop steps between the confirmation's arrival and the
GO: traced on the confirm path, a millisecond of the time to motion went to
telling the consoles about it (issue 13, item 6).

While a command declared `moves` (daemon/commands.py) runs, they are held
and go out after it, in the order they were made, before its reply. Nothing
is lost or reordered, and nothing that protects anybody waits: the audit
record itself is written at once, and STOP, interlocks, the PLC and the
couch never go through here. A hold lasts at most `MAX_HOLD_S`, even if its
command does not end (a move waiting on a reply timeout): the consoles' view
is late by at most that.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

from daemon.jsontypes import JsonMapping

log = logging.getLogger("igrt.room")

# Far above a move's start (milliseconds), far below what a person at a console
# would notice.
MAX_HOLD_S = 0.2


class PublicationHold:
    """Events and state publications, passed on at once or held while any hold is on."""

    def __init__(self, emit_event: Callable[[JsonMapping], None],
                 emit_state: Callable[[], None], *, max_hold_s: float = MAX_HOLD_S) -> None:
        self._emit_event = emit_event
        self._emit_state = emit_state
        self._max_hold_s = max_hold_s
        self._holds: set[int] = set()
        self._ids = itertools.count(1)
        self._events: list[JsonMapping] = []
        self._state_due = False
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def held(self) -> bool:
        return bool(self._holds)

    def hold(self) -> Callable[[], None]:
        """Hold publications until the returned function is called (once is enough,
        more is harmless) or `max_hold_s` has passed. Outside an event loop (a
        synchronous caller): nothing is held."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return _nothing
        token = next(self._ids)
        if not self._holds:
            self._expiry = loop.call_later(self._max_hold_s, self._expire)
        self._holds.add(token)
        return lambda: self._release(token)

    def event(self, payload: JsonMapping) -> None:
        if self._holds:
            self._events.append(payload)
        else:
            self._emit_event(payload)

    def state(self) -> None:
        if self._holds:
            self._state_due = True
        else:
            self._emit_state()

    def _release(self, token: int) -> None:
        if token not in self._holds:
            return  # released before, or expired
        self._holds.discard(token)
        if not self._holds:
            self._flush()

    def _expire(self) -> None:
        self._expiry = None
        if self._holds:
            log.warning("console publications held for %.0f ms by a command still running; "
                        "sent now", self._max_hold_s * 1e3)
            self._holds.clear()
            self._flush()

    def _flush(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        events, self._events = self._events, []
        state_due, self._state_due = self._state_due, False
        for payload in events:
            self._emit_event(payload)
        if state_due:
            self._emit_state()


def _nothing() -> None:
    return None
