"""A couch correction planned under an approved calibration (issue 16, item 5).

The geometry contract (docs/geometry.md, safety.correction) assumes a perfect
room: the couch is where it reports, the CBCT is centred on the treatment
isocentre. A calibration (safety.qa_calibration.Calibration, measured by QA,
approved by two physicists) says how the room differs:

* imaging isocentre offset o: the CBCT shows every object shifted by -o, so the
  registration is corrected first (`correct_registration_matrix`: D(r) + o);
* couch axis scale and offset, and table-top sag with extension and load: the
  couch really is at `predict_real(reported)`.

So the correction is planned exactly as the contract says, but between *real*
poses: the couch pose at imaging (and now) is taken as really being
`predict_real(P_img)`; the planned real target is turned into the pose the couch
must be sent to, `compensate(target)` (the exact inverse). The verdict tiers, the
limits and the travel are judged on that commanded pose and on the reported
poses, which are what the couch executes and what the MotionGate checks.

igrtd calls this only when a calibration is active; with none it calls
`safety.correction.plan_correction` itself, so planning is exactly as the
contract says. With `Calibration.identity()` this returns the same plan as
`plan_correction`, value for value (tests/rules/test_qa_rules.py).

Pure logic: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from safety.correction import (
    ALL_AXES,
    CorrectionPlan,
    plan_correction,
    validate_registration_matrix,
)
from safety.couch_model import CouchModel
from safety.geometry import PatientPosition
from safety.policy import VerdictPolicy
from safety.pose import Pose
from safety.qa_calibration import (
    Calibration,
    compensate,
    correct_registration_matrix,
    predict_real,
)
from safety.travel import evaluate_with_travel


def plan_calibrated_correction(
    matrix: Any,
    iso: Sequence[float] | np.ndarray,
    patient_position: PatientPosition | str,
    couch_at_imaging: Pose,
    model: CouchModel,
    policy: VerdictPolicy,
    calibration: Calibration,
    load_kg: float,
    axes: Iterable[str] = ALL_AXES,
    extra_refusals: Sequence[str] = (),
    current: Pose | None = None,
) -> CorrectionPlan:
    """`plan_correction` between real poses under `calibration` (module doc), with
    `load_kg` on the couch for the sag model. Raises ValueError for unusable input."""
    enabled = frozenset(axes)
    t = correct_registration_matrix(validate_registration_matrix(matrix), patient_position,
                                    calibration)
    p_img_real = predict_real(couch_at_imaging, calibration, load_kg)
    current_real = None if current is None else predict_real(current, calibration, load_kg)
    plan = plan_correction(t, iso, patient_position, p_img_real, model, policy, enabled,
                           extra_refusals=extra_refusals, current=current_real)
    target = compensate(plan.target, calibration, load_kg)
    if target is plan.target and p_img_real is couch_at_imaging and current_real is current:
        # No couch term: real and reported poses are the same objects.
        return plan
    delta = target.minus(couch_at_imaging)
    violations = model.check_pose(target)
    iso_note = (plan.residual_iso_mm if not enabled >= {"lat", "long", "vert"} else None)
    if current is None:
        verdict, reasons = policy.evaluate(delta, plan.residual_rotation_deg, violations,
                                           extra_refusals, residual_iso=iso_note)
        return CorrectionPlan(target, delta, plan.residual_rotation_deg, plan.residual_iso_mm,
                              verdict, reasons)
    travel = target.minus(current)
    verdict, reasons = evaluate_with_travel(policy, delta, travel, plan.residual_rotation_deg,
                                            violations, extra_refusals, iso_note)
    return CorrectionPlan(target, delta, plan.residual_rotation_deg, plan.residual_iso_mm,
                          verdict, reasons, travel)


__all__ = ["plan_calibrated_correction"]
