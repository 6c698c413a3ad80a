"""Fakes for the intrafraction monitor: a beam-hold sink and an audit log sharing one timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imaging.tracking import KvFrame, TargetEstimate


@dataclass
class Timeline:
    """Everything the monitor does, in order: ("sink", value) and ("audit", event, details)."""

    entries: list[tuple[Any, ...]] = field(default_factory=list)
    fail_writes: int = 0  # the next N sink writes raise

    async def set_beam_hold(self, hold: bool) -> None:
        if self.fail_writes > 0:
            self.fail_writes -= 1
            raise ConnectionError("room PLC not connected")
        self.entries.append(("sink", hold))

    def audit(self, event: str, actor: str, **details: Any) -> None:
        self.entries.append(("audit", event, details))

    def sink_writes(self) -> list[bool]:
        return [e[1] for e in self.entries if e[0] == "sink"]

    def events(self) -> list[str]:
        return [e[1] for e in self.entries if e[0] == "audit"]


def frame_at(t: float, position: tuple[float, float, float] | None, frame_id: int = 0) -> KvFrame:
    """A frame whose 'image' is the true position itself (see `position_estimate`)."""
    img = np.full((1, 3), np.nan) if position is None else np.asarray([position], dtype=float)
    return KvFrame(frame_id, t, (img,))


def position_estimate(frame: KvFrame) -> TargetEstimate:
    p = frame.images[0][0]
    if not np.all(np.isfinite(p)):
        return TargetEstimate(None, "marker not found")
    return TargetEstimate(np.array(p, dtype=float))
