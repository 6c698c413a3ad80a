"""CouchModel: limits are checked and reported, never applied."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.couch_model import CouchModel
from safety.pose import Pose

DEFAULT = CouchModel.default()


def minimal(**extra) -> dict:
    ranges = {a: [-10, 10] for a in ("lat", "long", "vert", "yaw", "pitch", "roll")}
    return {"ranges": ranges, **extra}


def test_default_model_is_the_contract_couch() -> None:
    r = {a: (v.min, v.max) for a, v in DEFAULT.ranges.items()}
    assert r == {
        "lat": (-250, 250), "long": (-600, 600), "vert": (-400, 200),
        "yaw": (-95, 95), "pitch": (-3, 3), "roll": (-3, 3),
    }
    assert DEFAULT.pivot == (0, 0, -150)
    (rule,) = DEFAULT.coupled
    assert (rule.when.axis, rule.when.abs_gt) == ("pitch", 2.0)
    assert (rule.limit.axis, rule.limit.min, rule.limit.max) == ("roll", -2.0, 2.0)


def test_pose_inside_every_limit_has_no_violations() -> None:
    assert DEFAULT.check_pose(Pose(250, -600, 200, -95, 3, -2)) == []
    assert DEFAULT.check_pose(Pose(-250, 600, -400, 95, 2, 3)) == []


def test_out_of_range_rotation_names_axis_value_limit_and_unit() -> None:
    (v,) = DEFAULT.check_pose(Pose(pitch=3.4))
    assert (v.axis, v.value, v.min, v.max, v.unit) == ("pitch", 3.4, -3.0, 3.0, "deg")
    assert v.message == "pitch 3.40 deg outside limit -3.00..3.00 deg"


def test_out_of_range_translation_is_reported_in_mm() -> None:
    (v,) = DEFAULT.check_pose(Pose(vert=200.5))
    assert v.message == "vert 200.50 mm outside limit -400.00..200.00 mm"


def test_every_violated_axis_is_reported() -> None:
    axes = [v.axis for v in DEFAULT.check_pose(Pose(lat=-300, long=700, yaw=100))]
    assert axes == ["lat", "long", "yaw"]


def test_roll_limit_shrinks_while_pitch_is_large() -> None:
    (v,) = DEFAULT.check_pose(Pose(pitch=2.5, roll=2.5))
    assert v.message == "roll 2.50 deg outside limit -2.00..2.00 deg while |pitch| > 2.00 deg"


def test_coupled_limit_does_not_apply_at_exactly_the_threshold() -> None:
    assert DEFAULT.check_pose(Pose(pitch=-2.0, roll=2.9)) == []


def test_coupled_limit_can_use_greater_or_equal() -> None:
    m = CouchModel.from_mapping(minimal(coupled=[
        {"when": {"axis": "pitch", "abs_ge": 2}, "limit": {"axis": "roll", "min": -1, "max": 1}}
    ]))
    (v,) = m.check_pose(Pose(pitch=-2.0, roll=1.5))
    assert v.message.endswith("while |pitch| >= 2.00 deg")


def test_non_finite_values_are_outside_every_limit() -> None:
    axes = [v.axis for v in DEFAULT.check_pose(Pose(lat=math.nan, yaw=math.inf))]
    assert axes == ["lat", "yaw"]


@given(st.floats(-1000, 1000, allow_nan=False))
def test_check_pose_never_changes_the_pose(value: float) -> None:
    pose = Pose(lat=value, pitch=value / 100)
    DEFAULT.check_pose(pose)
    assert pose == Pose(lat=value, pitch=value / 100)


def test_json_round_trip_gives_the_same_model() -> None:
    assert CouchModel.from_json_text(DEFAULT.model_dump_json()) == DEFAULT


def test_ranges_may_be_given_as_pairs() -> None:
    m = CouchModel.from_json_text(json.dumps(minimal(pivot=[0, 0, -200])))
    assert m.ranges["roll"].max == 10 and m.pivot == (0, 0, -200)


def test_max_speeds_are_optional_and_kept() -> None:
    m = CouchModel.from_mapping(minimal(max_speed={"lat": 20, "yaw": 2}))
    assert m.max_speed == {"lat": 20, "yaw": 2}


def test_with_pivot_replaces_only_the_pivot() -> None:
    m = DEFAULT.with_pivot((0, 0, -1000))
    assert m.pivot == (0, 0, -1000) and m.ranges == DEFAULT.ranges


BAD = {
    "min not below max": (minimal() | {"ranges": minimal()["ranges"] | {"lat": [5, 5]}},
                          "ranges.lat: min 5 must be less than max 5"),
    "missing axis": ({"ranges": {"lat": [0, 1]}}, "ranges: missing ranges for axes: long"),
    "unknown axis": (minimal() | {"ranges": minimal()["ranges"] | {"tilt": [0, 1]}},
                     "unknown axis 'tilt'"),
    "unknown key": (minimal(speed=3), "speed: Extra inputs are not permitted"),
    "coupled unknown axis": (minimal(coupled=[{"when": {"axis": "bend", "abs_gt": 1},
                                               "limit": {"axis": "roll", "min": -1, "max": 1}}]),
                             "coupled.0.when.axis: unknown axis 'bend'"),
    "coupled no threshold": (minimal(coupled=[{"when": {"axis": "pitch"},
                                               "limit": {"axis": "roll", "min": -1, "max": 1}}]),
                             "give exactly one of abs_gt or abs_ge"),
    "negative speed": (minimal(max_speed={"lat": -1}), "max speed of lat must be positive"),
    "short pivot": (minimal(pivot=[0, 0]), "pivot"),
    "not an object": ([1, 2], "expected a JSON object"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_invalid_model_is_rejected_with_one_line_naming_where(name: str) -> None:
    data, expected = BAD[name]
    with pytest.raises(ValueError) as err:
        CouchModel.from_json_text(json.dumps(data))
    msg = str(err.value)
    assert msg.startswith("couch model")
    assert expected in msg
    assert "\n" not in msg


def test_non_finite_limit_is_rejected() -> None:
    text = json.dumps(minimal()).replace("10]}", "Infinity]}")
    with pytest.raises(ValueError, match="ranges.roll.max: Input should be a finite number"):
        CouchModel.from_json_text(text)


def test_malformed_json_names_line_and_column() -> None:
    with pytest.raises(ValueError, match="not valid JSON: line 1 column 2"):
        CouchModel.from_json_text("{oops")


def test_model_is_frozen() -> None:
    with pytest.raises(ValueError):
        DEFAULT.pivot = (0, 0, 0)  # type: ignore[misc]
