"""Couch tracking during beam-on is a bounded suggestion, refused (never clipped) beyond bounds."""

from __future__ import annotations

import math

import pytest

from safety.beam_hold import (
    CouchTrackingLimits,
    CouchTrackingRefusal,
    CouchTrackingSuggestion,
    suggest_couch_correction,
)

LIMITS = CouchTrackingLimits(max_step_mm=2.0, max_total_mm=5.0)


def test_suggestion_moves_the_couch_opposite_to_the_target_deviation() -> None:
    s = suggest_couch_correction((1.0, -0.5, 0.8), (0.0, 0.0, 0.0), LIMITS)
    assert isinstance(s, CouchTrackingSuggestion)
    assert (s.delta_lat, s.delta_long, s.delta_vert) == pytest.approx((-1.0, 0.5, -0.8))


def test_with_couch_yaw_the_table_top_translation_is_rotated_back() -> None:
    # Yaw 90 deg: table-top +lat moves the patient along room +Y (Rz(90) X = Y).
    s = suggest_couch_correction((0.0, 1.5, 0.0), (0.0, 0.0, 0.0), LIMITS, couch_yaw_deg=90.0)
    assert isinstance(s, CouchTrackingSuggestion)
    assert (s.delta_lat, s.delta_long, s.delta_vert) == pytest.approx((-1.5, 0.0, 0.0), abs=1e-9)


def test_step_beyond_the_limit_is_refused_not_clipped() -> None:
    r = suggest_couch_correction((2.5, 0.0, 0.0), (0.0, 0.0, 0.0), LIMITS)
    assert isinstance(r, CouchTrackingRefusal)
    assert r.reason == "tracking correction 2.50 mm exceeds the step limit 2.0 mm"


def test_total_beyond_the_limit_is_refused() -> None:
    r = suggest_couch_correction((0.0, 0.0, 1.5), (0.0, 0.0, -4.0), LIMITS)
    assert isinstance(r, CouchTrackingRefusal)
    assert "5.50 mm exceeds the total limit 5.0 mm" in r.reason


def test_correction_back_towards_the_set_up_is_allowed_even_near_the_total_limit() -> None:
    s = suggest_couch_correction((0.0, 0.0, -1.5), (0.0, 0.0, -4.5), LIMITS)
    assert isinstance(s, CouchTrackingSuggestion) and s.total_after_mm == pytest.approx(3.0)


def test_invalid_deviation_gives_no_suggestion() -> None:
    r = suggest_couch_correction((math.nan, 0.0, 0.0), (0.0, 0.0, 0.0), LIMITS)
    assert isinstance(r, CouchTrackingRefusal)


@pytest.mark.parametrize("kw", [{"max_step_mm": 0.0}, {"max_step_mm": 6.0},
                                {"max_total_mm": 11.0}])
def test_limits_themselves_are_bounded(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="mm is outside"):
        CouchTrackingLimits(**kw)
