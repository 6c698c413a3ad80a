"""Random fault scenarios for the campaign, reproducible from one seed.

A scenario is one proposed correction (1.5-29.5 mm, sometimes with rotations
within the couch's and the policy's limits), confirmed by one person and, when
the verdict asks for it, approved by a second, plus a schedule of faults:

- `before_confirm`: between the proposal (imaging) and the confirmation
  (the couch moved by someone else, e.g. `set_pose`);
- `steps`: each at an offset from the moment the console starts holding
  hold-to-run (negative: before it, after the confirmation);
- `post`: after the move is over (a runaway while nothing is commanded).

`propose_lie_mm` / `registration_age_s` make the proposal itself wrong (a
couch pose at imaging that is not the couch's, a stale registration).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from drivers.plc import POSITION_FULL_SCALE, REGISTER_MAP_VERSION, StatusRegister
from safety.pose import Pose

INTERLOCKS = ("door_closed", "estop_chain_ok", "collision_pads_clear", "motion_enable_pressed",
              "imager_kv_source_parked", "imager_detector_parked")
# Fault families and their weights.
FAMILIES: dict[str, float] = {
    "interlock": 20, "interlock_pulse": 8, "plc_drop": 5, "plc_heartbeat_frozen": 5,
    "plc_delay": 4, "plc_fault_code": 8, "plc_raw_register": 6, "couch_silence": 4,
    "couch_delay": 4, "hold_loss": 8, "runaway": 6, "pose_jump": 6,
    "moved_since_imaging": 6, "imaging_pose_lie": 4, "stale_registration": 2, "none": 4,
}
# The room PLC's scan (sim.plc.SimRoomPlc cycle_s): the shortest pulse a PLC can show.
PLC_SCAN_S = 0.01
TRANSLATIONS = ("lat", "long", "vert")


@dataclass(frozen=True)
class Step:
    at: float  # seconds from the first hold (before_confirm/post: from the phase start)
    kind: str  # an ACTIONS name of the rig, or "hold_stop"
    value: object = None


@dataclass
class Scenario:
    index: int
    steps: list[Step]
    families: list[str]
    recover: bool  # after a stop: reset, confirm afresh and finish the move
    hold_through_reset: bool  # the console keeps holding the old proposal across the reset
    size_mm: float = 3.0  # vector shift of the correction
    single_axis: bool = False  # the whole shift on one axis (long moves take longer)
    rotate: bool = False  # add rotations (within the couch and policy limits)
    before_confirm: list[Step] = field(default_factory=list)
    post: list[Step] = field(default_factory=list)
    propose_lie_mm: tuple[str, float] | None = None  # couch_at_imaging off the real pose
    registration_age_s: float = 0.0
    self_approval: bool = False  # the confirmer also tries to give the second approval
    reapply: bool = False  # after DONE: confirm and hold the applied proposal again
    notes: list[str] = field(default_factory=list)


def _raw_register_fault(rng: random.Random) -> tuple[int, int]:
    """A status register value outside the documented map (docs/protocols/room-plc.md)."""
    which = rng.choice(("arm", "arm", "status_bits", "output_echo", "map_version"))
    if which == "arm":
        reg = rng.choice((StatusRegister.KV_SOURCE_POSITION, StatusRegister.DETECTOR_POSITION))
        return int(reg), rng.choice((POSITION_FULL_SCALE + 1, 4096, 0x7FFF, 0xFFFF))
    if which == "status_bits":
        # Every interlock closed, motion enable pressed, a reserved bit set (resolved
        # against the live word when injected: the value is the bit to add).
        return int(StatusRegister.STATUS_BITS), -(1 << rng.randint(8, 15))
    if which == "output_echo":
        return int(StatusRegister.OUTPUT_ECHO), 1 << rng.randint(4, 15)
    return int(StatusRegister.MAP_VERSION), rng.choice((0, REGISTER_MAP_VERSION + 1, 0xFFFF))


def _family_steps(rng: random.Random, family: str, sc: Scenario) -> list[Step]:
    at = rng.uniform(-0.015, 0.06)
    dur = rng.uniform(0.015, 0.06)
    if family == "interlock":
        name = rng.choice(INTERLOCKS)
        steps = [Step(at, name, False)]
        if rng.random() < 0.6:  # closes again while the console still holds
            steps.append(Step(at + dur, name, True))
        return steps
    if family == "interlock_pulse":
        # Open for one PLC scan (sometimes two or three), scheduled on the PLC's own loop.
        k = rng.choice((1, 1, 1, 2, 3))
        return [Step(rng.uniform(-0.01, 0.12), "interlock_pulse",
                     (rng.choice(INTERLOCKS), k * PLC_SCAN_S))]
    if family == "plc_drop":
        return [Step(at, "plc_drop")]
    if family == "plc_heartbeat_frozen":
        dur = rng.uniform(0.04, 0.16)
        return [Step(at, "plc_heartbeat_frozen", True), Step(at + dur, "plc_heartbeat_frozen", False)]
    if family == "plc_delay":
        d = rng.choice((0.002, 0.01, 0.03, 0.06, 0.12))
        return [Step(at, "plc_delay", d), Step(at + rng.uniform(0.03, 0.1), "plc_delay", 0.0)]
    if family == "plc_fault_code":
        # Before the move (negative) or during it; cleared again or left until the end.
        at = rng.uniform(-0.03, 0.12)
        code = rng.choice((1, 5, 17, 0x100, 0x8000, 0xFFFF))
        steps = [Step(at, "plc_fault_code", code)]
        if rng.random() < 0.5:
            steps.append(Step(at + rng.uniform(PLC_SCAN_S, 0.08), "plc_fault_code", 0))
        return steps
    if family == "plc_raw_register":
        at = rng.uniform(-0.03, 0.12)
        addr, value = _raw_register_fault(rng)
        steps = [Step(at, "plc_raw_register", (addr, value))]
        if rng.random() < 0.5:
            steps.append(Step(at + rng.uniform(PLC_SCAN_S, 0.08), "plc_raw_register",
                              (addr, None)))
        return steps
    if family == "couch_silence":
        return [Step(at, "couch_silence", rng.uniform(0.03, 0.4))]
    if family == "couch_delay":
        d = rng.choice((0.001, 0.005, 0.02, 0.06, 0.3))
        return [Step(at, "couch_delay", d), Step(at + rng.uniform(0.03, 0.1), "couch_delay", 0.0)]
    if family == "hold_loss":
        return [Step(max(at, 0.0), "hold_stop")]
    if family == "runaway":
        axis = rng.choice(TRANSLATIONS + ("yaw",))
        speed = rng.choice((-1, 1)) * (rng.uniform(0.5, 2.0) if axis == "yaw"
                                       else rng.uniform(2.0, 40.0))
        if rng.random() < 0.5:  # confirmed, nobody holding yet: nothing commanded
            return [Step(rng.uniform(-0.05, -0.02), "runaway", (axis, speed))]
        sc.post.append(Step(rng.uniform(0.0, 0.02), "runaway", (axis, speed)))
        return []
    if family == "pose_jump":
        axis = rng.choice(TRANSLATIONS)
        # Each at least 3x what the axis can travel between two STATUS pushes.
        delta = rng.choice((-1, 1)) * rng.choice((5.0, 10.0, 20.0, 50.0))
        return [Step(rng.uniform(0.04, 0.12), "pose_jump", (axis, delta))]
    if family == "moved_since_imaging":
        axis = rng.choice(TRANSLATIONS)
        d = rng.choice((-1, 1)) * rng.uniform(2.0, 36.0)
        step = Step(0.0, "set_pose", {axis: d})
        if rng.random() < 0.5:
            sc.before_confirm.append(step)  # between imaging and confirmation
            return []
        return [Step(rng.uniform(-0.03, -0.01), "set_pose", {axis: d})]  # after confirming
    if family == "imaging_pose_lie":
        sc.propose_lie_mm = (rng.choice(TRANSLATIONS),
                             rng.choice((-1, 1)) * rng.choice((10.0, 34.0, 80.0, 150.0)))
        return []
    if family == "stale_registration":
        sc.registration_age_s = rng.choice((1801.0, 3600.0, 86400.0 * 365))
        return []
    return []


# Families whose detection takes a timeout (hold-to-run, the PLC heartbeat, the
# controller's own watchdog) or that must land mid-move get long moves, so the
# fault lands while the couch still moves.
SLOW_FAMILIES = frozenset({"hold_loss", "couch_silence", "plc_heartbeat_frozen", "pose_jump"})


def make_scenario(rng: random.Random, index: int) -> Scenario:
    n = rng.choices((1, 2, 3), weights=(6, 3, 1))[0]
    fams = rng.choices(list(FAMILIES), weights=list(FAMILIES.values()), k=n)
    sc = Scenario(index, [], fams, recover=rng.random() < 0.25,
                  hold_through_reset=rng.random() < 0.5)
    if SLOW_FAMILIES.intersection(fams):
        sc.size_mm, sc.single_axis = rng.uniform(18.0, 29.5), True
    elif rng.random() < 0.5:
        sc.size_mm = rng.uniform(1.8, 4.8)  # within the confirmation tier (<= 5 mm)
    else:
        sc.size_mm = rng.uniform(5.5, 29.5)  # second approval tier (<= 30 mm)
        sc.single_axis = rng.random() < 0.5
    sc.rotate = rng.random() < 0.3
    sc.self_approval = rng.random() < 0.1
    sc.reapply = rng.random() < 0.15
    steps = [s for f in fams for s in _family_steps(rng, f, sc)]
    sc.steps = sorted(steps, key=lambda s: s.at)
    sc.post.sort(key=lambda s: s.at)
    return sc


def move_size_mm(rng: random.Random, sc: Scenario) -> float:
    return sc.size_mm


def pick_target(rng: random.Random, current: Pose, size: float, *, single_axis: bool = False,
                rotate: bool = False) -> Pose:
    """A translation of `size` mm from `current` (and, with `rotate`, rotations within
    the couch's and the refusal limits), drifting back towards the origin so the couch
    never wanders off."""
    cur = (current.lat, current.long, current.vert)
    while True:
        if single_axis:
            d = [0.0, 0.0, 0.0]
            d[rng.randrange(3)] = rng.choice((-1.0, 1.0))
        else:
            d = [rng.uniform(-1.0, 1.0) for _ in range(3)]
        norm = sum(v * v for v in d) ** 0.5
        if norm >= 0.2:
            break
    d = [v / norm * size for v in d]
    d = [-abs(v) if c > 10 else abs(v) if c < -10 else v for v, c in zip(d, cur)]
    rot = (current.yaw, current.pitch, current.roll)
    if rotate:
        # Absolute targets near zero: yaw within +-2.4 deg, pitch/roll within +-1 deg
        # (the couch allows +-3), so no delta exceeds the 5 deg refusal limit and
        # some exceed the 2 deg second-approval one.
        rot = (rng.uniform(-2.4, 2.4), rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0))
    return Pose(cur[0] + d[0], cur[1] + d[1], cur[2] + d[2], *rot)
