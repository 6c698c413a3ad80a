"""A treatment session's set-up, read from the plan and planning CT igrt holds.

`session open --patient P --plan PLAN_UID` does not take the isocentre, the
patient position or the frame of reference from a person: it reads them from
the RT Plan the planning system stored to igrt (igrt-dicomd, docs/dicom.md),
and finds the planning CT the plan was made on, through the archive's index
(read only; igrtd never writes the archive). Every way the stored objects can
disagree is a refusal naming what disagrees, because each one means that the
plan igrtd would set up for is not the plan the patient was planned with:

* the plan is not there, or is not an RT Plan, or is another patient's;
* the plan does not say one isocentre and one patient position
  (imaging/dicom_plan.py: several isocentres need a chosen beam);
* no CT series of this patient is in the plan's frame of reference, or several
  are and the plan's structure set does not say which; the structure set names
  a CT series igrt does not hold; a CT series in the plan's frame belongs to
  another patient;
* the planning CT is not one regular volume (imaging/dicom_series.py), its
  PatientPosition is not the plan's, or the isocentre lies outside it.

Reading is file and SQLite I/O: igrtd runs `plan_session` in a thread, never
on its event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from daemon.dicom_archive import ArchiveError, DicomArchive
from imaging.dicom_plan import (
    PlanProblem,
    PlanSetup,
    StructureRegion,
    plan_setup,
    referenced_ct_series,
    structure_region,
)
from imaging.dicom_safe import DicomFileError, read_dataset
from imaging.dicom_series import SeriesGeometry, SeriesRefused
from imaging.registration_settings import RegistrationSettings

# A registration cube smaller than the registration's own default holds too little
# anatomy: in the demo phantom, a PTV of 25 mm half size plus 15 mm margin (a 40 mm
# half cube) left 0.76 mm / 0.34 deg of error where the 60 mm default left 0.03 mm /
# 0.01 deg. The structure decides where the cube is, not that it shrinks.
MIN_REGION_HALF_MM = RegistrationSettings().roi_half_mm


class PlanRefused(ValueError):
    """The session cannot be set up from the stored plan (one line why)."""


@dataclass(frozen=True, slots=True)
class PlanSession:
    setup: PlanSetup
    planning_ct_series_uid: str
    planning_ct_dir: Path
    planning_ct: SeriesGeometry
    # Where registrations look, when the room names a target structure
    # (dicom.registration_structure); None: a cube about the isocentre.
    region: StructureRegion | None = None


def _read(path: Path) -> Dataset:
    try:
        return read_dataset(path, stop_before_pixels=True)
    except DicomFileError as exc:
        raise PlanRefused(f"stored instance {path.name} cannot be read: {exc}") from None


def plan_session(archive_dir: Path, patient_id: str, plan_uid: str,
                 beam: str | None = None, *, structure: str | None = None,
                 margin_mm: float = 10.0) -> PlanSession:
    try:
        archive = DicomArchive(archive_dir, read_only=True)
    except ArchiveError as exc:
        raise PlanRefused(f"no plan can be read: {exc}") from None
    try:
        return _plan_session(archive, patient_id, plan_uid, beam, structure, margin_mm)
    finally:
        archive.close()


def _plan_session(archive: DicomArchive, patient_id: str, plan_uid: str,
                  beam: str | None, structure: str | None, margin_mm: float) -> PlanSession:
    retrieve = f"igrtctl dicom retrieve --patient {patient_id} --plan {plan_uid}"
    row = archive.find_instance(plan_uid)
    if row is None:
        raise PlanRefused(f"plan {plan_uid} is not in igrt's DICOM archive: have the planning "
                          f"system send it, or retrieve it from the PACS ({retrieve})")
    if row.modality != "RTPLAN":
        raise PlanRefused(f"{plan_uid} is a {row.modality} instance, not an RT Plan")
    if row.patient_id != patient_id:
        raise PlanRefused(f"plan {plan_uid} is for patient {row.patient_id!r}, not "
                          f"{patient_id!r}")
    try:
        setup = plan_setup(_read(row.path), beam)
    except PlanProblem as exc:
        raise PlanRefused(f"plan {plan_uid}: {exc}") from None
    frame = setup.frame_of_reference_uid
    everything = archive.series()
    strangers = sorted({s.patient_id for s in everything
                        if s.frame_of_reference_uid == frame and s.patient_id != patient_id})
    if strangers:
        raise PlanRefused(f"frame of reference {frame} of plan {plan_uid} is also used by "
                          f"series of patient(s) {', '.join(map(repr, strangers))}: the "
                          "archive holds another patient's images in this plan's frame")
    cts = [s.series_uid for s in everything
           if s.modality == "CT" and s.patient_id == patient_id
           and s.frame_of_reference_uid == frame]
    named: set[str] = set()
    structure_sets: list[Dataset] = []
    for ss_uid in setup.structure_set_uids:
        ss = archive.find_instance(ss_uid)
        if ss is None or ss.modality != "RTSTRUCT" or ss.patient_id != patient_id:
            continue  # not on hand: the frame of reference decides below
        structure_sets.append(_read(ss.path))
        named |= referenced_ct_series(structure_sets[-1], frame)
    if named:
        absent = sorted(named - set(cts))
        if absent:
            raise PlanRefused(f"the structure set of plan {plan_uid} was drawn on CT series "
                              f"{', '.join(absent)}, which igrt does not hold in frame {frame} "
                              f"({retrieve} --with-planning-ct)")
        cts = [s for s in cts if s in named]
    if not cts:
        raise PlanRefused(f"no planning CT of patient {patient_id!r} in frame of reference "
                          f"{frame} (plan {plan_uid}) is in igrt's DICOM archive "
                          f"({retrieve} --with-planning-ct)")
    if len(cts) > 1:
        raise PlanRefused(f"{len(cts)} CT series of patient {patient_id!r} are in frame "
                          f"{frame} ({', '.join(cts)}) and the plan's structure set does "
                          "not say which one the plan was made on")
    series_uid = cts[0]
    try:
        geometry = archive.series_geometry(series_uid)
    except (SeriesRefused, ArchiveError) as exc:
        raise PlanRefused(f"planning CT series {series_uid} is not usable: {exc}") from None
    first = archive.instance_paths(series_uid)[0]
    ct_position = str(_read(first).get("PatientPosition", "") or "").strip()
    if ct_position and ct_position != setup.patient_position:
        raise PlanRefused(f"plan {plan_uid} sets the patient up {setup.patient_position}, its "
                          f"planning CT {series_uid} was acquired {ct_position}")
    if not geometry.contains(setup.isocentre):
        raise PlanRefused(f"the plan's isocentre {[round(v, 2) for v in setup.isocentre]} mm "
                          f"lies outside its planning CT {series_uid}")
    region = None
    if structure is not None:
        if not structure_sets:
            raise PlanRefused(f"this room registers on structure {structure!r}, and no "
                              f"structure set of plan {plan_uid} is in igrt's DICOM archive")
        try:
            region = structure_region(structure_sets[0], structure, margin_mm,
                                      min_half_mm=MIN_REGION_HALF_MM)
        except PlanProblem as exc:
            raise PlanRefused(f"registration region of plan {plan_uid}: {exc}") from None
        if not geometry.contains(region.centre):
            raise PlanRefused(f"structure {structure!r} of plan {plan_uid} lies outside its "
                              f"planning CT {series_uid}")
    return PlanSession(setup, series_uid, first.parent, geometry, region)
