"""DICOM Spatial Registration objects (REG) for rigid 3D registrations.

Direction (docs/geometry.md): igrt's matrix T is ITK fixed->moving (planning
point -> daily point). In a REG each Registration Sequence item holds the
matrix that maps that item's frame of reference (its image coordinates) into
the registration's own frame of reference (the top-level FrameOfReferenceUID,
which igrt sets to the planning frame). So igrt writes

* the fixed (planning) item: identity, FrameOfReferenceUID = planning FoR;
* the moving (daily) item: T^-1, FrameOfReferenceUID = daily FoR;

and reads any REG as T = M_moving^-1 M_fixed, which is right whatever the
order of the items and also when a writer gave the fixed item a non-identity
matrix. Anything that is not exactly one rigid fixed/moving pair is a
one-line ValueError.

Files come from outside (a TPS export, a USB stick): they are read through
imaging.dicom_safe, so hostile bytes give one DicomFileError (a ValueError)
naming the file, never a pydicom traceback or warning.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from imaging.dicom_safe import DicomFileError, describe, one_line, quiet_pydicom, read_dataset

SPATIAL_REGISTRATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.1"
DEFORMABLE_REGISTRATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.3"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"  # pydicom's root, as generate_uid uses
RIGID_TOLERANCE = 1e-4
# A REG is a few kilobytes; a file this large is not one.
MAX_REG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class RegistrationRecord:
    matrix: np.ndarray  # ITK fixed -> moving
    patient_id: str
    patient_name: str
    fixed_frame_of_reference_uid: str
    moving_frame_of_reference_uid: str
    content_datetime: dt.datetime | None
    sop_instance_uid: str
    study_uid: str
    series_uid: str

    @property
    def acquired_at(self) -> float | None:
        """UNIX time of the content date/time (local time), or None when absent."""
        return self.content_datetime.timestamp() if self.content_datetime else None


def _ds(v: float) -> DSfloat:
    return DSfloat(float(v), auto_format=True)


def _check_rigid(m: np.ndarray, what: str) -> None:
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise ValueError(f"{what} must be a finite 4x4 matrix")
    if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
        raise ValueError(f"{what} has a last row {m[3].tolist()}, not [0, 0, 0, 1]")
    r = m[:3, :3]
    err = float(np.abs(r @ r.T - np.eye(3)).max())
    if err > RIGID_TOLERANCE or np.linalg.det(r) <= 0:
        raise ValueError(
            f"{what} is not rigid (rotation part deviates from orthonormal by {err:.2g}, "
            f"limit {RIGID_TOLERANCE:g})"
        )


def _matrix_item(m: np.ndarray) -> Dataset:
    matrix = Dataset()
    matrix.FrameOfReferenceTransformationMatrixType = "RIGID"
    matrix.FrameOfReferenceTransformationMatrix = [_ds(v) for v in m.ravel()]
    reg = Dataset()
    reg.MatrixSequence = Sequence([matrix])
    reg.RegistrationTypeCodeSequence = Sequence([_code("125025", "DCM", "Visual Alignment")])
    return reg


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue = value
    c.CodingSchemeDesignator = scheme
    c.CodeMeaning = meaning
    return c


def _registration_item(for_uid: str, m: np.ndarray) -> Dataset:
    item = Dataset()
    item.FrameOfReferenceUID = for_uid
    item.MatrixRegistrationSequence = Sequence([_matrix_item(m)])
    return item


def write_registration(
    path: str | Path,
    matrix_itk_fixed_to_moving: Any,
    *,
    patient_id: str,
    patient_name: str,
    fixed_frame_of_reference_uid: str,
    moving_frame_of_reference_uid: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    content_datetime: dt.datetime | None = None,
    content_label: str = "IGRT_MATCH",
    description: str = "igrt rigid CBCT to planning CT registration",
    operator: str = "",
    sop_instance_uid: str | None = None,
) -> str:
    """Write a Spatial Registration Storage object; returns its SOP Instance UID
    (`sop_instance_uid`, else a new one)."""
    t = np.asarray(matrix_itk_fixed_to_moving, dtype=float)
    _check_rigid(t, "registration matrix")
    for name, uid in (("fixed", fixed_frame_of_reference_uid),
                      ("moving", moving_frame_of_reference_uid)):
        if not uid or len(uid) > 64:
            raise ValueError(f"{name} frame of reference UID {uid!r} is not a valid UID")
    when = (content_datetime or dt.datetime.now()).replace(microsecond=0)
    sop_uid = UID(sop_instance_uid) if sop_instance_uid else generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(SPATIAL_REGISTRATION_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_UID)
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SPATIAL_REGISTRATION_SOP_CLASS
    ds.SOPInstanceUID = sop_uid
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.StudyDate, ds.StudyTime = date, time
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    # General Series / Spatial Registration Series
    ds.Modality = "REG"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.SeriesDescription = "IGRT registration"
    # Type 2C in General Series; dciodvfy cannot evaluate the condition, and an empty
    # value is what a registration of an unpaired body part carries.
    ds.Laterality = ""
    # Frame of Reference: the registration is expressed in the planning frame.
    ds.FrameOfReferenceUID = fixed_frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "igrt"
    ds.SoftwareVersions = "0.1.0"
    # Spatial Registration + Content Identification
    ds.InstanceNumber = 1
    ds.ContentLabel = content_label
    ds.ContentDescription = description
    ds.ContentCreatorName = operator
    ds.ContentDate, ds.ContentTime = date, time
    ds.RegistrationSequence = Sequence([
        _registration_item(fixed_frame_of_reference_uid, np.eye(4)),
        _registration_item(moving_frame_of_reference_uid, np.linalg.inv(t)),
    ])
    ds.save_as(str(path), enforce_file_format=True)
    return sop_uid


def _item_matrix(item: Dataset, n: int) -> np.ndarray:
    mrs = item.get("MatrixRegistrationSequence")
    if not mrs:
        raise ValueError(f"registration item {n} has no MatrixRegistrationSequence")
    total = np.eye(4)
    # Per the standard the matrices of one item are applied in sequence order.
    for ms_item in mrs:
        for mi in ms_item.get("MatrixSequence") or []:
            kind = str(mi.get("FrameOfReferenceTransformationMatrixType", "")).strip()
            if kind != "RIGID":
                shown = one_line(kind, 40) if kind else "missing"
                raise ValueError(
                    f"registration item {n} has a {shown} matrix type; only RIGID "
                    "registrations can drive a couch correction"
                )
            values = mi.get("FrameOfReferenceTransformationMatrix")
            if values is not None and not isinstance(values, (list, tuple, MultiValue)):
                values = [values]  # pydicom gives a single value unwrapped
            if values is None or len(values) != 16:
                raise ValueError(f"registration item {n} matrix does not have 16 values")
            m = np.array([_matrix_value(v, n) for v in values], dtype=float).reshape(4, 4)
            _check_rigid(m, f"registration item {n} matrix")
            total = m @ total
        if not ms_item.get("MatrixSequence"):
            raise ValueError(f"registration item {n} has no MatrixSequence")
    return total


def _matrix_value(v: Any, n: int) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"registration item {n} matrix value {one_line(str(v), 40)!r} is "
                         "not a number") from None


def _dicom_datetime(date: str, time: str) -> dt.datetime | None:
    if not date:
        return None
    try:
        d = dt.datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return None
    t = (time or "").split(".")[0].ljust(6, "0")[:6]
    try:
        tt = dt.datetime.strptime(t, "%H%M%S")
    except ValueError:
        return d
    return d.replace(hour=tt.hour, minute=tt.minute, second=tt.second)


def read_registration(
    path: str | Path, *, fixed_frame_of_reference_uid: str | None = None,
) -> RegistrationRecord:
    """Read a rigid REG; `matrix` is ITK fixed->moving. ValueError (one line) otherwise.

    The fixed item is the one in `fixed_frame_of_reference_uid` when given, else
    the one in the registration's own frame of reference, else (both items in one
    frame) the item with an identity matrix.
    """
    p = Path(path)
    ds = read_dataset(p, max_bytes=MAX_REG_BYTES)
    try:
        with quiet_pydicom():
            return _record(ds, p, fixed_frame_of_reference_uid)
    except DicomFileError:
        raise
    except ValueError as exc:  # a refusal of ours, or a value pydicom cannot convert
        raise DicomFileError(f"{p}: {one_line(str(exc))}") from None
    # Decoded but malformed content (an item that is not a dataset, a value of the
    # wrong type where a VR was altered): the file is unusable, said in one line.
    except Exception as exc:  # noqa: BLE001
        raise DicomFileError(f"{p}: unusable registration content: {describe(exc)}") from None


def _record(ds: Dataset, p: Path, fixed_frame_of_reference_uid: str | None) -> RegistrationRecord:
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == DEFORMABLE_REGISTRATION_SOP_CLASS:
        raise ValueError("deformable registrations cannot drive a couch correction")
    if sop_class != SPATIAL_REGISTRATION_SOP_CLASS:
        raise ValueError(f"not a DICOM Spatial Registration (SOP class "
                         f"{one_line(sop_class, 70)!r})")
    items = list(ds.get("RegistrationSequence") or [])
    if len(items) != 2:
        raise ValueError(
            f"expected 2 items in RegistrationSequence (fixed and moving), found {len(items)}"
        )
    fors = [str(it.get("FrameOfReferenceUID", "")) for it in items]
    if not all(fors):
        raise ValueError("a registration item has no FrameOfReferenceUID")
    mats = [_item_matrix(it, n) for n, it in enumerate(items)]
    reg_for = str(ds.get("FrameOfReferenceUID", ""))
    fixed_index = _fixed_index(fors, mats, reg_for, fixed_frame_of_reference_uid)
    moving_index = 1 - fixed_index
    m_fixed, m_moving = mats[fixed_index], mats[moving_index]
    t = np.linalg.inv(m_moving) @ m_fixed
    when = _dicom_datetime(str(ds.get("ContentDate", "")), str(ds.get("ContentTime", "")))
    if when is not None:
        try:  # acquired_at is compared with the registration age limit: it must convert
            when.timestamp()
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"content date/time {when.isoformat()} is out of range") from None
    return RegistrationRecord(
        matrix=t,
        patient_id=str(ds.get("PatientID", "")),
        patient_name=str(ds.get("PatientName", "")),
        fixed_frame_of_reference_uid=fors[fixed_index],
        moving_frame_of_reference_uid=fors[moving_index],
        content_datetime=when,
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_uid=str(ds.get("SeriesInstanceUID", "")),
    )


def _fixed_index(
    fors: list[str], mats: list[np.ndarray], reg_for: str, expected: str | None,
) -> int:
    if expected is not None:
        hits = [i for i, f in enumerate(fors) if f == expected]
        if not hits:
            raise ValueError(
                f"registration does not involve the planning frame of reference {expected}"
            )
        if len(hits) == 1:
            return hits[0]
    elif fors[0] != fors[1]:
        hits = [i for i, f in enumerate(fors) if f == reg_for]
        if len(hits) == 1:
            return hits[0]
    identity = [i for i, m in enumerate(mats) if np.allclose(m, np.eye(4), atol=1e-9)]
    if len(identity) == 1:
        return identity[0]
    raise ValueError("cannot tell the fixed item from the moving item in this registration")


def read_registration_matrix(path: str | Path) -> np.ndarray:
    """The ITK fixed->moving 4x4 matrix of a rigid REG file."""
    return read_registration(path).matrix
