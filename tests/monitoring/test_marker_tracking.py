"""Marker tracking in stereo kV frames (imaging/tracking.py) on synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.drr import KvGeometry
from imaging.tracking import KvFrame, MarkerTracker
from sim.intrafraction import COMPACT_PAIR, MARKERS_MM, TARGET_MM, KvFrameRenderer, make_tracker


@pytest.fixture(scope="module")
def renderer() -> KvFrameRenderer:
    return KvFrameRenderer(COMPACT_PAIR, MARKERS_MM, seed=3)


@pytest.fixture(scope="module")
def tracker() -> MarkerTracker:
    return make_tracker(COMPACT_PAIR)


def frame(images: tuple[np.ndarray, ...]) -> KvFrame:
    return KvFrame(1, 0.0, images)


def test_target_position_is_found_within_half_a_millimetre(
    renderer: KvFrameRenderer, tracker: MarkerTracker
) -> None:
    rng = np.random.default_rng(11)
    for _ in range(30):
        shift = rng.uniform(-10, 10, 3)
        est = tracker.estimate(frame(renderer.render(shift)))
        assert est.position_mm is not None, est.reason
        assert np.linalg.norm(est.position_mm - (np.asarray(TARGET_MM) + shift)) < 0.5


def test_full_size_detector_pair_is_accurate_too() -> None:
    geoms = (KvGeometry(angle_deg=45.0), KvGeometry(angle_deg=-45.0))  # oblique stereo
    r = KvFrameRenderer(geoms, MARKERS_MM, seed=4)
    est = make_tracker(geoms).estimate(frame(r.render((3.0, -2.0, 4.0))))
    assert est.position_mm is not None
    assert np.linalg.norm(est.position_mm - (3.0, -2.0, 4.0)) < 0.3


def test_hidden_marker_gives_no_estimate(renderer: KvFrameRenderer, tracker: MarkerTracker
                                         ) -> None:
    for _ in range(10):
        est = tracker.estimate(frame(renderer.render((0.0, 0.0, 0.0), marker_visible=False)))
        assert not est.valid and "not found" in est.reason or "edge" in est.reason


def test_marker_beyond_the_search_region_gives_no_estimate(
    renderer: KvFrameRenderer, tracker: MarkerTracker
) -> None:
    est = tracker.estimate(frame(renderer.render((30.0, 0.0, 0.0))))
    assert not est.valid


def test_views_from_different_moments_are_refused_by_the_ray_check(
    renderer: KvFrameRenderer, tracker: MarkerTracker
) -> None:
    a = renderer.render((0.0, 0.0, 0.0))
    b = renderer.render((0.0, 6.0, 0.0))  # Y is seen by both views: inconsistent pair
    est = tracker.estimate(frame((a[0], b[1])))
    assert not est.valid and "rays miss" in est.reason


def test_wrong_image_count_or_size_gives_a_one_line_reason(tracker: MarkerTracker) -> None:
    est = tracker.estimate(frame((np.zeros((128, 128), np.float32),)))
    assert not est.valid and est.reason == "frame 1 has 1 images, expected 2"
    est = tracker.estimate(frame((np.zeros((10, 10)), np.zeros((10, 10)))))
    assert not est.valid and "expected (128, 128) pixels" in est.reason


def test_non_finite_pixels_give_no_estimate(renderer: KvFrameRenderer, tracker: MarkerTracker
                                            ) -> None:
    a, b = renderer.render((0.0, 0.0, 0.0))
    a = a.copy()
    a[:, :] = np.nan
    assert not tracker.estimate(frame((a, b))).valid


def test_two_markers_are_tracked_and_averaged() -> None:
    markers = ((-25.0, -20.0, -20.0), (25.0, 20.0, 20.0))
    r = KvFrameRenderer(COMPACT_PAIR, markers, seed=5)
    t = MarkerTracker(COMPACT_PAIR, markers, TARGET_MM, search_radius_mm=8.0)
    est = t.estimate(frame(r.render((2.0, -1.0, 1.5))))
    assert est.position_mm is not None and len(est.markers_mm) == 2
    assert np.linalg.norm(est.position_mm - (2.0, -1.0, 1.5)) < 0.5


def test_markers_too_close_for_their_search_regions_are_refused() -> None:
    with pytest.raises(ValueError, match="markers 0 and 1 project"):
        MarkerTracker(COMPACT_PAIR, ((0.0, 0.0, 0.0), (5.0, 0.0, 0.0)), TARGET_MM)


def test_a_single_view_cannot_triangulate() -> None:
    with pytest.raises(ValueError, match="at least 2 kV views"):
        MarkerTracker(COMPACT_PAIR[:1], MARKERS_MM, TARGET_MM)
