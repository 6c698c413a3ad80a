"""Reading and writing 3D images with their DICOM identity.

`read_image(path)` accepts anything SimpleITK reads as one 3D volume (.mha,
.nrrd, .nii.gz, ...) or a directory holding one DICOM CT/CBCT series. For DICOM
the patient, study, series and frame-of-reference identity comes along
(pydicom), so intake can check the images belong to the patient and plan they
claim to. Unusable input is a one-line ValueError naming the problem: DICOM
headers are read through imaging.dicom_safe (hostile bytes give one line, no
pydicom warning), and ITK's own warning printout is off while reading.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from imaging.dicom_safe import DicomFileError, describe, quiet_pydicom, read_dataset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageIdentity:
    patient_id: str | None = None
    patient_name: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    frame_of_reference_uid: str | None = None
    modality: str | None = None
    acquired_at: dt.datetime | None = None


@dataclass(frozen=True)
class LoadedImage:
    image: sitk.Image
    identity: ImageIdentity
    path: Path

    @property
    def patient_id(self) -> str | None:
        return self.identity.patient_id

    @property
    def study_uid(self) -> str | None:
        return self.identity.study_uid

    @property
    def series_uid(self) -> str | None:
        return self.identity.series_uid

    @property
    def frame_of_reference_uid(self) -> str | None:
        return self.identity.frame_of_reference_uid

    @property
    def acquired_at(self) -> dt.datetime | None:
        return self.identity.acquired_at


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line:
            return line
    return type(exc).__name__


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK prints its warnings about odd files straight to stderr; the caller reports
    a refusal in one line instead."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_image(path: str | Path) -> LoadedImage:
    """A 3D scalar image from a file or a DICOM series directory (ValueError if unusable)."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"image {p} does not exist")
    with _quiet_itk():
        if p.is_dir():
            return _read_dicom_dir(p)
        try:
            img = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            raise ValueError(f"cannot read image {p}: {_first_line(exc)}") from None
    _check_volume(img, p)
    ident = ImageIdentity()
    if _is_dicom_file(p):
        ident = _header_identity(p)
    return LoadedImage(img, ident, p)


def _header_identity(p: Path | str) -> ImageIdentity:
    """The identity in a DICOM file's header; DicomFileError (one line) if unreadable."""
    ds = read_dataset(p, stop_before_pixels=True)
    try:
        with quiet_pydicom():
            return _identity(ds)
    # Decoded values of an unexpected type (a VR altered in the file): one line.
    except Exception as exc:  # noqa: BLE001
        raise DicomFileError(f"cannot read DICOM header {p}: {describe(exc)}") from None


def _check_volume(img: sitk.Image, p: Path) -> None:
    if img.GetDimension() != 3 or min(img.GetSize()) < 2:
        raise ValueError(f"image {p} is not a 3D volume (size {img.GetSize()})")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"image {p} has {img.GetNumberOfComponentsPerPixel()} components "
                         "per voxel; a scalar CT/CBCT is needed")


def _is_dicom_file(p: Path) -> bool:
    try:
        with p.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def _read_dicom_dir(p: Path) -> LoadedImage:
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    except RuntimeError as exc:
        raise ValueError(f"cannot list DICOM series in {p}: {_first_line(exc)}") from None
    if not series:
        raise ValueError(f"no DICOM image series found in directory {p}")
    if len(series) > 1:
        raise ValueError(
            f"directory {p} holds {len(series)} DICOM series; give a directory with exactly one"
        )
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), series[0])
    if len(files) < 2:
        raise ValueError(f"DICOM series in {p} has {len(files)} slice(s); a volume needs several")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise ValueError(f"cannot read DICOM series in {p}: {_first_line(exc)}") from None
    _check_volume(img, p)
    return LoadedImage(img, _header_identity(files[0]), p)


def _text(ds: pydicom.Dataset, keyword: str) -> str | None:
    v = ds.get(keyword)
    if v is None or v == "":
        return None
    return str(v)


def _datetime(date: str | None, time: str | None) -> dt.datetime | None:
    if not date:
        return None
    try:
        d = dt.datetime.strptime(date[:8], "%Y%m%d")
    except ValueError:
        return None
    if time:
        t = time.split(".")[0]
        try:
            parsed = dt.datetime.strptime(t.ljust(6, "0")[:6], "%H%M%S")
            d = d.replace(hour=parsed.hour, minute=parsed.minute, second=parsed.second)
        except ValueError:
            pass
    return d


def _identity(ds: pydicom.Dataset) -> ImageIdentity:
    acquired = _datetime(_text(ds, "AcquisitionDate"), _text(ds, "AcquisitionTime")) or _datetime(
        _text(ds, "SeriesDate"), _text(ds, "SeriesTime")
    ) or _datetime(_text(ds, "StudyDate"), _text(ds, "StudyTime"))
    return ImageIdentity(
        patient_id=_text(ds, "PatientID"),
        patient_name=_text(ds, "PatientName"),
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        modality=_text(ds, "Modality"),
        acquired_at=acquired,
    )


def write_dicom_series(
    image: sitk.Image,
    directory: str | Path,
    identity: ImageIdentity,
    *,
    series_description: str = "",
) -> ImageIdentity:
    """Write a 3D image as a CT Image Storage series (one file per axial slice).

    Missing UIDs in `identity` are generated; the identity actually written is
    returned. Intended for tests and the simulator (it writes what a CT/CBCT
    scanner would: int16 HU with rescale 1/0, identity direction required).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction, np.eye(3), atol=1e-6):
        raise ValueError("write_dicom_series supports axis-aligned images only")
    when = identity.acquired_at or dt.datetime.now().replace(microsecond=0)
    ident = ImageIdentity(
        patient_id=identity.patient_id or "ANON",
        patient_name=identity.patient_name or "ANON^PATIENT",
        study_uid=identity.study_uid or generate_uid(),
        series_uid=identity.series_uid or generate_uid(),
        frame_of_reference_uid=identity.frame_of_reference_uid or generate_uid(),
        modality=identity.modality or "CT",
        acquired_at=when,
    )
    arr = sitk.GetArrayFromImage(image)
    arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    sx, sy, sz = image.GetSpacing()
    date, tm = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    for k in range(arr.shape[0]):
        pos = image.TransformIndexToPhysicalPoint((0, 0, k))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(out / f"slice_{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.PatientID = ident.patient_id
        ds.PatientName = ident.patient_name
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyInstanceUID = ident.study_uid
        ds.SeriesInstanceUID = ident.series_uid
        ds.FrameOfReferenceUID = ident.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.Modality = ident.modality
        ds.SeriesDescription = series_description
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = tm
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "igrt-sim"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = ""
        ds.PatientPosition = ""
        ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = f"{sz:.4f}"
        ds.SliceLocation = f"{pos[2]:.4f}"
        ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing (y), column spacing (x)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(arr.shape[1]), int(arr.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.PixelData = arr[k].tobytes()
        ds.save_as(out / f"slice_{k:04d}.dcm", enforce_file_format=True)
    log.debug("wrote %d DICOM slices to %s", arr.shape[0], out)
    return ident
