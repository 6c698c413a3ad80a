"""DRR geometry: a point-like sphere projects where the documented kV geometry says."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from imaging.drr import KvGeometry, drr, kv_image, read_kv
from safety.geometry import orientation_matrix

SPHERE = np.array([20.0, -30.0, 40.0])
ISO = (5.0, 5.0, 5.0)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    rows, cols = np.mgrid[: img.shape[0], : img.shape[1]]
    w = img / img.sum()
    return float((w * cols).sum()), float((w * rows).sum())


@pytest.mark.parametrize("position", ["HFS", "FFP", "HFDL"])
@pytest.mark.parametrize("angle", [0.0, 90.0])
def test_dense_sphere_projects_to_its_room_position(point_ct, angle, position) -> None:  # type: ignore[no-untyped-def]
    g = KvGeometry(angle_deg=angle, size_px=(128, 128), pixel_mm=2.4)
    image = drr(point_ct, g, iso=ISO, patient_position=position, rays="full")
    room = orientation_matrix(position) @ (SPHERE - np.array(ISO))
    expected = g.to_pixel(g.project(room[None]))[0]
    assert np.allclose(_centroid(image), expected, atol=0.1)


def test_source_at_gantry_zero_is_above_the_couch() -> None:
    g = KvGeometry(angle_deg=0.0)
    assert np.allclose(g.source(), [0, 0, g.sad_mm])
    assert np.allclose(KvGeometry(angle_deg=90.0).source(), [g.sad_mm, 0, 0])


def test_point_above_isocentre_is_magnified_on_the_detector() -> None:
    g = KvGeometry(angle_deg=0.0, sad_mm=1000, sid_mm=1500)
    uv = g.project(np.array([[10.0, 0.0, 100.0]]))[0]
    assert uv[0] == pytest.approx(10.0 * 1500 / 900)


def test_shifting_the_anatomy_moves_the_projection(point_ct) -> None:  # type: ignore[no-untyped-def]
    g = KvGeometry(angle_deg=0.0, size_px=(128, 128), pixel_mm=2.4)
    t = np.eye(4)
    t[:3, 3] = (6.0, 0.0, 0.0)  # daily = planning + 6 mm in x (HFS: room +X)
    a = _centroid(drr(point_ct, g, iso=ISO, rays="full"))
    b = _centroid(drr(point_ct, g, t, iso=ISO, rays="full"))
    room_z = -(SPHERE[1] - ISO[1])
    expected_px = 6.0 * g.sid_mm / (g.sad_mm - room_z) / g.pixel_mm
    assert b[0] - a[0] == pytest.approx(expected_px, abs=0.05)


def test_auto_ray_density_matches_one_ray_per_pixel(plan_ct) -> None:  # type: ignore[no-untyped-def]
    g = KvGeometry(angle_deg=90.0, size_px=(256, 256), pixel_mm=1.2)
    full = drr(plan_ct, g, iso=(-25, 10, -15), rays="full")
    auto = drr(plan_ct, g, iso=(-25, 10, -15), rays="auto")
    assert np.sqrt(np.mean((full - auto) ** 2)) < 0.01 * np.sqrt(np.mean(full ** 2))


def test_kv_image_round_trips_its_geometry_through_mha(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = KvGeometry(angle_deg=270.0, sad_mm=1000.0, sid_mm=1536.0, size_px=(40, 30), pixel_mm=0.8)
    path = tmp_path / "kv.mha"
    sitk.WriteImage(kv_image(np.ones((30, 40), np.float32), g), str(path))
    arr, back = read_kv(sitk.ReadImage(str(path)))
    assert back == g
    assert arr.shape == (30, 40)


def test_image_without_geometry_is_rejected_with_the_missing_key() -> None:
    img = sitk.Image(8, 8, sitk.sitkFloat32)
    with pytest.raises(ValueError, match="IGRT_SAD"):
        read_kv(img)


def test_detector_closer_than_isocentre_is_rejected() -> None:
    with pytest.raises(ValueError, match="source-to-image distance 900"):
        KvGeometry(sad_mm=1000, sid_mm=900)
