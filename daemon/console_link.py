"""Wires the MQTT console API (daemon.console) to the RoomService.

State snapshots go out retained on every state change; while the couch moves,
the progress goes out as rate-limited telemetry. Audit records are also
published as events. Losing the broker stops a move that a console is holding
(its hold-to-run heartbeats can no longer arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Protocol

from daemon.api import RoomCommands
from daemon.commands import CommandListeners
from daemon.config import RoomConfig
from daemon.console.server import MqttConsole
from daemon.console.tokens import CommandVerifier, ReplayCache
from daemon.console.users import RoomUserRegistry, room_registry
from daemon.jsontypes import JsonMapping, JsonObject, JsonValue, as_object, as_str
from imaging.review_messages import ReviewMessages

log = logging.getLogger("igrt.console")


class ConsoleService(RoomCommands, Protocol):
    """What the console needs of the RoomService: its commands, its audit trail,
    its state and event listeners and the console link's health."""

    def audit(self, event: str, actor: str, **details: object) -> None: ...
    def snapshot(self) -> JsonObject: ...
    def on_console_link(self, connected: bool) -> None: ...
    def hold_background(self) -> Callable[[], None]: ...
    def add_state_listener(self, cb: Callable[[JsonObject], None]) -> None: ...
    def add_event_listener(self, cb: Callable[[JsonMapping], None]) -> None: ...
    def add_review_listener(self, cb: Callable[[ReviewMessages], None]) -> None: ...


# At rest, a telemetry message at least this often (seconds): consoles call a room
# stale after 3 s without one (docs/console.md).
IDLE_TELEMETRY_S = 1.0


def _telemetry(snap: JsonObject) -> JsonObject:
    prop = as_object(snap.get("proposal") or {}, "proposal")
    couch = as_object(snap.get("couch") or {}, "couch")
    return {
        "couch": couch.get("pose"),
        "interlocks": snap.get("interlocks"),
        "motion": {"state": snap.get("state"), "couch_state": couch.get("state"),
                   "moving": couch.get("moving"), "link_ok": couch.get("link_ok"),
                   "target": prop.get("target")},
    }


class _Publisher:
    """Schedules publishes from the service's synchronous listeners."""

    def __init__(self, console: MqttConsole) -> None:
        self.console = console
        self._last_key: tuple[JsonValue, ...] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self._last_sent = time.monotonic()

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        self._last_sent = time.monotonic()
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        # A failed publish is logged here, once, instead of surfacing later as
        # "Task exception was never retrieved"; it never reaches the service.
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("console publish failed: %r", task.exception())

    def on_state(self, snap: JsonObject) -> None:
        prop = as_object(snap.get("proposal") or {}, "proposal")
        key = (snap.get("state"), snap.get("reason"), prop.get("id"), prop.get("status"))
        if key != self._last_key:
            self._last_key = key
            self._spawn(self.console.publish_state(snap))
        else:
            self._spawn(self.console.publish_telemetry(_telemetry(snap)))

    async def idle_telemetry(self, snapshot: Callable[[], JsonObject],
                             period_s: float = IDLE_TELEMETRY_S) -> None:
        """Telemetry at least every `period_s` while nothing else goes out: at rest igrtd
        publishes nothing otherwise, and a console could not tell a quiet room from a
        hung igrtd or a stalled broker path (its "stale since" banner). One snapshot and
        one small QoS 0 message a second: well inside the idle CPU budget."""
        while True:
            await asyncio.sleep(period_s)
            if time.monotonic() - self._last_sent >= period_s and self.console.connected:
                self._spawn(self.console.publish_telemetry(_telemetry(snapshot())))

    def on_event(self, ev: JsonMapping) -> None:
        details = {k: v for k, v in ev.items() if k not in ("event", "actor")}
        actor = ev.get("actor")
        self._spawn(self.console.publish_event(
            as_str(ev["event"], "event"), None if actor is None else as_str(actor, "actor"),
            details))

    def on_review(self, review: ReviewMessages) -> None:
        # Encoded by the registration worker: only bytes are sent from igrtd's loop.
        self._spawn(self.console.publish_review(review))


@contextlib.asynccontextmanager
async def open_console(config: RoomConfig, service: ConsoleService, store: ReplayCache,
                       listeners: CommandListeners | None = None,
                       users: RoomUserRegistry | None = None) -> AsyncIterator[MqttConsole]:
    """`users`: the registry the local socket uses too (igrtd passes one for both)."""
    m = config.mqtt
    assert m is not None
    password = m.password_file.read_text().strip() if m.password_file else None
    tls = ssl.create_default_context(cafile=str(m.tls_ca)) if m.tls_ca else None
    if users is None:
        users = room_registry(config.users, config.users_file, service)
    verifier = CommandVerifier(users, config.room, store)
    console = MqttConsole(
        service, verifier, broker_host=m.host, broker_port=m.port, room=config.room,
        username=m.username, password=password, tls=tls,
        audit=lambda event, actor, details: service.audit(event, actor, **details),
        state_provider=service.snapshot,
        on_link_change=service.on_console_link,
        listeners=listeners,
        hold_background=service.hold_background,
    )
    pub = _Publisher(console)
    service.add_state_listener(pub.on_state)
    service.add_event_listener(pub.on_event)
    service.add_review_listener(pub.on_review)
    idle = asyncio.get_running_loop().create_task(pub.idle_telemetry(service.snapshot),
                                                  name="console idle telemetry")
    try:
        yield console
    finally:
        idle.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await idle
