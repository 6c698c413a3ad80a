"""BeamHoldPolicy and the beam-hold state machine (safety/beam_hold.py), rule by rule."""

from __future__ import annotations

import math

import pytest

from safety.beam_hold import BeamHoldMonitor, BeamHoldPolicy

OUT = (4.0, 0.0, 0.0)  # 4 mm: beyond the default 3 mm tolerance
IN = (0.5, 0.0, 0.0)
BAND = (2.8, 0.0, 0.0)  # within tolerance but inside the 0.5 mm release margin


def machine(**kw: float) -> BeamHoldMonitor:
    policy = BeamHoldPolicy(**kw)  # type: ignore[arg-type]
    return BeamHoldMonitor(policy, start_t=0.0)


def feed(m: BeamHoldMonitor, samples: list[tuple[float, tuple[float, float, float] | None]]
         ) -> list[bool]:
    return [m.update(t, d).hold for t, d in samples]


# ---------------------------------------------------------------- policy values

def test_default_policy_is_3_mm_with_200_ms_debounce() -> None:
    p = BeamHoldPolicy()
    assert (p.tolerance_mm, p.debounce_s, p.release_after_s) == (3.0, 0.2, 0.3)


@pytest.mark.parametrize("kw, text", [
    ({"tolerance_mm": 0.0}, "beam-hold tolerance 0.0 mm is outside 0.1..50 mm"),
    ({"tolerance_mm": math.nan}, "beam-hold tolerance nan mm"),
    ({"debounce_s": -0.1}, "beam-hold debounce -0.1 s is outside 0..5 s"),
    ({"release_after_s": 61.0}, "beam release delay 61.0 s is outside 0..60 s"),
    ({"max_image_age_s": 0.0}, "maximum image age 0.0 s is outside 0.01..10 s"),
    ({"release_margin_mm": 3.0}, "beam release margin 3.0 mm is outside 0..3.0 mm"),
    ({"axis_tolerance_mm": (1.0, 2.0)}, "needs 3 values"),
    ({"axis_tolerance_mm": (1.0, 2.0, -1.0)}, "tolerance along Z -1.0 mm is outside"),
])
def test_out_of_range_policy_values_are_refused_naming_value_limit_and_unit(
    kw: dict[str, object], text: str
) -> None:
    with pytest.raises(ValueError, match=text.replace(".", r"\.").replace("(", r"\(")):
        BeamHoldPolicy(**kw)  # type: ignore[arg-type]


def test_vector_length_not_single_axis_is_compared_with_the_tolerance() -> None:
    p = BeamHoldPolicy(tolerance_mm=3.0)
    assert p.exceeds((2.0, 2.0, 1.5)) is not None  # each axis < 3, length 3.2
    assert p.exceeds((2.0, 2.0, 0.5)) is None


def test_per_axis_tolerance_holds_on_one_axis_even_with_a_small_vector() -> None:
    p = BeamHoldPolicy(tolerance_mm=5.0, axis_tolerance_mm=(3.0, 3.0, 1.0))
    reason = p.exceeds((0.0, 0.0, -1.5))
    assert reason is not None and "along Z" in reason


# ---------------------------------------------------------------- hold rules

def test_excursion_shorter_than_debounce_does_not_hold() -> None:
    m = machine()
    holds = feed(m, [(0.1, IN), (0.2, OUT), (0.25, OUT), (0.3, IN), (0.4, IN)])
    assert holds == [False] * 5


def test_excursion_is_held_once_out_for_the_debounce_time() -> None:
    m = machine()
    # last in-tolerance sample at 0.1 s: the excursion is timed from there.
    holds = feed(m, [(0.1, IN), (0.15, OUT), (0.25, OUT), (0.3, OUT)])
    assert holds == [False, False, False, True]


def test_hold_reports_changed_exactly_once() -> None:
    m = machine()
    changes = [m.update(t, d).changed for t, d in [(0.1, IN), (0.2, OUT), (0.31, OUT), (0.4, OUT)]]
    assert changes == [False, False, True, False]


def test_hold_reason_names_deviation_tolerance_and_debounce() -> None:
    m = machine()
    feed(m, [(0.1, IN), (0.2, OUT)])
    d = m.update(0.31, OUT)
    assert d.cause == "deviation"
    assert "deviation 4.00 mm > 3 mm" in d.reason and "debounce 0.2 s" in d.reason


def test_one_in_tolerance_sample_restarts_the_debounce() -> None:
    m = machine()
    holds = feed(m, [(0.1, OUT), (0.15, IN), (0.2, OUT), (0.3, OUT), (0.36, OUT)])
    assert holds == [False, False, False, False, True]


def test_invalid_samples_inside_an_excursion_do_not_restart_the_debounce() -> None:
    m = machine()
    holds = feed(m, [(0.1, IN), (0.15, OUT), (0.2, None), (0.25, None), (0.3, OUT)])
    assert holds == [False, False, False, False, True]


def test_zero_debounce_holds_on_the_first_out_of_tolerance_sample() -> None:
    m = machine(debounce_s=0.0)
    assert feed(m, [(0.1, IN), (0.2, OUT)]) == [False, True]


def test_out_of_tolerance_from_the_start_is_timed_from_beam_on() -> None:
    m = machine()
    assert feed(m, [(0.1, OUT), (0.2, OUT)]) == [False, True]


# ---------------------------------------------------------------- release rules

def held() -> BeamHoldMonitor:
    m = machine()
    feed(m, [(0.1, IN), (0.2, OUT), (0.35, OUT)])
    assert m.hold
    return m


def test_release_after_back_within_tolerance_for_the_release_time() -> None:
    m = held()
    holds = feed(m, [(0.4, IN), (0.5, IN), (0.65, IN), (0.7, IN)])
    assert holds == [True, True, True, False]


def test_release_reports_its_cause_and_reason() -> None:
    m = held()
    feed(m, [(0.4, IN)])
    d = m.update(0.7, IN)
    assert (d.hold, d.changed, d.cause) == (False, True, "in_tolerance")
    assert "within 2.50 mm for 0.300 s" in d.reason


def test_no_release_inside_the_release_margin() -> None:
    m = held()
    assert feed(m, [(0.4 + 0.1 * k, BAND) for k in range(20)]) == [True] * 20


def test_no_release_on_invalid_estimates_however_long() -> None:
    m = machine(max_image_age_s=10.0)
    feed(m, [(0.1, IN), (0.2, OUT), (0.35, OUT)])
    assert feed(m, [(0.4 + 0.1 * k, None) for k in range(30)]) == [True] * 30


def test_an_invalid_sample_restarts_the_release_time() -> None:
    m = held()
    holds = feed(m, [(0.4, IN), (0.6, None), (0.65, IN), (0.8, IN), (0.95, IN)])
    assert holds == [True, True, True, True, False]


def test_out_of_tolerance_sample_restarts_the_release_time() -> None:
    m = held()
    assert feed(m, [(0.4, IN), (0.6, OUT), (0.65, IN), (0.9, IN), (0.95, IN)]) == [
        True, True, True, True, False]


def test_initially_held_machine_releases_only_after_a_valid_in_tolerance_run() -> None:
    m = BeamHoldMonitor(BeamHoldPolicy(), 0.0, initially_held=True)
    assert feed(m, [(0.1, None), (0.2, IN), (0.4, IN), (0.5, IN)]) == [True, True, True, False]


# ---------------------------------------------------------------- fail safe

def test_no_valid_estimate_for_longer_than_max_image_age_holds() -> None:
    m = machine(max_image_age_s=0.5)
    holds = feed(m, [(0.1, IN), (0.3, None), (0.55, None), (0.65, None)])
    assert holds == [False, False, False, True]
    assert m.cause == "stale"


def test_stopped_image_stream_holds_on_tick_at_the_deadline() -> None:
    m = machine(max_image_age_s=0.5)
    m.update(0.1, IN)
    assert m.next_deadline() == pytest.approx(0.6)
    assert not m.tick(0.6).hold
    d = m.tick(0.601)
    assert d.hold and d.changed and "no valid target estimate for 0.501 s" in d.reason


def test_no_frame_at_all_after_beam_on_holds() -> None:
    m = machine(max_image_age_s=0.5)
    assert m.tick(0.51).hold


def test_a_valid_frame_that_arrives_too_late_is_stale() -> None:
    m = machine(max_image_age_s=0.5)
    d = m.update(0.1, IN, now=0.7)
    assert d.hold and d.cause == "stale"


def test_nan_estimate_counts_as_no_estimate() -> None:
    m = machine(max_image_age_s=0.2)
    holds = feed(m, [(0.1, IN), (0.2, (math.nan, 0.0, 0.0)), (0.35, (0.0, math.inf, 0.0))])
    assert holds == [False, False, True]


def test_out_of_order_sample_is_ignored() -> None:
    m = machine()
    feed(m, [(0.1, IN), (0.2, OUT), (0.45, OUT)])
    d = m.update(0.3, IN)
    assert d.hold and not d.changed and "out of order" in d.reason


def test_stale_hold_is_released_by_a_valid_in_tolerance_run() -> None:
    m = machine(max_image_age_s=0.2)
    m.update(0.1, IN)
    assert m.tick(0.5).hold
    assert feed(m, [(0.6, IN), (0.75, IN), (0.9, IN)]) == [True, True, False]


def test_deviation_with_wrong_number_of_components_is_a_programming_error() -> None:
    m = machine()
    with pytest.raises(ValueError, match="3 components"):
        m.update(0.1, (1.0, 2.0))


def test_a_gap_in_the_stream_holds_on_the_next_frame_even_without_tick() -> None:
    m = machine(max_image_age_s=0.5)
    feed(m, [(0.1, IN)])
    d = m.update(0.7, IN)
    assert d.hold and d.cause == "stale"


def test_a_gap_restarts_the_release_time() -> None:
    m = machine(max_image_age_s=0.5)
    feed(m, [(0.1, IN)])
    assert feed(m, [(0.7, IN), (0.9, IN), (1.0, IN)]) == [True, True, False]
