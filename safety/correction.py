"""From a registration matrix to a couch target (docs/geometry.md, "The correction").

D(r) = M (T(M^-1 r + iso) - iso) says where the anatomy that belongs at room
point r was found; the target pose P_new satisfies F_Pnew = D^-1 o F_Pimg, so
the correction is always relative to the couch pose at imaging.

Translations are solved from the anatomy of the planned isocentre: it sits at
table-top point x0 = F_Pimg^-1(D(0)), and the target puts x0 on the room
isocentre, F_Pnew(x0) = 0. With all six axes this is exactly the contract's
six-DoF solution (F_Pnew and D^-1 o F_Pimg then share rotation and the image of
x0); with fewer axes it is the contract's reduced-DoF rule. Disabled
translation axes keep their P_img value and `residual_iso_mm` is where the
planned-isocentre anatomy ends up, F_Pnew(x0), in room X, Y, Z.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from safety.couch_model import CouchModel
from safety.geometry import (
    PatientPosition,
    decompose_rotation,
    orientation_matrix,
    pitch_roll_rotation,
    rot_z,
)
from safety.policy import Verdict, VerdictPolicy
from safety.pose import AXES, Pose
from safety.travel import evaluate_with_travel

ALL_AXES: frozenset[str] = frozenset(AXES)

# A registration is rigid if R^T R is the identity within this (absolute, per
# element). Loose enough for matrices printed with ~6 significant digits,
# tight enough to reject any real scale or shear (1 % scale gives 0.02).
RIGID_TOLERANCE = 1e-4


def _xyz(v: np.ndarray | Sequence[float]) -> dict[str, float]:
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


@dataclass(frozen=True, slots=True)
class CorrectionPlan:
    target: Pose
    delta: Pose  # target minus couch pose at imaging
    residual_rotation_deg: dict[str, float]  # x = pitch, y = roll, z = yaw
    residual_iso_mm: dict[str, float]  # room X, Y, Z of the planned-iso anatomy after the move
    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    # target minus the current couch pose, when the planner was told where the
    # couch is now (the daemon always does; `igrtctl plan` has no couch to ask).
    travel: Pose | None = None

    @property
    def refused(self) -> bool:
        return self.verdict is Verdict.REFUSED

    def to_json_dict(self) -> dict[str, Any]:
        """Exactly the contract's JSON shape for `igrtctl plan --json`."""
        return {
            "target": {a: _clean(v) for a, v in self.target.as_dict().items()},
            "delta": {a: _clean(v) for a, v in self.delta.as_dict().items()},
            "residual_rotation_deg": {k: _clean(v) for k, v in self.residual_rotation_deg.items()},
            "residual_iso_mm": {k: _clean(v) for k, v in self.residual_iso_mm.items()},
            "verdict": self.verdict.value,
            "reasons": list(self.reasons),
        }


def _clean(v: float) -> float:
    # Rounding noise (1e-13 mm) reads as a real number to people; 1e-9 mm/deg does not
    # matter for any tolerance. "+ 0.0" turns -0.0 into 0.0.
    return round(v, 9) + 0.0


def validate_registration_matrix(matrix: Any) -> np.ndarray:
    """A finite, rigid, proper 4x4 (ITK fixed->moving); ValueError with one line otherwise."""
    try:
        t = np.asarray(matrix, dtype=float)
    except (TypeError, ValueError):
        raise ValueError("registration matrix must be a 4x4 array of numbers") from None
    if t.shape != (4, 4):
        raise ValueError(f"registration matrix must be 4x4, got shape {t.shape}")
    if not np.isfinite(t).all():
        raise ValueError("registration matrix contains a non-finite value")
    last = t[3]
    if abs(last[0]) > 1e-9 or abs(last[1]) > 1e-9 or abs(last[2]) > 1e-9 or abs(last[3] - 1) > 1e-9:
        raise ValueError(
            f"registration matrix last row must be 0 0 0 1, got {' '.join(f'{v:g}' for v in last)}"
        )
    r = t[:3, :3]
    err = float(np.abs(r.T @ r - np.eye(3)).max())
    if err > RIGID_TOLERANCE:
        raise ValueError(
            f"registration matrix is not rigid: rotation part deviates from orthonormal by "
            f"{err:.2g} (limit {RIGID_TOLERANCE:g})"
        )
    det = float(np.linalg.det(r))
    if det < 0:
        raise ValueError(f"registration matrix is a reflection (determinant {det:.4f}), not rigid")
    return t


def _check_pose_finite(pose: Pose, what: str) -> None:
    for axis in AXES:
        if not math.isfinite(pose.get(axis)):
            raise ValueError(f"{what} {axis} is not a finite number")


def plan_correction(
    matrix: Any,
    iso: Sequence[float] | np.ndarray,
    patient_position: PatientPosition | str,
    couch_at_imaging: Pose,
    model: CouchModel,
    policy: VerdictPolicy,
    axes: Iterable[str] = ALL_AXES,
    extra_refusals: Sequence[str] = (),
    current: Pose | None = None,
) -> CorrectionPlan:
    """Plan the couch move for a registration. Raises ValueError for unusable input.

    `extra_refusals` carries refusals decided elsewhere (stale or mismatched
    registration); they force a refused verdict but the target is still computed.
    `current`, the couch pose now: the verdict tiers are then applied to the
    travel from it as well, and the stricter verdict wins (safety.travel).
    """
    enabled = frozenset(axes)
    unknown = sorted(enabled - ALL_AXES)
    if unknown:
        raise ValueError(
            f"unknown axis {unknown[0]!r} (expected some of {', '.join(AXES)})"
        )
    t_reg = validate_registration_matrix(matrix)
    iso_v = np.asarray(iso, dtype=float)
    if iso_v.shape != (3,) or not np.isfinite(iso_v).all():
        raise ValueError("isocentre must be 3 finite numbers in mm")
    _check_pose_finite(couch_at_imaging, "couch pose at imaging:")
    if current is not None:
        _check_pose_finite(current, "current couch pose:")
    m = orientation_matrix(patient_position)
    c = np.asarray(model.pivot, dtype=float)
    p_img = couch_at_imaging

    # D(r) = R_D r + d  (M^-1 = M^T: M is a signed permutation).
    rt = t_reg[:3, :3]
    r_d = m @ rt @ m.T
    d = m @ (rt @ iso_v + t_reg[:3, 3] - iso_v)

    # F_Pimg(x) = R_img x + f_img.
    rz_img = rot_z(p_img.yaw)
    a_img = pitch_roll_rotation(p_img.pitch, p_img.roll)
    r_img = rz_img @ a_img
    f_img = rz_img @ (c - a_img @ c + np.array([p_img.lat, p_img.long, p_img.vert]))

    # Ideal rotation: that of D^-1 o F_Pimg (D rigid, so R_D^-1 = R_D^T).
    r_ideal = r_d.T @ r_img
    yaw_i, pitch_i, roll_i = decompose_rotation(r_ideal)
    yaw = yaw_i if "yaw" in enabled else p_img.yaw
    pitch = pitch_i if "pitch" in enabled else p_img.pitch
    roll = roll_i if "roll" in enabled else p_img.roll

    # Planned-isocentre anatomy at imaging: table-top point x0 = F_Pimg^-1(D(0)).
    x0 = r_img.T @ (d - f_img)
    rz_new = rot_z(yaw)
    a_new = pitch_roll_rotation(pitch, roll)
    need = -(a_new @ (x0 - c) + c)  # the t with F_Pnew(x0) = 0
    t_img = (p_img.lat, p_img.long, p_img.vert)
    t_new = np.array(
        [need[i] if ax in enabled else t_img[i] for i, ax in enumerate(("lat", "long", "vert"))]
    )
    residual_iso = rz_new @ (a_new @ (x0 - c) + c + t_new)

    target = Pose(float(t_new[0]), float(t_new[1]), float(t_new[2]), yaw, pitch, roll)
    if enabled >= {"yaw", "pitch", "roll"}:
        residual_rotation = {"x": 0.0, "y": 0.0, "z": 0.0}
    else:
        r_y, r_p, r_r = decompose_rotation((rz_new @ a_new) @ r_ideal.T)
        residual_rotation = {"x": r_p, "y": r_r, "z": r_y}
    residual_iso_d = _xyz(residual_iso)

    delta = target.minus(p_img)
    violations = model.check_pose(target)
    translations_disabled = not enabled >= {"lat", "long", "vert"}
    iso_note = residual_iso_d if translations_disabled else None
    if current is None:
        verdict, reasons = policy.evaluate(
            delta, residual_rotation, violations, extra_refusals, residual_iso=iso_note)
        return CorrectionPlan(target, delta, residual_rotation, residual_iso_d, verdict, reasons)
    travel = target.minus(current)
    verdict, reasons = evaluate_with_travel(
        policy, delta, travel, residual_rotation, violations, extra_refusals, iso_note)
    return CorrectionPlan(target, delta, residual_rotation, residual_iso_d, verdict, reasons,
                          travel)


__all__ = [
    "ALL_AXES",
    "CorrectionPlan",
    "plan_correction",
    "validate_registration_matrix",
]
