"""What a treatment session takes from an RT Plan: isocentre, patient position,
frame of reference, and the structure set (hence the planning CT) it was made on.

Typed by hand, any of these is a wrong-site treatment waiting for a typo, so a
plan-driven session reads them here from the stored plan (issue 14, item 2)
and refuses, with the reason, whenever the plan does not say one thing:

* every beam's first control point carries an IsocenterPosition; beams whose
  isocentres differ (more than 0.01 mm) make several treatment isocentres, and
  the session must then name the beam (by number or name) it sets up for;
* the chosen beams' ReferencedPatientSetupNumber points into the plan's
  PatientSetupSequence, whose PatientPosition is the position (HFS, FFP, ...);
  beams that share an isocentre but not a patient position are a contradiction;
* the plan has one FrameOfReferenceUID.

The plan was validated when it was received (imaging/dicom_instances.py:
finite isocentres, well-formed UIDs); this reads meaning, not bytes, but it
still refuses rather than assumes wherever an attribute is missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydicom.dataset import Dataset

from imaging.dicom_safe import one_line

# Beams planned at "the same" isocentre differ only by rounding of the TPS export.
SAME_ISOCENTRE_MM = 0.01


class PlanProblem(ValueError):
    """The plan does not say one isocentre, position or frame (one line why)."""

    def __init__(self, reason: str) -> None:
        super().__init__(one_line(reason))


@dataclass(frozen=True, slots=True)
class Beam:
    number: int
    name: str
    isocentre: tuple[float, float, float]
    setup_number: int | None

    def label(self) -> str:
        return f"beam {self.number} {self.name!r}" if self.name else f"beam {self.number}"


@dataclass(frozen=True, slots=True)
class PlanSetup:
    """The set-up a session takes from the plan (planning frame, mm)."""

    plan_uid: str
    patient_id: str
    frame_of_reference_uid: str
    isocentre: tuple[float, float, float]
    patient_position: str
    beams: tuple[Beam, ...]  # the beams set up at this isocentre
    structure_set_uids: tuple[str, ...]  # ReferencedStructureSetSequence


def beams_of(ds: Dataset) -> list[Beam]:
    out: list[Beam] = []
    for i, item in enumerate(ds.get("BeamSequence") or []):
        try:
            number = int(item.BeamNumber)
        except (AttributeError, TypeError, ValueError):
            raise PlanProblem(f"BeamSequence[{i}] has no BeamNumber") from None
        cps = item.get("ControlPointSequence") or []
        iso = cps[0].get("IsocenterPosition") if len(cps) else None
        if iso is None or len(iso) != 3:
            raise PlanProblem(f"beam {number} has no isocentre in its first control point")
        try:
            xyz = (float(iso[0]), float(iso[1]), float(iso[2]))
        except (TypeError, ValueError):
            raise PlanProblem(f"beam {number} isocentre {list(iso)} is not 3 numbers") from None
        if not all(math.isfinite(v) for v in xyz):
            raise PlanProblem(f"beam {number} isocentre {list(xyz)} mm is not finite")
        setup = item.get("ReferencedPatientSetupNumber")
        out.append(Beam(number, str(item.get("BeamName", "") or "").strip(), xyz,
                        int(setup) if setup is not None else None))
    if not out:
        raise PlanProblem("the plan has no beams (BeamSequence is empty)")
    return out


def _same(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= SAME_ISOCENTRE_MM


def _pick(beams: list[Beam], beam: str | None) -> list[Beam]:
    """The beams of the isocentre the session sets up for."""
    if beam is not None:
        chosen = [b for b in beams if str(b.number) == beam or b.name == beam]
        if not chosen:
            names = ", ".join(b.label() for b in beams)
            raise PlanProblem(f"the plan has no beam {beam!r} (it has {names})")
        if len(chosen) > 1:
            raise PlanProblem(f"{beam!r} names several beams; choose one by number")
        iso = chosen[0].isocentre
    else:
        iso = beams[0].isocentre
        others = [b for b in beams if not _same(b.isocentre, iso)]
        if others:
            groups: list[tuple[tuple[float, float, float], list[Beam]]] = []
            for b in beams:
                for g_iso, members in groups:
                    if _same(g_iso, b.isocentre):
                        members.append(b)
                        break
                else:
                    groups.append((b.isocentre, [b]))
            listing = "; ".join(
                f"{[round(v, 2) for v in g_iso]} mm ({', '.join(m.label() for m in members)})"
                for g_iso, members in groups)
            raise PlanProblem(f"the plan has {len(groups)} isocentres: {listing}; choose the "
                              "beam this session sets up for")
    return [b for b in beams if _same(b.isocentre, iso)]


def _positions(ds: Dataset) -> dict[int, str]:
    out: dict[int, str] = {}
    for i, item in enumerate(ds.get("PatientSetupSequence") or []):
        number = item.get("PatientSetupNumber")
        position = str(item.get("PatientPosition", "") or "").strip()
        if number is None:
            raise PlanProblem(f"PatientSetupSequence[{i}] has no PatientSetupNumber")
        if position:
            out[int(number)] = position
    return out


def plan_setup(ds: Dataset, beam: str | None = None) -> PlanSetup:
    """The session set-up the plan says, or PlanProblem naming what it does not say."""
    frame = str(ds.get("FrameOfReferenceUID", "") or "").strip()
    if not frame:
        raise PlanProblem("the plan has no FrameOfReferenceUID")
    chosen = _pick(beams_of(ds), beam)
    positions = _positions(ds)
    if not positions:
        raise PlanProblem("the plan has no patient position (PatientSetupSequence)")
    found: dict[str, list[Beam]] = {}
    for b in chosen:
        if b.setup_number is None:
            if len(positions) != 1:
                raise PlanProblem(f"{b.label()} names no patient setup and the plan has "
                                  f"{len(positions)}")
            position = next(iter(positions.values()))
        elif b.setup_number not in positions:
            raise PlanProblem(f"{b.label()} refers to patient setup {b.setup_number}, which "
                              "the plan does not have")
        else:
            position = positions[b.setup_number]
        found.setdefault(position, []).append(b)
    if len(found) > 1:
        listing = "; ".join(f"{p} ({', '.join(b.label() for b in bs)})" for p, bs in found.items())
        raise PlanProblem(f"beams at one isocentre have different patient positions: {listing}")
    structure_sets = tuple(
        str(item.ReferencedSOPInstanceUID)
        for item in ds.get("ReferencedStructureSetSequence") or []
        if item.get("ReferencedSOPInstanceUID"))
    return PlanSetup(str(ds.SOPInstanceUID), str(ds.get("PatientID", "") or ""), frame,
                     chosen[0].isocentre, next(iter(found)), tuple(chosen), structure_sets)


def referenced_ct_series(structure_set: Dataset, frame_of_reference_uid: str) -> set[str]:
    """The image series an RT Structure Set was drawn on, in the given frame."""
    out: set[str] = set()
    for ref in structure_set.get("ReferencedFrameOfReferenceSequence") or []:
        if str(ref.get("FrameOfReferenceUID", "")) != frame_of_reference_uid:
            continue
        for study in ref.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                uid = series.get("SeriesInstanceUID")
                if uid:
                    out.add(str(uid))
    return out


@dataclass(frozen=True, slots=True)
class StructureRegion:
    """The registration region a target structure gives: a cube about the centre of
    the structure's bounding box, half its largest extent plus the margin (mm),
    and never smaller than `min_half_mm`."""

    name: str
    centre: tuple[float, float, float]
    half_mm: float


def structure_region(structure_set: Dataset, name: str, margin_mm: float,
                     min_half_mm: float = 0.0) -> StructureRegion:
    """The region of ROI `name` in an RT Structure Set, or PlanProblem (missing ROI,
    no contour points, a non-finite coordinate)."""
    numbers = {str(item.get("ROIName", "")).strip(): item.get("ROINumber")
               for item in structure_set.get("StructureSetROISequence") or []}
    if name not in numbers or numbers[name] is None:
        have = ", ".join(repr(n) for n in sorted(numbers)) or "none"
        raise PlanProblem(f"the structure set has no ROI {name!r} (it has {have})")
    number = int(numbers[name])
    points: list[float] = []
    for item in structure_set.get("ROIContourSequence") or []:
        if item.get("ReferencedROINumber") is None or int(item.ReferencedROINumber) != number:
            continue
        for contour in item.get("ContourSequence") or []:
            points.extend(float(v) for v in contour.get("ContourData") or [])
    if not points or len(points) % 3:
        raise PlanProblem(f"ROI {name!r} has no contour points")
    if not all(math.isfinite(v) for v in points):
        raise PlanProblem(f"ROI {name!r} has a contour point that is not finite")
    xs, ys, zs = points[0::3], points[1::3], points[2::3]
    lo = (min(xs), min(ys), min(zs))
    hi = (max(xs), max(ys), max(zs))
    centre = ((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, (lo[2] + hi[2]) / 2)
    half = max(h - c for h, c in zip(hi, centre, strict=True)) + margin_mm
    return StructureRegion(name, centre, max(half, min_half_mm))
