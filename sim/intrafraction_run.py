"""Running a motion scenario through the intrafraction monitor.

`run_realtime()`: one scenario in real time against the simulated room PLC over
Modbus TCP, the monitor in this process; `run_virtual()`: the same in simulated
time for campaigns; `run_monitor_scenario()` runs the demo scenario in real
time (report.json + deviation plot). Part of sim/intrafraction.py's split.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from daemon.monitoring import IntrafractionMonitor
from drivers.plc import RoomPlcClient
from imaging.drr import KvGeometry
from imaging.tracking import KvFrame, MarkerTracker
from safety.beam_hold import BeamHoldPolicy
from sim.intrafraction_check import FrameTruth, RunResult, analyse, deviation_png, report
from sim.intrafraction_frames import (
    COMPACT_PAIR,
    MARKERS_MM,
    MONITOR_PAIR,
    TARGET_MM,
    KvFrameRenderer,
    make_tracker,
)
from sim.intrafraction_motion import MotionScenario, demo_scenario, vec3
from sim.plc import SimRoomPlc


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
        truth.append(FrameTruth(k, t_rel, t_avail, vec3(d), visible))
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
        truth.append(FrameTruth(k, t_rel, t_rel, vec3(d), visible))
        await monitor.feed(KvFrame(k, t_rel, images))
    check = analyse(scenario, policy, truth, monitor.records, monitor.events, t0=0.0,
                    margin_mm=margin_mm, coil_changes=coil, latency_bound_s=0.0)
    return RunResult(scenario, policy, 0.0, truth, monitor.records, monitor.events, audit, coil,
                     check)


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
