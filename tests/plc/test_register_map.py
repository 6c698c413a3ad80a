"""The wire layout matches docs/protocols/room-plc.md (addresses written out as in the document)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from sim.plc import SimRoomPlc


@pytest.fixture
async def raw(plc: SimRoomPlc) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=1.0, retries=0,
                                  reconnect_delay=0)
    assert await client.connect()
    yield client
    client.close()


async def test_status_block_is_holding_registers_0_to_9_with_map_version_3(
    plc: SimRoomPlc, raw: AsyncModbusTcpClient
) -> None:
    plc.set_fault_code(42)
    plc.gantry.set_angle(270.25)
    rr = await raw.read_holding_registers(0, count=10, device_id=1)
    assert not rr.isError()
    (bits, _heartbeat, fault, kv_pos, det_pos, outputs, version, room_open, arm_open,
     gantry) = rr.registers
    # idle room: door, e-stop chain, pads closed (bits 0-2), arms parked (bits 4-5)
    assert bits == 0b0011_0111
    assert fault == 42
    assert (kv_pos, det_pos, outputs, version) == (0, 0, 0, 3)
    assert (room_open, arm_open) == (0, 0)  # nothing opened since the PLC started
    assert gantry == 27025  # 0.01 deg


async def test_status_block_ends_at_register_9(raw: AsyncModbusTcpClient) -> None:
    rr = await raw.read_holding_registers(0, count=11, device_id=1)
    assert rr.isError() and rr.exception_code == 2


async def test_input_registers_mirror_the_status_block(
    plc: SimRoomPlc, raw: AsyncModbusTcpClient
) -> None:
    plc.freeze_heartbeat()
    hr = await raw.read_holding_registers(0, count=10, device_id=1)
    ir = await raw.read_input_registers(0, count=10, device_id=1)
    assert hr.registers == ir.registers


async def test_discrete_inputs_0_to_7_mirror_the_status_bits(
    plc: SimRoomPlc, raw: AsyncModbusTcpClient
) -> None:
    plc.open_door()
    plc.press_motion_enable()
    rr = await raw.read_discrete_inputs(0, count=8, device_id=1)
    assert rr.bits[:8] == [False, True, True, True, True, True, False, False]


async def test_coils_0_to_3_are_beam_hold_lamp_and_arm_commands(
    plc: SimRoomPlc, raw: AsyncModbusTcpClient
) -> None:
    rr = await raw.write_coils(0, [True, False, True, False], device_id=1)
    assert not rr.isError()
    assert plc.coils() == {"beam_hold": True, "motion_permit_lamp": False,
                           "kv_source_extend": True, "detector_extend": False}
    echo = await raw.read_holding_registers(5, count=1, device_id=1)
    assert echo.registers == [0b0101]


async def test_status_registers_are_read_only(raw: AsyncModbusTcpClient) -> None:
    rr = await raw.write_register(1, 7, device_id=1)
    assert rr.isError() and rr.exception_code == 2


async def test_coil_writes_beyond_the_map_are_refused(
    plc: SimRoomPlc, raw: AsyncModbusTcpClient
) -> None:
    rr = await raw.write_coil(4, True, device_id=1)
    assert rr.isError() and rr.exception_code == 2
    assert not any(plc.coils().values())
