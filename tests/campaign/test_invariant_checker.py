"""The campaign's invariant checker catches what it claims to (synthetic records),
so that "zero violations" from the campaign means something."""

from __future__ import annotations

from typing import Any, NamedTuple

from safety.pose import Pose

from .invariants import Timing, check
from .rig import Injection

T = Timing(plc_stale_s=0.1, plc_reconnect_min_s=0.05, hold_timeout_s=0.15,
           couch_heartbeat_timeout_s=0.15)
SAFE = {"door_closed": True, "estop_chain_ok": True, "collision_pads_clear": True,
        "motion_enable_pressed": True, "imager_kv_source_parked": True,
        "imager_detector_parked": True, "imager_kv_source_moving": False,
        "imager_detector_moving": False}
TARGET = {"lat": 3.0, "long": 0.0, "vert": 0.0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0}


class Ex(NamedTuple):
    t: float
    kind: str
    details: dict[str, Any]


class Sample(NamedTuple):
    t: float
    pose: Pose
    moving: tuple[bool, ...]


def go(t: float) -> Ex:
    return Ex(t, "GO", {"echo_id": 1, "target": TARGET})


def moving(t0: float, t1: float) -> list[Sample]:
    """Motion samples every 5 ms from t0, idle from t1."""
    out, t = [Sample(t0 - 0.5, Pose(), (False,) * 6)], t0 + 0.005
    while t < t1:
        out.append(Sample(t, Pose(lat=1.0), (True,) + (False,) * 5))
        t += 0.005
    out.append(Sample(t1, Pose(**TARGET), (False,) * 6))
    return out


def run(executed: list[Ex], *, changes: list[tuple[float, str, bool]] = (),  # type: ignore[assignment]
        injections: list[Injection] = (), confirms: list[tuple[float, float, int]] | None = None,  # type: ignore[assignment]
        holds: list[float] | None = None, motion: list[Sample] | None = None) -> list[str]:
    return check(executed=executed, motion=motion or moving(1.0, 1.2), initial_inputs=SAFE,
                 input_changes=changes, injections=injections,
                 confirms=[(0.5, 0.51, 0)] if confirms is None else confirms,
                 holds_sent=[0.9 + 0.02 * i for i in range(40)] if holds is None else holds,
                 t0=0.0, t_end=5.0, timing=T).violations


def test_a_clean_confirmed_move_has_no_violation() -> None:
    assert run([go(1.0)]) == []


def test_go_while_the_door_has_been_open_is_a_violation() -> None:
    v = run([go(1.0)], changes=[(0.9, "door_closed", False)])
    assert len(v) == 1 and "door_closed open" in v[0]


def test_go_racing_an_input_change_within_the_reaction_allowance_is_not() -> None:
    assert run([go(1.0), Ex(1.01, "STOP", {})],
               changes=[(0.995, "door_closed", False)]) == []


def test_go_with_a_frozen_plc_heartbeat_past_the_staleness_limit_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(0.8, "plc_heartbeat_frozen", True)])
    assert any("heartbeat frozen" in x for x in v)


def test_go_just_after_the_plc_connection_was_dropped_is_a_violation() -> None:
    v = run([go(1.0)], injections=[Injection(0.96, "plc_drop", 1)])
    assert any("PLC connection dropped" in x for x in v)


def test_a_drop_that_closed_no_connection_opens_nothing() -> None:
    assert run([go(1.0)], injections=[Injection(0.96, "plc_drop", 0)]) == []


def test_go_without_hold_to_run_is_a_violation() -> None:
    v = run([go(1.0)], holds=[0.5])
    assert any("hold-to-run" in x for x in v)


def test_go_after_a_stop_without_a_fresh_confirmation_is_a_violation() -> None:
    v = run([Ex(0.7, "STOP", {}), go(1.0)])
    assert any("without a confirmation" in x for x in v)


def test_two_gos_for_one_confirmation_is_a_violation() -> None:
    motion = moving(1.0, 1.05) + moving(1.3, 1.35)[1:]
    v = run([go(1.0), go(1.3)], motion=motion)
    assert any("without a confirmation" in x for x in v)


def test_any_jog_is_a_violation() -> None:
    v = run([go(1.0), Ex(1.5, "JOG", {})])
    assert any("JOG" in x for x in v)


def test_a_move_not_stopped_within_the_bound_after_an_interlock_opens_is_a_violation() -> None:
    v = run([go(1.0), Ex(1.15, "STOP", {})], changes=[(1.05, "estop_chain_ok", False)])
    assert any("only after 100.0 ms" in x for x in v)


def test_a_move_stopped_promptly_after_an_interlock_opens_is_fine() -> None:
    assert run([go(1.0), Ex(1.06, "STOP", {})], changes=[(1.05, "estop_chain_ok", False)]) == []


def test_a_lost_stop_must_be_repeated_once_the_serial_line_is_back() -> None:
    # Door opens during 60 ms of serial silence: the STOP cannot arrive until the
    # line is back at 1.11 s; a move still running at 1.2 s was never stopped.
    inj = [Injection(1.05, "couch_silence", 0.06)]
    changes = [(1.06, "door_closed", False)]
    assert run([go(1.0), Ex(1.13, "STOP", {})], changes=changes, injections=inj) == []
    v = run([go(1.0)], changes=changes, injections=inj, motion=moving(1.0, 1.3))
    assert any("door_closed open" in x and "arrived" in x for x in v)


def test_a_move_already_at_its_target_counts_as_ended_at_once() -> None:
    motion = [Sample(0.5, Pose(**TARGET), (False,) * 6)]
    assert run([go(1.0)], changes=[(1.5, "door_closed", False)], motion=motion) == []
