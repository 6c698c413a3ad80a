"""A retrieve from a PACS into igrt (docs/dicom.md, "Query/retrieve from a
PACS"): find what is asked, C-MOVE it to igrt's own AE title, and then read
from igrt's own archive what arrived.

The instances come through igrt-dicomd like any push: the same admission (the
PACS must be a `send` peer), the same validation, the same durable storage
and audit. Nothing retrieved is decoded or stored here. The PACS's
sub-operation counts drive the progress display only: what counts as arrived
is what igrt-dicomd validated and indexed, with the patient, series and (for
a planning CT) frame of reference that were asked for. An instance that did
not arrive is named with the reason igrt-dicomd recorded for it (its audit
log), or with what the PACS said.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from daemon.audit import AuditError, read_records
from daemon.dicom_archive import ArchiveError, DicomArchive, IndexedInstance
from daemon.dicom_query import (
    MAX_INSTANCES,
    InstanceMatch,
    Pacs,
    QueryError,
    SeriesMatch,
    StudyMatch,
)
from drivers.dicom_qr import MoveStatus
from imaging.dicom_instances import RT_PLAN, is_uid
from imaging.dicom_plan import referenced_ct_series
from imaging.dicom_safe import DicomFileError, read_dataset
from imaging.dicom_series import SeriesRefused

_AUDIT_SLACK_S = 2.0  # audit records are looked at from this long before the move began


@dataclass(frozen=True, slots=True)
class Part:
    """One C-MOVE of a retrieve: what is asked and which instances it must bring."""

    label: str  # "RT Plan", "planning CT series", "series", "study"
    what: InstanceMatch | SeriesMatch | StudyMatch
    expected: tuple[InstanceMatch, ...]
    modality: str | None = None  # the series' modality, when one series is moved
    frame_of_reference_uid: str | None = None  # what every arriving instance must carry

    @property
    def uid(self) -> str:
        what = self.what
        if isinstance(what, InstanceMatch):
            return what.sop_instance_uid
        if isinstance(what, SeriesMatch):
            return what.series_uid
        return what.study_uid


@dataclass(frozen=True, slots=True)
class Missing:
    sop_instance_uid: str
    reason: str


@dataclass(frozen=True, slots=True)
class PartOutcome:
    part: Part
    final: MoveStatus
    arrived: tuple[IndexedInstance, ...]
    missing: tuple[Missing, ...]
    volume: str | None = None  # a CT series: its volume, or why its slices make none

    @property
    def complete(self) -> bool:
        return not self.missing and len(self.arrived) == len(self.part.expected)


class Retrieval:
    """Retrieves for one patient from `pacs` into the archive igrt-dicomd keeps in
    `archive_dir`, calling `progress` with each C-MOVE response, pending and final."""

    def __init__(self, pacs: Pacs, *, patient_id: str, destination: str, archive_dir: Path,
                 progress: Callable[[Part, MoveStatus], None]) -> None:
        self._pacs = pacs
        self._patient = patient_id
        self._destination = destination
        self._archive_dir = archive_dir
        self._progress = progress

    # ------------------------------------------------------------- finding
    def _one_series(self, series_uid: str) -> SeriesMatch:
        found = self._pacs.patient_series(self._patient, series_uid=series_uid)
        if not found:
            raise QueryError(f"no series {series_uid} for patient {self._patient} on PACS "
                             f"{self._pacs.peer.ae_title}")
        return found[0]

    def plan(self, plan_uid: str) -> Part:
        """The RT Plan `plan_uid`: looked for in the patient's RTPLAN series."""
        for series in self._pacs.patient_series(self._patient, modality="RTPLAN"):
            found = self._pacs.instances(series, plan_uid)
            if found:
                plan = found[0]
                if plan.sop_class_uid not in (None, RT_PLAN):
                    raise QueryError(f"instance {plan_uid} on PACS {self._pacs.peer.ae_title} "
                                     f"is of SOP class {plan.sop_class_uid}, not RT Plan")
                return Part("RT Plan", plan, (plan,), "RTPLAN")
        raise QueryError(f"no RT Plan {plan_uid} for patient {self._patient} on PACS "
                         f"{self._pacs.peer.ae_title}")

    def series(self, series_uid: str) -> Part:
        series = self._one_series(series_uid)
        return Part(f"{series.modality or 'series'} series", series,
                    tuple(self._pacs.instances(series)), series.modality or None)

    def study(self, study_uid: str) -> Part:
        studies = self._pacs.studies(self._patient, study_uid)
        if not studies:
            raise QueryError(f"no study {study_uid} for patient {self._patient} on PACS "
                             f"{self._pacs.peer.ae_title}")
        expected: list[InstanceMatch] = []
        for series in self._pacs.series(self._patient, study_uid):
            expected += self._pacs.instances(series, limit=MAX_INSTANCES - len(expected))
        return Part("study", studies[0], tuple(expected))

    def structure_set(self, sop_instance_uid: str) -> Part | None:
        """The RT Structure Set a plan refers to, looked for in the patient's RTSTRUCT
        series; None when the PACS does not hold it."""
        for series in self._pacs.patient_series(self._patient, modality="RTSTRUCT"):
            found = self._pacs.instances(series, sop_instance_uid)
            if found:
                return Part("RT Structure Set", found[0], (found[0],), "RTSTRUCT")
        return None

    def planning_ct(self, frame_of_reference_uid: str, *,
                    named: frozenset[str] = frozenset()) -> Part:
        """The CT series with the plan's frame of reference: the one the plan's
        structure set was drawn on (`named`), else exactly one, or a refusal naming
        the candidates (a 4D CT's phases share one frame; which of them is the
        planning CT is for a person to say, with --series)."""
        cts = self._pacs.patient_series(self._patient, modality="CT",
                                        frame_of_reference_uid=frame_of_reference_uid)
        matching = [s for s in cts if s.frame_of_reference_uid == frame_of_reference_uid]
        if named:
            # Named by the structure set: a PACS that leaves the frame unsaid will do,
            # the frame of every arriving slice is checked all the same.
            matching = [s for s in cts if s.series_uid in named
                        and s.frame_of_reference_uid in (frame_of_reference_uid, None)]
        where = f"PACS {self._pacs.peer.ae_title}"
        if not matching:
            silent = [s.series_uid for s in cts if s.frame_of_reference_uid is None]
            if silent:
                raise QueryError(f"{where} does not say which CT series has frame of reference "
                                 f"{frame_of_reference_uid} (an optional key): retrieve the "
                                 f"planning CT with --series, one of {', '.join(silent)}")
            raise QueryError(f"no CT series with the plan's frame of reference "
                             f"{frame_of_reference_uid} for patient {self._patient} on {where}")
        if len(matching) > 1:
            raise QueryError(f"{len(matching)} CT series have the plan's frame of reference on "
                             f"{where}: {', '.join(s.series_uid for s in matching)}; retrieve "
                             "the planning CT with --series")
        series = matching[0]
        return Part("planning CT series", series, tuple(self._pacs.instances(series)), "CT",
                    frame_of_reference_uid)

    # ----------------------------------------------------------- retrieving
    def run(self, part: Part) -> PartOutcome:
        """C-MOVE `part` to igrt and say what arrived."""
        began = time.time()
        final = self._pacs.move(part.what, self._destination,
                                lambda status: self._progress(part, status))
        self._progress(part, final)
        return self._arrival(part, final, began)

    def _arrival(self, part: Part, final: MoveStatus, began: float) -> PartOutcome:
        try:
            archive = DicomArchive(self._archive_dir, read_only=True)
        except ArchiveError as exc:
            if not part.expected or final.completed:
                raise QueryError(f"cannot check what arrived: {exc}") from None
            archive = None  # nothing was ever stored: every instance is missing
        arrived: list[IndexedInstance] = []
        wrong: list[Missing] = []
        absent: list[str] = []
        volume: str | None = None
        try:
            for want in part.expected:
                got = None if archive is None else archive.find_instance(want.sop_instance_uid)
                if got is None:
                    absent.append(want.sop_instance_uid)
                    continue
                why = _mismatch(got, want, part)
                if why:
                    wrong.append(Missing(want.sop_instance_uid, why))
                else:
                    arrived.append(got)
            if archive is not None and part.modality == "CT" and arrived and not absent:
                try:
                    geo = archive.series_geometry(part.uid)
                    volume = (f"{len(geo.slices)} slices {geo.rows}x{geo.columns}, "
                              f"{geo.spacing_mm:.3f} mm apart")
                except (SeriesRefused, ArchiveError) as exc:
                    volume = f"not one volume: {exc}"
        finally:
            if archive is not None:
                archive.close()
        reasons = self._refusals(began - _AUDIT_SLACK_S)
        fallback = reasons.get("") or (
            f"not sent by the PACS (it ended the retrieve with status 0x{final.status:04X})"
            if final.status != 0 else "not received, though the PACS reported success")
        # igrt-dicomd's own refusals first: they are the cause; a PACS that stops at
        # the first failed sub-operation leaves the rest unsent.
        refused = [Missing(uid, reasons[uid]) for uid in absent if uid in reasons]
        listed = set(final.failed_sop_instances)  # the PACS's own word, when it gives it
        unsent = [Missing(uid, "the PACS reports its sub-operation failed" if uid in listed
                          else fallback) for uid in absent if uid not in reasons]
        return PartOutcome(part, final, tuple(arrived), tuple(refused + wrong + unsent), volume)

    def _refusals(self, since: float) -> dict[str, str]:
        """SOP Instance UID -> why igrt-dicomd refused it, from its audit log since
        `since`; under "" why it turned the PACS's association away, if it did."""
        out: dict[str, str] = {}
        audit = self._archive_dir / "audit"
        pacs = self._pacs.peer
        try:
            for rec in read_records(audit, since=since):
                d = rec.details
                if rec.event == "dicom.instance_refused" and isinstance(d.get("sop_instance"), str):
                    out[str(d["sop_instance"])] = (f"refused by igrt-dicomd ({d.get('status')}): "
                                                   f"{d.get('reason')}")
                elif rec.event == "dicom.association_rejected" and (
                        rec.actor == f"dicom:{pacs.ae_title}" or d.get("address") == pacs.host):
                    out[""] = f"igrt-dicomd turned the PACS's association away: {d.get('reason')}"
        except (AuditError, OSError):
            pass  # reasons are a courtesy: `igrtctl dicom status` shows them too
        return out


def _mismatch(got: IndexedInstance, want: InstanceMatch, part: Part) -> str:
    """Why an instance stored under the UID asked for is not what was asked, or ""."""
    if got.patient_id != want.patient_id:
        return (f"stored under PatientID {got.patient_id!r}, asked for {want.patient_id!r}: "
                "not for use")
    if got.series_uid != want.series_uid or got.study_uid != want.study_uid:
        return (f"stored in series {got.series_uid} of study {got.study_uid}; the PACS "
                f"listed it in series {want.series_uid} of study {want.study_uid}")
    if part.frame_of_reference_uid and got.frame_of_reference_uid != part.frame_of_reference_uid:
        return (f"stored with frame of reference {got.frame_of_reference_uid}, the plan's is "
                f"{part.frame_of_reference_uid}")
    return ""


def _stored(outcome: PartOutcome) -> Dataset:
    """igrt's own validated copy of a retrieved instance."""
    try:
        return read_dataset(outcome.arrived[0].path, stop_before_pixels=True)
    except DicomFileError as exc:
        raise QueryError(f"the stored {outcome.part.label} cannot be read: {exc}") from None


def plan_structure_sets(outcome: PartOutcome) -> list[str]:
    """The structure sets a retrieved plan refers to (its ReferencedStructureSetSequence)."""
    if not outcome.complete or not outcome.arrived:
        return []
    return [str(item.ReferencedSOPInstanceUID)
            for item in _stored(outcome).get("ReferencedStructureSetSequence") or []
            if is_uid(str(item.get("ReferencedSOPInstanceUID", "")))]


def drawn_on(outcome: PartOutcome, frame_of_reference_uid: str) -> frozenset[str]:
    """The CT series a retrieved structure set was drawn on, in the plan's frame."""
    if not outcome.complete or not outcome.arrived:
        return frozenset()
    return frozenset(referenced_ct_series(_stored(outcome), frame_of_reference_uid))


def plan_frame_of_reference(outcome: PartOutcome) -> str:
    """The frame of reference of a retrieved plan, as igrt-dicomd validated it."""
    if not outcome.complete or not outcome.arrived:
        raise QueryError("the plan did not arrive; its planning CT is not looked for")
    frame = outcome.arrived[0].frame_of_reference_uid
    if not frame:
        raise QueryError(f"the stored plan {outcome.part.uid} has no frame of reference")
    return frame
