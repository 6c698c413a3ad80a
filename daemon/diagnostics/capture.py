"""What diagnostics keeps from start-up on: recent log lines and a clock anchor.

Both are process-wide (one igrtd per process), so they live here as module
state behind `install`, and the report and the bundle read them through
`anchor()` and `recent_log_lines()`.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass

from daemon.diagnostics.subject import Subject
from daemon.ports import CouchPort

LOG_RING_LINES = 5_000


class RecentLogs(logging.Handler):
    """The last LOG_RING_LINES formatted log lines of this process.

    igrtd logs to stderr (the journal under systemd), which a service account
    may not be able to read; this ring keeps what a bundle needs.
    """

    def __init__(self, capacity: int = LOG_RING_LINES) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - a bad log line must not break logging
            self.handleError(record)


@dataclass
class Anchor:
    """Clock readings at the start, against which drift is measured."""

    wall: float
    mono: float
    couch_uptime_ms: int | None = None
    couch_rx_mono: float | None = None
    couch_id: int | None = None  # which link the couch readings came from


_ring: RecentLogs | None = None
_anchor: Anchor | None = None


def install(service: object = None) -> RecentLogs:
    """Start capturing log lines and take the clock anchor (call once at start-up).

    Idempotent. Without this call, the first `collect` does it, and the log
    and drift figures then start at that moment.
    """
    global _ring, _anchor
    if _ring is None:
        _ring = RecentLogs()
        root = logging.getLogger()
        root.addHandler(_ring)
        # INFO lines matter in a bundle even if the root logger was left at WARNING.
        if root.level > logging.INFO or root.level == logging.NOTSET:
            _ring.setLevel(logging.INFO)
    if _anchor is None:
        _anchor = Anchor(time.time(), time.monotonic())
    couch = Subject.of(service).couch
    if couch is not None and (_anchor.couch_uptime_ms is None or _anchor.couch_id != id(couch)):
        anchor_couch(couch)
    return _ring


def anchor() -> Anchor:
    """The clock anchor; `install` must have run."""
    assert _anchor is not None, "diagnostics.install() was not called"
    return _anchor


def anchor_couch(couch: CouchPort) -> None:
    """Measure the couch controller's uptime from its latest status on (again)."""
    a = anchor()
    st = couch.latest_status
    if st is not None:
        a.couch_uptime_ms = int(st.uptime_ms)
        a.couch_rx_mono = float(st.received_at)
        a.couch_id = id(couch)


def recent_log_lines() -> list[str]:
    return list(_ring.lines) if _ring is not None else []
