"""Image intake: files and DICOM series with their identity; one-line errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.volumes import ImageIdentity, read_image, write_dicom_series


def _small() -> sitk.Image:
    arr = (np.arange(16 * 12 * 6).reshape(6, 12, 16) % 700 - 300).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.5, 1.25, 2.0))
    img.SetOrigin((-12.0, 30.5, -7.0))
    return img


def test_dicom_series_reads_back_geometry_voxels_and_identity(tmp_path: Path) -> None:
    when = dt.datetime(2025, 3, 4, 8, 15, 0)
    written = write_dicom_series(_small(), tmp_path / "ct", ImageIdentity(
        patient_id="PAT-7", frame_of_reference_uid="1.2.3.4.5", acquired_at=when))
    loaded = read_image(tmp_path / "ct")
    assert loaded.patient_id == "PAT-7"
    assert loaded.frame_of_reference_uid == "1.2.3.4.5"
    assert loaded.series_uid == written.series_uid and loaded.study_uid == written.study_uid
    assert loaded.acquired_at == when
    assert np.allclose(loaded.image.GetSpacing(), (1.5, 1.25, 2.0))
    assert np.allclose(loaded.image.GetOrigin(), (-12.0, 30.5, -7.0))
    assert np.array_equal(sitk.GetArrayViewFromImage(loaded.image),
                          sitk.GetArrayViewFromImage(_small()))


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz", ".nrrd"])
def test_image_files_load_without_dicom_identity(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"vol{suffix}"
    sitk.WriteImage(_small(), str(path))
    loaded = read_image(path)
    assert loaded.image.GetSize() == (16, 12, 6)
    assert loaded.patient_id is None and loaded.frame_of_reference_uid is None


def _one_line(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        read_image(path)
    assert "\n" not in str(info.value)


def test_missing_path_is_a_one_line_error(tmp_path: Path) -> None:
    _one_line(tmp_path / "nope.mha", "does not exist")


def test_directory_without_dicom_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hello")
    _one_line(tmp_path, "no DICOM image series")


def test_unreadable_file_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.mha"
    path.write_bytes(b"\x00garbage" * 10)
    _one_line(path, "cannot read image")


def test_two_dimensional_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.Image([8, 8], sitk.sitkInt16), str(path))
    _one_line(path, "not a 3D volume")


def test_directory_with_two_series_is_refused(tmp_path: Path) -> None:
    write_dicom_series(_small(), tmp_path / "both", ImageIdentity(patient_id="A"))
    write_dicom_series(_small(), tmp_path / "other", ImageIdentity(patient_id="A"))
    for f in (tmp_path / "other").iterdir():
        f.rename(tmp_path / "both" / f"b_{f.name}")
    _one_line(tmp_path / "both", "2 DICOM series")
