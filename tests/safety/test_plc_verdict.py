"""judge_plc: the one rule for the room PLC. Anything the host cannot vouch for is open:
a non-zero fault code, a register outside its documented range (never clamped), an arm
whose parked switch and position disagree, a stale heartbeat, a link that is down."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safety.interlocks import (
    ArmReading,
    OpeningCounter,
    PlcReading,
    RegisterValue,
    judge_plc,
)

MAX_AGE = 0.1
NOW = 100.0


def position(address: int, value: int = 0) -> RegisterValue:
    return RegisterValue(address, value, 0, 1000)


def reading(**changes: object) -> PlcReading:
    """A healthy room: interlocks closed, enable held, both arms parked, no fault."""
    base = PlcReading(
        link_ok=True,
        link_reason="",
        taken_at=NOW,
        read_age_s=0.003,
        heartbeat_age_s=0.005,
        interlocks={"door_closed": True, "estop_chain_ok": True, "collision_pads_clear": True},
        motion_enable_pressed=True,
        arms=(ArmReading("kv_source", True, False, position(3)),
              ArmReading("detector", True, False, position(4))),
        fault_code=RegisterValue(2, 0, 0, 0xFFFF),
        registers=(RegisterValue(0, 0b0011_1111, 0, 255), RegisterValue(1, 4711, 0, 0xFFFF),
                   RegisterValue(5, 0, 0, 15), RegisterValue(6, 1, 1, 1)),
        gantry_angle=gantry(9000),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def gantry(value: int) -> RegisterValue:
    return RegisterValue(9, value, 0, 35999)


def kv_arm(value: int, switch_closed: bool = True) -> tuple[ArmReading, ArmReading]:
    return (ArmReading("kv_source", switch_closed, False, position(3, value)),
            ArmReading("detector", True, False, position(4)))


def test_healthy_room_has_nothing_open_enable_held_and_arms_parked() -> None:
    v = judge_plc(reading(), NOW, MAX_AGE)
    assert (v.open_interlocks, v.motion_enable_pressed, v.imager_arms_parked,
            v.imager_arms_moving, v.arm_reasons) == ((), True, True, False, ())


def test_non_zero_fault_code_is_an_open_interlock_named_with_its_code() -> None:
    v = judge_plc(reading(fault_code=RegisterValue(2, 5, 0, 0xFFFF)), NOW, MAX_AGE)
    assert v.open_interlocks == ("room PLC fault code 5",)


@pytest.mark.parametrize("code", [1, 5, 255, 0xFFFF])
def test_every_non_zero_fault_code_is_a_stop_condition(code: int) -> None:
    v = judge_plc(reading(fault_code=RegisterValue(2, code, 0, 0xFFFF)), NOW, MAX_AGE)
    assert f"room PLC fault code {code}" in v.open_interlocks


def test_fault_code_that_was_not_read_is_a_stop_condition() -> None:
    v = judge_plc(reading(fault_code=None), NOW, MAX_AGE)
    assert v.open_interlocks == ("room PLC fault code not read",)


def test_arm_position_beyond_its_range_is_not_parked_even_with_the_switch_closed() -> None:
    v = judge_plc(reading(arms=kv_arm(65535)), NOW, MAX_AGE)
    text = "room PLC value out of range: register 3 = 65535, documented 0..1000"
    assert not v.imager_arms_parked
    assert v.arm_reasons == (f"imager kv_source arm not parked: {text}",)


def test_arm_position_beyond_its_range_is_also_a_stop_condition() -> None:
    v = judge_plc(reading(arms=kv_arm(65535)), NOW, MAX_AGE)
    assert v.open_interlocks == (
        "room PLC value out of range: register 3 = 65535, documented 0..1000",)


def test_arm_far_from_parked_while_its_parked_switch_reads_closed_is_not_parked() -> None:
    v = judge_plc(reading(arms=kv_arm(500)), NOW, MAX_AGE)
    assert not v.imager_arms_parked
    assert v.arm_reasons == (
        ("imager kv_source arm not parked: parked switch closed but position 50.0 % "
         "(register 3 = 500), more than 2.0 % from parked"),)


def test_arm_within_the_parked_tolerance_with_its_switch_closed_is_parked() -> None:
    assert judge_plc(reading(arms=kv_arm(20)), NOW, MAX_AGE).imager_arms_parked
    assert not judge_plc(reading(arms=kv_arm(21)), NOW, MAX_AGE).imager_arms_parked


def test_arm_with_its_parked_switch_open_is_not_parked_whatever_its_position() -> None:
    v = judge_plc(reading(arms=kv_arm(0, switch_closed=False)), NOW, MAX_AGE)
    assert v.arm_reasons == ("imager kv_source arm not parked",)
    assert v.open_interlocks == ()  # before a move an extended arm is legitimate


def test_arm_position_not_read_is_not_parked() -> None:
    arms = (ArmReading("kv_source", True, False, None), ArmReading("detector", True, False,
                                                                   position(4)))
    assert judge_plc(reading(arms=arms), NOW, MAX_AGE).arm_reasons == (
        "imager kv_source arm position not read",)


def test_reading_without_arms_does_not_count_as_parked() -> None:
    assert not judge_plc(reading(arms=()), NOW, MAX_AGE).imager_arms_parked


def test_reserved_status_bits_set_make_nothing_in_the_block_vouched_for() -> None:
    regs = (RegisterValue(0, 0x013F, 0, 255), RegisterValue(6, 1, 1, 1))
    # The bits that are set say door closed, enable held, arms parked: none is believed.
    v = judge_plc(reading(registers=regs), NOW, MAX_AGE)
    assert v.open_interlocks == (
        "room PLC value out of range: register 0 = 319, documented 0..255",)
    assert not v.motion_enable_pressed
    assert not v.imager_arms_parked and v.imager_arms_moving


@pytest.mark.parametrize("register", [
    RegisterValue(5, 16, 0, 15),  # output echo with a reserved bit
    RegisterValue(6, 2, 1, 1),  # another map version
    RegisterValue(2, 70000, 0, 0xFFFF),  # cannot happen on the wire; still refused
])
def test_any_register_outside_its_documented_range_is_named_and_open(
        register: RegisterValue) -> None:
    v = judge_plc(reading(registers=(register,)), NOW, MAX_AGE)
    assert (f"room PLC value out of range: register {register.address} = {register.value}, "
            f"documented {register.low}..{register.high}") in v.open_interlocks
    assert not v.motion_enable_pressed and not v.imager_arms_parked


def test_open_interlocks_proper_use_the_one_text_table() -> None:
    closed = {"door_closed": False, "estop_chain_ok": False, "collision_pads_clear": False}
    assert judge_plc(reading(interlocks=closed), NOW, MAX_AGE).open_interlocks == (
        "door open", "emergency stop chain broken", "collision pad pressed")


def test_link_down_opens_everything_and_names_the_link_reason() -> None:
    v = judge_plc(reading(link_ok=False, link_reason="connection to room PLC lost"),
                  NOW, MAX_AGE)
    assert v.open_interlocks == ("room PLC: connection to room PLC lost",)
    assert not v.motion_enable_pressed and not v.imager_arms_parked and v.imager_arms_moving


def test_stale_heartbeat_opens_everything_even_on_a_live_link() -> None:
    v = judge_plc(reading(heartbeat_age_s=0.08), NOW + 0.03, MAX_AGE)
    assert v.open_interlocks[0] == "room PLC heartbeat stale 0.11 s > 0.10 s"
    assert not v.motion_enable_pressed and not v.imager_arms_parked


def test_reading_from_the_future_is_not_trusted() -> None:
    v = judge_plc(reading(), NOW - 1.0, MAX_AGE)
    assert v.open_interlocks[0].startswith("room PLC snapshot time is invalid")
    assert not v.motion_enable_pressed


@given(
    fault=st.integers(0, 0xFFFF),
    kv=st.integers(0, 0xFFFF),
    det=st.integers(0, 0xFFFF),
    word=st.integers(0, 0xFFFF),
    echo=st.integers(0, 0xFFFF),
    switches=st.tuples(st.booleans(), st.booleans()),
    angle=st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 35999, 36000])),
)
def test_motion_is_possible_only_when_every_raw_value_is_documented_and_consistent(
        fault: int, kv: int, det: int, word: int, echo: int,
        switches: tuple[bool, bool], angle: int) -> None:
    r = reading(
        fault_code=RegisterValue(2, fault, 0, 0xFFFF),
        arms=(ArmReading("kv_source", switches[0], False, position(3, kv)),
              ArmReading("detector", switches[1], False, position(4, det))),
        registers=(RegisterValue(0, word, 0, 255), RegisterValue(5, echo, 0, 15)),
        gantry_angle=gantry(angle),
    )
    v = judge_plc(r, NOW, MAX_AGE)
    couch_may_move = not v.open_interlocks and v.imager_arms_parked and v.motion_enable_pressed
    assert couch_may_move == (
        fault == 0 and word <= 255 and echo <= 15 and all(switches) and kv <= 20 and det <= 20
        and angle <= 35999
    )


# -------------------------------------------------- gantry angle (register 9, map version 3)


@pytest.mark.parametrize("value", [36000, 65535])
def test_gantry_angle_beyond_its_range_is_a_stop_condition_named_with_value_range_and_unit(
        value: int) -> None:
    v = judge_plc(reading(gantry_angle=gantry(value)), NOW, MAX_AGE)
    assert v.open_interlocks == (
        (f"room PLC value out of range: register 9 = {value}, documented 0..35999 "
         "(gantry angle in 0.01 deg)"),)


def test_gantry_angle_beyond_its_range_leaves_the_rest_of_the_block_vouched_for() -> None:
    # Like an arm position: the gantry encoder is a sensor of its own, not a sign of a
    # confused PLC. The stop condition stands; the other inputs are still read.
    closed = {"door_closed": False, "estop_chain_ok": True, "collision_pads_clear": True}
    v = judge_plc(reading(gantry_angle=gantry(36000), interlocks=closed), NOW, MAX_AGE)
    assert v.open_interlocks == (
        "door open",
        ("room PLC value out of range: register 9 = 36000, documented 0..35999 "
         "(gantry angle in 0.01 deg)"))
    assert v.motion_enable_pressed and v.imager_arms_parked and not v.imager_arms_moving


@pytest.mark.parametrize("value", [0, 9000, 35999])
def test_gantry_angle_within_its_range_opens_nothing(value: int) -> None:
    v = judge_plc(reading(gantry_angle=gantry(value)), NOW, MAX_AGE)
    assert (v.open_interlocks, v.motion_enable_pressed, v.imager_arms_parked) == ((), True, True)


def test_reading_without_a_gantry_angle_is_judged_as_before() -> None:
    assert judge_plc(reading(gantry_angle=None), NOW, MAX_AGE).open_interlocks == ()


# -------------------------------------------------- short openings (opening counters)
# An opening shorter than the host poll is seen only as a changed opening counter
# between two reads (docs/protocols/room-plc.md, "Short openings").


def counter(name: str, previous: int | None, current: int, register: int = 7) -> OpeningCounter:
    return OpeningCounter(name, register, previous, current)


@pytest.mark.parametrize("name, text", [
    ("door_closed", "door open"),
    ("estop_chain_ok", "emergency stop chain broken"),
    ("collision_pads_clear", "collision pad pressed"),
])
def test_interlock_opened_since_the_previous_read_is_a_stop_condition_though_closed_now(
        name: str, text: str) -> None:
    v = judge_plc(reading(openings=(counter(name, 3, 4),)), NOW, MAX_AGE)
    assert v.open_interlocks == (
        (f"{text} for a moment: opened 1 time(s) since the previous room PLC read "
        "(opening counter in register 7: 3 -> 4)"),)


def test_opening_counter_wrapping_from_15_to_0_counts_as_one_opening() -> None:
    v = judge_plc(reading(openings=(counter("door_closed", 15, 0),)), NOW, MAX_AGE)
    assert "opened 1 time(s)" in v.open_interlocks[0]


def test_unchanged_opening_counters_open_nothing() -> None:
    v = judge_plc(reading(openings=(counter("door_closed", 9, 9),
                                    counter("motion_enable_pressed", 2, 2))), NOW, MAX_AGE)
    assert (v.open_interlocks, v.motion_enable_pressed) == ((), True)


def test_opening_counter_without_a_previous_read_opens_nothing() -> None:
    # The first read on a link: nothing to compare (the heartbeat must be seen
    # changing before anything reads closed anyway).
    v = judge_plc(reading(openings=(counter("door_closed", None, 5),)), NOW, MAX_AGE)
    assert v.open_interlocks == ()


def test_motion_enable_released_since_the_previous_read_reads_released() -> None:
    v = judge_plc(reading(openings=(counter("motion_enable_pressed", 0, 1),)), NOW, MAX_AGE)
    assert not v.motion_enable_pressed
    assert v.open_interlocks == ()  # hold-to-run, not an interlock: released before a move is fine


def test_arm_parked_switch_opened_since_the_previous_read_is_not_parked() -> None:
    kv = ArmReading("kv_source", True, False, position(3),
                    counter("imager_kv_source_parked", 4, 5, register=8))
    v = judge_plc(reading(arms=(kv, ArmReading("detector", True, False, position(4)))),
                  NOW, MAX_AGE)
    assert not v.imager_arms_parked
    assert v.arm_reasons[0].startswith("imager kv_source arm not parked: "
                                       "imager_kv_source_parked open for a moment")


def test_opening_counter_register_out_of_range_stops_and_vouches_for_nothing() -> None:
    regs = (*reading().registers, RegisterValue(8, 0x0100, 0, 0xFF))
    v = judge_plc(reading(registers=regs), NOW, MAX_AGE)
    assert v.open_interlocks == (
        "room PLC value out of range: register 8 = 256, documented 0..255",)
    assert not v.motion_enable_pressed and not v.imager_arms_parked and v.imager_arms_moving
