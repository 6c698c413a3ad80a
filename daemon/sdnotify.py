"""systemd readiness and watchdog notifications (sd_notify(3) protocol).

The protocol is one AF_UNIX datagram of newline-separated KEY=VALUE lines
sent to $NOTIFY_SOCKET; systemd documents it as stable and meant to be
reimplemented, so this is a few lines instead of a dependency (choice
explained in docs/operations.md). Every function is a no-op returning False
when not started by systemd, so igrtd runs the same by hand and in tests.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return None
    if addr.startswith("@"):
        return "\0" + addr[1:]  # abstract namespace
    if addr.startswith("/"):
        return addr
    # vsock: addresses are for VMs/containers talking to a host manager; not ours.
    log.warning("NOTIFY_SOCKET %r: unsupported address family, not notifying", addr)
    return None


def notify(state: str) -> bool:
    """Send `state` (e.g. "READY=1\\nSTATUS=...") to the service manager.

    True if a datagram was sent. Never raises: losing a status message must
    not take the daemon down (a missed WATCHDOG=1 is what systemd acts on).
    """
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode("utf-8"))
        return True
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", state.split("\n", 1)[0], exc)
        return False


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def ready(status_text: str | None = None) -> bool:
    """READY=1: for Type=notify, systemd considers the unit started only now."""
    msg = "READY=1"
    if status_text:
        msg += "\nSTATUS=" + _one_line(status_text)
    return notify(msg)


def watchdog() -> bool:
    """WATCHDOG=1: feed the watchdog (WatchdogSec=); only when truly healthy."""
    return notify("WATCHDOG=1")


def watchdog_trigger() -> bool:
    """WATCHDOG=trigger: ask systemd to treat the service as hung right now."""
    return notify("WATCHDOG=trigger")


def status(text: str) -> bool:
    """STATUS=: one line shown by `systemctl status igrtd`."""
    return notify("STATUS=" + _one_line(text))


def stopping(status_text: str | None = None) -> bool:
    msg = "STOPPING=1"
    if status_text:
        msg += "\nSTATUS=" + _one_line(status_text)
    return notify(msg)


def extend_timeout(seconds: float) -> bool:
    """EXTEND_TIMEOUT_USEC=: ask for more start/stop time (slow device connect)."""
    return notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")


def watchdog_interval_s() -> float | None:
    """The watchdog timeout systemd set for this process, or None if disabled.

    Like sd_watchdog_enabled(3): WATCHDOG_USEC must be a positive integer and
    WATCHDOG_PID, when set, must be our pid (a child must not feed it).
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not an integer; watchdog ignored", usec)
        return None
    if value <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return value / 1_000_000


async def feed_watchdog(healthy: Callable[[], bool] | None = None) -> None:
    """Feed the watchdog at half its interval for as long as `healthy()` holds.

    Run it as a task on the daemon's event loop: a stalled loop stops
    feeding, which is the point. Returns at once if there is no watchdog.
    When `healthy()` is False the feed is skipped, so systemd restarts a
    daemon whose supervision has stalled.
    """
    interval = watchdog_interval_s()
    if interval is None:
        return
    period = interval / 2
    while True:
        if healthy is None or healthy():
            watchdog()
        else:
            log.error("not feeding the systemd watchdog: daemon unhealthy")
        await asyncio.sleep(period)
