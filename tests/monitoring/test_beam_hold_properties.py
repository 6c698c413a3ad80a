"""Properties of the beam-hold state machine over random sample streams (hypothesis)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from safety.beam_hold import BeamHoldMonitor, BeamHoldPolicy

TIME_EPS_S = 1e-9  # safety.beam_hold's timing tolerance

Vec = tuple[float, float, float]
TOL = 3.0


def unit(draw: st.DrawFn) -> Vec:
    v = draw(st.tuples(*[st.floats(-1, 1)] * 3).filter(lambda v: math.hypot(*v) > 0.1))
    n = math.hypot(*v)
    return (v[0] / n, v[1] / n, v[2] / n)


@st.composite
def inside(draw: st.DrawFn, limit: float = TOL) -> Vec:
    u = unit(draw)
    r = draw(st.floats(0.0, limit - 1e-6))  # rounding must not push it out
    return (u[0] * r, u[1] * r, u[2] * r)


@st.composite
def outside(draw: st.DrawFn) -> Vec:
    u = unit(draw)
    r = draw(st.floats(TOL + 1e-3, 40.0))
    return (u[0] * r, u[1] * r, u[2] * r)


@st.composite
def excursion_case(draw: st.DrawFn) -> tuple[BeamHoldPolicy, float, float, float, float]:
    policy = BeamHoldPolicy(tolerance_mm=TOL, debounce_s=draw(st.floats(0.0, 1.0)),
                            max_image_age_s=10.0)
    period = draw(st.floats(0.02, 0.3))
    phase = draw(st.floats(0.0, 1.0)) * period
    onset = draw(st.floats(0.0, 2.0))
    return policy, period, phase, onset, draw(st.floats(0.0, 1.5))


@settings(max_examples=200, deadline=None)
@given(excursion_case(), st.data())
def test_any_excursion_longer_than_debounce_plus_one_frame_is_held(case, data) -> None:  # type: ignore[no-untyped-def]
    policy, period, phase, onset, extra = case
    duration = policy.debounce_s + period + 1e-6 + extra
    m = BeamHoldMonitor(policy, 0.0)
    held_at = None
    k = 0
    while True:
        t = phase + k * period
        k += 1
        if t >= onset + duration:
            break
        dev = data.draw(outside()) if t >= onset else data.draw(inside())
        if m.update(t, dev).hold and held_at is None:
            held_at = t
    assert held_at is not None, "excursion never held"
    assert onset <= held_at < onset + policy.debounce_s + period + 1e-9


@settings(max_examples=200, deadline=None)
@given(excursion_case(), st.data())
def test_excursion_shorter_than_debounce_minus_one_frame_never_holds(case, data) -> None:  # type: ignore[no-untyped-def]
    policy, period, phase, onset, _ = case
    duration = policy.debounce_s - period - 1e-6
    m = BeamHoldMonitor(policy, 0.0)
    for k in range(int((onset + 3.0) / period)):
        t = phase + k * period
        excursion = onset <= t < onset + duration
        dev = data.draw(outside()) if excursion else data.draw(inside())
        assert not m.update(t, dev).hold


@st.composite
def any_sample(draw: st.DrawFn) -> Vec | None:
    kind = draw(st.sampled_from(["in", "band", "out", "none"]))
    if kind == "none":
        return None
    if kind == "in":
        return draw(inside(TOL - 0.5))
    if kind == "band":
        u = unit(draw)
        r = draw(st.floats(TOL - 0.5 + 1e-3, TOL - 1e-6))
        return (u[0] * r, u[1] * r, u[2] * r)
    return draw(outside())


@st.composite
def stream(draw: st.DrawFn) -> tuple[BeamHoldPolicy, list[tuple[float, Vec | None]]]:
    policy = BeamHoldPolicy(tolerance_mm=TOL, debounce_s=draw(st.floats(0.0, 0.5)),
                            release_after_s=draw(st.floats(0.0, 0.5)),
                            max_image_age_s=draw(st.floats(0.05, 1.0)))
    steps = draw(st.lists(st.tuples(st.floats(0.0, 0.4), any_sample()), min_size=1, max_size=80))
    t = 0.0
    out = []
    for dt, s in steps:
        t += dt
        out.append((t, s))
    return policy, out


def clearly_in(p: BeamHoldPolicy, s: Vec | None) -> bool:
    return s is not None and p.exceeds(s, p.release_margin_mm) is None


@settings(max_examples=200, deadline=None)
@given(stream())
def test_release_only_after_a_run_of_valid_in_tolerance_estimates(case) -> None:  # type: ignore[no-untyped-def]
    policy, samples = case
    m = BeamHoldMonitor(policy, 0.0)
    for i, (t, s) in enumerate(samples):
        d = m.update(t, s)
        if d.changed and not d.hold:
            assert clearly_in(policy, s)
            # every sample in the last release_after_s was clearly in
            j = i
            # The monitor times with a 1 ns tolerance (float sums of frame periods), so
            # a delay within 1 ns of zero is zero: a sample at the same instant as the
            # release does not count as inside the window.
            while j > 0 and samples[j - 1][0] > t - policy.release_after_s + TIME_EPS_S:
                j -= 1
                assert clearly_in(policy, samples[j][1])


@settings(max_examples=200, deadline=None)
@given(stream())
def test_a_gap_in_valid_estimates_longer_than_max_image_age_holds(case) -> None:  # type: ignore[no-untyped-def]
    policy, samples = case
    m = BeamHoldMonitor(policy, 0.0)
    last_valid = 0.0
    for t, s in samples:
        d = m.update(t, s)
        if t - last_valid > policy.max_image_age_s + 1e-9:
            assert d.hold
        if s is not None:
            last_valid = t


@settings(max_examples=200, deadline=None)
@given(stream())
def test_changed_is_reported_exactly_when_the_hold_state_flips(case) -> None:  # type: ignore[no-untyped-def]
    policy, samples = case
    m = BeamHoldMonitor(policy, 0.0)
    before = m.hold
    for t, s in samples:
        d = m.update(t, s)
        assert d.changed == (d.hold != before)
        assert d.hold == m.hold
        before = d.hold
