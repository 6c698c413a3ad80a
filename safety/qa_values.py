"""The numbers a QA computation takes in and gives out: validated, finite, tidy.

Shared by safety.qa (evaluation) and safety.qa_geometry (image -> couch motion): every
number from an image, a stored result or a request passes through here, so a NaN, an
Infinity or a wrong shape is refused with one line naming the field and its unit.

Pure logic: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from safety.pose import AXES, UNITS, Pose
from safety.qa_tolerances import finite_number

Vec3 = tuple[float, float, float]


def clean(v: float) -> float:
    # As safety.correction: 1e-9 mm/deg matters for no tolerance; -0.0 reads as 0.0.
    return round(v, 9) + 0.0


def vec3(value: Any, field_name: str, unit: str = "mm") -> Vec3:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"{field_name} must be 3 numbers (x, y, z {unit}), got {value!r}")
    if len(value) != 3:
        raise ValueError(f"{field_name} must be 3 numbers (x, y, z {unit}), got {len(value)}")
    x, y, z = (finite_number(v, f"{field_name} {k}", unit) for k, v in zip("xyz", value))
    return (x, y, z)


def pose_of(value: Any, field_name: str) -> Pose:
    """A Pose from a Pose, a dict of the six axes or six numbers; every axis finite."""
    if isinstance(value, Pose):
        pose = value
    elif isinstance(value, Mapping):
        missing = [a for a in AXES if a not in value]
        if missing:
            raise ValueError(f"{field_name} is missing axes: {', '.join(missing)}")
        extra = sorted(set(value) - set(AXES))
        if extra:
            raise ValueError(f"{field_name} has unknown axes: {', '.join(map(str, extra))}")
        pose = Pose(**{a: finite_number(value[a], f"{field_name} {a}", UNITS[a]) for a in AXES})
    elif isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, (str, bytes)):
        if len(value) != 6:
            raise ValueError(
                f"{field_name} must be 6 numbers (lat, long, vert mm, yaw, pitch, roll deg), "
                f"got {len(value)}")
        pose = Pose(*(finite_number(v, f"{field_name} {a}", UNITS[a]) for a, v in zip(AXES, value)))
    else:
        raise ValueError(  # noqa: TRY004 - bad input: one-line ValueError
            f"{field_name} must be a couch pose, got {type(value).__name__}")
    for a in AXES:
        finite_number(pose.get(a), f"{field_name} {a}", UNITS[a])
    return pose


def wrap_deg(d: float) -> float:
    """An angle difference in (-180, 180]."""
    w = math.fmod(d, 360.0)
    if w > 180.0:
        w -= 360.0
    elif w <= -180.0:
        w += 360.0
    return w


def pose_json(p: Pose) -> dict[str, float]:
    return {a: clean(v) for a, v in p.as_dict().items()}
