"""safety.geometry against hand-worked vectors from docs/geometry.md."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geometry_oracle import couch_transform, table_matrix
from hypothesis import given
from hypothesis import strategies as st

from safety.geometry import (
    PatientPosition,
    decompose_rotation,
    orientation_matrix,
    parse_patient_position,
    pose_rotation,
    pose_transform,
    rot_x,
    rot_y,
    rot_z,
)
from safety.pose import Pose

# Planning vector (1, 2, 3) mapped by hand through each row of the contract's table.
HAND_MAPPED = {
    "HFS": (1, 3, -2),
    "HFP": (-1, 3, 2),
    "FFS": (-1, -3, -2),
    "FFP": (1, -3, 2),
    "HFDL": (-2, 3, -1),
    "HFDR": (2, 3, 1),
    "FFDL": (2, -3, -1),
    "FFDR": (-2, -3, 1),
}


def test_every_patient_position_has_a_hand_worked_vector() -> None:
    assert set(HAND_MAPPED) == {p.value for p in PatientPosition}


@pytest.mark.parametrize("position", sorted(HAND_MAPPED))
def test_orientation_maps_planning_vector_as_the_table_says(position: str) -> None:
    m = orientation_matrix(PatientPosition(position))
    np.testing.assert_array_equal(m @ np.array([1.0, 2.0, 3.0]), HAND_MAPPED[position])


@pytest.mark.parametrize("position", sorted(HAND_MAPPED))
def test_orientation_matches_the_table_text(position: str) -> None:
    np.testing.assert_array_equal(orientation_matrix(position), table_matrix(position))


@pytest.mark.parametrize("position", sorted(HAND_MAPPED))
def test_orientation_is_a_proper_rotation(position: str) -> None:
    m = orientation_matrix(position)
    np.testing.assert_array_equal(m.T @ m, np.eye(3))
    assert np.linalg.det(m) == pytest.approx(1.0)


def test_head_first_supine_patient_superior_points_to_gantry_and_anterior_up() -> None:
    m = orientation_matrix("HFS")
    np.testing.assert_array_equal(m @ [0, 0, 1], [0, 1, 0])  # DICOM +z superior -> +Y
    np.testing.assert_array_equal(m @ [0, -1, 0], [0, 0, 1])  # DICOM -y anterior -> +Z


def test_prone_patient_faces_down() -> None:
    np.testing.assert_array_equal(orientation_matrix("HFP") @ [0, -1, 0], [0, 0, -1])


def test_feet_first_patient_superior_points_away_from_gantry() -> None:
    np.testing.assert_array_equal(orientation_matrix("FFS") @ [0, 0, 1], [0, -1, 0])


def test_decubitus_left_patient_lies_on_the_left_side() -> None:
    # DICOM +x is patient left; lying on it means it points down.
    np.testing.assert_array_equal(orientation_matrix("HFDL") @ [1, 0, 0], [0, 0, -1])
    np.testing.assert_array_equal(orientation_matrix("HFDR") @ [1, 0, 0], [0, 0, 1])


def test_orientation_matrix_cannot_be_modified_by_a_caller() -> None:
    with pytest.raises(ValueError):
        orientation_matrix("HFS")[0, 0] = 5.0


def test_patient_position_parsing_accepts_lower_case_and_rejects_unknown() -> None:
    assert parse_patient_position("hfdl") is PatientPosition.HFDL
    with pytest.raises(ValueError, match="unknown patient position 'XYZ'"):
        parse_patient_position("XYZ")


def test_rotations_are_right_handed() -> None:
    np.testing.assert_allclose(rot_x(90) @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(rot_y(90) @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rot_z(90) @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_pose_rotation_applies_roll_then_pitch_then_yaw() -> None:
    # Rz(90) Rx(90) e_z: Rx(90) e_z = -e_y, then Rz(90)(-e_y) = +e_x.
    r = pose_rotation(Pose(yaw=90, pitch=90))
    np.testing.assert_allclose(r @ [0, 0, 1], [1, 0, 0], atol=1e-12)
    # Rx(90) Ry(90) e_x: Ry(90) e_x = -e_z, then Rx(90)(-e_z) = +e_y.
    r = pose_rotation(Pose(pitch=90, roll=90))
    np.testing.assert_allclose(r @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_decompose_uses_the_contract_formulas() -> None:
    yaw, pitch, roll = decompose_rotation(pose_rotation(Pose(yaw=10, pitch=-2, roll=3)))
    assert (yaw, pitch, roll) == pytest.approx((10, -2, 3), abs=1e-12)


@given(
    yaw=st.floats(-179, 179),
    pitch=st.floats(-89, 89),
    roll=st.floats(-179, 179),
)
def test_decompose_recovers_any_non_degenerate_rotation(yaw: float, pitch: float, roll: float) -> None:
    got = decompose_rotation(pose_rotation(Pose(yaw=yaw, pitch=pitch, roll=roll)))
    assert got == pytest.approx((yaw, pitch, roll), abs=1e-7)


def test_pitch_about_a_pivot_one_metre_away_moves_the_isocentre_52_mm() -> None:
    # Hand: Rx(3)(0, 0, 1000) + (0, 0, -1000) = (0, -1000 sin 3, 1000 cos 3 - 1000).
    f = pose_transform(Pose(pitch=3.0), (0.0, 0.0, -1000.0))
    moved = f @ [0, 0, 0, 1]
    np.testing.assert_allclose(moved[:3], [0.0, -52.33596, -1.37047], atol=1e-4)
    assert np.linalg.norm(moved[:3]) == pytest.approx(52.3539, abs=1e-3)  # 2000 sin(1.5 deg)


def test_roll_about_the_default_pivot_moves_the_isocentre_sideways() -> None:
    # Hand: Ry(2)(0, 0, 150) + (0, 0, -150) = (150 sin 2, 0, 150 cos 2 - 150).
    f = pose_transform(Pose(roll=2.0), (0.0, 0.0, -150.0))
    np.testing.assert_allclose((f @ [0, 0, 0, 1])[:3], [5.23492, 0.0, -0.09138], atol=1e-4)


def test_yaw_turns_about_the_isocentre_not_the_pivot() -> None:
    f = pose_transform(Pose(yaw=90.0), (0.0, 0.0, -150.0))
    np.testing.assert_allclose((f @ [100, 0, 0, 1])[:3], [0, 100, 0], atol=1e-9)


def test_translations_are_table_top_axes_turned_by_yaw() -> None:
    f = pose_transform(Pose(lat=10.0, yaw=90.0), (0.0, 0.0, -150.0))
    np.testing.assert_allclose((f @ [0, 0, 0, 1])[:3], [0, 10, 0], atol=1e-9)


pose_values = st.tuples(
    st.floats(-300, 300), st.floats(-600, 600), st.floats(-400, 200),
    st.floats(-95, 95), st.floats(-5, 5), st.floats(-5, 5),
)
pivots = st.tuples(st.floats(-100, 100), st.floats(-500, 500), st.floats(-1000, 0))


@given(pose=pose_values, pivot=pivots)
def test_pose_transform_agrees_with_an_independent_construction(pose, pivot) -> None:
    np.testing.assert_allclose(
        pose_transform(Pose(*pose), pivot), couch_transform(pose, pivot), atol=1e-9
    )


def test_pose_transform_is_rigid() -> None:
    f = pose_transform(Pose(1, 2, 3, 4, 2.5, -1.5), (0, 0, -150))
    np.testing.assert_allclose(f[:3, :3].T @ f[:3, :3], np.eye(3), atol=1e-12)
    assert math.isclose(float(np.linalg.det(f[:3, :3])), 1.0)
    np.testing.assert_array_equal(f[3], [0, 0, 0, 1])
