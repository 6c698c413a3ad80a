"""A drift seen by the intrafraction markers becomes a couch correction through the
geometry contract's planner (safety/drift_correction.py, issue 17 item 7)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.drift_correction import drift_correction, settled_drift
from safety.geometry import pose_transform, rot_z
from safety.policy import Verdict, VerdictPolicy
from safety.pose import Pose

ISO = (12.0, -40.0, 7.0)
TARGET = (0.0, 0.0, 0.0)
ONE = ((6.0, -4.0, 5.0),)
THREE = ((15.0, -10.0, 5.0), (-12.0, 8.0, -6.0), (4.0, 14.0, 12.0))
POSITIONS = ["HFS", "HFP", "FFS", "FFP", "HFDL", "HFDR", "FFDL", "FFDR"]


def frames(markers, shift=(0.0, 0.0, 0.0), yaw_deg=0.0, n=8, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    r = rot_z(yaw_deg)
    seen = np.asarray(markers, float) @ r.T + np.asarray(shift, float)
    return [seen + rng.normal(0.0, noise, seen.shape) for _ in range(n)]


ZERO = Pose()


def couch_delta(c, position="HFS", p_img=ZERO):
    return plan_correction(c.matrix, ISO, position, p_img, CouchModel.default(), VerdictPolicy())


@pytest.mark.parametrize("position", POSITIONS)
def test_a_drifted_marker_moves_the_couch_by_the_opposite_room_shift(position: str) -> None:
    c = drift_correction(ONE, TARGET, frames(ONE, (3.0, -2.0, 1.5)), ISO, position,
                         max_spread_mm=1.0)
    plan = couch_delta(c, position)
    d = plan.delta
    assert (d.lat, d.long, d.vert) == pytest.approx((-3.0, 2.0, -1.5), abs=1e-9)
    assert (d.yaw, d.pitch, d.roll) == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    assert c.method == "translation"


def test_the_correction_is_relative_to_the_couch_pose_when_the_drift_was_seen() -> None:
    p_img = Pose(lat=10.0, long=-20.0, vert=5.0)
    c = drift_correction(ONE, TARGET, frames(ONE, (0.0, 4.0, 0.0)), ISO, "HFS",
                         max_spread_mm=1.0)
    t = couch_delta(c, "HFS", p_img).target
    assert (t.lat, t.long, t.vert) == pytest.approx((10.0, -24.0, 5.0), abs=1e-9)


def test_three_markers_turned_about_the_target_give_a_yaw_correction() -> None:
    c = drift_correction(THREE, TARGET, frames(THREE, (1.0, 0.0, 0.0), yaw_deg=1.5), ISO,
                         "HFS", max_spread_mm=1.0)
    assert c.method == "rigid"
    assert c.rotation_deg == pytest.approx(1.5, abs=1e-9)
    d = couch_delta(c).delta
    assert d.yaw == pytest.approx(-1.5, abs=1e-6)
    assert (d.lat, d.long, d.vert) == pytest.approx((-1.0, 0.0, 0.0), abs=1e-6)


def test_two_markers_give_the_translation_of_their_mean_only() -> None:
    two = THREE[:2]
    c = settled_drift(two, TARGET, frames(two, (2.0, 1.0, 0.0), yaw_deg=2.0),
                      max_spread_mm=1.0)
    assert c.method == "translation" and c.rotation_deg == 0.0
    mean_shift = (np.asarray(frames(two, (2.0, 1.0, 0.0), yaw_deg=2.0)[0])
                  - np.asarray(two)).mean(axis=0)
    assert c.translation_mm == pytest.approx(tuple(mean_shift), abs=1e-9)


def test_markers_on_one_line_give_the_translation_and_say_why() -> None:
    line = ((0.0, 0.0, 0.0), (10.0, 0.0, 0.0), (20.0, 0.0, 0.0))
    c = settled_drift(line, TARGET, frames(line, (0.0, 3.0, 0.0)), max_spread_mm=1.0)
    assert c.method == "translation"
    assert "one line" in c.note


def test_a_misfound_marker_leaves_the_rotation_out() -> None:
    seen = frames(THREE, (0.0, 3.0, 0.0))
    for f in seen:
        f[2] += (4.0, 0.0, 0.0)  # the third marker seen 4 mm off where it should be
    c = settled_drift(THREE, TARGET, seen, max_spread_mm=5.0)
    assert c.method == "translation"
    assert "rotation not used" in c.note


def test_averaging_the_window_beats_the_noise_of_one_frame() -> None:
    c = settled_drift(THREE, TARGET, frames(THREE, (0.0, 3.0, 0.0), n=20, noise=0.3, seed=4),
                      max_spread_mm=2.0)
    assert c.translation_mm == pytest.approx((0.0, 3.0, 0.0), abs=0.2)


def test_a_target_still_moving_gives_no_correction() -> None:
    seen = [f + (0.0, 0.0, 2.0 * k) for k, f in enumerate(frames(ONE, (0.0, 4.0, 0.0), n=3))]
    with pytest.raises(ValueError, match=r"not settled: .* spreads 2\.00 mm, more than 1 mm"):
        settled_drift(ONE, TARGET, seen, max_spread_mm=1.0)


@pytest.mark.parametrize(("seen", "message"), [
    ([], "no frame"),
    ([[[math.nan, 0.0, 0.0]]], "not a finite number"),
    ([[[math.inf, 0.0, 0.0]]], "not a finite number"),
    ([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]], "holds 2 markers, the plan 1"),
])
def test_unusable_marker_positions_are_refused_in_one_line(seen, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settled_drift(ONE, TARGET, seen, max_spread_mm=1.0)


def test_a_large_drift_gets_the_same_verdict_tiers_as_any_registration() -> None:
    c = drift_correction(ONE, TARGET, frames(ONE, (0.0, 6.0, 0.0)), ISO, "HFS",
                         max_spread_mm=1.0)
    assert couch_delta(c).verdict is Verdict.NEEDS_SECOND_APPROVAL
    c = drift_correction(ONE, TARGET, frames(ONE, (0.0, 40.0, 0.0)), ISO, "HFS",
                         max_spread_mm=1.0)
    assert couch_delta(c).verdict is Verdict.REFUSED


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(POSITIONS),
       st.tuples(*[st.floats(-8.0, 8.0)] * 3), st.floats(-1.5, 1.5))
def test_the_couch_correction_brings_every_marker_back_to_its_plan(position, shift, yaw) -> None:
    """After the couch moves by the planned delta, the drifted markers are where they
    were planned: the correction undoes the drift the markers showed."""
    c = drift_correction(THREE, TARGET, frames(THREE, shift, yaw_deg=yaw, n=2), ISO, position,
                         max_spread_mm=1.0)
    plan = couch_delta(c, position)
    pivot = CouchModel.default().pivot
    move = pose_transform(plan.target, pivot) @ np.linalg.inv(pose_transform(ZERO, pivot))
    seen = np.c_[frames(THREE, shift, yaw_deg=yaw, n=1)[0], np.ones(3)]
    back = (seen @ move.T)[:, :3]
    assert np.abs(back - np.asarray(THREE)).max() < 1e-6
