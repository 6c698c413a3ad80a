"""Frames, patient orientation and couch kinematics (docs/geometry.md).

Everything here is a literal transcription of the geometry contract; the
contract wins wherever this file and it disagree. Millimetres and degrees.

* `orientation_matrix(pos)`: M, planning (DICOM LPS) vector -> table-top vector.
* `pose_rotation(pose)`: R(P) = Rz(yaw) Rx(pitch) Ry(roll).
* `pose_transform(pose, pivot)`: the 4x4 of
  F_P(x) = Rz(yaw) (Rx(pitch) Ry(roll) (x - c) + c + t), t = (lat, long, vert).
"""

from __future__ import annotations

import math
from enum import StrEnum

import numpy as np

from safety.pose import Pose


class PatientPosition(StrEnum):
    HFS = "HFS"
    HFP = "HFP"
    FFS = "FFS"
    FFP = "FFP"
    HFDL = "HFDL"
    HFDR = "HFDR"
    FFDL = "FFDL"
    FFDR = "FFDR"


def _readonly(rows: list[list[float]]) -> np.ndarray:
    m = np.array(rows, dtype=float)
    m.flags.writeable = False
    return m


# Rows are IEC X, Y, Z; columns are DICOM x, y, z. Copied row by row from the
# contract's table so a reviewer can check them against it by eye.
_ORIENTATION: dict[PatientPosition, np.ndarray] = {
    PatientPosition.HFS: _readonly([[1, 0, 0], [0, 0, 1], [0, -1, 0]]),
    PatientPosition.HFP: _readonly([[-1, 0, 0], [0, 0, 1], [0, 1, 0]]),
    PatientPosition.FFS: _readonly([[-1, 0, 0], [0, 0, -1], [0, -1, 0]]),
    PatientPosition.FFP: _readonly([[1, 0, 0], [0, 0, -1], [0, 1, 0]]),
    PatientPosition.HFDL: _readonly([[0, -1, 0], [0, 0, 1], [-1, 0, 0]]),
    PatientPosition.HFDR: _readonly([[0, 1, 0], [0, 0, 1], [1, 0, 0]]),
    PatientPosition.FFDL: _readonly([[0, 1, 0], [0, 0, -1], [-1, 0, 0]]),
    PatientPosition.FFDR: _readonly([[0, -1, 0], [0, 0, -1], [1, 0, 0]]),
}


def parse_patient_position(value: str) -> PatientPosition:
    """Accept "HFS", "hfs", ...; anything else is a one-line ValueError."""
    try:
        return PatientPosition(value.strip().upper())
    except ValueError:
        known = ", ".join(p.value for p in PatientPosition)
        raise ValueError(f"unknown patient position {value!r} (expected one of {known})") from None


def orientation_matrix(pos: PatientPosition | str) -> np.ndarray:
    """M (read-only 3x3): planning vector -> table-top vector for this patient position."""
    if not isinstance(pos, PatientPosition):
        pos = parse_patient_position(pos)
    return _ORIENTATION[pos]


def rot_x(deg: float) -> np.ndarray:
    r = math.radians(deg)
    c, s = math.cos(r), math.sin(r)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rot_y(deg: float) -> np.ndarray:
    r = math.radians(deg)
    c, s = math.cos(r), math.sin(r)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_z(deg: float) -> np.ndarray:
    r = math.radians(deg)
    c, s = math.cos(r), math.sin(r)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def pitch_roll_rotation(pitch_deg: float, roll_deg: float) -> np.ndarray:
    """Rx(pitch) Ry(roll): the table-top tilt about the pivot."""
    return rot_x(pitch_deg) @ rot_y(roll_deg)


def rotation_from_angles(yaw_deg: float, pitch_deg: float, roll_deg: float) -> np.ndarray:
    return rot_z(yaw_deg) @ rot_x(pitch_deg) @ rot_y(roll_deg)


def pose_rotation(pose: Pose) -> np.ndarray:
    """R(P) = Rz(yaw) Rx(pitch) Ry(roll)."""
    return rotation_from_angles(pose.yaw, pose.pitch, pose.roll)


def decompose_rotation(r: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees with R = Rz(yaw) Rx(pitch) Ry(roll).

    pitch = asin(R[2,1]), yaw = atan2(-R[0,1], R[1,1]), roll = atan2(-R[2,0], R[2,2]).
    R[2,1] is clamped to [-1, 1] only so rounding of an exact +-1 cannot make asin fail.
    """
    s = min(1.0, max(-1.0, float(r[2, 1])))
    pitch = math.degrees(math.asin(s))
    yaw = math.degrees(math.atan2(-float(r[0, 1]), float(r[1, 1])))
    roll = math.degrees(math.atan2(-float(r[2, 0]), float(r[2, 2])))
    return yaw, pitch, roll


def pose_transform(pose: Pose, pivot: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    """4x4 homogeneous matrix of F_P (table-top point -> room point)."""
    c = np.asarray(pivot, dtype=float)
    rz = rot_z(pose.yaw)
    a = pitch_roll_rotation(pose.pitch, pose.roll)
    t = np.array([pose.lat, pose.long, pose.vert])
    out = np.eye(4)
    out[:3, :3] = rz @ a
    out[:3, 3] = rz @ (c - a @ c + t)
    return out
