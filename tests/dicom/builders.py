"""Small DICOM instances for the storage service's tests: a CT slice, an RT Plan,
an RT Structure Set, each valid until a test spoils one attribute."""

from __future__ import annotations

import io

from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.dicom_instances import CT_IMAGE, RT_PLAN, RT_STRUCTURE_SET

PATIENT = "PAT-001"


def _base(sop_class: str, modality: str, *, patient: str = PATIENT,
          study: str | None = None, series: str | None = None,
          frame: str | None = None) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.PatientName = "TEST^PATIENT"
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    ds.Modality = modality
    if frame is not None:
        ds.FrameOfReferenceUID = frame
    return ds


def ct_slice(*, z: float = 0.0, rows: int = 8, cols: int = 8, **kw: str) -> FileDataset:
    ds = _base(CT_IMAGE, "CT", frame=kw.pop("frame", None) or generate_uid(), **kw)
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.5
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept, ds.RescaleSlope = 0, 1
    ds.PixelData = b"\0\0" * rows * cols
    return ds


def rt_plan(*, isocentre: tuple[float, float, float] = (0.0, 10.0, -5.0),
            beams: list[tuple[int, str, tuple[float, float, float], int]] | None = None,
            setups: dict[int, str] | None = None, structure_set: str | None = None,
            **kw: str) -> FileDataset:
    """One AP beam at `isocentre`, patient setup 1 HFS, unless `beams` (number,
    name, isocentre, setup number) and `setups` (number -> PatientPosition) say
    otherwise; `structure_set` is the SOP Instance UID the plan refers to."""
    ds = _base(RT_PLAN, "RTPLAN", frame=kw.pop("frame", None) or generate_uid(), **kw)
    items = []
    for number, name, iso, setup_number in beams or [(1, "AP", isocentre, 1)]:
        cp = Dataset()
        cp.ControlPointIndex = 0
        cp.IsocenterPosition = list(iso)
        beam = Dataset()
        beam.BeamNumber = number
        beam.BeamName = name
        beam.ReferencedPatientSetupNumber = setup_number
        beam.ControlPointSequence = Sequence([cp])
        items.append(beam)
    ds.BeamSequence = Sequence(items)
    setup_items = []
    for number, position in (setups or {1: "HFS"}).items():
        setup = Dataset()
        setup.PatientSetupNumber = number
        setup.PatientPosition = position
        setup_items.append(setup)
    ds.PatientSetupSequence = Sequence(setup_items)
    if structure_set is not None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = RT_STRUCTURE_SET
        ref.ReferencedSOPInstanceUID = structure_set
        ds.ReferencedStructureSetSequence = Sequence([ref])
    return ds


def rt_structures(*, ct_series: str | None = None,
                  ptv: list[tuple[float, float, float]] | None = None,
                  **kw: str) -> FileDataset:
    """A PTV in `frame`; `ct_series`: the image series it was drawn on; `ptv`: the
    points of its one contour."""
    ds = _base(RT_STRUCTURE_SET, "RTSTRUCT", **kw)
    ref = Dataset()
    ref.FrameOfReferenceUID = kw.get("frame") or generate_uid()
    if ct_series is not None:
        series = Dataset()
        series.SeriesInstanceUID = ct_series
        study = Dataset()
        study.ReferencedSOPInstanceUID = generate_uid()
        study.RTReferencedSeriesSequence = Sequence([series])
        ref.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ROIName = "PTV"
    roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    if ptv is not None:
        contour = Dataset()
        contour.ContourGeometricType = "CLOSED_PLANAR"
        contour.NumberOfContourPoints = len(ptv)
        contour.ContourData = [v for point in ptv for v in point]
        item = Dataset()
        item.ReferencedROINumber = 1
        item.ContourSequence = Sequence([contour])
        ds.ROIContourSequence = Sequence([item])
    return ds


def ct_series(*, frame: str, slices: int = 6, spacing: float = 2.5,
              position: str | None = "HFS", **kw: str) -> list[FileDataset]:
    """A small planning CT: 8x8 pixels of 1 mm, `slices` slices from z=0."""
    series = kw.pop("series", None) or generate_uid()
    study = kw.pop("study", None) or generate_uid()
    out = []
    for i in range(slices):
        ds = ct_slice(z=i * spacing, frame=frame, series=series, study=study, **kw)
        ds.InstanceNumber = i + 1
        if position is not None:
            ds.PatientPosition = position
        out.append(ds)
    return out


def part10(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
