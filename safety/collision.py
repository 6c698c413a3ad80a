"""Collision checks of couch poses and couch moves (issue 17; docs/collision.md).

* `clearance(state)`: the smallest distance between anything the couch
  carries (couch top, couch base, patient envelope) and anything on the
  gantry (head, collimator, extended kV source, kV panel, EPID), and which
  two objects, at one couch pose, gantry angle and arm state.
* `check_path(start, end, gantry_deg, arms, patient, margin_mm)`: whether
  every pose the couch can pass through on its way from `start` to `end` keeps
  at least `margin_mm`; proven, not sampled (`safety.collision_path`).

Which poses a move passes through depends on the controller. The simulated
controller (sim/couch.py) drives each axis on its own velocity profile from
its start to its target: the axes start together but do not arrive together,
so the path is NOT the straight line in pose space, only monotone on each
axis. igrtd's plausibility supervision (safety.plausibility) likewise allows
any pose between start and target on each axis. So the default,
`CouchMotion.PER_AXIS`, checks every pose whose axes each lie between their
start and end values; `CouchMotion.LINEAR` checks the straight line only, for
a controller that moves all axes in step. `slack_mm`/`slack_deg` widen either
by the supervision's path tolerance.

Inputs are checked: a non-finite or out-of-range value is a one-line
ValueError naming the value, the limit and the unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from safety.collision_config import PatientEnvelope
from safety.collision_model import Arms
from safety.collision_path import CouchMotion, PathSearch
from safety.collision_scene import CollisionModel
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose

__all__ = ["Clearance", "CouchMotion", "PathCheck", "RoomState", "check_path", "clearance"]

#: Translations beyond this are no couch position (10 m), whatever the couch model says.
MAX_TRANSLATION_MM = 10_000.0
MAX_ROTATION_DEG = 360.0
MAX_MARGIN_MM = 500.0
MAX_SLACK_MM = 10.0
MAX_SLACK_DEG = 2.0
#: Steps a path check may take before it gives up and refuses (never allows). A
#: step is one exact measurement at a pose or one bound over a cell of poses.
DEFAULT_MAX_SAMPLES = 1000


@dataclass(frozen=True, slots=True)
class RoomState:
    """What the collision model needs to know about the room at one moment."""

    pose: Pose
    gantry_deg: float
    arms: Arms = field(default_factory=Arms)
    patient: PatientEnvelope | None = None  # None: nothing on the couch


@dataclass(frozen=True, slots=True)
class Clearance:
    """The smallest distance between a couch-carried and a gantry-carried object."""

    distance_mm: float  # 0 when touching or overlapping
    objects: tuple[str, str]  # (couch-carried, gantry-carried)

    @property
    def overlapping(self) -> bool:
        return self.distance_mm <= 0.0

    def describe(self) -> str:
        return f"{self.objects[0]} and {self.objects[1]}: clearance {self.distance_mm:.1f} mm"


@dataclass(frozen=True, slots=True)
class PathCheck:
    """The verdict of a path check.

    `min_clearance_mm` is the lowest clearance at a pose the check looked at
    (at `fraction` of the move, `at_pose`, between `objects`); the true
    minimum over the path lies between `lower_bound_mm` (proven) and it.
    Allowed means lower_bound_mm >= margin_mm.
    """

    allowed: bool
    min_clearance_mm: float
    lower_bound_mm: float
    fraction: float  # 0 = start, 1 = end (PER_AXIS: mean progress of the moving axes)
    at_pose: Pose
    objects: tuple[str, str]
    margin_mm: float
    motion: CouchMotion
    samples: int  # steps taken: exact measurements and cell bounds
    reason: str  # "" when allowed; otherwise one line naming objects, clearance and margin


def _finite(value: object, what: str, unit: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what} {value!r} is not a number ({unit})")  # noqa: TRY004
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} {v} {unit} is not a finite number")
    return v


def check_pose(pose: object, what: str) -> Pose:
    """The pose, if every axis is a finite number within reach of a couch."""
    if not isinstance(pose, Pose):
        raise ValueError(f"{what} must be a couch Pose, got {type(pose).__name__}")  # noqa: TRY004
    for axis in AXES:
        v = _finite(pose.get(axis), f"{what} {axis}", UNITS[axis])
        limit = MAX_ROTATION_DEG if axis in ROTATION_AXES else MAX_TRANSLATION_MM
        if not abs(v) <= limit:
            raise ValueError(f"{what} {axis} {v:g} {UNITS[axis]} is beyond +-{limit:g} "
                             f"{UNITS[axis]}: not a couch position")
    return pose


def check_gantry(gantry_deg: object) -> float:
    g = _finite(gantry_deg, "gantry angle", "deg")
    if not 0.0 <= g < 360.0:
        raise ValueError(f"gantry angle {g:g} deg is outside 0..360 deg "
                         "(IEC 61217; 360 excluded: it is 0)")
    return g


def _in_range(value: object, what: str, unit: str, limit: float) -> float:
    v = _finite(value, what, unit)
    if not 0.0 <= v <= limit:
        raise ValueError(f"{what} {v:g} {unit} is outside 0..{limit:g} {unit}")
    return v


def _check_room(arms: object, patient: object) -> None:
    if not isinstance(arms, Arms):
        raise ValueError(f"arms must be an Arms state, got {type(arms).__name__}")  # noqa: TRY004
    if patient is not None and not isinstance(patient, PatientEnvelope):
        raise ValueError(
            f"patient must be a PatientEnvelope or None, got {type(patient).__name__}")


def clearance(state: RoomState, model: CollisionModel | None = None) -> Clearance:
    """Smallest distance between the couch's objects and the gantry's at this state."""
    pose = check_pose(state.pose, "couch pose")
    gantry = check_gantry(state.gantry_deg)
    _check_room(state.arms, state.patient)
    scene = (model or CollisionModel.default()).scene(gantry, state.arms, state.patient)
    c = scene.closest(pose)
    return Clearance(c.distance_mm, (c.moving, c.fixed))


def check_path(
    start_pose: Pose,
    end_pose: Pose,
    gantry_deg: float,
    arms: Arms,
    patient: PatientEnvelope | None,
    margin_mm: float,
    *,
    motion: CouchMotion = CouchMotion.PER_AXIS,
    slack_mm: float = 0.0,
    slack_deg: float = 0.0,
    model: CollisionModel | None = None,
    max_samples: int = DEFAULT_MAX_SAMPLES,
) -> PathCheck:
    """Is every pose of the move from `start_pose` to `end_pose` at least `margin_mm`
    from the gantry's objects, with the gantry at `gantry_deg` and the arms as given?

    Conservative: allowed only when proven (every pose of the path lies in a
    cell of poses whose whole sweep is bounded at least the margin from every
    gantry solid, `safety.collision_sweep`). A move that could not be proven
    within `max_samples` steps is refused, never allowed.
    """
    start = check_pose(start_pose, "start pose")
    end = check_pose(end_pose, "end pose")
    gantry = check_gantry(gantry_deg)
    _check_room(arms, patient)
    margin = _in_range(margin_mm, "margin", "mm", MAX_MARGIN_MM)
    s_mm = _in_range(slack_mm, "path slack", "mm", MAX_SLACK_MM)
    s_deg = _in_range(slack_deg, "path slack", "deg", MAX_SLACK_DEG)
    if not isinstance(motion, CouchMotion):
        raise ValueError(  # noqa: TRY004
            f"motion {motion!r} is not one of {', '.join(CouchMotion)}")
    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 3:
        raise ValueError(f"max_samples {max_samples!r} must be an integer of at least 3")
    scene = (model or CollisionModel.default()).scene(gantry, arms, patient)
    search = PathSearch(scene, start, end, motion, margin, (s_mm,) * 3 + (s_deg,) * 3)
    found = search.run(max_samples)
    objects = (found.nearest.moving, found.nearest.fixed)
    where = f"at {found.fraction * 100:.0f} % of the move"
    if found.min_clearance_mm < margin:
        reason = (f"{objects[0]} and {objects[1]}: clearance {found.min_clearance_mm:.1f} mm "
                  f"below the {margin:g} mm margin {where}")
    elif not found.proven:
        weak = found.weakest
        reason = (f"{weak.moving} and {weak.fixed}: clearance not proven to stay above the "
                  f"{margin:g} mm margin within {found.samples} samples (proven "
                  f"{found.lower_bound_mm:.1f} mm; lowest found {found.min_clearance_mm:.1f} mm "
                  f"{where})")
    else:
        reason = ""
    return PathCheck(
        allowed=not reason, min_clearance_mm=found.min_clearance_mm,
        lower_bound_mm=found.lower_bound_mm, fraction=found.fraction, at_pose=found.pose,
        objects=objects, margin_mm=margin, motion=motion, samples=found.samples, reason=reason)
