"""Simulated intrafraction motion and the kV image stream seen during beam-on.

The pieces live in four modules; this one re-exports their public names (the
import path tests, benches and sim/kv_stream.py use):

* sim/intrafraction_motion.py: `MotionScenario`, the true target displacement
  over time (room frame, mm): breathing (Lujan cos^4, mean-centred), a linear
  baseline drift, excursions (sudden steps or ramps that return) and image
  dropouts (frames missing, or the marker hidden); `random_scenario()` for
  drift campaigns, `demo_scenario()` for the demo.
* sim/intrafraction_frames.py: `KvFrameRenderer`, synthetic stereo kV frames
  fast enough for 10-20 Hz in real time: a static soft-tissue body (water chord
  through an elliptic cylinder), bony texture (spine, ribs, coarse random
  structure), a bright gold marker projected with the cone-beam geometry of
  imaging.drr.KvGeometry, and quantum noise on the transmitted intensity
  (Gaussian approximation, per-pixel sigma from the background attenuation).
  The anatomy is static; only the marker moves (that is all the tracker looks
  at). Also the stereo geometries, the planned marker/target and `make_tracker()`.
* sim/intrafraction_check.py: `analyse()` checks a monitored run against the
  truth: missed holds, spurious holds, unexplained stale holds, latencies to
  the PLC coil; `report()` and `deviation_png()` summarise a `RunResult`.
* sim/intrafraction_run.py: `run_realtime()`, one scenario in real time against
  the simulated room PLC over Modbus TCP, the monitor in this process;
  `run_virtual()`, the same in simulated time; `run_monitor_scenario()` runs
  the demo scenario in real time (report.json + deviation plot).
* `sim.kv_stream.monitor_scenario_via_igrtd()`: the `make demo MODE=monitor`
  entry point: the same scenario through igrtd as its own process.
"""

from __future__ import annotations

from sim.intrafraction_check import (
    FrameTruth,
    RunCheck,
    RunResult,
    analyse,
    beyond,
    deviation_png,
    hold_intervals,
    percentile_ms,
    report,
)
from sim.intrafraction_frames import (
    COMPACT_PAIR,
    MARKERS_MM,
    MONITOR_PAIR,
    TARGET_MM,
    KvFrameRenderer,
    make_tracker,
)
from sim.intrafraction_motion import (
    Breathing,
    Dropout,
    Excursion,
    MotionScenario,
    demo_scenario,
    random_scenario,
)
from sim.intrafraction_run import (
    monitor_scenario,
    realtime_frames,
    run_monitor_scenario,
    run_realtime,
    run_virtual,
)

__all__ = [
    "COMPACT_PAIR",
    "MARKERS_MM",
    "MONITOR_PAIR",
    "TARGET_MM",
    "Breathing",
    "Dropout",
    "Excursion",
    "FrameTruth",
    "KvFrameRenderer",
    "MotionScenario",
    "RunCheck",
    "RunResult",
    "analyse",
    "beyond",
    "demo_scenario",
    "deviation_png",
    "hold_intervals",
    "make_tracker",
    "monitor_scenario",
    "percentile_ms",
    "random_scenario",
    "realtime_frames",
    "report",
    "run_monitor_scenario",
    "run_realtime",
    "run_virtual",
]
