"""The simulated treatment room's ground truth: where the patient really is.

The patient's anatomy is placed on the table top by a rigid transform A
(planning point -> table-top point). At couch pose P the anatomy that the plan
puts at planning point p is at room point F_P(A(p)); it belongs at M (p - iso).
Everything the simulator reports (images, residuals) derives from this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from safety.geometry import orientation_matrix, pose_transform
from safety.pose import Pose

Vec3 = tuple[float, float, float]


def _h(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = r
    out[:3, 3] = t
    return out


@dataclass(frozen=True)
class Residual:
    """How far the anatomy is from where the plan wants it, in the room frame."""

    iso_mm: Vec3  # error of the planned-isocentre anatomy
    max_mm: float  # worst error over a cube around the isocentre
    rotation_deg: float  # angle of the residual rotation

    def as_dict(self) -> dict[str, object]:
        return {"iso_mm": {"x": self.iso_mm[0], "y": self.iso_mm[1], "z": self.iso_mm[2]},
                "max_mm": self.max_mm, "rotation_deg": self.rotation_deg}


def cube_points(half_mm: float = 50.0) -> np.ndarray:
    s = (-half_mm, 0.0, half_mm)
    return np.array([(x, y, z) for x in s for y in s for z in s], dtype=float)


def rotation_angle_deg(r: np.ndarray) -> float:
    c = (float(np.trace(r)) - 1.0) / 2.0
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def residual_of(h: np.ndarray, half_mm: float = 50.0) -> Residual:
    """Residual of a room-frame map H (ideal location -> actual location)."""
    pts = cube_points(half_mm)
    moved = pts @ h[:3, :3].T + h[:3, 3]
    worst = float(np.linalg.norm(moved - pts, axis=1).max())
    iso = h[:3, 3]
    return Residual((float(iso[0]), float(iso[1]), float(iso[2])), worst,
                    rotation_angle_deg(h[:3, :3]))


@dataclass
class PatientWorld:
    iso: Vec3
    patient_position: str
    pivot: Vec3
    placement: np.ndarray  # A: planning point -> table-top point (4x4)

    @classmethod
    def with_setup_error(cls, iso: Vec3, patient_position: str, pivot: Vec3,
                         correct_pose: Pose) -> PatientWorld:
        """The patient lies so that `correct_pose` is the couch pose that treats it
        exactly; a couch at any other pose carries a set-up error."""
        m = orientation_matrix(patient_position)
        perfect = _h(m, -m @ np.asarray(iso, dtype=float))  # p -> M (p - iso)
        a = np.linalg.inv(pose_transform(correct_pose, pivot)) @ perfect
        return cls(iso, patient_position, pivot, a)

    def room_map(self, couch: Pose) -> np.ndarray:
        """H: room point where anatomy belongs -> room point where it is, at `couch`."""
        m = orientation_matrix(self.patient_position)
        ideal_inv = _h(m.T, np.asarray(self.iso, dtype=float))  # r -> M^-1 r + iso
        return pose_transform(couch, self.pivot) @ self.placement @ ideal_inv

    def true_registration(self, couch: Pose) -> np.ndarray:
        """T (ITK fixed->moving) a perfect registration would find at `couch`."""
        m = orientation_matrix(self.patient_position)
        iso = np.asarray(self.iso, dtype=float)
        to_daily = _h(m.T, iso)
        return to_daily @ pose_transform(couch, self.pivot) @ self.placement

    def residual(self, couch: Pose, half_mm: float = 50.0) -> Residual:
        return residual_of(self.room_map(couch), half_mm)


def registration_room_map(t: np.ndarray, iso: Vec3, patient_position: str) -> np.ndarray:
    """D(r) = M (T(M^-1 r + iso) - iso): what a registration says about the room."""
    m = orientation_matrix(patient_position)
    iso_v = np.asarray(iso, dtype=float)
    return _h(m, -m @ iso_v) @ np.asarray(t, dtype=float) @ _h(m.T, iso_v)
