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
from collections.abc import AsyncIterator
from typing import Any

from daemon.config import RoomConfig
from daemon.console.server import MqttConsole
from daemon.console.tokens import CommandVerifier
from daemon.console.users import UserRegistry

log = logging.getLogger("igrt.console")


class _Publisher:
    """Schedules publishes from the service's synchronous listeners."""

    def __init__(self, console: MqttConsole) -> None:
        self.console = console
        self._last_key: tuple[Any, ...] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        # A failed publish is logged here, once, instead of surfacing later as
        # "Task exception was never retrieved"; it never reaches the service.
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("console publish failed: %r", task.exception())

    def on_state(self, snap: dict[str, Any]) -> None:
        prop = snap.get("proposal") or {}
        key = (snap.get("state"), snap.get("reason"), prop.get("id"), prop.get("status"))
        if key != self._last_key:
            self._last_key = key
            self._spawn(self.console.publish_state(snap))
        else:
            couch = snap.get("couch") or {}
            prop = snap.get("proposal") or {}
            self._spawn(self.console.publish_telemetry({
                "couch": couch.get("pose"),
                "interlocks": snap.get("interlocks"),
                "motion": {"state": snap.get("state"), "couch_state": couch.get("state"),
                           "moving": couch.get("moving"), "link_ok": couch.get("link_ok"),
                           "target": prop.get("target")},
            }))

    def on_event(self, ev: dict[str, Any]) -> None:
        details = {k: v for k, v in ev.items() if k not in ("event", "actor")}
        self._spawn(self.console.publish_event(ev["event"], ev.get("actor"), details))


@contextlib.asynccontextmanager
async def open_console(config: RoomConfig, service: Any, store: Any) -> AsyncIterator[MqttConsole]:
    m = config.mqtt
    assert m is not None
    password = m.password_file.read_text().strip() if m.password_file else None
    tls = ssl.create_default_context(cafile=str(m.tls_ca)) if m.tls_ca else None
    verifier = CommandVerifier(UserRegistry.from_config_users(config.users), config.room, store)
    console = MqttConsole(
        service, verifier, broker_host=m.host, broker_port=m.port, room=config.room,
        username=m.username, password=password, tls=tls,
        audit=lambda event, actor, details: service.audit(event, actor, **details),
        state_provider=service.snapshot,
        on_link_change=service.on_console_link,
    )
    pub = _Publisher(console)
    service.add_state_listener(pub.on_state)
    service.add_event_listener(pub.on_event)
    yield console
