"""The clinic around a simulated room, over DICOM: a planning system that sends
the plan, its structure set and its planning CT, and a CBCT workstation that
sends each daily image to igrt's storage service (docs/dicom.md).

The planning system writes what a treatment planning system exports: a CT
series (imaging/volumes.py:write_dicom_series), an RT Structure Set drawn on
it (a PTV box about the isocentre) and an RT Plan whose beams share that
isocentre and whose patient setup gives the position. They reach igrt the way
a clinic sends them: through a PACS (Orthanc, sim/pacs.py) that C-STOREs them
on, or straight from a DICOM peer; the CBCT goes with dcmtk's `storescu`,
a third-party client, where it is installed.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import SimpleITK as sitk
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    RTPlanStorage,
    RTStructureSetStorage,
)

from imaging.volumes import ImageIdentity, write_dicom_series

TPS_AE = "SIM_TPS"
CBCT_AE = "SIM_CBCT"


class ClinicError(RuntimeError):
    """A simulated clinic system could not send (one line)."""


@dataclass(frozen=True, slots=True)
class PlannedPatient:
    """What the planning system exported for one patient."""

    patient_id: str
    plan_uid: str
    frame_of_reference_uid: str
    ct_series_uid: str
    structure_set_uid: str
    isocentre: tuple[float, float, float]
    patient_position: str
    files: tuple[Path, ...]


def _document(sop_class: str, modality: str, ct: ImageIdentity) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = ct.patient_id
    ds.PatientName = ct.patient_name
    ds.StudyInstanceUID = ct.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = ct.frame_of_reference_uid
    ds.Modality = modality
    ds.Manufacturer = "igrt-sim planning system"
    return ds


def _structure_set(ct: ImageIdentity, iso: tuple[float, float, float],
                   half_mm: float) -> FileDataset:
    ds = _document(str(RTStructureSetStorage), "RTSTRUCT", ct)
    ds.StructureSetLabel = "PLAN"
    series = Dataset()
    series.SeriesInstanceUID = ct.series_uid
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
    study.ReferencedSOPInstanceUID = ct.study_uid
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = ct.frame_of_reference_uid
    frame.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame])
    roi = Dataset()
    roi.ROINumber = 1
    roi.ROIName = "PTV"
    roi.ReferencedFrameOfReferenceUID = ct.frame_of_reference_uid
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence = Sequence([roi])
    contours = []
    x, y, z0 = iso
    steps = 9
    for k in range(steps):
        z = z0 - half_mm + 2 * half_mm * k / (steps - 1)
        c = Dataset()
        c.ContourGeometricType = "CLOSED_PLANAR"
        c.NumberOfContourPoints = 4
        c.ContourData = [x - half_mm, y - half_mm, z, x + half_mm, y - half_mm, z,
                         x + half_mm, y + half_mm, z, x - half_mm, y + half_mm, z]
        contours.append(c)
    item = Dataset()
    item.ReferencedROINumber = 1
    item.ROIDisplayColor = [255, 0, 0]
    item.ContourSequence = Sequence(contours)
    ds.ROIContourSequence = Sequence([item])
    return ds


def _plan(ct: ImageIdentity, iso: tuple[float, float, float], position: str,
          structure_set_uid: str) -> FileDataset:
    ds = _document(str(RTPlanStorage), "RTPLAN", ct)
    ds.RTPlanLabel = "SIM PLAN"
    ds.RTPlanGeometry = "PATIENT"
    setup = Dataset()
    setup.PatientSetupNumber = 1
    setup.PatientPosition = position
    ds.PatientSetupSequence = Sequence([setup])
    beams = []
    for number, (name, gantry) in enumerate((("AP", 0.0), ("LAT", 90.0)), start=1):
        cp = Dataset()
        cp.ControlPointIndex = 0
        cp.GantryAngle = gantry
        cp.IsocenterPosition = [f"{v:.2f}" for v in iso]
        beam = Dataset()
        beam.BeamNumber = number
        beam.BeamName = name
        beam.BeamType = "STATIC"
        beam.RadiationType = "PHOTON"
        beam.TreatmentDeliveryType = "TREATMENT"
        beam.ReferencedPatientSetupNumber = 1
        beam.NumberOfControlPoints = 1
        beam.ControlPointSequence = Sequence([cp])
        beams.append(beam)
    ds.BeamSequence = Sequence(beams)
    ref = Dataset()
    ref.ReferencedSOPClassUID = str(RTStructureSetStorage)
    ref.ReferencedSOPInstanceUID = structure_set_uid
    ds.ReferencedStructureSetSequence = Sequence([ref])
    return ds


def export_plan(out: Path, planning_ct: sitk.Image, patient_id: str,
                isocentre: tuple[float, float, float], patient_position: str = "HFS",
                ptv_half_mm: float = 25.0) -> PlannedPatient:
    """Write what the planning system exports: the CT series, the structure set
    and the plan, as Part 10 files under `out`."""
    ct = write_dicom_series(planning_ct, out / "ct", ImageIdentity(
        patient_id=patient_id, patient_name="DEMO^PATIENT", modality="CT"),
        series_description="planning CT")
    structures = _structure_set(ct, isocentre, ptv_half_mm)
    plan = _plan(ct, isocentre, patient_position, str(structures.SOPInstanceUID))
    files = sorted((out / "ct").glob("*.dcm"))
    for name, ds in (("structures.dcm", structures), ("plan.dcm", plan)):
        ds.save_as(out / name, enforce_file_format=True)
        files.append(out / name)
    assert ct.frame_of_reference_uid is not None and ct.series_uid is not None
    return PlannedPatient(patient_id, str(plan.SOPInstanceUID), ct.frame_of_reference_uid,
                          ct.series_uid, str(structures.SOPInstanceUID), isocentre,
                          patient_position, tuple(files))


def export_daily_image(out: Path, cbct: sitk.Image, patient_id: str) -> ImageIdentity:
    """What the CBCT workstation writes: the reconstructed volume as a CT series in
    the machine's own frame of reference."""
    return write_dicom_series(cbct, out, ImageIdentity(
        patient_id=patient_id, patient_name="DEMO^PATIENT", modality="CT"),
        series_description="daily CBCT")


def storescu_path() -> str | None:
    return shutil.which("storescu")


def send_with_storescu(files: Iterable[Path], host: str, port: int, called_ae: str,
                       calling_ae: str) -> None:
    """dcmtk's storescu, as a clinic's imaging workstation would send."""
    exe = storescu_path()
    if exe is None:
        raise ClinicError("storescu (Debian dcmtk) is not installed: run make setup")
    done = subprocess.run([exe, "-aet", calling_ae, "-aec", called_ae, host, str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ClinicError(f"storescu exited {done.returncode}: {last[0]}")


def send_with_pynetdicom(files: Iterable[Path], host: str, port: int, called_ae: str,
                         calling_ae: str) -> None:
    """A DICOM peer written with pynetdicom, where no third-party client is installed."""
    import pydicom

    datasets = [pydicom.dcmread(p) for p in files]
    ae = AE(ae_title=calling_ae)
    for sop in (CTImageStorage, RTPlanStorage, RTStructureSetStorage):
        ae.add_requested_context(sop, ExplicitVRLittleEndian)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise ClinicError(f"{called_ae} at {host}:{port} did not accept an association "
                          f"from {calling_ae}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code != 0x0000:
                raise ClinicError(f"{called_ae} answered C-STORE of {ds.SOPInstanceUID} with "
                                  f"status {code if code is None else hex(code)}")
    finally:
        assoc.release()


def send(files: Iterable[Path], host: str, port: int, called_ae: str, calling_ae: str) -> str:
    """Send with storescu where installed, else pynetdicom; which one was used."""
    files = list(files)
    if storescu_path() is not None:
        send_with_storescu(files, host, port, called_ae, calling_ae)
        return "storescu"
    send_with_pynetdicom(files, host, port, called_ae, calling_ae)
    return "pynetdicom"
