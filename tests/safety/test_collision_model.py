"""The collision model's parts: configuration, solids, the motion bound, the distance bounds.

Hand-checked clearances use the shipped room (safety/collision_config.py):
collimator face 400 mm from the isocentre, 600 mm across; couch top 530 mm
wide, upper surface at z = -150, 50 mm thick; default patient box 500 mm wide,
250 mm tall on the table top (top surface at z = +100).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safety.collision import RoomState, clearance
from safety.collision_config import CollisionConfig, PatientEnvelope, RoomGeometry
from safety.collision_model import (
    COUCH_TOP,
    PATIENT,
    PATIENT_ARMS,
    Arms,
    ArmState,
    patient_solids,
    pieces,
    table_top_transform,
)
from safety.collision_scene import CollisionModel, Scene
from safety.geometry import pose_transform
from safety.pose import Pose

MODEL = CollisionModel.default()
PATIENT_BOX = PatientEnvelope()

angles = st.floats(-100, 100, allow_nan=False)
shifts = st.floats(-400, 400, allow_nan=False)
poses = st.builds(Pose, shifts, shifts, shifts, angles, st.floats(-5, 5), st.floats(-5, 5))


ZERO = Pose()
PARKED = Arms()


def at(gantry: float, pose: Pose = ZERO, arms: Arms = PARKED,
       patient: PatientEnvelope | None = PATIENT_BOX) -> tuple[float, tuple[str, str]]:
    c = clearance(RoomState(pose, gantry, arms, patient))
    return c.distance_mm, c.objects


# ------------------------------------------------------------------ configuration


def test_default_config_has_the_issue_margins() -> None:
    c = CollisionConfig()
    assert (c.margin_mm, c.hard_margin_mm) == (50.0, 20.0)


def test_default_room_is_a_typical_c_arm_linac() -> None:
    r = RoomGeometry()
    assert r.collimator.near_mm == 400.0  # the head clears the isocentre by 400 mm
    assert (r.kv_panel.near_mm, r.epid.near_mm) == (500.0, 500.0)
    assert r.kv_source.near_mm + r.kv_source.thickness_mm > 1000.0 > r.kv_source.near_mm
    assert (r.couch_top.width_mm, r.couch_top.length_mm, r.couch_top.thickness_mm) == (
        530.0, 2000.0, 50.0)
    # kV source at gantry + 90, panel opposite it, EPID opposite the MV source.
    assert (r.kv_source.angle_offset_deg, r.kv_panel.angle_offset_deg,
            r.epid.angle_offset_deg) == (90.0, 270.0, 180.0)


def test_hard_margin_above_margin_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match="hard_margin_mm 60 mm must not exceed margin_mm 50 mm"
                       ) as e:
        CollisionConfig.from_mapping({"hard_margin_mm": 60})
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("data", "expected"), [
    ({"body": {"shape": "cylinder", "diameter_mm": float("nan")}}, "finite number"),
    ({"body": {"shape": "box", "width_mm": -5}}, "greater than 0"),
    ({"arms": "sideways"}, "'down' or 'up'"),
    ({"head_y_mm": 0, "feet_y_mm": 50}, "patient length"),
    ({"height_mm": 250}, "Extra inputs"),
])
def test_bad_patient_envelope_is_refused_in_one_line(data: dict, expected: str) -> None:
    with pytest.raises(ValueError, match=expected) as e:
        PatientEnvelope.from_mapping(data)
    assert "\n" not in str(e.value) and str(e.value).startswith("patient envelope: ")


def test_patient_envelope_accepts_a_cylinder_with_arms_up() -> None:
    p = PatientEnvelope.from_mapping({"body": {"shape": "cylinder", "diameter_mm": 420},
                                      "arms": "up"})
    assert [s.name for s in patient_solids(RoomGeometry(), p)] == [PATIENT, PATIENT_ARMS]


def test_arms_refuse_a_state_that_is_not_parked_or_extended() -> None:
    with pytest.raises(ValueError, match="arm epid state 'out' is not parked or extended"):
        Arms(epid="out")  # type: ignore[arg-type]


# ------------------------------------------------------------------ placement


@given(poses)
def test_table_top_transform_is_the_contract_f_p(pose: Pose) -> None:
    pivot = np.array([3.0, -7.0, -150.0])
    assert np.allclose(table_top_transform(pose, pivot), pose_transform(pose, pivot),
                       rtol=0, atol=1e-9)


def test_pieces_tile_the_solid_they_come_from() -> None:
    top = MODEL.moving_solids(None)
    cut = [s for s, _ in top if s.name == COUCH_TOP]
    assert len(cut) == 8  # 2000 mm in pieces of at most 250 mm
    ys = sorted((s.placement[1, 3] - s.half_extents()[1], s.placement[1, 3] + s.half_extents()[1])
                for s in cut)
    assert ys[0][0] == pytest.approx(-1300.0) and ys[-1][1] == pytest.approx(700.0)
    assert all(a[1] == pytest.approx(b[0]) for a, b in itertools.pairwise(ys))  # no gaps or overlaps
    (cylinder,) = patient_solids(RoomGeometry(), PatientEnvelope.from_mapping(
        {"body": {"shape": "cylinder"}}))
    assert sum(p.shape.length for p in pieces(cylinder, 250.0)) == pytest.approx(1800.0)  # type: ignore[union-attr]


def test_raised_arms_sit_at_the_head_end_for_a_feet_first_patient() -> None:
    p = PatientEnvelope(head_y_mm=-1250.0, feet_y_mm=550.0, arms="up")
    _, arms = patient_solids(RoomGeometry(), p)
    lo = arms.placement[1, 3] - arms.half_extents()[1]
    hi = arms.placement[1, 3] + arms.half_extents()[1]
    # From 150 mm beyond the head (-1400) to 650 mm toward the feet (-600).
    assert (lo, hi) == (pytest.approx(-1400.0), pytest.approx(-600.0))


# ------------------------------------------------------------------ hand-checked clearances


@pytest.mark.parametrize(("gantry", "expected_mm", "objects"), [
    # Gantry 0: collimator face at z = 400 above the patient's top at z = 100.
    (0.0, 300.0, (PATIENT, "collimator")),
    # Gantry 45: the patient's top corner (x 250, z 100) lies (250 + 100) / sqrt 2 =
    # 247.5 mm along the beam axis: 400 - 247.5 from the collimator face.
    (45.0, 400.0 - 350.0 / math.sqrt(2.0), (PATIENT, "collimator")),
    # Gantry 90: collimator face at x = 400, couch top edge at x = 265.
    (90.0, 135.0, (COUCH_TOP, "collimator")),
    # Gantry 180: collimator face at z = -400 under the couch top's underside at z = -200.
    (180.0, 200.0, (COUCH_TOP, "collimator")),
    (270.0, 135.0, (COUCH_TOP, "collimator")),
])
def test_clearance_at_the_isocentre_is_the_hand_computed_one(
        gantry: float, expected_mm: float, objects: tuple[str, str]) -> None:
    d, pair = at(gantry)
    assert d == pytest.approx(expected_mm, abs=1e-6)
    assert pair == objects


def test_extended_kv_panel_at_gantry_0_is_beside_the_couch() -> None:
    # Panel at gantry + 270 = -X, face at x = -500; couch top edge at x = -265 - 200.
    d, pair = at(0.0, Pose(lat=-200.0), Arms(kv_panel=ArmState.EXTENDED))
    assert (d, pair) == (pytest.approx(35.0, abs=1e-6), (COUCH_TOP, "kV panel"))


def test_overlapping_solids_have_clearance_zero() -> None:
    # Gantry 180, couch lowered 400 mm: its underside (z = -600) is past the
    # collimator face (z = -400).
    d, pair = at(180.0, Pose(vert=-400.0))
    assert d == 0.0 and pair[0] == COUCH_TOP


def test_empty_couch_has_only_the_couch_to_collide() -> None:
    assert at(0.0, patient=None) == (pytest.approx(550.0), (COUCH_TOP, "collimator"))


# ------------------------------------------------------------------ the bounds


def _cell(pose: Pose, h_mm: list[float], h_deg: list[float]) -> tuple[tuple, tuple]:
    centre, half = pose.as_tuple(), (*h_mm, *h_deg)
    return (tuple(c - h for c, h in zip(centre, half)), tuple(c + h for c, h in zip(centre, half)))


def _inside(lo: tuple, hi: tuple, where: list[float]) -> Pose:
    return Pose(*(a + (w + 1) / 2 * (b - a) for a, b, w in zip(lo, hi, where)))


def _corners_at(scene: Scene, pose: Pose) -> np.ndarray:
    """(pieces, 8, 3): every couch-carried piece's bounding-box corners at `pose`."""
    transforms = scene._transforms(pose)
    return np.stack([(np.c_[s.corners(), np.ones(8)] @ transforms[s.carrier].T)[:, :3]
                     for s in scene.moving])


# A room whose whole couch base travels with lat and long, beside the shipped one.
TRAVELLING_BASE = CollisionModel(CollisionConfig.from_mapping(
    {"room": {"couch_base": {"moves_with_lat_long": True}}}).room)
models = st.sampled_from([MODEL, TRAVELLING_BASE])
cells = st.tuples(poses, st.lists(st.floats(0, 60), min_size=3, max_size=3),
                  st.lists(st.floats(0, 4), min_size=3, max_size=3))
where = st.lists(st.floats(-1, 1), min_size=6, max_size=6)


@settings(max_examples=200, deadline=None)
@given(cells, where, models)
def test_no_point_moves_further_than_the_displacement_bound(
        cell: tuple, at: list[float], model: CollisionModel) -> None:
    lo, hi = _cell(*cell)
    scene = model.scene(0.0, Arms(), PatientEnvelope(arms="up"))
    centre = Pose(*((a + b) / 2 for a, b in zip(lo, hi)))
    moved = np.linalg.norm(_corners_at(scene, _inside(lo, hi, at))
                           - _corners_at(scene, centre), axis=2).max(axis=1)
    assert np.all(moved <= scene.sweep.displacement(lo, hi) + 1e-9)


@settings(max_examples=200, deadline=None)
@given(cells, where, models)
def test_every_point_stays_within_the_curvature_allowance_of_its_corner_positions(
        cell: tuple, at: list[float], model: CollisionModel) -> None:
    # The tensor-product linear interpolation of a point's positions at the cell's
    # vertex poses (a convex combination of them) is within eps of where it really
    # is at any pose of the cell: the hull the path check bounds, widened by eps,
    # holds every point of every piece.
    lo, hi = _cell(*cell)
    scene = model.scene(0.0, Arms(), PatientEnvelope(arms="up"))
    sweep = scene.sweep
    vertices = sweep.vertices(lo, hi)
    varying = [k for k in range(6) if hi[k] > lo[k]]
    pose = _inside(lo, hi, at)
    s = [(pose.as_tuple()[k] - lo[k]) / (hi[k] - lo[k]) for k in varying]
    weights = np.array([math.prod(s[p] if (index >> (len(varying) - 1 - p)) & 1 else 1 - s[p]
                                  for p in range(len(varying)))
                        for index in range(len(vertices))])
    at_vertices = np.stack([_corners_at(scene, Pose(*v)) for v in vertices])
    interpolated = np.tensordot(weights, at_vertices, axes=1)
    off = np.linalg.norm(_corners_at(scene, pose) - interpolated, axis=2).max(axis=1)
    assert np.all(off <= sweep.eps(lo, hi) + 1e-9)


@settings(max_examples=60, deadline=None)
@given(poses, st.floats(0, 359.99), st.booleans())
def test_cheap_distance_bound_never_exceeds_the_exact_distance(
        pose: Pose, gantry: float, arms_up: bool) -> None:
    scene = MODEL.scene(gantry, Arms.extended(), PatientEnvelope(arms="up" if arms_up else "down"))
    assert np.all(scene.gaps(pose) <= scene.pair_distances(pose) + 1e-6)


@settings(max_examples=80, deadline=None)
@given(cells, st.floats(0, 359.99), st.lists(where, min_size=4, max_size=4),
       st.sampled_from(["measured", "random"]), models)
def test_the_cell_bound_never_exceeds_the_distance_at_any_pose_of_the_cell(
        cell: tuple, gantry: float, at: list[list[float]], directions: str,
        model: CollisionModel) -> None:
    # Any unit vector gives a valid bound; FCL's separation direction a tight one.
    lo, hi = _cell(*cell)
    scene = model.scene(gantry, Arms.extended(), PatientEnvelope(arms="up"))
    n, n_f = len(scene.moving), len(scene.fixed)
    pairs = [(i, j) for i in range(n) for j in range(n_f)]
    u = np.full((n, n_f, 3), np.nan)
    if directions == "measured":
        for (i, j), (_, g) in zip(pairs, scene.measure(_inside(lo, hi, at[0]), pairs)):
            if g is not None:
                u[i, j] = g
    else:
        rng = np.random.default_rng(int(1000 * abs(at[0][0])))
        v = rng.normal(size=(n, n_f, 3))
        u = v / np.linalg.norm(v, axis=2, keepdims=True)
    found = scene.sweep.bound(lo, hi, np.arange(n), u, np.ones((n, n_f), dtype=bool))
    for pose in [_inside(lo, hi, w) for w in at] + [Pose(*v) for v in scene.sweep.vertices(lo, hi)[:8]]:
        assert np.all(found.bounds <= scene.pair_distances(pose) + 1e-6)


def test_the_cell_bound_is_tight_for_a_translation_along_the_separation() -> None:
    # Gantry 90: the couch top's edge (x = 265 + lat) faces the collimator face at
    # x = 400. Over lat 0..50 the closest pose is lat 50: 85 mm; the bound with the
    # measured direction is that, exactly.
    scene = MODEL.scene(90.0, Arms(), PATIENT_BOX)
    sweep = scene.sweep
    n, n_f = len(scene.moving), len(scene.fixed)
    pairs = [(i, 1) for i in range(n)]
    u = np.full((n, n_f, 3), np.nan)
    for (i, j), (_, g) in zip(pairs, scene.measure(Pose(lat=50.0), pairs)):
        u[i, j] = g
    short = np.zeros((n, n_f), dtype=bool)
    short[:, 1] = True
    found = sweep.bound((0, 0, 0, 0, 0, 0), (50, 0, 0, 0, 0, 0), np.arange(n), u, short)
    assert np.nanmin(found.bounds) == pytest.approx(400.0 - 265.0 - 50.0, abs=0.01)


def test_fcl_box_distance_agrees_with_points_on_its_surface() -> None:
    # Independent check of the library: the couch top yawed 30 deg near the head at
    # gantry 70; the distance from its corners and edges sampled densely can only be
    # larger than the true distance, by at most the sampling step.
    pose = Pose(lat=80.0, vert=60.0, yaw=30.0, pitch=2.0)
    scene = MODEL.scene(70.0, Arms(), None)
    exact = scene.pair_distances(pose)
    (i,) = [k for k, s in enumerate(scene.moving) if s.placement[1, 3] == max(
        t.placement[1, 3] for t in scene.moving if t.name == COUCH_TOP)]
    solid = scene.moving[i]
    hx, hy, hz = solid.half_extents()
    g = np.linspace(-1, 1, 41)
    surface = np.array([(x * hx, y * hy, z * hz, 1.0) for x in g for y in g for z in (-1, 1)]
                       + [(x * hx, y * hy, z * hz, 1.0) for x in (-1, 1) for y in g for z in g])
    room = surface @ (table_top_transform(pose, MODEL.pivot) @ solid.placement).T
    head = scene.fixed[0]
    gt = np.eye(4)
    gt[:3, :3] = np.array([[math.cos(math.radians(70)), 0, math.sin(math.radians(70))],
                           [0, 1, 0], [-math.sin(math.radians(70)), 0, math.cos(math.radians(70))]])
    local = room @ np.linalg.inv(gt @ head.placement).T
    half = np.array(head.half_extents())
    outside = np.maximum(np.abs(local[:, :3]) - half, 0.0)
    sampled = np.linalg.norm(outside, axis=1).min()
    step = 2 * max(hx, hy, hz) / 40
    assert exact[i, 0] <= sampled + 1e-6
    assert sampled - exact[i, 0] <= step * math.sqrt(3)


def test_separation_directions_come_with_measured_distances() -> None:
    scene = MODEL.scene(90.0, Arms(), PATIENT_BOX)
    pairs = [(i, 1) for i in range(len(scene.moving))]
    measured = scene.measure(Pose(lat=20.0), pairs)
    d, g = min(measured, key=lambda m: m[0])
    assert d == pytest.approx(400.0 - 265.0 - 20.0)
    # The couch top's edge faces the collimator at +X: the direction from the
    # collimator to the couch is -X.
    assert g is not None
    assert g == pytest.approx((-1.0, 0.0, 0.0), abs=1e-6)
