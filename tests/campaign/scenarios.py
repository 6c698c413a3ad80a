"""Random fault scenarios for the campaign, reproducible from one seed.

A scenario is one confirmed move plus a schedule of faults, each at an offset
from the moment the console starts holding hold-to-run (negative: before it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from safety.pose import Pose

INTERLOCKS = ("door_closed", "estop_chain_ok", "collision_pads_clear", "motion_enable_pressed",
              "imager_kv_source_parked", "imager_detector_parked")
# Fault families and their weights.
FAMILIES: dict[str, float] = {
    "interlock": 40, "plc_drop": 8, "plc_heartbeat_frozen": 8, "plc_delay": 8,
    "couch_silence": 6, "couch_delay": 8, "hold_loss": 10, "none": 6,
}


@dataclass(frozen=True)
class Step:
    at: float  # seconds from the first hold
    kind: str  # an ACTIONS name of the rig, or "hold_stop"
    value: object = None


@dataclass
class Scenario:
    index: int
    steps: list[Step]
    families: list[str]
    recover: bool  # after a stop: reset, confirm afresh and finish the move
    hold_through_reset: bool  # the console keeps holding the old proposal across the reset
    delta: tuple[float, float, float] = (0.0, 0.0, 0.0)
    notes: list[str] = field(default_factory=list)


def _family_steps(rng: random.Random, family: str) -> list[Step]:
    at = rng.uniform(-0.015, 0.06)
    dur = rng.uniform(0.015, 0.06)
    if family == "interlock":
        name = rng.choice(INTERLOCKS)
        steps = [Step(at, name, False)]
        if rng.random() < 0.6:  # closes again while the console still holds
            steps.append(Step(at + dur, name, True))
        return steps
    if family == "plc_drop":
        return [Step(at, "plc_drop")]
    if family == "plc_heartbeat_frozen":
        dur = rng.uniform(0.04, 0.16)
        return [Step(at, "plc_heartbeat_frozen", True), Step(at + dur, "plc_heartbeat_frozen", False)]
    if family == "plc_delay":
        d = rng.choice((0.002, 0.01, 0.03, 0.06, 0.12))
        return [Step(at, "plc_delay", d), Step(at + rng.uniform(0.03, 0.1), "plc_delay", 0.0)]
    if family == "couch_silence":
        return [Step(at, "couch_silence", rng.uniform(0.03, 0.25))]
    if family == "couch_delay":
        d = rng.choice((0.001, 0.005, 0.02, 0.06, 0.3))
        return [Step(at, "couch_delay", d), Step(at + rng.uniform(0.03, 0.1), "couch_delay", 0.0)]
    if family == "hold_loss":
        return [Step(max(at, 0.0), "hold_stop")]
    return []


def make_scenario(rng: random.Random, index: int) -> Scenario:
    n = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    fams = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()), k=n)
    steps = sorted((s for f in fams for s in _family_steps(rng, f)), key=lambda s: s.at)
    return Scenario(index, steps, fams, recover=rng.random() < 0.25,
                    hold_through_reset=rng.random() < 0.5)


# Families whose detection takes a timeout (hold-to-run, the PLC heartbeat, the
# controller's own watchdog) get long moves, so the fault lands while the couch still moves.
SLOW_FAMILIES = frozenset({"hold_loss", "couch_silence", "plc_heartbeat_frozen"})


def move_size_mm(rng: random.Random, sc: Scenario) -> float:
    if SLOW_FAMILIES.intersection(sc.families):
        return rng.uniform(20.0, 30.0)
    return rng.uniform(2.0, 4.0)


def pick_target(rng: random.Random, current: Pose, size: float) -> Pose:
    """A translation of `size` mm from `current`, drifting back towards the origin
    so the couch never wanders off."""
    while True:
        d = [rng.uniform(-1.0, 1.0) for _ in range(3)]
        norm = sum(v * v for v in d) ** 0.5
        if norm < 0.2:
            continue
        d = [v / norm * size for v in d]
        cur = (current.lat, current.long, current.vert)
        d = [-abs(v) if c > 10 else abs(v) if c < -10 else v for v, c in zip(d, cur)]
        return Pose(cur[0] + d[0], cur[1] + d[1], cur[2] + d[2], 0.0, 0.0, 0.0)
