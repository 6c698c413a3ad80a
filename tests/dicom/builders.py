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


def rt_plan(*, isocentre: tuple[float, float, float] = (0.0, 10.0, -5.0), **kw: str) -> FileDataset:
    ds = _base(RT_PLAN, "RTPLAN", frame=kw.pop("frame", None) or generate_uid(), **kw)
    cp = Dataset()
    cp.ControlPointIndex = 0
    cp.IsocenterPosition = list(isocentre)
    beam = Dataset()
    beam.BeamNumber = 1
    beam.BeamName = "AP"
    beam.ControlPointSequence = Sequence([cp])
    ds.BeamSequence = Sequence([beam])
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = "HFS"
    ds.PatientSetupSequence = Sequence([setup])
    return ds


def rt_structures(**kw: str) -> FileDataset:
    ds = _base(RT_STRUCTURE_SET, "RTSTRUCT", **kw)
    ref = Dataset()
    ref.FrameOfReferenceUID = kw.get("frame") or generate_uid()
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ROIName = "PTV"
    roi.ReferencedFrameOfReferenceUID = ref.FrameOfReferenceUID
    ds.StructureSetROISequence = Sequence([roi])
    return ds


def part10(ds: FileDataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
