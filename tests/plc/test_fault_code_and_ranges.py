"""Fault codes and raw register values reach the host as the PLC sends them, over a real
Modbus TCP socket, and the host's one rule (safety.interlocks.judge_plc) distrusts them."""

from __future__ import annotations

from daemon.plc_link import RoomInterlocks
from drivers.plc import RoomPlcClient, StatusRegister
from sim.plc import SimRoomPlc

from .conftest import polled


async def test_arm_position_register_is_reported_as_read_never_clamped(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.set_raw_register(StatusRegister.KV_SOURCE_POSITION, 65535)
    snap = await polled(
        client,
        lambda s: s.registers is not None and s.registers[StatusRegister.KV_SOURCE_POSITION] > 0)
    assert snap.registers is not None
    assert snap.registers[StatusRegister.KV_SOURCE_POSITION] == 65535
    assert snap.arm_position_pct["kv_source"] == 6553.5


async def test_non_zero_fault_code_over_the_wire_is_an_open_interlock(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    room = RoomInterlocks(client)
    plc.set_fault_code(5)
    snap = await client.wait_until(lambda s: s.fault_code == 5, 2.0)
    assert room.open_interlocks(snap) == ["room PLC fault code 5"]
    plc.set_fault_code(0)
    snap = await client.wait_until(lambda s: s.fault_code == 0, 2.0)
    assert room.open_interlocks(snap) == []


async def test_listeners_hear_a_fault_code_at_once(plc: SimRoomPlc, client: RoomPlcClient) -> None:
    heard: list[int | None] = []
    client.add_listener(lambda s: heard.append(s.fault_code))
    plc.set_fault_code(5)
    await client.wait_until(lambda s: s.fault_code == 5, 2.0)
    assert heard[-1] == 5


async def test_out_of_range_arm_position_with_parked_switch_closed_is_not_parked(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    room = RoomInterlocks(client)
    plc.set_raw_register(StatusRegister.KV_SOURCE_POSITION, 65535)
    snap = await polled(client, lambda s: s.arm_position_pct["kv_source"] != 0.0)
    assert snap.inputs["imager_kv_source_parked"].closed  # the switch says parked
    parked, _moving = room.arms_state(snap)
    assert not parked
    text = "room PLC value out of range: register 3 = 65535, documented 0..1000"
    assert text in room.open_interlocks(snap)
    assert room.describe()["imager_arms_not_parked"] == [f"imager kv_source arm not parked: {text}"]


async def test_reserved_status_bits_set_make_every_input_read_open(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    room = RoomInterlocks(client)
    plc.press_motion_enable()
    await client.wait_until(lambda s: s.all_closed(), 2.0)
    plc.set_raw_register(StatusRegister.STATUS_BITS, plc.status_word() | 0x0100)
    snap = await client.wait_until(
        lambda s: s.registers is not None and s.registers[0] & 0x0100 != 0, 2.0)
    verdict = room.verdict(snap)
    assert "room PLC value out of range: register 0 = 319, documented 0..255" in (
        verdict.open_interlocks)
    assert not verdict.motion_enable_pressed
    assert not verdict.imager_arms_parked and verdict.imager_arms_moving


async def test_forced_register_is_released_back_to_the_simulated_room(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.set_raw_register(StatusRegister.DETECTOR_POSITION, 700)
    await polled(client, lambda s: s.arm_position_pct["detector"] == 70.0)
    plc.set_raw_register(StatusRegister.DETECTOR_POSITION, None)
    snap = await polled(client, lambda s: s.arm_position_pct["detector"] == 0.0)
    assert RoomInterlocks(client).arms_state(snap) == (True, False)
