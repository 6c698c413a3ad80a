"""What igrt keeps of a received instance (imaging/dicom_instances.py): each
refusal carries the Storage SCP failure status and names the attribute."""

from __future__ import annotations

import pytest

from imaging.dicom_instances import (
    CT_IMAGE,
    RT_PLAN,
    RT_STRUCTURE_SET,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH,
    STATUS_SOP_CLASS_NOT_SUPPORTED,
    InstanceRefused,
    check_instance,
)

from .builders import PATIENT, ct_slice, rt_plan, rt_structures


def _refused(ds: object, sent_as: str) -> InstanceRefused:
    with pytest.raises(InstanceRefused) as err:
        check_instance(ds, sent_as)  # type: ignore[arg-type]
    return err.value


def test_a_ct_slice_is_kept_with_its_identifiers() -> None:
    ds = ct_slice()
    facts = check_instance(ds, CT_IMAGE)
    assert (facts.patient_id, facts.series_uid, facts.frame_of_reference_uid) == (
        PATIENT, ds.SeriesInstanceUID, ds.FrameOfReferenceUID)


def test_a_plan_and_a_structure_set_are_kept() -> None:
    assert check_instance(rt_plan(), RT_PLAN).modality == "RTPLAN"
    s = rt_structures()
    assert check_instance(s, RT_STRUCTURE_SET).frame_of_reference_uid == \
        s.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID


def test_a_sop_class_igrt_does_not_store_is_refused_as_not_supported() -> None:
    err = _refused(ct_slice(), "1.2.840.10008.5.1.4.1.1.4")  # MR Image Storage
    assert err.status == STATUS_SOP_CLASS_NOT_SUPPORTED


def test_an_instance_sent_as_another_class_does_not_match() -> None:
    err = _refused(ct_slice(), RT_PLAN)
    assert err.status == STATUS_DATASET_DOES_NOT_MATCH and "SOPClassUID" in err.reason


def test_a_ct_with_another_modality_does_not_match() -> None:
    ds = ct_slice()
    ds.Modality = "MR"
    err = _refused(ds, CT_IMAGE)
    assert err.status == STATUS_DATASET_DOES_NOT_MATCH and "'MR'" in err.reason


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_image_position_is_refused(value: str) -> None:
    ds = ct_slice()
    ds.ImagePositionPatient = [0.0, value, 0.0]
    err = _refused(ds, CT_IMAGE)
    assert err.status == STATUS_CANNOT_UNDERSTAND and "ImagePositionPatient" in err.reason


def test_an_oblique_non_orthogonal_orientation_is_refused() -> None:
    ds = ct_slice()
    ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.866, 0]
    assert "not orthogonal" in _refused(ds, CT_IMAGE).reason


def test_pixel_data_shorter_than_its_rows_and_columns_is_refused() -> None:
    ds = ct_slice()
    ds.PixelData = b"\0\0" * 10
    assert "PixelData holds 20 bytes" in _refused(ds, CT_IMAGE).reason


def test_a_malformed_uid_is_refused_naming_it() -> None:
    ds = ct_slice()
    ds.SeriesInstanceUID = "1.2.03.4"
    assert "SeriesInstanceUID" in _refused(ds, CT_IMAGE).reason


def test_an_instance_without_a_patient_is_refused() -> None:
    ds = ct_slice()
    ds.PatientID = ""
    assert "PatientID" in _refused(ds, CT_IMAGE).reason


def test_a_plan_with_a_non_finite_isocentre_is_refused() -> None:
    err = _refused(rt_plan(isocentre=(0.0, float("nan"), 0.0)), RT_PLAN)
    assert "IsocenterPosition" in err.reason


def test_a_plan_without_beams_is_refused() -> None:
    ds = rt_plan()
    del ds.BeamSequence
    assert "BeamSequence" in _refused(ds, RT_PLAN).reason


def test_a_structure_set_without_a_frame_of_reference_is_refused() -> None:
    ds = rt_structures()
    del ds.ReferencedFrameOfReferenceSequence
    assert "ReferencedFrameOfReferenceSequence" in _refused(ds, RT_STRUCTURE_SET).reason
