"""Path checks of couch moves: allowed moves really keep the margin; refusals say why.

Room: the shipped default (safety/collision_config.py). Numbers worked out by
hand in the comments use: collimator face 400 mm from the isocentre (600 mm
across), couch top 530 mm wide with its upper surface at z = -150 and 50 mm
thick, patient box 500 mm wide and 250 mm tall (top at z = +100), raised arms
640 mm wide and 300 mm tall, kV panel and EPID faces 500 mm from the isocentre.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safety.collision import CouchMotion, PathCheck, check_path
from safety.collision_config import BodyBox, PatientEnvelope
from safety.collision_model import COUCH_TOP, PATIENT, PATIENT_ARMS, Arms, ArmState
from safety.collision_scene import CollisionModel
from safety.pose import Pose

MODEL = CollisionModel.default()
BOX = PatientEnvelope()
DENSE = 2000
MARGIN = 50.0
KV_PANEL_OUT = Arms(kv_panel=ArmState.EXTENDED)


PARKED = Arms()


def check(start: Pose, end: Pose, gantry: float, arms: Arms = PARKED,
          patient: PatientEnvelope | None = BOX, motion: CouchMotion = CouchMotion.LINEAR,
          margin: float = MARGIN) -> PathCheck:
    return check_path(start, end, gantry, arms, patient, margin, motion=motion)


# ------------------------------------------------------------------ the property


def _dense_poses(start: Pose, end: Pose, motion: CouchMotion, seed: int) -> list[Pose]:
    s, e = start.as_tuple(), end.as_tuple()
    if motion is CouchMotion.LINEAR:
        return [Pose(*(a + k / (DENSE - 1) * (b - a) for a, b in zip(s, e)))
                for k in range(DENSE)]
    # Any pose with each axis between its start and end value: the corners (every
    # order the axes could finish in ends at one) and random poses inside.
    rng = random.Random(seed)
    corners = [Pose(*(b if (m >> i) & 1 else a for i, (a, b) in enumerate(zip(s, e))))
               for m in range(64)]
    return corners + [Pose(*(rng.uniform(min(a, b), max(a, b)) for a, b in zip(s, e)))
                      for _ in range(DENSE - len(corners))]


near = st.floats(-150, 150)
moves = st.tuples(
    st.builds(Pose, near, near, st.floats(-100, 100), st.floats(-20, 20), st.floats(-2, 2),
              st.floats(-2, 2)),
    st.tuples(st.floats(-120, 120), st.floats(-120, 120), st.floats(-120, 120),
              st.floats(-10, 10), st.floats(-2, 2), st.floats(-2, 2)),
    # Gantry angles near the lateral and oblique ones, where the couch comes close.
    st.one_of(st.floats(0, 359.99), st.sampled_from([45.0, 90.0, 135.0, 225.0, 270.0, 315.0])),
    st.sampled_from([Arms(), Arms.extended(), KV_PANEL_OUT]),
    st.sampled_from([BOX, PatientEnvelope(arms="up"),
                     PatientEnvelope.from_mapping({"body": {"shape": "cylinder"}})]),
)


@pytest.mark.parametrize("motion", list(CouchMotion))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(move=moves, seed=st.integers(0, 2**16))
def test_an_allowed_move_keeps_the_margin_at_every_densely_sampled_pose(
        motion: CouchMotion, move: tuple, seed: int) -> None:
    start, delta, gantry, arms, patient = move
    end = Pose(*(a + d for a, d in zip(start.as_tuple(), delta)))
    result = check(start, end, gantry, arms, patient, motion)
    if not result.allowed:
        return
    scene = MODEL.scene(gantry, arms, patient)
    lowest = min(scene.closest(p).distance_mm
                 for p in _dense_poses(start, end, motion, seed))
    assert lowest >= MARGIN
    assert result.lower_bound_mm <= lowest + 1e-6  # the proven bound is a bound


def test_a_move_ending_just_above_the_margin_is_allowed_and_just_below_refused() -> None:
    # A move that ends 1 mm above the margin is allowed, and one 1 mm below refused
    # (gantry 90: couch top edge at x = 265 + lat against the collimator face at 400).
    assert check(Pose(), Pose(lat=84.0), 90.0).allowed  # 400 - 349 = 51 mm
    assert not check(Pose(), Pose(lat=86.0), 90.0).allowed  # 49 mm


# ------------------------------------------------------------------ hand-checked table


@pytest.mark.parametrize("motion", list(CouchMotion))
def test_couch_raised_under_the_head_at_gantry_0_is_refused_for_a_tall_patient(
        motion: CouchMotion) -> None:
    # A 330 mm tall patient, couch raised 200 mm: top at -150 + 330 + 200 = 380, the
    # collimator face at 400: 20 mm at the end of the move.
    tall = PatientEnvelope(body=BodyBox(height_mm=330.0))
    r = check(Pose(), Pose(vert=200.0), 0.0, patient=tall, motion=motion)
    assert not r.allowed
    assert r.min_clearance_mm == pytest.approx(20.0, abs=1e-6)
    assert r.reason == ("patient and collimator: clearance 20.0 mm below the 50 mm margin "
                        "at 100 % of the move")


def test_couch_raised_under_the_head_at_gantry_0_is_allowed_for_the_default_patient() -> None:
    # Default patient top at 100 + 200 = 300: 100 mm from the collimator face.
    r = check(Pose(), Pose(vert=200.0), 0.0)
    assert r.allowed and r.reason == ""
    assert (r.min_clearance_mm, r.objects, r.fraction) == (
        pytest.approx(100.0, abs=1e-6), (PATIENT, "collimator"), 1.0)


def test_couch_moving_toward_the_head_at_gantry_180_is_refused() -> None:
    # At gantry 180 the head is under the couch: lowering the couch 400 mm takes its
    # underside (z = -200 - 400) past the collimator face at z = -400.
    r = check(Pose(), Pose(vert=-400.0), 180.0)
    assert not r.allowed
    assert (r.min_clearance_mm, r.objects) == (0.0, (COUCH_TOP, "collimator"))


def test_couch_raised_at_gantry_180_moves_away_from_the_head() -> None:
    # Underside from z = -200 up to z = 0: the least clearance is at the start, 200 mm.
    r = check(Pose(), Pose(vert=200.0), 180.0)
    assert r.allowed
    assert (r.min_clearance_mm, r.fraction) == (pytest.approx(200.0, abs=1e-6), 0.0)


@pytest.mark.parametrize("motion", list(CouchMotion))
def test_lateral_shift_into_the_extended_kv_panel_is_refused(motion: CouchMotion) -> None:
    # Gantry 0: the kV panel (gantry + 270) is at -X, face at x = -500. Couch top
    # edge at -265 - 200 = -465: 35 mm; the patient's side at -450: 50 mm.
    r = check(Pose(), Pose(lat=-200.0), 0.0, arms=KV_PANEL_OUT, motion=motion)
    assert not r.allowed
    assert r.reason == ("couch top and kV panel: clearance 35.0 mm below the 50 mm margin "
                        "at 100 % of the move")


def test_lateral_shift_with_the_kv_panel_extended_at_gantry_90_is_allowed() -> None:
    # Gantry 90: the panel is above the couch (face at z = 500, 400 mm over the
    # patient) and the collimator at +X; shifting 200 mm to -X only opens the gap to
    # the collimator, whose least value is the start's 400 - 265 = 135 mm.
    r = check(Pose(), Pose(lat=-200.0), 90.0, arms=KV_PANEL_OUT)
    assert r.allowed
    assert (r.min_clearance_mm, r.objects, r.fraction) == (
        pytest.approx(135.0, abs=1e-6), (COUCH_TOP, "collimator"), 0.0)


@pytest.mark.parametrize("motion", list(CouchMotion))
def test_large_yaw_into_a_lateral_gantry_is_refused(motion: CouchMotion) -> None:
    # Gantry 90: at yaw 90 the couch top lies along X from -700 to 1300 mm, straight
    # through the collimator (x 400..650): clearance 0.
    r = check(Pose(), Pose(yaw=90.0), 90.0, motion=motion)
    assert not r.allowed
    assert r.min_clearance_mm == 0.0 and r.objects[0] == COUCH_TOP


def test_large_yaw_under_a_gantry_at_0_is_allowed() -> None:
    # Gantry 0: yaw turns the couch about the vertical through the isocentre, the
    # heights do not change: 300 mm between patient top and collimator face throughout.
    r = check(Pose(), Pose(yaw=90.0), 0.0, motion=CouchMotion.PER_AXIS)
    assert r.allowed
    assert r.min_clearance_mm == pytest.approx(300.0, abs=1e-6)
    assert r.lower_bound_mm >= MARGIN


def test_raised_arms_reach_the_collimator_where_arms_down_do_not() -> None:
    # Gantry 90, couch 40 mm toward the head. Arms down: couch top edge at 305 ->
    # 95 mm, patient side at 290 -> 110 mm: allowed. Arms up: the arms' side at
    # 320 + 40 = 360 -> 40 mm from the collimator face (the arms box spans
    # y -100..700 and z -150..150, inside the collimator's 300 mm radius).
    down = check(Pose(), Pose(lat=40.0), 90.0)
    assert down.allowed and down.min_clearance_mm == pytest.approx(95.0, abs=1e-6)
    up = check(Pose(), Pose(lat=40.0), 90.0, patient=PatientEnvelope(arms="up"))
    assert up.reason == (f"{PATIENT_ARMS} and collimator: clearance 40.0 mm below the 50 mm "
                         "margin at 100 % of the move")


def test_a_move_whose_ends_are_clear_is_refused_for_its_middle() -> None:
    # Gantry 90, couch 60 mm toward the head, raised arms; the couch travels long
    # from -1200 to +1200. At both ends the arms (table-top y -100..700) are far
    # along Y from the collimator (y -300..300); in between they pass it with
    # their side at 320 + 60 = 380 mm: 20 mm from the face at 400. They overlap
    # the collimator's Y extent for long -1000..400, i.e. 8 % to 67 % of the move.
    arms_up = PatientEnvelope(arms="up")
    start, end = Pose(lat=60.0, long=-1200.0), Pose(lat=60.0, long=1200.0)
    assert check(start, start, 90.0, patient=arms_up).allowed
    assert check(end, end, 90.0, patient=arms_up).allowed
    r = check(start, end, 90.0, patient=arms_up)
    assert not r.allowed
    assert r.objects == (PATIENT_ARMS, "collimator")
    assert r.min_clearance_mm == pytest.approx(20.0, abs=0.5)
    assert 0.08 <= r.fraction <= 0.67


# ------------------------------------------------------------------ the default room


@pytest.mark.parametrize("motion", list(CouchMotion))
def test_default_room_passes_the_couch_at_the_isocentre_at_every_gantry_angle(
        motion: CouchMotion) -> None:
    lowest = []
    for gantry in [a / 2 for a in range(720)]:
        r = check(Pose(), Pose(), gantry, motion=motion)
        assert r.allowed, (gantry, r.reason)
        lowest.append(r.min_clearance_mm)
    # The closest approach: the couch top's lower edge (x 265, z -200) lies
    # sqrt(265^2 + 200^2) = 332 mm from the isocentre, on the beam axis at gantry
    # atan2(265, -200) = 127 deg (and 233 deg): 400 - 332 = 68 mm from the collimator.
    assert min(lowest) == pytest.approx(400.0 - (265.0**2 + 200.0**2) ** 0.5, abs=0.05)


def test_a_small_correction_at_the_isocentre_passes_at_every_gantry_angle() -> None:
    end = Pose(lat=3.0, long=-4.0, vert=2.0, yaw=1.0, pitch=0.5, roll=-0.5)
    for gantry in range(0, 360, 5):
        r = check(Pose(), end, float(gantry), motion=CouchMotion.PER_AXIS)
        assert r.allowed, (gantry, r.reason)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"start_pose": Pose(lat=float("nan"))}, "start pose lat nan mm is not a finite number"),
    ({"end_pose": Pose(yaw=float("inf"))}, "end pose yaw inf deg is not a finite number"),
    ({"end_pose": Pose(long=20_000.0)}, "end pose long 20000 mm is beyond +-10000 mm"),
    ({"gantry_deg": float("nan")}, "gantry angle nan deg is not a finite number"),
    ({"gantry_deg": 360.0}, "gantry angle 360 deg is outside 0..360 deg"),
    ({"gantry_deg": -0.5}, "gantry angle -0.5 deg is outside 0..360 deg"),
    ({"margin_mm": -1.0}, "margin -1 mm is outside 0..500 mm"),
    ({"margin_mm": float("inf")}, "margin inf mm is not a finite number"),
    ({"margin_mm": True}, "margin True is not a number (mm)"),
    ({"arms": "parked"}, "arms must be an Arms state, got str"),
    ({"patient": {"arms": "up"}}, "patient must be a PatientEnvelope or None, got dict"),
    ({"slack_mm": 50.0}, "path slack 50 mm is outside 0..10 mm"),
])
def test_bad_input_is_refused_in_one_line(kwargs: dict, expected: str) -> None:
    args = {"start_pose": Pose(), "end_pose": Pose(lat=5.0), "gantry_deg": 0.0, "arms": Arms(),
            "patient": BOX, "margin_mm": MARGIN, **kwargs}
    with pytest.raises(ValueError) as e:
        check_path(**args)
    assert str(e.value).startswith(expected)
    assert "\n" not in str(e.value)


def test_a_move_that_cannot_be_proven_is_refused_not_allowed() -> None:
    # The slack (never split away) leaves the end pose's 51 mm only 1 mm - 2 mm short.
    r = check_path(Pose(), Pose(lat=84.0), 90.0, Arms(), BOX, MARGIN, slack_mm=2.0,
                   motion=CouchMotion.LINEAR)
    assert not r.allowed
    assert "not proven to stay above the 50 mm margin" in r.reason
    assert r.min_clearance_mm >= MARGIN


def test_a_tiny_sample_budget_refuses_rather_than_guesses() -> None:
    # This move comes within 0.05 mm of the margin (the patient's side and the
    # collimator at gantry 276): proving it takes dozens of steps; with five the
    # check refuses.
    start = Pose(-28.75, 2.45, -29.87, -8.65, -0.59, 0.07)
    end = Pose(-37.83, 1.67, -33.49, -8.19, 2.32, -1.74)
    assert check_path(start, end, 276.41, Arms(), BOX, MARGIN).allowed
    r = check_path(start, end, 276.41, Arms(), BOX, MARGIN, max_samples=5)
    assert not r.allowed and r.samples <= 6
    assert r.min_clearance_mm >= MARGIN
    assert r.reason.startswith("patient and collimator: clearance not proven to stay above "
                               "the 50 mm margin within ")
