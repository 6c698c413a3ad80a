"""DICOM Spatial Registration: round trip, direction, validity, refusals."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from imaging.dicom_reg import (
    SPATIAL_REGISTRATION_SOP_CLASS,
    read_registration,
    read_registration_matrix,
    write_registration,
)
from imaging.volumes import ImageIdentity, write_dicom_series
from sim.imager import rigid_matrix

PLAN_FOR = "1.2.826.0.1.3680043.8.498.1001"
DAILY_FOR = "1.2.826.0.1.3680043.8.498.1002"
T = rigid_matrix((-25.0, 10.0, -15.0), (3.25, -4.5, 7.125), (1.3, -2.1, 2.7))


def _write(path: Path, matrix: np.ndarray = T) -> Path:
    write_registration(path, matrix, patient_id="PAT-1", patient_name="DOE^JANE",
                       fixed_frame_of_reference_uid=PLAN_FOR,
                       moving_frame_of_reference_uid=DAILY_FOR)
    return path


def test_written_registration_reads_back_the_same_matrix(tmp_path: Path) -> None:
    rec = read_registration(_write(tmp_path / "reg.dcm"))
    assert np.abs(rec.matrix - T).max() < 1e-6
    assert rec.patient_id == "PAT-1"
    assert rec.fixed_frame_of_reference_uid == PLAN_FOR
    assert rec.moving_frame_of_reference_uid == DAILY_FOR
    assert rec.acquired_at is not None


def test_moving_item_stores_the_inverse_of_the_itk_matrix(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_write(tmp_path / "reg.dcm"))
    items = {str(it.FrameOfReferenceUID): it for it in ds.RegistrationSequence}

    def matrix(item: Dataset) -> np.ndarray:
        ms = item.MatrixRegistrationSequence[0].MatrixSequence[0]
        assert ms.FrameOfReferenceTransformationMatrixType == "RIGID"
        return np.array([float(v) for v in ms.FrameOfReferenceTransformationMatrix]).reshape(4, 4)

    assert np.allclose(matrix(items[PLAN_FOR]), np.eye(4))
    assert np.allclose(matrix(items[DAILY_FOR]), np.linalg.inv(T), atol=1e-9)
    assert ds.SOPClassUID == SPATIAL_REGISTRATION_SOP_CLASS
    assert ds.FrameOfReferenceUID == PLAN_FOR


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
def test_written_registration_passes_dciodvfy(tmp_path: Path) -> None:
    proc = subprocess.run(["dciodvfy", str(_write(tmp_path / "reg.dcm"))],
                          check=False, capture_output=True, text=True, timeout=60)
    report = proc.stdout + proc.stderr
    assert "Error" not in report, report


def _vendor_reg(path: Path, items: list[tuple[str, np.ndarray]], matrix_type: str = "RIGID",
                reg_for: str = PLAN_FOR, sop_class: str = SPATIAL_REGISTRATION_SOP_CLASS) -> Path:
    """A REG built by hand from the standard, the way another vendor's writer would."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = "PAT-1"
    ds.PatientName = "DOE^JANE"
    ds.Modality = "REG"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = reg_for
    ds.ContentDate, ds.ContentTime = "20250102", "083000"
    seq = []
    for for_uid, m in items:
        ms = Dataset()
        ms.FrameOfReferenceTransformationMatrixType = matrix_type
        ms.FrameOfReferenceTransformationMatrix = [f"{v:.10g}" for v in m.ravel()]
        mrs = Dataset()
        mrs.MatrixSequence = Sequence([ms])
        item = Dataset()
        item.FrameOfReferenceUID = for_uid
        item.MatrixRegistrationSequence = Sequence([mrs])
        seq.append(item)
    ds.RegistrationSequence = Sequence(seq)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_vendor_registration_with_fixed_item_second_is_read_in_the_right_direction(
    tmp_path: Path,
) -> None:
    path = _vendor_reg(tmp_path / "v.dcm", [(DAILY_FOR, np.linalg.inv(T)), (PLAN_FOR, np.eye(4))])
    assert np.abs(read_registration_matrix(path) - T).max() < 1e-6


def test_vendor_registration_with_non_identity_fixed_item_is_composed(tmp_path: Path) -> None:
    # Registration frame differs from both images: each item maps its image into it.
    shared = rigid_matrix((0, 0, 0), (100.0, -50.0, 20.0), (0.0, 0.0, 90.0))
    path = _vendor_reg(
        tmp_path / "v.dcm",
        [(PLAN_FOR, shared), (DAILY_FOR, shared @ np.linalg.inv(T))],
        reg_for="1.2.3.999",
    )
    rec = read_registration(path, fixed_frame_of_reference_uid=PLAN_FOR)
    assert np.abs(rec.matrix - T).max() < 1e-6


@pytest.mark.skipif(shutil.which("plastimatch") is None, reason="plastimatch not installed")
def test_plastimatch_registration_is_read_in_the_right_direction(tmp_path: Path) -> None:
    img = sitk.Image([8, 8, 4], sitk.sitkInt16)
    img.SetSpacing((2.0, 2.0, 3.0))
    write_dicom_series(img, tmp_path / "fixed", ImageIdentity(
        patient_id="PAT-1", frame_of_reference_uid=PLAN_FOR))
    write_dicom_series(img, tmp_path / "moving", ImageIdentity(
        patient_id="PAT-1", frame_of_reference_uid=DAILY_FOR))
    # An ITK transform file maps fixed points to moving points, like igrt's T.
    tx = sitk.AffineTransform(3)
    tx.SetMatrix([float(v) for v in T[:3, :3].ravel()])
    tx.SetTranslation([float(v) for v in T[:3, 3]])
    sitk.WriteTransform(tx, str(tmp_path / "xf.tfm"))
    subprocess.run(
        ["plastimatch", "xf-convert", "--input", str(tmp_path / "xf.tfm"),
         "--output-dicom", str(tmp_path / "out"), "--fixed-rcs", str(tmp_path / "fixed"),
         "--moving-rcs", str(tmp_path / "moving")],
        check=True, capture_output=True, timeout=120,
    )
    (reg,) = list((tmp_path / "out").glob("*.dcm"))
    rec = read_registration(reg, fixed_frame_of_reference_uid=PLAN_FOR)
    assert rec.moving_frame_of_reference_uid == DAILY_FOR
    assert np.abs(rec.matrix - T).max() < 1e-4  # plastimatch writes 6 decimals


def _one_line_error(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        read_registration(path)
    assert "\n" not in str(info.value)


def test_affine_matrix_type_is_refused(tmp_path: Path) -> None:
    path = _vendor_reg(tmp_path / "v.dcm", [(PLAN_FOR, np.eye(4)), (DAILY_FOR, T)],
                       matrix_type="AFFINE")
    _one_line_error(path, "AFFINE matrix type")


def test_scaled_matrix_labelled_rigid_is_refused(tmp_path: Path) -> None:
    scaled = T.copy()
    scaled[:3, :3] *= 1.05
    path = _vendor_reg(tmp_path / "v.dcm", [(PLAN_FOR, np.eye(4)), (DAILY_FOR, scaled)])
    _one_line_error(path, "not rigid")


def test_registration_with_a_missing_item_is_refused(tmp_path: Path) -> None:
    path = _vendor_reg(tmp_path / "v.dcm", [(PLAN_FOR, np.eye(4))])
    _one_line_error(path, "expected 2 items")


def test_deformable_registration_is_refused(tmp_path: Path) -> None:
    path = _vendor_reg(tmp_path / "v.dcm", [(PLAN_FOR, np.eye(4)), (DAILY_FOR, T)],
                       sop_class="1.2.840.10008.5.1.4.1.1.66.3")
    _one_line_error(path, "deformable")


def test_other_dicom_object_is_refused(tmp_path: Path) -> None:
    img = sitk.Image([4, 4, 2], sitk.sitkInt16)
    write_dicom_series(img, tmp_path / "ct", ImageIdentity(patient_id="X"))
    _one_line_error(next((tmp_path / "ct").glob("*.dcm")), "not a DICOM Spatial Registration")


def test_non_dicom_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not dicom at all")
    _one_line_error(path, "cannot read DICOM file")


def test_ambiguous_items_are_refused(tmp_path: Path) -> None:
    path = _vendor_reg(tmp_path / "v.dcm", [(DAILY_FOR, T), (DAILY_FOR, np.linalg.inv(T))],
                       reg_for="1.2.3.999")
    _one_line_error(path, "cannot tell the fixed item")


def test_writing_a_non_rigid_matrix_is_refused(tmp_path: Path) -> None:
    shear = np.eye(4)
    shear[0, 1] = 0.1
    with pytest.raises(ValueError, match="not rigid"):
        _write(tmp_path / "reg.dcm", shear)
    assert not (tmp_path / "reg.dcm").exists()
