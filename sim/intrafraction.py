"""Simulated intrafraction motion and the kV image stream seen during beam-on.

* `MotionScenario`: the true target displacement over time (room frame, mm):
  breathing (Lujan cos^4, mean-centred), a linear baseline drift, excursions
  (sudden steps or ramps that return) and image dropouts (frames missing, or
  the marker hidden).
* `KvFrameRenderer`: synthetic stereo kV frames fast enough for 10-20 Hz in
  real time: a static soft-tissue body (water chord through an elliptic
  cylinder), bony texture (spine, ribs, coarse random structure), a bright
  gold marker projected with the cone-beam geometry of imaging.drr.KvGeometry,
  and quantum noise on the transmitted intensity (Gaussian approximation,
  per-pixel sigma from the background attenuation). The anatomy is static;
  only the marker moves (that is all the tracker looks at).
* `analyse()`: checks a monitored run against the truth: missed holds,
  spurious holds, unexplained stale holds, latencies to the PLC coil.
* `run_realtime()`: one scenario in real time against the simulated room PLC
  over Modbus TCP, the monitor in this process; `run_monitor_scenario()` runs
  the demo scenario that way (report.json + deviation plot).
* `sim.kv_stream.monitor_scenario_via_igrtd()`: the `make demo MODE=monitor`
  entry point: the same scenario through igrtd as its own process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from daemon.monitoring import FrameRecord, HoldEvent, IntrafractionMonitor
from drivers.plc import RoomPlcClient
from imaging.drr import MU_WATER_PER_MM, KvGeometry
from imaging.tracking import KvFrame, MarkerTracker
from safety.beam_hold import BeamHoldPolicy
from sim.plc import SimRoomPlc

log = logging.getLogger(__name__)

#: A stereo pair as mounted on many linacs (kV sources 90 deg apart).
MONITOR_PAIR: tuple[KvGeometry, KvGeometry] = (KvGeometry(angle_deg=0.0),
                                               KvGeometry(angle_deg=90.0))
#: Smaller detectors for campaigns that render thousands of frames.
COMPACT_PAIR: tuple[KvGeometry, KvGeometry] = (
    KvGeometry(angle_deg=0.0, size_px=(128, 128), pixel_mm=1.2),
    KvGeometry(angle_deg=90.0, size_px=(128, 128), pixel_mm=1.2),
)
TARGET_MM: tuple[float, float, float] = (0.0, 0.0, 0.0)  # planned target at the isocentre
MARKERS_MM: tuple[tuple[float, float, float], ...] = ((6.0, -4.0, 5.0),)


# ---------------------------------------------------------------------------
# Motion
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Breathing:
    amplitude_mm: float = 0.0  # peak to peak
    period_s: float = 4.0
    direction: tuple[float, float, float] = (0.0, 1.0, 0.0)  # room Y: sup-inf for HFS
    phase_s: float = 0.0

    def displacement(self, t: np.ndarray) -> np.ndarray:
        # cos^4 has mean 3/8: subtract it so the planned position is the mean position.
        s = np.cos(np.pi * (t + self.phase_s) / self.period_s) ** 4 - 3.0 / 8.0
        return self.amplitude_mm * s[:, None] * np.asarray(self.direction)[None, :]


@dataclass(frozen=True)
class Excursion:
    """Ramp to `shift_mm` over `ramp_s`, stay `duration_s`, ramp back (0: sudden)."""

    start_s: float
    duration_s: float
    shift_mm: tuple[float, float, float]
    ramp_s: float = 0.0

    def displacement(self, t: np.ndarray) -> np.ndarray:
        a, r, d = self.start_s, self.ramp_s, self.duration_s
        if r > 0:
            w = np.clip(np.minimum((t - a) / r, (a + 2 * r + d - t) / r), 0.0, 1.0)
        else:
            w = ((t >= a) & (t < a + d)).astype(float)
        return w[:, None] * np.asarray(self.shift_mm)[None, :]


@dataclass(frozen=True)
class Dropout:
    start_s: float
    duration_s: float
    kind: str = "occluded"  # "occluded": frames arrive, marker invisible; "missing": no frames

    def covers(self, t: float) -> bool:
        return self.start_s <= t < self.start_s + self.duration_s


@dataclass(frozen=True)
class MotionScenario:
    duration_s: float
    frame_period_s: float = 0.1
    breathing: Breathing | None = None
    drift_mm_per_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    excursions: tuple[Excursion, ...] = ()
    dropouts: tuple[Dropout, ...] = ()
    frame_jitter_s: float = 0.0  # uniform +- jitter on each frame time

    def displacement(self, t: float | np.ndarray) -> np.ndarray:
        """True target displacement (room mm) at time(s) `t` since beam on: (3,) or (N, 3)."""
        ts = np.atleast_1d(np.asarray(t, dtype=float))
        d = ts[:, None] * np.asarray(self.drift_mm_per_s)[None, :]
        if self.breathing is not None:
            d = d + self.breathing.displacement(ts)
        for e in self.excursions:
            d = d + e.displacement(ts)
        return d[0] if np.ndim(t) == 0 else d

    def schedule(self, rng: np.random.Generator) -> list[tuple[float, bool]]:
        """(time since beam on, marker visible) for every frame that is delivered."""
        out = []
        n = int(self.duration_s / self.frame_period_s)
        for k in range(1, n + 1):
            t = k * self.frame_period_s
            if self.frame_jitter_s > 0:
                t += float(rng.uniform(-self.frame_jitter_s, self.frame_jitter_s))
            covering = [d for d in self.dropouts if d.covers(t)]
            if any(d.kind == "missing" for d in covering):
                continue
            out.append((t, not covering))
        return out


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------


def _vec3(a: np.ndarray | Sequence[float]) -> tuple[float, float, float]:
    return (float(a[0]), float(a[1]), float(a[2]))


def _box_blur(a: np.ndarray, k: int) -> np.ndarray:
    r = k // 2
    p = np.pad(a, r + 1, mode="reflect")
    c = p.cumsum(0).cumsum(1)
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return (s / (k * k))[: a.shape[0], : a.shape[1]]


class KvFrameRenderer:
    """Synthetic kV frames: static anatomy + moving gold marker(s) + quantum noise."""

    def __init__(
        self,
        geometries: Sequence[KvGeometry],
        markers_mm: Sequence[Sequence[float]],
        seed: int = 0,
        *,
        photons_per_mm2: float = 5.5e4,  # unattenuated fluence at the detector
        marker_peak: float = 2.0,  # line integral at the marker centre after blur
        marker_size_mm: float = 1.2,
        body_semi_axes_mm: tuple[float, float] = (150.0, 100.0),  # room X, Z
    ) -> None:
        self.geometries = tuple(geometries)
        self.markers = np.asarray(markers_mm, dtype=float).reshape(-1, 3)
        self.rng = np.random.default_rng(seed)
        self.marker_peak = marker_peak
        self.marker_size_mm = marker_size_mm
        self.backgrounds: list[np.ndarray] = []
        self.sigmas: list[np.ndarray] = []
        for g in self.geometries:
            photons_per_pixel = photons_per_mm2 * g.pixel_mm**2
            bg = self._anatomy(g, body_semi_axes_mm)
            self.backgrounds.append(bg.astype(np.float32))
            self.sigmas.append((1.0 / np.sqrt(photons_per_pixel * np.exp(-bg))).astype(np.float32))

    def _anatomy(self, g: KvGeometry, semi: tuple[float, float]) -> np.ndarray:
        nu, nv = g.size_px
        u0, v0 = g.origin_uv()
        u = u0 + np.arange(nu) * g.pixel_mm
        v = v0 + np.arange(nv) * g.pixel_mm
        s = u / g.magnification  # lateral position at the isocentre plane
        y = v / g.magnification
        a = math.radians(g.angle_deg)
        n = np.array([math.sin(a), math.cos(a)])  # beam direction in (X, Z)
        e = np.array([math.cos(a), -math.sin(a)])
        # Chord of the ray s*e + l*n through the ellipse x^2/A^2 + z^2/B^2 = 1.
        ax, bz = semi
        qa = n[0] ** 2 / ax**2 + n[1] ** 2 / bz**2
        qb = 2 * s * (e[0] * n[0] / ax**2 + e[1] * n[1] / bz**2)
        qc = s**2 * (e[0] ** 2 / ax**2 + e[1] ** 2 / bz**2) - 1
        disc = np.clip(qb**2 - 4 * qa * qc, 0.0, None)
        chord = np.sqrt(disc) / qa
        body = MU_WATER_PER_MM * chord[None, :] * np.ones((nv, 1))
        ss, yy = np.meshgrid(s, y)
        # Spine: a dense band along Y behind the target, with vertebral bodies.
        spine = 0.9 * np.exp(-((ss - 0.0) / 18.0) ** 4) * (0.7 + 0.3 * np.cos(2 * np.pi * yy / 32.0))
        # Ribs: thin stripes along X, only off the midline.
        ribs = 0.35 * (np.cos(2 * np.pi * (yy + 0.3 * np.abs(ss)) / 26.0) > 0.8) * (
            np.abs(ss) > 35) * (np.abs(ss) < 150)
        ribs = _box_blur(ribs.astype(float), 5)
        # Coarse structure (vessels, bowel gas...): smoothed random field.
        coarse = _box_blur(self.rng.standard_normal((nv, nu)), max(3, int(8 / g.pixel_mm) | 1))
        coarse = _box_blur(coarse, max(3, int(8 / g.pixel_mm) | 1)) * 0.4
        return body + spine + ribs + coarse * (chord[None, :] > 0)

    def render(self, displacement_mm: Sequence[float] | np.ndarray, marker_visible: bool = True
               ) -> tuple[np.ndarray, ...]:
        d = np.asarray(displacement_mm, dtype=float).reshape(3)
        out = []
        for g, bg, sig in zip(self.geometries, self.backgrounds, self.sigmas):
            img = bg + self.rng.standard_normal(bg.shape, dtype=np.float32) * sig
            if marker_visible:
                for m in self.markers:
                    self._draw_marker(img, g, m + d)
            out.append(img)
        return tuple(out)

    def _draw_marker(self, img: np.ndarray, g: KvGeometry, p: np.ndarray) -> None:
        uv = g.project(p[None, :])
        col, row = g.to_pixel(uv)[0]
        mag = g.sid_mm / (g.sad_mm - float(p @ g.axes()[2]))
        sigma = max(0.6, 0.5 * self.marker_size_mm * mag / g.pixel_mm)
        r = math.ceil(4 * sigma) + 1
        c0, r0 = round(float(col)), round(float(row))
        rows, cols = img.shape
        r1, r2 = max(0, r0 - r), min(rows, r0 + r + 1)
        c1, c2 = max(0, c0 - r), min(cols, c0 + r + 1)
        if r1 >= r2 or c1 >= c2:
            return
        rr, cc = np.mgrid[r1:r2, c1:c2]
        blob = self.marker_peak * np.exp(-((rr - row) ** 2 + (cc - col) ** 2) / (2 * sigma**2))
        img[r1:r2, c1:c2] += blob.astype(np.float32)


def make_tracker(geometries: Sequence[KvGeometry] = MONITOR_PAIR,
                 markers_mm: Sequence[Sequence[float]] = MARKERS_MM,
                 target_mm: Sequence[float] = TARGET_MM, **kw: Any) -> MarkerTracker:
    return MarkerTracker(geometries, markers_mm, target_mm, **kw)


# ---------------------------------------------------------------------------
# Checking a run against the truth
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Running a scenario
# ---------------------------------------------------------------------------


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


async def realtime_frames(scenario: MotionScenario, renderer: KvFrameRenderer, t0: float,
                          truth: list[FrameTruth], seed: int = 0) -> AsyncIterator[KvFrame]:
    """Frames on the scenario's schedule in real time. Each frame is rendered in a
    worker thread ahead of its time and handed over when it is due; its
    `t_acquired` is the moment it is handed over (the image "becomes available")."""
    rng = np.random.default_rng(seed)
    for k, (t_rel, visible) in enumerate(scenario.schedule(rng)):
        d = scenario.displacement(t_rel)
        images = await asyncio.to_thread(renderer.render, d, visible)
        delay = t0 + t_rel - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t_avail = time.monotonic()
        truth.append(FrameTruth(k, t_rel, t_avail, _vec3(d), visible))
        yield KvFrame(k, t_avail, images)


async def run_realtime(
    scenario: MotionScenario,
    policy: BeamHoldPolicy,
    *,
    seed: int = 0,
    plc: SimRoomPlc | None = None,
    geometries: Sequence[KvGeometry] = MONITOR_PAIR,
    markers_mm: Sequence[Sequence[float]] = MARKERS_MM,
    margin_mm: float = 0.5,
    latency_bound_s: float | None = None,
) -> RunResult:
    """One monitored beam-on period in real time, beam hold through the PLC over Modbus TCP."""
    if plc is None:
        async with SimRoomPlc(cycle_s=0.01) as own:
            return await run_realtime(scenario, policy, seed=seed, plc=own,
                                      geometries=geometries, markers_mm=markers_mm,
                                      margin_mm=margin_mm, latency_bound_s=latency_bound_s)
    renderer = KvFrameRenderer(geometries, markers_mm, seed)
    tracker = make_tracker(geometries, markers_mm)
    audit: list[dict[str, Any]] = []
    truth: list[FrameTruth] = []
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.02,
                             heartbeat_stale_s=0.2) as client:
        await client.wait_until(lambda s: s.link_ok, 5.0)
        await client.set_beam_hold(False)
        first_change = len(plc.coil_changes)
        monitor = IntrafractionMonitor(
            tracker.estimate, client.set_beam_hold, policy,
            lambda event, actor, **kw: audit.append({"event": event, "actor": actor, **kw}),
            TARGET_MM)
        t0 = time.monotonic() + 0.05
        monitor.start(t0)
        await monitor.run(realtime_frames(scenario, renderer, t0, truth, seed))
    coil = [(t, v) for t, n, v in plc.coil_changes[first_change:] if n == "beam_hold"]
    check = analyse(scenario, policy, truth, monitor.records, monitor.events, t0=t0,
                    margin_mm=margin_mm, coil_changes=coil, latency_bound_s=latency_bound_s)
    return RunResult(scenario, policy, t0, truth, monitor.records, monitor.events, audit, coil,
                     check, monitor.frames_skipped)


class _VirtualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def run_virtual(
    scenario: MotionScenario,
    policy: BeamHoldPolicy,
    *,
    seed: int = 0,
    renderer: KvFrameRenderer | None = None,
    tracker: MarkerTracker | None = None,
    margin_mm: float = 0.5,
) -> RunResult:
    """The same monitor, estimator and images in simulated time (no network, as
    fast as the CPU allows): for campaigns of many scenarios. The beam-hold sink
    records (simulated time, value); the watchdog is emulated by ticking at each
    stale-image deadline that falls between frames."""
    renderer = renderer or KvFrameRenderer(COMPACT_PAIR, MARKERS_MM, seed)
    tracker = tracker or make_tracker(COMPACT_PAIR)
    clock = _VirtualClock()
    coil: list[tuple[float, bool]] = []
    audit: list[dict[str, Any]] = []

    async def sink(hold: bool) -> None:
        if not coil or coil[-1][1] != hold:
            coil.append((clock.t, hold))

    monitor = IntrafractionMonitor(
        tracker.estimate, sink, policy,
        lambda event, actor, **kw: audit.append({"event": event, "actor": actor, **kw}),
        TARGET_MM, estimate_in_thread=False, clock=clock)
    monitor.start(0.0)
    truth: list[FrameTruth] = []
    rng = np.random.default_rng(seed)
    sched = scenario.schedule(rng) + [(scenario.duration_s, False)]
    for k, (t_rel, visible) in enumerate(sched):
        deadline = monitor.next_deadline()
        while deadline is not None and deadline < t_rel - 1e-6:
            clock.t = deadline + min(0.001, (t_rel - deadline) / 2)  # before the next frame
            await monitor.tick()
            deadline = monitor.next_deadline()
        if k == len(sched) - 1:
            break  # the end marker only runs the watchdog up to the end of beam-on
        d = scenario.displacement(t_rel)
        images = renderer.render(d, visible)
        clock.t = t_rel
        truth.append(FrameTruth(k, t_rel, t_rel, _vec3(d), visible))
        await monitor.feed(KvFrame(k, t_rel, images))
    check = analyse(scenario, policy, truth, monitor.records, monitor.events, t0=0.0,
                    margin_mm=margin_mm, coil_changes=coil, latency_bound_s=0.0)
    return RunResult(scenario, policy, 0.0, truth, monitor.records, monitor.events, audit, coil,
                     check)


def random_scenario(rng: np.random.Generator, margin_mm: float = 0.5,
                    max_shift_mm: float = 12.0) -> tuple[MotionScenario, BeamHoldPolicy]:
    """A random beam-on period and site policy for drift campaigns.

    Breathing and drift stay clearly inside tolerance (tolerance - margin - 0.3
    mm); every excursion goes clearly beyond it (tolerance + margin + 0.3 mm at
    least, whatever the breathing does); excursions are either long (at least
    debounce + 1.5 frame periods), short (at most debounce - 1.5 periods) or
    slow ramps out and back. Some scenarios lose the marker for a while.
    """
    period = float(rng.choice([1 / 5, 1 / 7.5, 1 / 10, 1 / 15]))
    policy = BeamHoldPolicy(
        tolerance_mm=float(rng.choice([2.0, 3.0, 5.0])),
        debounce_s=float(rng.uniform(0.15, 0.5)),
        release_after_s=float(rng.uniform(0.2, 0.5)),
        max_image_age_s=max(3 * period, 0.4),
    )
    duration = float(rng.uniform(2.5, 3.5))
    budget = policy.tolerance_mm - margin_mm - 0.3
    amp = float(rng.uniform(0.0, 1.6 * budget * 0.8))  # peak-to-peak; |d| <= 5/8 amp
    drift_rate = float(rng.uniform(0.0, (budget - 0.625 * amp) / duration))
    drift_dir = rng.normal(size=3)
    drift = _vec3(drift_rate * drift_dir / np.linalg.norm(drift_dir))
    base_max = 0.625 * amp + drift_rate * duration
    excursions = []
    dropouts = []
    t = float(rng.uniform(0.3, 0.8))
    while t < duration - 0.5:
        kind = rng.choice(["long", "short", "ramp", "dropout"], p=[0.35, 0.3, 0.2, 0.15])
        u = rng.normal(size=3)
        u /= np.linalg.norm(u)
        low = policy.tolerance_mm + margin_mm + base_max + 0.3
        shift = _vec3(u * rng.uniform(low, max(low, max_shift_mm)))
        if kind == "long":
            dur = float(rng.uniform(policy.debounce_s + 1.5 * period, policy.debounce_s + 1.2))
            excursions.append(Excursion(t, dur, shift))
            end = t + dur
        elif kind == "short":
            top = policy.debounce_s - 1.5 * period
            if top < 0.02:
                t += 0.2
                continue
            dur = float(rng.uniform(0.01, top))
            excursions.append(Excursion(t, dur, shift))
            end = t + dur
        elif kind == "ramp":
            ramp = float(rng.uniform(0.2, 1.0))
            dur = float(rng.uniform(0.0, 1.0))
            excursions.append(Excursion(t, dur, shift, ramp_s=ramp))
            end = t + 2 * ramp + dur
        else:
            dur = float(rng.uniform(0.1, 1.0))
            dropouts.append(Dropout(t, dur, str(rng.choice(["occluded", "missing"]))))
            end = t + dur
        t = end + policy.release_after_s + 3 * period + float(rng.uniform(0.3, 1.0))
    scenario = MotionScenario(
        duration_s=duration, frame_period_s=period,
        breathing=Breathing(amp, float(rng.uniform(2.5, 5.0)), phase_s=float(rng.uniform(0, 5))),
        drift_mm_per_s=drift, excursions=tuple(excursions), dropouts=tuple(dropouts),
        frame_jitter_s=float(rng.uniform(0.0, 0.1 * period)))
    return scenario, policy


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


def demo_scenario() -> MotionScenario:
    """About 14 s of beam-on: breathing within tolerance, a cough, a sudden
    shift, a slow drift and a marker occlusion."""
    return MotionScenario(
        duration_s=14.0,
        frame_period_s=0.1,
        breathing=Breathing(amplitude_mm=3.0, period_s=4.0),
        drift_mm_per_s=(0.0, 0.0, -0.05),
        excursions=(
            Excursion(1.5, 0.08, (0.0, 0.0, 6.0)),  # a cough: too short to hold
            Excursion(3.0, 2.0, (4.0, 0.0, 2.5)),  # sudden shift: hold, release when back
            Excursion(7.0, 1.5, (0.0, -3.0, -3.0), ramp_s=1.2),  # slow drift out and back
        ),
        dropouts=(Dropout(11.5, 0.8, "occluded"),),  # marker hidden: stale image rule
        frame_jitter_s=0.005,
    )


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


async def monitor_scenario(out_dir: Path, seed: int = 0) -> dict[str, Any]:
    """The demo run, for callers already inside an event loop."""
    policy = BeamHoldPolicy()
    result = await run_realtime(demo_scenario(), policy, seed=seed)
    rep = report(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    rep["plot"] = str(deviation_png(result, out_dir))
    (out_dir / "report.json").write_text(json.dumps(rep, indent=2))
    return rep


def run_monitor_scenario(out_dir: Path | str, seed: int = 0) -> dict[str, Any]:
    """`make demo MODE=monitor`: a ~14 s real-time beam-on with drift, against the
    simulated room PLC; writes report.json and monitor_deviation.png to `out_dir`."""
    return asyncio.run(monitor_scenario(Path(out_dir), seed))
