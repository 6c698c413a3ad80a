"""Checking a monitored beam-on run against the truth, and reporting it.

`analyse()` finds missed holds, late holds, spurious holds, unexplained stale
holds and the latencies to the PLC coil (see docs/intrafraction-monitoring.md);
`report()` and `deviation_png()` turn a `RunResult` into report.json figures and
the deviation plot. Part of sim/intrafraction.py's split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.monitoring import FrameRecord, HoldEvent
from safety.beam_hold import BeamHoldPolicy
from sim.intrafraction_motion import MotionScenario


@dataclass(frozen=True)
class FrameTruth:
    frame_id: int
    t_rel: float  # scheduled time since beam on
    t_available: float  # clock time the frame was handed to the monitor
    displacement_mm: tuple[float, float, float]
    marker_visible: bool


def beyond(policy: BeamHoldPolicy, d: np.ndarray, margin_mm: float) -> np.ndarray:
    """Vectorised policy.exceeds(d, margin) is not None for (N, 3) deviations."""
    out = np.linalg.norm(d, axis=1) > policy.tolerance_mm - margin_mm
    if policy.axis_tolerance_mm is not None:
        out |= np.any(np.abs(d) > np.asarray(policy.axis_tolerance_mm) - margin_mm, axis=1)
    return out


@dataclass
class RunCheck:
    must_hold: int = 0
    missed: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    spurious: list[str] = field(default_factory=list)
    unexplained_stale: list[str] = field(default_factory=list)
    hold_latencies_s: list[float] = field(default_factory=list)  # frame available -> coil set
    release_latencies_s: list[float] = field(default_factory=list)
    onset_to_hold_s: list[float] = field(default_factory=list)  # truth onset -> coil/command

    @property
    def ok(self) -> bool:
        return not (self.missed or self.late or self.spurious or self.unexplained_stale)


def analyse(
    scenario: MotionScenario,
    policy: BeamHoldPolicy,
    truth: Sequence[FrameTruth],
    records: Sequence[FrameRecord],
    events: Sequence[HoldEvent],
    *,
    t0: float,
    margin_mm: float = 0.5,
    coil_changes: Sequence[tuple[float, bool]] | None = None,
    latency_bound_s: float | None = None,
) -> RunCheck:
    """Check a monitored run against the truth (see docs/intrafraction-monitoring.md).

    `margin_mm` must exceed the estimate error: truth beyond tolerance + margin
    reads "out", truth within tolerance - margin reads "in". `t0` is the clock
    time of beam on (scenario time 0). With `coil_changes` ((clock time,
    value) of the PLC's beam-hold coil), latencies are measured to the coil
    and, with `latency_bound_s`, every required hold must reach the coil within
    that bound of the frame that made it due.
    """
    check = RunCheck()
    rec = {r.frame_id: r for r in records}
    by_id = {f.frame_id: f for f in truth}
    visible = [f for f in truth if f.marker_visible]
    vis_t = np.array([f.t_rel for f in visible])

    def coil_at(t: float) -> bool:
        state = False
        for tc, v in coil_changes or ():
            if tc <= t:
                state = v
        return state

    # --- required holds: truth beyond tolerance + margin long enough -------
    dt = 0.001
    ts = np.arange(0.0, scenario.duration_s + dt, dt)
    out = beyond(policy, scenario.displacement(ts), -margin_mm)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], out.astype(np.int8), [0]))))
    gaps = np.diff(np.concatenate(([0.0], vis_t))) if len(vis_t) else np.array([math.inf])
    p_max = float(gaps.max()) if len(gaps) else math.inf
    for a_i, b_i in zip(edges[::2], edges[1::2]):
        a, b = ts[a_i], ts[min(b_i, len(ts) - 1)]
        if b - a <= policy.debounce_s + p_max + 2 * dt:
            continue
        # Due: the debounce has elapsed both in the anatomy's time (t_rel, what the
        # image shows) and on the monitor's clock (t_available, what it times by),
        # counted from the last frame before the onset.
        before = [f for f in visible if f.t_rel < a]
        t_last = before[-1].t_available if before else t0
        due = [f for f in visible if a + policy.debounce_s <= f.t_rel < b
               and f.t_available - t_last >= policy.debounce_s - 1e-9]
        if not due:
            continue
        check.must_hold += 1
        label = f"excursion {a:.3f}-{b:.3f} s"
        processed = [rec[f.frame_id] for f in due if f.frame_id in rec]
        if not processed or not processed[0].hold:
            check.missed.append(f"{label}: not held at frame {due[0].frame_id}")
            continue
        if coil_changes is not None and latency_bound_s is not None:
            deadline = due[0].t_available + latency_bound_s
            if not coil_at(deadline):
                check.late.append(f"{label}: coil not set {latency_bound_s * 1000:.0f} ms after "
                                  f"frame {due[0].frame_id}")
        holds_before = [e for e in events if e.event == "beam_hold"
                        and e.t_decided <= processed[0].t_decided]
        if holds_before:
            t_set = holds_before[-1].t_commanded
            if coil_changes is not None:
                t_set = next((tc for tc, v in coil_changes if v and tc >= holds_before[-1].t_decided),
                             t_set)
            check.onset_to_hold_s.append(t_set - (t0 + a))

    # --- every hold must be justified -------------------------------------
    for e in events:
        if e.event != "beam_hold":
            continue
        if e.cause == "deviation" and e.frame_id is not None:
            f = by_id[e.frame_id]
            prev_in = [g for g in visible if g.t_rel < f.t_rel and not beyond(
                policy, np.asarray([g.displacement_mm]), margin_mm)[0]]
            # Timed on the monitor's clock, as the policy times it.
            t_prev = prev_in[-1].t_available if prev_in else t0
            if f.t_available - t_prev < policy.debounce_s - 1e-6:
                check.spurious.append(
                    f"hold at frame {f.frame_id} ({f.t_rel:.3f} s): truth clearly in tolerance "
                    f"{f.t_available - t_prev:.3f} s before (debounce {policy.debounce_s} s)")
        elif e.cause == "stale":
            seen = [g for g in truth if g.marker_visible and g.t_available <= e.t_decided
                    and g.frame_id != e.frame_id]  # the frame after a gap does not end it
            last = seen[-1].t_available if seen else t0
            if e.t_decided - last < policy.max_image_age_s - 0.02:
                check.unexplained_stale.append(
                    f"stale hold at {e.t_decided - t0:.3f} s but a visible-marker frame was "
                    f"delivered {e.t_decided - last:.3f} s before")

    # --- latencies: frame available -> coil ----------------------------------
    if coil_changes is not None:
        sets = [(tc, v) for tc, v in coil_changes]
        for e in events:
            if e.t_frame is None:
                continue
            want = e.event == "beam_hold"
            tc = next((tc for tc, v in sets if v == want and tc >= e.t_frame), None)
            if tc is not None:
                (check.hold_latencies_s if want else check.release_latencies_s).append(tc - e.t_frame)
    return check


@dataclass
class RunResult:
    scenario: MotionScenario
    policy: BeamHoldPolicy
    t0: float
    truth: list[FrameTruth]
    records: list[FrameRecord]
    events: list[HoldEvent]
    audit: list[dict[str, Any]]
    coil_changes: list[tuple[float, bool]]
    check: RunCheck
    frames_skipped: int = 0


def hold_intervals(result: RunResult) -> list[tuple[float, float]]:
    """Beam-hold intervals on the PLC coil, in seconds since beam on."""
    out: list[tuple[float, float]] = []
    start: float | None = None
    for t, v in result.coil_changes:
        if v and start is None:
            start = t - result.t0
        elif not v and start is not None:
            out.append((start, t - result.t0))
            start = None
    if start is not None:
        out.append((start, result.scenario.duration_s))
    return out


def percentile_ms(values_s: Sequence[float], q: float) -> float | None:
    a = np.asarray(values_s, dtype=float)
    return round(float(np.percentile(a * 1000.0, q)), 3) if a.size else None


def report(result: RunResult) -> dict[str, Any]:
    c = result.check
    est = [r.estimate_ms for r in result.records]
    errs = []
    by_id = {f.frame_id: f for f in result.truth}
    for r in result.records:
        if r.deviation_mm is not None:
            errs.append(float(np.linalg.norm(np.subtract(r.deviation_mm,
                                                         by_id[r.frame_id].displacement_mm))))
    return {
        "mode": "monitor",
        "policy": asdict(result.policy),
        "frames_delivered": len(result.truth),
        "frames_processed": len(result.records),
        "frames_skipped": result.frames_skipped,
        "frames_without_estimate": sum(r.deviation_mm is None for r in result.records),
        "estimate_error_mm_max": round(max(errs), 3) if errs else None,
        "estimate_error_mm_mean": round(float(np.mean(errs)), 3) if errs else None,
        "tracking_estimate_ms_p50": percentile_ms([x / 1000.0 for x in est], 50),
        "tracking_estimate_ms_p99": percentile_ms([x / 1000.0 for x in est], 99),
        "holds": sum(e.event == "beam_hold" for e in result.events),
        "releases": sum(e.event == "beam_release" for e in result.events),
        "required_holds": c.must_hold,
        "missed_holds": c.missed,
        "late_holds": c.late,
        "spurious_holds": c.spurious,
        "unexplained_stale_holds": c.unexplained_stale,
        "hold_latency_ms": [round(x * 1000, 3) for x in c.hold_latencies_s],
        "release_latency_ms": [round(x * 1000, 3) for x in c.release_latencies_s],
        "monitor_hold_latency_p99_ms": percentile_ms(c.hold_latencies_s, 99),
        "onset_to_hold_ms": [round(x * 1000, 3) for x in c.onset_to_hold_s],
        "hold_intervals_s": [[round(a, 3), round(b, 3)] for a, b in hold_intervals(result)],
        "events": [
            {"event": e.event, "cause": e.cause, "reason": e.reason, "frame_id": e.frame_id,
             "t_s": round(e.t_decided - result.t0, 4),
             "deviation_mm": None if e.deviation_mm is None else [round(v, 3) for v in e.deviation_mm]}
            for e in result.events
        ],
        "ok": c.ok,
    }


def deviation_png(result: RunResult, out_dir: Path, title: str | None = None) -> Path:
    from imaging.monitor_plot import deviation_plot

    times = [r.t_available - result.t0 for r in result.records]
    devs = [r.deviation_norm_mm for r in result.records]
    truth_t = np.arange(0.0, result.scenario.duration_s, 0.02)
    truth_d = np.linalg.norm(result.scenario.displacement(truth_t), axis=1)
    extra = {} if title is None else {"title": title}
    return deviation_plot(out_dir / "monitor_deviation.png", times, devs,
                          result.policy.tolerance_mm, hold_intervals(result),
                          truth=(list(truth_t), list(truth_d)), **extra)
