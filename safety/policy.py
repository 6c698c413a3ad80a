"""Verdict tiers for a planned correction (R-TIERS, docs/geometry.md).

Site policy, so every threshold is configuration; the defaults are the
contract's. Rules are checked from the most severe tier down (refused first),
and every reason names the value, the threshold and the unit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

from safety.couch_model import LimitViolation
from safety.pose import ROTATION_AXES, TRANSLATION_AXES, Pose


class Verdict(StrEnum):
    WITHIN_TOLERANCE = "within_tolerance"
    NEEDS_CONFIRMATION = "needs_confirmation"
    NEEDS_SECOND_APPROVAL = "needs_second_approval"
    REFUSED = "refused"


class VerdictPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    tolerance_translation_mm: float = Field(default=1.0, ge=0)
    tolerance_rotation_deg: float = Field(default=0.5, ge=0)
    second_approval_shift_mm: float = Field(default=5.0, ge=0)
    second_approval_rotation_deg: float = Field(default=2.0, ge=0)
    second_approval_residual_rotation_deg: float = Field(default=1.0, ge=0)
    refuse_shift_mm: float = Field(default=30.0, ge=0)
    refuse_rotation_deg: float = Field(default=5.0, ge=0)

    @model_validator(mode="after")
    def _tiers_ordered(self) -> VerdictPolicy:
        if not self.second_approval_shift_mm <= self.refuse_shift_mm:
            raise ValueError(
                f"second_approval_shift_mm {self.second_approval_shift_mm:g} mm must not exceed "
                f"refuse_shift_mm {self.refuse_shift_mm:g} mm"
            )
        if not self.second_approval_rotation_deg <= self.refuse_rotation_deg:
            raise ValueError(
                f"second_approval_rotation_deg {self.second_approval_rotation_deg:g} deg must "
                f"not exceed refuse_rotation_deg {self.refuse_rotation_deg:g} deg"
            )
        return self

    def evaluate(
        self,
        delta: Pose,
        residual_rotation: Mapping[str, float],
        violations: Sequence[LimitViolation],
        extra_refusals: Sequence[str] = (),
        residual_iso: Mapping[str, float] | None = None,
    ) -> tuple[Verdict, list[str]]:
        """Verdict and its reasons. `residual_iso` only adds an explanatory reason."""
        verdict, reasons = self._tier(delta, residual_rotation, violations, extra_refusals)
        if residual_iso is not None:
            norm = math.sqrt(sum(v * v for v in residual_iso.values()))
            if not norm <= self.tolerance_translation_mm:
                parts = ", ".join(f"{k} {v:.2f}" for k, v in residual_iso.items())
                reasons.append(
                    f"isocentre error {norm:.2f} mm ({parts} mm) remains uncorrected "
                    f"on disabled translation axes"
                )
        return verdict, reasons

    def _tier(
        self,
        delta: Pose,
        residual_rotation: Mapping[str, float],
        violations: Sequence[LimitViolation],
        extra_refusals: Sequence[str],
    ) -> tuple[Verdict, list[str]]:
        translations = {a: abs(delta.get(a)) for a in TRANSLATION_AXES}
        rotations = {a: abs(delta.get(a)) for a in ROTATION_AXES}
        residuals = {k: abs(v) for k, v in residual_rotation.items()}
        shift = math.sqrt(sum(v * v for v in translations.values()))

        # Refused. Comparisons are written "not <=" so that NaN always refuses.
        refusals = [f"target {v.message}" for v in violations]
        refusals.extend(extra_refusals)
        numbers = [*translations.values(), *rotations.values(), *residuals.values()]
        if not all(math.isfinite(v) for v in numbers):
            refusals.append("correction is not a finite number")
        if not shift <= self.refuse_shift_mm:
            refusals.append(
                f"vector shift {shift:.2f} mm exceeds refusal limit {self.refuse_shift_mm:.2f} mm"
            )
        for axis, v in rotations.items():
            if not v <= self.refuse_rotation_deg:
                refusals.append(
                    f"{axis} rotation {v:.2f} deg exceeds refusal limit "
                    f"{self.refuse_rotation_deg:.2f} deg"
                )
        if refusals:
            return Verdict.REFUSED, refusals

        approvals: list[str] = []
        if shift > self.second_approval_shift_mm:
            approvals.append(
                f"vector shift {shift:.2f} mm exceeds {self.second_approval_shift_mm:.2f} mm"
            )
        for axis, v in rotations.items():
            if v > self.second_approval_rotation_deg:
                approvals.append(
                    f"{axis} rotation {v:.2f} deg exceeds {self.second_approval_rotation_deg:.2f} deg"
                )
        for comp, v in residuals.items():
            if v > self.second_approval_residual_rotation_deg:
                approvals.append(
                    f"residual rotation {comp} {v:.2f} deg exceeds "
                    f"{self.second_approval_residual_rotation_deg:.2f} deg"
                )
        if approvals:
            return Verdict.NEEDS_SECOND_APPROVAL, [
                f"second approval needed: {r}" for r in approvals
            ]

        outside = [
            f"{axis} {v:.2f} mm exceeds tolerance {self.tolerance_translation_mm:.2f} mm"
            for axis, v in translations.items()
            if v > self.tolerance_translation_mm
        ] + [
            f"{axis} {v:.2f} deg exceeds tolerance {self.tolerance_rotation_deg:.2f} deg"
            for axis, v in rotations.items()
            if v > self.tolerance_rotation_deg
        ]
        if outside:
            return Verdict.NEEDS_CONFIRMATION, [f"confirmation needed: {r}" for r in outside]

        no_move = (
            f"every translation <= {self.tolerance_translation_mm:.2f} mm and every rotation "
            f"<= {self.tolerance_rotation_deg:.2f} deg: no move"
        )
        return Verdict.WITHIN_TOLERANCE, [no_move]
