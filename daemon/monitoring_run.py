"""One beam-on monitoring run as igrtd keeps it, and the pure rules around it.

Used by daemon/beam_monitoring.py: the run's state (segments, records, hold
events, counters), the tightening of the site policy by a request, the check
of a frame's geometry against the commissioned kV imaging, and the run's view
for `monitor_status`. No I/O here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field, replace
from typing import TypedDict

from daemon.api import MonitorStartRequest
from daemon.jsontypes import JsonObject, JsonValue
from daemon.monitoring import FrameRecord, HoldEvent, IntrafractionMonitor
from daemon.workflow import RoomState
from drivers.kv_imager import KvGeometry, WireFrame
from imaging.tracking import KvFrame, MarkerTracker
from safety.beam_hold import BeamHoldPolicy

# A frame stamped further than this ahead of igrtd's clock is refused: fed to
# the monitor it would make every later frame look out of order.
FUTURE_FRAME_TOLERANCE_S = 0.05
BEAM_HOLD_RETRY_S = 0.05


@dataclass(frozen=True)
class MonitorFrame(KvFrame):
    """A received frame and, if it cannot give an estimate, why (wrong geometry)."""

    problem: str = ""


@dataclass
class MonitoringRun:
    """MONITORING from monitor_start to monitor_stop (or a fault).

    One IntrafractionMonitor per imager connection (a "segment"): losing the
    connection ends the segment and holds the beam; the next connection starts
    a segment that is initially held, so only a fresh valid in-tolerance run
    releases the beam."""

    user: str
    policy: BeamHoldPolicy
    tracker: MarkerTracker
    geometries: tuple[KvGeometry, ...]
    markers_mm: list[list[float]]
    target_mm: tuple[float, float, float]
    return_state: RoomState
    started_at: float
    started_mono: float
    coil_held: bool | None  # beam-hold output as last acknowledged; None: unknown
    active: bool = True
    monitor: IntrafractionMonitor | None = None
    frames: asyncio.Queue[KvFrame | None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    segments: int = 0
    records: list[FrameRecord] = field(default_factory=list)
    events: list[HoldEvent] = field(default_factory=list)
    frames_skipped: int = 0
    frames_refused: int = 0
    imager_link_losses: int = 0
    ended: str | None = None
    between: BetweenBeamsState = field(default_factory=lambda: BetweenBeamsState())


@dataclass
class BetweenBeamsState:
    """A run's correction between beams (daemon/between_beams.py).

    `drift_since`/`window`: the held drift being watched (monotonic acquisition
    times, marker positions); `episode_done`: this drift already had its proposal
    (or was found unusable); `correction_id`: the proposal under way; `paused`: its
    move is under way (MOVING, VERIFYING), so frames are not used."""

    drift_since: float | None = None
    window: list[tuple[float, tuple[tuple[float, float, float], ...]]] = field(
        default_factory=list)
    episode_done: bool = False
    deferred_reason: str | None = None
    proposing: bool = False
    correction_id: str | None = None
    paused: bool = False
    history: list[JsonObject] = field(default_factory=list)
    # The pending correction's target position (room frame, mm) and the valid target
    # estimates seen since it was proposed (monotonic acquisition time, position).
    proposed_target: tuple[float, float, float] | None = None
    recent: list[tuple[float, tuple[float, float, float]]] = field(default_factory=list)

    def forget_drift(self) -> None:
        self.drift_since, self.episode_done, self.deferred_reason = None, False, None
        self.window.clear()

    def correction_done(self, outcome: str, **details: JsonValue) -> None:
        """The pending correction applied or withdrawn (`outcome`, recorded in its history
        entry with `details`): frames count again, and a new drift starts afresh."""
        for entry in self.history:
            if entry.get("proposal_id") == self.correction_id:
                entry.update(outcome=outcome, **details)
        self.correction_id, self.proposed_target, self.paused = None, None, False
        self.recent.clear()
        self.forget_drift()

    def moved_mm(self) -> float | None:
        """How far the target's mean position since the proposal is from the one the
        correction was computed for (None: no estimate yet)."""
        if self.proposed_target is None or not self.recent:
            return None
        n = len(self.recent)
        mean = [sum(p[i] for _, p in self.recent) / n for i in range(3)]
        return math.dist(mean, self.proposed_target)

    def view(self) -> JsonObject:
        return {"correction_id": self.correction_id, "paused": self.paused,
                "proposing": self.proposing,
                "drift_held_since_s": None if self.drift_since is None
                else round(time.monotonic() - self.drift_since, 3),
                "deferred": self.deferred_reason,
                "corrections": list(self.history)}


async def queued_frames(queue: asyncio.Queue[KvFrame | None]) -> AsyncIterator[KvFrame]:
    """The frames of one segment, until the None that ends it."""
    while True:
        frame = await queue.get()
        if frame is None:
            return
        yield frame


class _Overrides(TypedDict, total=False):
    """The policy fields a request may tighten (keywords of `replace`)."""

    tolerance_mm: float
    debounce_s: float
    release_after_s: float


def tightened(site: BeamHoldPolicy, req: MonitorStartRequest) -> BeamHoldPolicy:
    """The site policy with the request's overrides; only tighter values are accepted."""
    problems = []
    changes: _Overrides = {}
    if req.tolerance_mm is not None:
        if not req.tolerance_mm <= site.tolerance_mm:
            problems.append(f"tolerance {req.tolerance_mm} mm is looser than the site's "
                            f"{site.tolerance_mm} mm")
        changes["tolerance_mm"] = req.tolerance_mm
    if req.debounce_s is not None:
        if not req.debounce_s <= site.debounce_s:
            problems.append(f"debounce {req.debounce_s} s is longer than the site's "
                            f"{site.debounce_s} s")
        changes["debounce_s"] = req.debounce_s
    if req.release_after_s is not None:
        if not req.release_after_s >= site.release_after_s:
            problems.append(f"release delay {req.release_after_s} s is shorter than the site's "
                            f"{site.release_after_s} s")
        changes["release_after_s"] = req.release_after_s
    if problems:
        raise ValueError("; ".join(problems) + " (a treatment may only tighten the site policy)")
    return replace(site, **changes)


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)




def geometry_problem(run: MonitoringRun, frame: WireFrame) -> str:
    """Why the frame's geometry is not the commissioned one ('' if it is)."""
    fid = frame.frame_id
    if len(frame.geometries) != len(run.geometries):
        return (f"frame {fid} has {len(frame.geometries)} views, the commissioned kV "
                f"imaging has {len(run.geometries)}")
    for i, (g, c) in enumerate(zip(frame.geometries, run.geometries)):
        if tuple(g.size_px) != tuple(c.size_px):
            return (f"frame {fid} view {i} is {g.size_px[0]} x {g.size_px[1]} px, "
                    f"commissioned {c.size_px[0]} x {c.size_px[1]} px")
        checks = [
            ("angle", _angle_diff(g.angle_deg, c.angle_deg), g.angle_deg, c.angle_deg,
             0.1, "deg"),
            ("SAD", abs(g.sad_mm - c.sad_mm), g.sad_mm, c.sad_mm, 0.5, "mm"),
            ("SID", abs(g.sid_mm - c.sid_mm), g.sid_mm, c.sid_mm, 0.5, "mm"),
            ("pixel pitch", abs(g.pixel_mm - c.pixel_mm), g.pixel_mm, c.pixel_mm, 1e-3,
             "mm"),
            ("detector offset u", abs(g.offset_mm[0] - c.offset_mm[0]), g.offset_mm[0],
             c.offset_mm[0], 0.1, "mm"),
            ("detector offset v", abs(g.offset_mm[1] - c.offset_mm[1]), g.offset_mm[1],
             c.offset_mm[1], 0.1, "mm"),
        ]
        for name, diff, got, want, tol, unit in checks:
            if diff > tol:
                return (f"frame {fid} view {i}: {name} {got:g} {unit} differs from the "
                        f"commissioned {want:g} {unit} by more than {tol:g} {unit}")
    return ""



def run_view(run: MonitoringRun) -> JsonObject:
    m = run.monitor
    records = run.records + (m.records if m is not None else [])
    events = run.events + (m.events if m is not None else [])
    last = records[-1] if records else None
    return {
        "started_by": run.user,
        "started_at": run.started_at,
        "seconds": round(time.monotonic() - run.started_mono, 3),
        "ended": run.ended,
        "policy": asdict(run.policy),
        "markers_mm": [list(p) for p in run.markers_mm],  # list[JsonValue] for mypy
        "target_mm": list(run.target_mm),
        "segments": run.segments,
        "frames_processed": len(records),
        "frames_skipped": run.frames_skipped + (m.frames_skipped if m is not None else 0),
        "frames_refused": run.frames_refused,
        "frames_without_estimate": sum(r.deviation_mm is None for r in records),
        "imager_link_losses": run.imager_link_losses,
        "hold_wanted": m.hold if m is not None else run.coil_held,
        "beam_held": m.beam_hold_acknowledged if m is not None else run.coil_held,
        "holds": sum(e.event == "beam_hold" for e in events),
        "releases": sum(e.event == "beam_release" for e in events),
        "last_frame": None if last is None else {
            "frame_id": last.frame_id,
            "age_s": round(time.monotonic() - last.t_available, 3),
            "deviation_mm": None if last.deviation_mm is None
            else [round(v, 3) for v in last.deviation_mm],
            "deviation_norm_mm": None if last.deviation_norm_mm is None
            else round(last.deviation_norm_mm, 3),
            "hold": last.hold,
            "reason": last.reason,
        },
        "between_beams": run.between.view(),
    }

