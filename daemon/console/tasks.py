"""The console's tasks and audit calls, guarded so that neither can end it.

Everything the MQTT console starts in the background (a command, a reply, a
telemetry flush, a review send) runs in one task group. An exception escaping
one task would cancel the whole group and with it the console, so every task
is wrapped: an unexpected error is logged and audited as `console.fault`, and
the console goes on. The audit callback is guarded the same way: a failing
audit is logged loudly, the verdict it recorded stands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Protocol

from daemon.jsontypes import JsonMapping

# One logger for the daemon side of the console API, whichever module writes:
# its lines keep the name they had before the console was split into modules.
LOGGER = "daemon.console.server"
log = logging.getLogger(LOGGER)

# Audit details are read only: any JSON-like mapping (ErrorCode values included).
AuditFn = Callable[[str, str, JsonMapping], None]
# A task the console runs; it only ever awaits, so nothing is sent into it.
Job = Coroutine[object, None, None]


class Publish(Protocol):
    """The console's publish: False (logged, never raised) when it did not happen."""

    async def __call__(self, t: str, payload: bytes, *, qos: int,
                       retain: bool = False) -> bool: ...


def one_line(exc: BaseException) -> str:
    """`Type: message`, first line, bounded: audit text, never a traceback."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:200]


def log_audit(event: str, actor: str, details: JsonMapping) -> None:
    """The audit of a console built without one: the log."""
    level = logging.WARNING if event.endswith("rejected") else logging.INFO
    log.log(level, "audit %s actor=%s %s", event, actor, details)


class GuardedTasks:
    """The console's task group and audit callback, neither able to end it."""

    def __init__(self, audit: AuditFn) -> None:
        self._audit_fn = audit
        self._tg: asyncio.TaskGroup | None = None

    @property
    def running(self) -> bool:
        """True while `run` serves: a spawned task runs, it is not dropped."""
        return self._tg is not None

    async def run(self, serve: Callable[[], Awaitable[None]]) -> None:
        """Await `serve` with the task group open; its tasks end with it."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            try:
                await serve()
            finally:
                self._tg = None

    def spawn(self, coro: Job, what: str) -> None:
        """Run `coro` in the console's task group, guarded: an exception in one
        task would otherwise cancel the whole group and end the console."""
        if self._tg is None:
            coro.close()
            return
        self._tg.create_task(self._guarded(coro, what))

    async def _guarded(self, coro: Job, what: str) -> None:
        try:
            await coro
        except Exception as exc:  # see spawn
            log.exception("console task %s failed", what)
            self.audit("console.fault", "system", {"what": what, "reason": one_line(exc)})

    def audit(self, event: str, actor: str, details: JsonMapping) -> None:
        try:
            self._audit_fn(event, actor, details)
        except Exception:  # auditing failure is logged loudly, the verdict stands
            log.exception("audit callback failed for %s", event)
