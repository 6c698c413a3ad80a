"""The imperfect simulated room (sim/room_imperfections.py): the rules of the real couch
pose, the imaging isocentre offset, the description fields, and the ops on a real room."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from safety.geometry import pose_transform
from safety.pose import AXES, Pose
from sim.control_ops import OpError, run_op
from sim.room_description import (
    DEFAULT_ROOM,
    ROOMS_DIR,
    RoomDescription,
    load_description,
    parse_description,
)
from sim.room_imperfections import (
    REPEATABILITY_STREAM,
    Imperfections,
    RealCouch,
    true_pose,
)
from sim.stack import SimulatedRoom
from sim.validation import one_line

from .conftest import description

PIVOT = (0.0, 0.0, -150.0)
REPORTED = Pose(12.0, 350.0, -40.0, 2.0, 0.5, -0.3)


def _imp(**fields: Any) -> Imperfections:
    return Imperfections.model_validate(fields)


def test_a_perfect_room_reports_the_reported_pose_exactly() -> None:
    assert true_pose(None, REPORTED, 150.0) is REPORTED
    assert RealCouch(None, seed=1).pose(REPORTED, move=3) is REPORTED
    # All-zero imperfections: the same floats, even with a generator.
    assert Imperfections().true_pose(REPORTED, 150.0, np.random.default_rng(1)) == REPORTED
    assert Imperfections().imaging_pose(REPORTED) is REPORTED
    assert load_description(DEFAULT_ROOM).imperfections is None
    assert load_description(DEFAULT_ROOM).qa_gate is False


def test_axis_scale_multiplies_the_travel_and_offset_adds() -> None:
    imp = _imp(axis_scale={"vert": 0.008, "lat": -0.01}, axis_offset={"yaw": 0.15, "long": 0.4})
    real = imp.true_pose(REPORTED, 0.0)
    assert real.vert == pytest.approx(-40.0 * 1.008, abs=1e-12)
    assert real.lat == pytest.approx(12.0 * 0.99, abs=1e-12)
    assert real.yaw == pytest.approx(2.0 + 0.15, abs=1e-12)
    assert real.long == pytest.approx(350.0 + 0.4, abs=1e-12)
    assert (real.pitch, real.roll) == (REPORTED.pitch, REPORTED.roll)
    # Scale is of the travel from 0: zero reported is zero real (plus any offset).
    assert imp.true_pose(Pose(), 0.0) == Pose(0.0, 0.4, 0.0, 0.15, 0.0, 0.0)


@pytest.mark.parametrize("long_mm", [0.0, 200.0, 400.0, 600.0, -100.0])
@pytest.mark.parametrize("load_kg", [0.0, 80.0, 150.0])
def test_sag_grows_linearly_with_extension_and_load(long_mm: float, load_kg: float) -> None:
    imp = _imp(sag={"mm_per_m": 1.0, "mm_per_m_per_100kg": 2.5, "deg_per_m": 0.05,
                    "deg_per_m_per_100kg": 0.1})
    real = imp.true_pose(Pose(long=long_mm, vert=10.0, pitch=0.2), load_kg)
    ext_m = long_mm / 1000.0
    assert real.vert == pytest.approx(10.0 - (1.0 + 2.5 * load_kg / 100) * ext_m, abs=1e-12)
    assert real.pitch == pytest.approx(0.2 - (0.05 + 0.1 * load_kg / 100) * ext_m, abs=1e-12)
    assert (real.lat, real.long, real.yaw, real.roll) == (0.0, long_mm, 0.0, 0.0)


def test_sag_uses_the_reported_extension_and_comes_after_the_scale() -> None:
    imp = _imp(axis_scale={"long": 0.02, "vert": 0.01}, sag={"mm_per_m": 2.0})
    real = imp.true_pose(Pose(long=500.0, vert=100.0), 0.0)
    assert real.long == pytest.approx(510.0)
    assert real.vert == pytest.approx(100.0 * 1.01 - 2.0 * 0.5, abs=1e-12)  # ext 0.5, not 0.51


def test_repeatability_is_seeded_and_has_the_given_spread() -> None:
    imp = _imp(repeatability_mm=0.05, repeatability_deg=0.02)
    a = imp.true_pose(REPORTED, 0.0, np.random.default_rng(7))
    b = imp.true_pose(REPORTED, 0.0, np.random.default_rng(7))
    assert a == b and a != REPORTED
    # The draw is six standard normals in axis order, scaled by the sd of each axis.
    z = np.random.default_rng(7).normal(0.0, 1.0, 6)
    sd = [0.05, 0.05, 0.05, 0.02, 0.02, 0.02]
    for i, axis in enumerate(AXES):
        assert a.get(axis) - REPORTED.get(axis) == pytest.approx(z[i] * sd[i], abs=1e-12)
    rng = np.random.default_rng(3)
    errs = np.array([imp.true_pose(Pose(), 0.0, rng).as_tuple() for _ in range(4000)])
    assert np.allclose(errs.std(axis=0), sd, rtol=0.06)
    assert np.allclose(errs.mean(axis=0), 0.0, atol=0.004)


class _Executed:
    def __init__(self, kind: str) -> None:
        self.kind = kind


def test_one_repeatability_error_per_move() -> None:
    imp = _imp(repeatability_mm=0.05, repeatability_deg=0.02, axis_offset={"yaw": 0.15})
    rc = RealCouch(imp, seed=5)
    assert RealCouch.moves([_Executed(k) for k in ("TARGET", "GO", "STOP", "JOG", "RESET")]) == 2
    first = rc.pose(REPORTED, 1)
    assert rc.pose(REPORTED, 1) == first  # the same move: the same error, however often read
    assert rc.pose(REPORTED, 2) != first  # the next move draws again
    assert RealCouch(imp, seed=5).pose(REPORTED, 1) == first  # the same room replays it
    assert RealCouch(imp, seed=6).pose(REPORTED, 1) != first
    expected = imp.true_pose(REPORTED, 0.0,
                             np.random.default_rng([5, REPEATABILITY_STREAM, 1]))
    assert first == expected


def test_load_is_the_real_couchs_and_changes_the_sag() -> None:
    imp = _imp(sag={"mm_per_m_per_100kg": 4.0}, load_kg=50.0)
    rc = RealCouch(imp, seed=1)
    assert rc.load_kg == 50.0
    assert rc.pose(Pose(long=500.0), 0).vert == pytest.approx(-1.0)
    rc.load_kg = 150.0
    assert rc.pose(Pose(long=500.0), 0).vert == pytest.approx(-3.0)


@pytest.mark.parametrize("pose", [Pose(), REPORTED, Pose(-30.0, 120.0, 15.0, 90.0, -2.0, 1.5)])
def test_the_imaging_pose_shifts_the_whole_room_by_minus_the_offset(pose: Pose) -> None:
    imp = _imp(imaging_iso_offset_mm=[0.7, -0.2, 0.3])
    shifted = pose_transform(imp.imaging_pose(pose), PIVOT)
    plain = pose_transform(pose, PIVOT)
    assert np.allclose(shifted[:3, :3], plain[:3, :3], atol=1e-15)
    assert np.allclose(shifted[:3, 3], plain[:3, 3] - [0.7, -0.2, 0.3], atol=1e-12)
    assert imp.imaging_shift((0.0, 0.0, 0.0)) == pytest.approx((-0.7, 0.2, -0.3))
    assert imp.imaging_shift((4.0, -3.0, 2.5)) == pytest.approx((3.3, -2.8, 2.2))


@pytest.mark.parametrize("fields, expect", [
    ({"axis_scale": {"vert": 0.5}}, "axis_scale: vert: scale 0.5 is outside +-0.05"),
    ({"axis_offset": {"yaw": 3.0}}, "yaw: offset 3.0 deg is outside +-1 deg"),
    ({"axis_offset": {"lat": 6.0}}, "lat: offset 6.0 mm is outside +-5 mm"),
    ({"axis_scale": {"height": 0.01}}, "axis_scale.height"),
    ({"sag": {"mm_per_m": 20.0}}, "20.0 mm/m exceeds the limit 10.0 mm/m"),
    ({"sag": {"deg_per_m": -0.1}}, "is below the minimum 0.0"),
    ({"load_kg": 400.0}, "400.0 kg exceeds the limit 300.0 kg"),
    ({"repeatability_mm": 2.0}, "repeatability_mm: 2.0 mm exceeds the limit 1.0 mm"),
    ({"imaging_iso_offset_mm": [9.0, 0.0, 0.0]}, "9.0 mm exceeds the limit 5.0 mm"),
    ({"imaging_iso_offset_mm": [0.7, 0.0]}, "imaging_iso_offset_mm"),
    ({"axis_scale": {"vert": "0.01"}}, "axis_scale.vert"),
    ({"wobble": 1.0}, "wobble"),
])
def test_implausible_or_bad_imperfections_are_refused_in_one_line(fields: dict[str, Any],
                                                                   expect: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_description(json.dumps(description(imperfections=fields)), "room.json")
    assert expect in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("room.json: imperfections")


@pytest.mark.parametrize("fields", [{"axis_offset": {"lat": math.nan}},
                                    {"axis_scale": {"vert": math.inf}},
                                    {"sag": {"mm_per_m": math.nan}},
                                    {"imaging_iso_offset_mm": [math.inf, 0.0, 0.0]}])
def test_nan_and_infinity_are_refused(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as err:
        Imperfections.model_validate(fields)
    assert "not a finite number" in one_line(err.value)
    with pytest.raises(ValueError, match="NaN|Infinity|finite"):
        parse_description(json.dumps(description(imperfections=fields)), "room.json")


def test_the_shipped_imperfect_room() -> None:
    d = load_description(ROOMS_DIR / "imperfect.json")
    imp = d.imperfections
    assert imp is not None
    assert imp.imaging_iso_offset_mm == (0.7, 0.0, 0.0)
    assert imp.scale("vert") == 0.008 and imp.offset("yaw") == 0.15
    assert imp.sag.mm_per_m > 0 and imp.sag.mm_per_m_per_100kg > 0
    assert (imp.repeatability_mm, imp.repeatability_deg) == (0.05, 0.02)
    assert d.qa_phantom.bb_offset_mm == (4.0, -3.0, 2.5) and d.qa_gate is False
    # Apart from the imperfections it is the default room.
    default = json.loads(DEFAULT_ROOM.read_text())
    shipped = json.loads((ROOMS_DIR / "imperfect.json").read_text())
    for key in ("imperfections", "qa_phantom", "qa_gate"):
        shipped.pop(key)
    assert shipped == default


# ------------------------------------------------------------------ a real room
def _imperfect_room() -> RoomDescription:
    room = json.loads((ROOMS_DIR / "imperfect.json").read_text())
    room.update(broker={"enabled": False}, plc=False, kv_imager=False)
    return RoomDescription.model_validate(room)


async def test_ops_on_an_imperfect_room(tmp_path: Path) -> None:
    d = _imperfect_room()
    imp = d.imperfections
    assert imp is not None
    async with SimulatedRoom(d, tmp_path / "run") as room:
        truth = await run_op(room, "truth", {})
        assert truth["imperfections"] == imp.model_dump(mode="json")
        assert truth["couch_load_kg"] == 0.0 and truth["couch"]["moves"] == 0
        reported = Pose.from_dict(truth["couch"]["pose"])
        move0 = np.random.default_rng([d.seed, REPEATABILITY_STREAM, 0])
        assert Pose.from_dict(truth["couch"]["true_pose"]) == imp.true_pose(reported, 0.0, move0)
        # The QA phantom was laid at the lasers: the BB is exactly at its offset.
        assert truth["qa_phantom"]["bb_true_room_mm"] == pytest.approx([4.0, -3.0, 2.5],
                                                                       abs=1e-9)

        # Extend the couch by hand (the encoders see it) and load it: it sags.
        await run_op(room, "inject", {"fault": "couch_moved_by_hand", "long": 100.0})
        out = await run_op(room, "couch_load", {"kg": 150.0})
        assert out["couch_load_kg"] == 150.0 and "note" not in out
        truth = await run_op(room, "truth", {})
        reported = Pose.from_dict(truth["couch"]["pose"])
        assert reported.long == 100.0  # the controller reports what it believes
        expected = imp.true_pose(reported, 150.0,
                                 np.random.default_rng([d.seed, REPEATABILITY_STREAM, 0]))
        real = Pose.from_dict(truth["couch"]["true_pose"])
        assert real == expected
        assert real.vert == pytest.approx(1.008 * reported.vert - (1.0 + 2.5 * 1.5) * 0.1,
                                          abs=4 * imp.repeatability_mm)
        assert truth["couch_load_kg"] == 150.0
        # The phantom moved with the table top: 100 mm toward the gantry and down.
        bb = truth["qa_phantom"]["bb_true_room_mm"]
        assert bb[1] == pytest.approx(-3.0 + 100.0, abs=0.3)
        assert bb[2] < 2.5 - 0.3

        with pytest.raises(OpError, match="kg: 400.0 kg exceeds the limit 300.0 kg"):
            await run_op(room, "couch_load", {"kg": 400.0})
        with pytest.raises(OpError, match="subject"):
            await run_op(room, "acquire_cbct", {"path": "x.mha", "subject": "dog"})

        # Lay the phantom again at the lasers, here: the BB is at its offset again.
        placed = await run_op(room, "qa_phantom_place", {})
        assert placed["qa_phantom"]["bb_true_room_mm"] == pytest.approx([4.0, -3.0, 2.5],
                                                                        abs=1e-9)
        shot = await run_op(room, "acquire_cbct", {"path": "qa.mha", "subject": "qa_phantom"})
        assert shot["subject"] == "qa_phantom" and shot["planning_ct"] is None
        assert shot["couch_pose"] == truth["couch"]["pose"]
        assert shot["true_pose"] == truth["couch"]["true_pose"]
        assert shot["bb_true_room_mm"] == pytest.approx([4.0, -3.0, 2.5], abs=1e-9)
        # Seen through the imaging isocentre 0.7 mm to the right: 0.7 mm to the left, in
        # the HFS image frame q = (x, -z, y).
        assert shot["bb_image_mm"] == pytest.approx([3.3, -2.5, -3.0], abs=1e-9)
        assert shot["imaging_iso_offset_mm"] == [0.7, 0.0, 0.0]
        assert Path(shot["path"]).is_file()


async def test_a_perfect_room_reports_no_imperfections_and_the_same_poses(
        tmp_path: Path) -> None:
    d = RoomDescription.model_validate(description(broker={"enabled": False}, plc=False,
                                                   kv_imager=False))
    async with SimulatedRoom(d, tmp_path / "run") as room:
        out = await run_op(room, "couch_load", {"kg": 80.0})
        assert "no imperfections" in out["note"]
        await run_op(room, "inject", {"fault": "couch_moved_by_hand", "long": 100.0,
                                      "yaw": 2.0})
        truth = await run_op(room, "truth", {})
        assert truth["imperfections"] is None and truth["couch_load_kg"] == 80.0
        assert truth["couch"]["true_pose"] == truth["couch"]["pose"]
        assert set(truth["couch"]["true_minus_reported"].values()) == {0.0}
