"""Daily QA in the simulated imperfect room (issue 16 item 8).

    python -m bench.qa_bench

A simulated room stood up from sim/rooms/imperfect.json (its imaging
isocentre 0.7 mm lateral of the treatment isocentre, a vertical scale error,
a yaw offset, couch sag, a small random repeatability; broker off) in a child
process (`igrt-sim up`, as the tests' rooms), and one whole `igrtctl qa daily
--imaging sim` run against it by the physicist bob: qa_start, the baseline
CBCT of the QA phantom, the 33 poses of the daily pattern (+-10 mm on each
translation, +-1 deg on each rotation, home between; then each translation
alone +-50 mm and home, the travels), each moved to through
igrtd's MotionGate with hold-to-run and imaged, and qa_finish.

Figures:

* qa_daily_s: the whole daily QA, from qa_start to igrtd's result (the room
  already up), wall clock. Mostly the simulated CBCTs and the couch's own travel.
* qa_iso_offset_error_mm: the imaging-isocentre offset the QA found minus the
  one injected into the room, worst axis (absolute).
* qa_couch_accuracy_error_mm: for every imaged pose, the couch displacement
  from home that the QA measured by imaging minus the real displacement of the
  table top (the simulator's truth at that acquisition), worst translation axis
  and pose; qa_couch_accuracy_error_deg the same for the rotations.
* qa_daily_passed: 1.0 when the imperfect room passed under its profile.
* qa_scale_error_pct: the scale of each translation the travels found minus the
  one injected, worst axis (percentage points); qa_yaw_offset_error_deg the same
  for the couch's yaw offset (safety.qa_travel).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from safety.geometry import rot_z
from sim.room_description import ROOMS_DIR

ROOM = ROOMS_DIR / "imperfect.json"
USER = "bob"  # an approver (physicist) with a demo key
TRANSLATIONS = ("lat", "long", "vert")
ROTATIONS = ("yaw", "pitch", "roll")


def _description() -> dict[str, Any]:
    d: dict[str, Any] = json.loads(ROOM.read_text())
    d["broker"] = {"enabled": False}
    d["kv_imager"] = False
    return d


def accuracy_errors(result: dict[str, Any], acquired: list[dict[str, Any]]) -> tuple[float, float]:
    """(worst translation mm, worst rotation deg) of measured minus true displacement from
    home, over every imaged pose; `acquired[0]` is the baseline at home."""
    measurements = [m for m in result.get("measurements", []) if m.get("label") != "baseline"]
    shots = acquired[1:]
    if len(measurements) != len(shots) or not shots:
        raise RuntimeError(f"{len(measurements)} measurements for {len(shots)} images")
    home = acquired[0]["true_pose"]
    worst_mm = worst_deg = 0.0
    for m, shot in zip(measurements, shots):
        real = shot["true_pose"]
        if "travel" in m:  # the BB alone: translation, carried along the table top's real yaw
            moved = rot_z(real["yaw"]) @ np.array([real[ax] - home[ax] for ax in TRANSLATIONS])
            got = m["travel"]["measured_mm"]
            worst_mm = max(worst_mm, *(abs(got[ax] - float(v))
                                        for ax, v in zip(TRANSLATIONS, moved, strict=True)))
            continue
        measured = m["measured"]
        for ax in TRANSLATIONS:
            worst_mm = max(worst_mm, abs(measured[ax] - (real[ax] - home[ax])))
        for ax in ROTATIONS:
            worst_deg = max(worst_deg, abs(measured[ax] - (real[ax] - home[ax])))
    return worst_mm, worst_deg


def daily_once(run_dir: Path) -> dict[str, float]:
    from daemon.igrtctl import qa, qa_daily, qa_link
    from daemon.igrtctl.links import LocalLink
    from sim.testing import IgrtRoom

    description = _description()
    injected = description["imperfections"]["imaging_iso_offset_mm"]
    room = IgrtRoom(description, run_dir).start()
    try:
        key = next(Path(u["key"]) for u in room.info["users"] if u["name"] == USER)
        a = argparse.Namespace(tool="daily", imaging="sim", run_dir=room.run_dir,
                               control_socket=None, profile=None, step_mm=10.0, step_deg=1.0,
                               rate=qa.HOLD_RATE_HZ, json=True, travel_mm=50.0)
        sim = qa_link.SimRoom.from_args(a)
        link = LocalLink(Path(room.info["igrtd"]["socket"]), USER, key)
        try:
            t0 = time.monotonic()
            with contextlib.redirect_stdout(io.StringIO()):
                result = asyncio.run(qa_daily.daily_run(a, link, sim))
            elapsed = time.monotonic() - t0
        finally:
            link.close()
    finally:
        room.close()
    found = result["iso_offset_mm"]
    fit = result["axis_fit"]
    scales = description["imperfections"].get("axis_scale", {})
    offsets = description["imperfections"].get("axis_offset", {})
    mm, deg = accuracy_errors(result, sim.acquired)
    return {
        "qa_daily_s": round(elapsed, 2),
        "qa_iso_offset_error_mm": round(max(abs(f - i) for f, i in zip(found, injected)), 4),
        "qa_couch_accuracy_error_mm": round(mm, 4),
        "qa_couch_accuracy_error_deg": round(deg, 4),
        "qa_daily_passed": float(bool(result.get("passed"))),
        # The travels' findings against what the room was built with.
        "qa_scale_error_pct": round(100 * max(
            abs(fit["scale"].get(ax, 0.0) - scales.get(ax, 0.0)) for ax in TRANSLATIONS), 4),
        "qa_yaw_offset_error_deg": round(abs(fit["yaw_offset_deg"] - offsets.get("yaw", 0.0)),
                                         4),
    }


def run() -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="igrt-qa-bench-") as tmp:
        return daily_once(Path(tmp) / "room")


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
