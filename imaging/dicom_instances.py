"""What igrt accepts from a DICOM peer, one instance at a time (docs/dicom.md).

A received instance is checked before anything keeps it: its SOP class is one
igrt stores (CT, CBCT as CT, RT Plan, RT Structure Set, Spatial Registration),
it is the SOP class it was sent as, its identifiers are well-formed UIDs, it
names a patient, and the attributes igrt will later compute with are present
and finite (an image's geometry and pixels, a plan's isocentres, a structure
set's and a registration's frame of reference). A refusal carries the DICOM
failure status a Storage SCP answers with (PS3.4 B.2.3) and one line naming
the attribute, the value and what was expected.

Series-level checks (every slice there, uniform spacing, no tilt) belong to
when a series is used, not to one instance: the slices of a series arrive one
association message at a time.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from imaging.dicom_safe import one_line

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.1"

# SOP class -> (name, the Modality it must carry)
STORED_CLASSES: dict[str, tuple[str, str]] = {
    CT_IMAGE: ("CT Image", "CT"),
    RT_PLAN: ("RT Plan", "RTPLAN"),
    RT_STRUCTURE_SET: ("RT Structure Set", "RTSTRUCT"),
    SPATIAL_REGISTRATION: ("Spatial Registration", "REG"),
}

# PS3.4 C-STORE failure statuses.
STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_NOT_AUTHORISED = 0x0124

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
UID_PATTERN = _UID.pattern


def is_uid(text: str) -> bool:
    """A well-formed UID: digits and dots, no leading zeros, at most 64 characters."""
    return len(text) <= 64 and _UID.fullmatch(text) is not None


class InstanceRefused(ValueError):
    """An instance igrt will not keep: the status to answer and one line why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(one_line(reason))
        self.status = status
        self.reason = one_line(reason)


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """The identifiers an accepted instance is indexed by."""

    sop_class_uid: str
    sop_instance_uid: str
    modality: str
    patient_id: str
    patient_name: str
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str | None
    instance_number: int | None


def _uid(ds: Dataset, keyword: str, *, required: bool = True) -> str | None:
    value = ds.get(keyword)
    if value is None or str(value).strip() == "":
        if required:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, f"{keyword} is missing")
        return None
    text = str(value).strip()
    if len(text) > 64 or not _UID.match(text):
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"{keyword} {text[:70]!r} is not a valid UID "
                              "(digits and dots, at most 64 characters)")
    return text


def _text(ds: Dataset, keyword: str, *, limit: int = 64) -> str:
    value = ds.get(keyword)
    text = "" if value is None else str(value).strip()
    if not text:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, f"{keyword} is missing or empty")
    if len(text) > limit or not text.isprintable():
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"{keyword} is longer than {limit} characters or not printable")
    return text


def _numbers(ds: Dataset, keyword: str, count: int, where: str = "") -> list[float]:
    value = ds.get(keyword)
    at = f"{keyword}{where}"
    if value is None:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, f"{at} is missing")
    items = list(value) if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") \
        and not isinstance(value, (str, bytes)) else [value]
    if len(items) != count:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"{at} has {len(items)} values, expected {count}")
    out: list[float] = []
    for v in items:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                                  f"{at} value {str(v)[:30]!r} is not a number") from None
        if not math.isfinite(f):
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                                  f"{at} value {f} is not finite")
        out.append(f)
    return out


def _positive_int(ds: Dataset, keyword: str, limit: int) -> int:
    value = ds.get(keyword)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= limit:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"{keyword} {value!r} is not a whole number in 1..{limit}")
    return value


def _check_ct(ds: Dataset) -> None:
    _uid(ds, "FrameOfReferenceUID")
    _numbers(ds, "ImagePositionPatient", 3)
    row, col = (_numbers(ds, "ImageOrientationPatient", 6)[i:i + 3] for i in (0, 3))
    for name, vec in (("row", row), ("column", col)):
        norm = math.sqrt(sum(c * c for c in vec))
        if abs(norm - 1.0) > 1e-3:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                                  f"ImageOrientationPatient {name} vector has length "
                                  f"{norm:.4f}, expected 1 (tolerance 0.001)")
    dot = sum(a * b for a, b in zip(row, col, strict=True))
    if abs(dot) > 1e-3:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"ImageOrientationPatient row and column are not orthogonal "
                              f"(dot product {dot:.4f}, tolerance 0.001)")
    for i, s in enumerate(_numbers(ds, "PixelSpacing", 2)):
        if not 0.0 < s <= 10.0:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                                  f"PixelSpacing[{i}] {s} mm is outside 0..10 mm")
    rows = _positive_int(ds, "Rows", 4096)
    cols = _positive_int(ds, "Columns", 4096)
    if ds.get("BitsAllocated") != 16:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"BitsAllocated {ds.get('BitsAllocated')!r}, expected 16")
    if ds.get("SamplesPerPixel", 1) != 1:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, "SamplesPerPixel is not 1")
    pixels = ds.get("PixelData")
    if not isinstance(pixels, (bytes, bytearray)):
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, "PixelData is missing")
    if len(pixels) < rows * cols * 2:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"PixelData holds {len(pixels)} bytes, {rows}x{cols} 16-bit "
                              f"pixels need {rows * cols * 2}")
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        if keyword in ds:
            _numbers(ds, keyword, 1)


def _check_plan(ds: Dataset) -> None:
    _uid(ds, "FrameOfReferenceUID")
    beams = ds.get("BeamSequence")
    if not beams:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND, "RT Plan has no BeamSequence")
    for b, beam in enumerate(beams):
        cps = beam.get("ControlPointSequence")
        if not cps:
            raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                                  f"BeamSequence[{b}] has no ControlPointSequence")
        _numbers(cps[0], "IsocenterPosition", 3, f" of BeamSequence[{b}] control point 0")


def _check_structures(ds: Dataset) -> None:
    refs = ds.get("ReferencedFrameOfReferenceSequence")
    if not refs:
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              "RT Structure Set has no ReferencedFrameOfReferenceSequence")
    for item in refs:
        _uid(item, "FrameOfReferenceUID")
    if not ds.get("StructureSetROISequence"):
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              "RT Structure Set has no StructureSetROISequence")


def _check_registration(ds: Dataset) -> None:
    _uid(ds, "FrameOfReferenceUID")
    if not ds.get("RegistrationSequence"):
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              "Spatial Registration has no RegistrationSequence")


_CHECKS = {CT_IMAGE: _check_ct, RT_PLAN: _check_plan, RT_STRUCTURE_SET: _check_structures,
           SPATIAL_REGISTRATION: _check_registration}


def check_instance(ds: Dataset, sent_as: str) -> InstanceFacts:
    """The facts of an instance igrt keeps, or InstanceRefused. `sent_as`: the SOP
    class of the presentation context (what the peer said it sends)."""
    if sent_as not in STORED_CLASSES:
        raise InstanceRefused(STATUS_SOP_CLASS_NOT_SUPPORTED,
                              f"SOP class {sent_as} is not one igrt stores")
    sop_class = _uid(ds, "SOPClassUID")
    if sop_class != sent_as:
        raise InstanceRefused(STATUS_DATASET_DOES_NOT_MATCH,
                              f"SOPClassUID {sop_class} differs from the class it was sent as "
                              f"({sent_as})")
    name, modality = STORED_CLASSES[sent_as]
    got = str(ds.get("Modality", "")).strip()
    if got != modality:
        raise InstanceRefused(STATUS_DATASET_DOES_NOT_MATCH,
                              f"{name} with Modality {got[:16]!r}, expected {modality!r}")
    facts = InstanceFacts(
        sop_class_uid=sent_as,
        sop_instance_uid=_uid(ds, "SOPInstanceUID") or "",
        modality=modality,
        patient_id=_text(ds, "PatientID"),
        patient_name=str(ds.get("PatientName", "")).strip()[:64],
        study_uid=_uid(ds, "StudyInstanceUID") or "",
        series_uid=_uid(ds, "SeriesInstanceUID") or "",
        frame_of_reference_uid=_frame_of_reference(ds),
        instance_number=_instance_number(ds),
    )
    _CHECKS[sent_as](ds)
    return facts


def _frame_of_reference(ds: Dataset) -> str | None:
    direct = _uid(ds, "FrameOfReferenceUID", required=False)
    if direct is not None:
        return direct
    refs = ds.get("ReferencedFrameOfReferenceSequence") or []
    return _uid(refs[0], "FrameOfReferenceUID", required=False) if refs else None


def _instance_number(ds: Dataset) -> int | None:
    value = ds.get("InstanceNumber")
    try:
        n = int(value) if value is not None and str(value).strip() != "" else None
    except (TypeError, ValueError):
        raise InstanceRefused(STATUS_CANNOT_UNDERSTAND,
                              f"InstanceNumber {str(value)[:20]!r} is not a whole number") from None
    return n
