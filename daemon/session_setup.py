"""Where an opening session's isocentre, patient position and frame come from.

From the stored plan (daemon/plan_source.py) unless the request says
`manual_override` with a reason: a typed isocentre is the one input of the
workflow that a typo turns into a wrong-site treatment, so it is never the
quiet default. Values typed beside a plan are a cross-check: any that
disagree with the plan refuse the session, naming both.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from pathlib import Path

from daemon.api import SessionRequest
from daemon.plan_source import PlanRefused, plan_session
from imaging.dicom_plan import StructureRegion
from safety.geometry import parse_patient_position

# The plan's isocentre is written with 2-6 decimals; a typed cross-check that
# differs by more than this is another isocentre, not a rounding.
TYPED_ISO_TOLERANCE_MM = 0.05


class SessionRefused(ValueError):
    """The session cannot be opened (one line why)."""


@dataclass(frozen=True, slots=True)
class SessionSetup:
    frame_of_reference_uid: str
    iso: tuple[float, float, float]
    patient_position: str  # parsed, e.g. "HFS"
    source: str  # "plan" or "manual"
    override_reason: str | None = None
    beams: tuple[str, ...] = ()
    planning_ct_series_uid: str | None = None
    planning_ct_dir: str | None = None
    region: StructureRegion | None = None


def _position(value: str) -> str:
    try:
        return parse_patient_position(value).value
    except ValueError as exc:
        raise SessionRefused(str(exc)) from None


def _manual(req: SessionRequest) -> SessionSetup:
    missing = [flag for flag, value in (("frame_of_reference_uid", req.frame_of_reference_uid),
                                        ("iso", req.iso),
                                        ("patient_position", req.patient_position))
               if value is None]
    if missing:
        raise SessionRefused(f"a manual override needs the typed {', '.join(missing)}")
    assert req.frame_of_reference_uid is not None and req.iso is not None
    assert req.patient_position is not None and req.manual_override is not None
    if not all(math.isfinite(v) for v in req.iso):
        raise SessionRefused("isocentre must be 3 finite numbers in mm")
    return SessionSetup(req.frame_of_reference_uid, req.iso, _position(req.patient_position),
                        "manual", req.manual_override.strip())


def _cross_check(req: SessionRequest, got: SessionSetup) -> None:
    wrong: list[str] = []
    if req.frame_of_reference_uid is not None and \
            req.frame_of_reference_uid != got.frame_of_reference_uid:
        wrong.append(f"frame of reference {req.frame_of_reference_uid} typed, the plan's is "
                     f"{got.frame_of_reference_uid}")
    if req.iso is not None and (not all(math.isfinite(v) for v in req.iso) or any(
            abs(a - b) > TYPED_ISO_TOLERANCE_MM for a, b in zip(req.iso, got.iso, strict=True))):
        wrong.append(f"isocentre {list(req.iso)} mm typed, the plan's is {list(got.iso)} mm")
    if req.patient_position is not None and \
            _position(req.patient_position) != got.patient_position:
        wrong.append(f"patient position {req.patient_position} typed, the plan's is "
                     f"{got.patient_position}")
    if wrong:
        raise SessionRefused("; ".join(wrong))


async def session_setup(req: SessionRequest, archive_dir: Path | None, *,
                        structure: str | None = None, margin_mm: float = 15.0) -> SessionSetup:
    """The set-up to open, or SessionRefused. Plan reading runs in a thread.
    `structure`: the ROI whose region registrations use (dicom.registration_structure)."""
    if req.manual_override is not None:
        return _manual(req)
    if archive_dir is None:
        raise SessionRefused("this room has no DICOM archive (no dicom section in its "
                             "configuration) to read the plan from; typed values need a "
                             "manual override with its reason")
    try:
        found = await asyncio.to_thread(plan_session, archive_dir, req.patient_id,
                                        req.plan_uid, req.beam, structure=structure,
                                        margin_mm=margin_mm)
    except PlanRefused as exc:
        raise SessionRefused(str(exc)) from None
    plan = found.setup
    got = SessionSetup(plan.frame_of_reference_uid, plan.isocentre,
                       _position(plan.patient_position), "plan",
                       beams=tuple(b.label() for b in plan.beams),
                       planning_ct_series_uid=found.planning_ct_series_uid,
                       planning_ct_dir=str(found.planning_ct_dir), region=found.region)
    _cross_check(req, got)
    return got
