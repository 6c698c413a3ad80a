"""open_interlocks: anything not known closed and fresh blocks motion."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from safety.interlocks import (
    STANDARD_INPUTS,
    InterlockInput,
    InterlockSnapshot,
    open_interlocks,
)

MAX_AGE = 0.20


def snapshot(*inputs: InterlockInput, taken_at: float = 100.0, source_age: float = 0.01):
    return InterlockSnapshot(tuple(inputs), taken_at, source_age)


def all_closed(age: float = 0.01) -> list[InterlockInput]:
    return [InterlockInput(name, True, age) for name in STANDARD_INPUTS]


def test_all_inputs_closed_and_fresh_means_nothing_open() -> None:
    assert open_interlocks(snapshot(*all_closed()), now=100.05, max_age_s=MAX_AGE) == []


def test_open_door_is_reported_in_words() -> None:
    inputs = [InterlockInput("door_closed", False, 0.01)]
    assert open_interlocks(snapshot(*inputs), 100.0, MAX_AGE) == ["door open"]


def test_each_standard_input_has_a_readable_open_reason() -> None:
    inputs = [InterlockInput(name, False, 0.0) for name in STANDARD_INPUTS]
    assert open_interlocks(snapshot(*inputs), 100.0, MAX_AGE) == [
        "door open",
        "emergency stop chain broken",
        "collision pad pressed",
        "motion enable not pressed",
        "imager arms not parked",
    ]


def test_unknown_input_names_are_reported_generically() -> None:
    inputs = [InterlockInput("gantry_zone_clear", False, 0.0)]
    assert open_interlocks(snapshot(*inputs), 100.0, MAX_AGE) == ["gantry_zone_clear open"]


def test_stale_plc_heartbeat_blocks_motion_and_names_age_and_limit() -> None:
    snap = snapshot(*all_closed(), taken_at=100.0, source_age=0.30)
    assert open_interlocks(snap, now=100.05, max_age_s=MAX_AGE)[0] == (
        "plc heartbeat stale 0.35 s > 0.20 s"
    )


def test_closed_but_stale_input_counts_as_open() -> None:
    inputs = [InterlockInput("door_closed", True, 0.25)]
    assert open_interlocks(snapshot(*inputs), 100.0, MAX_AGE) == ["door_closed stale 0.25 s > 0.20 s"]


def test_time_since_the_snapshot_ages_every_input() -> None:
    reasons = open_interlocks(snapshot(*all_closed(age=0.05)), now=100.18, max_age_s=MAX_AGE)
    assert "door_closed stale 0.23 s > 0.20 s" in reasons
    assert "plc heartbeat stale 0.19 s > 0.20 s" not in reasons


def test_missing_required_input_counts_as_open() -> None:
    snap = snapshot(InterlockInput("door_closed", True, 0.0))
    assert open_interlocks(snap, 100.0, MAX_AGE, required=["door_closed", "estop_chain_ok"]) == [
        "estop_chain_ok missing from plc snapshot"
    ]


def test_snapshot_from_the_future_is_not_trusted() -> None:
    reasons = open_interlocks(snapshot(*all_closed(), taken_at=101.0), now=100.0, max_age_s=MAX_AGE)
    assert reasons[0].startswith("plc snapshot time is invalid")


def test_nan_age_counts_as_stale() -> None:
    inputs = [InterlockInput("door_closed", True, math.nan)]
    assert open_interlocks(snapshot(*inputs), 100.0, MAX_AGE) == ["door_closed stale nan s > 0.20 s"]


@given(
    closed=st.lists(st.booleans(), min_size=5, max_size=5),
    ages=st.lists(st.floats(0, 1), min_size=5, max_size=5),
    elapsed=st.floats(0, 1),
)
def test_nothing_open_only_when_every_input_is_closed_and_fresh(closed, ages, elapsed) -> None:
    inputs = [InterlockInput(n, c, a) for n, c, a in zip(STANDARD_INPUTS, closed, ages)]
    now = 100.0 + elapsed
    reasons = open_interlocks(snapshot(*inputs, source_age=0.0), now, MAX_AGE)
    elapsed = now - 100.0  # as the code sees it, rounding included
    fresh_and_closed = all(closed) and elapsed <= MAX_AGE and all(
        a + elapsed <= MAX_AGE for a in ages
    )
    assert (reasons == []) == fresh_and_closed
