"""The simulator's scenario API scripts input changes and records them for benchmarks."""

from __future__ import annotations

import asyncio

import pytest

from sim.plc import SimRoomPlc


async def test_scenario_runs_steps_in_order_with_their_delays(plc: SimRoomPlc) -> None:
    plc.clear_records()
    await plc.scenario([
        (0.0, plc.press_motion_enable),
        (0.05, "door_closed", False),
        (0.06, plc.close_door),  # after the 50 ms minimum visible opening
    ])
    changes = [(name, value) for _, name, value in plc.input_changes]
    assert changes == [("motion_enable_pressed", True), ("door_closed", False),
                       ("door_closed", True)]
    times = [t for t, _, _ in plc.input_changes]
    assert times[1] - times[0] >= 0.05 and times[2] - times[1] >= 0.06


async def test_setting_an_input_to_its_current_value_records_nothing(plc: SimRoomPlc) -> None:
    plc.clear_records()
    plc.close_door()
    assert plc.input_changes == []


async def test_unknown_input_name_is_refused(plc: SimRoomPlc) -> None:
    with pytest.raises(ValueError, match="unknown PLC input 'window_closed'"):
        plc.set_input("window_closed", True)


async def test_heartbeat_counts_plc_cycles(plc: SimRoomPlc) -> None:
    start = plc.heartbeat
    await asyncio.sleep(0.1)
    assert plc.heartbeat > start
    plc.freeze_heartbeat()
    frozen = plc.heartbeat
    await asyncio.sleep(0.05)
    assert plc.heartbeat == frozen


async def test_a_forced_arm_sensor_follows_the_arm_again_when_released(plc: SimRoomPlc) -> None:
    plc.set_input("imager_kv_source_parked", False)
    await asyncio.sleep(0.06)  # longer than the 50 ms minimum visible opening
    assert not plc.input("imager_kv_source_parked")
    plc.release_input("imager_kv_source_parked")
    assert plc.input("imager_kv_source_parked")


async def test_raw_register_refuses_an_address_outside_the_status_block(plc: SimRoomPlc) -> None:
    with pytest.raises(ValueError, match="PLC status register 10 is out of range 0..9"):
        plc.set_raw_register(10, 0)


async def test_raw_register_refuses_a_value_that_does_not_fit_16_bits(plc: SimRoomPlc) -> None:
    with pytest.raises(ValueError, match="register value 65536 does not fit 16 bits"):
        plc.set_raw_register(3, 65536)
