"""Short openings reach the host (docs/protocols/room-plc.md, "Short openings"): the PLC
holds every opening visible for at least 50 ms and counts it in registers 7-8, and
listeners hear every change of what the status block means, over real Modbus TCP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from pymodbus.client import AsyncModbusTcpClient

from daemon.plc_link import RoomInterlocks
from drivers.plc import MIN_OPEN_VISIBLE_S, PlcSnapshot, RoomPlcClient, StatusRegister
from sim.plc import SimRoomPlc


@pytest.fixture
async def raw(plc: SimRoomPlc) -> AsyncIterator[AsyncModbusTcpClient]:
    client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=1.0, retries=0,
                                  reconnect_delay=0)
    assert await client.connect()
    yield client
    client.close()


async def _block(raw: AsyncModbusTcpClient) -> list[int]:
    rr = await raw.read_holding_registers(0, count=9, device_id=1)
    assert not rr.isError()
    return list(rr.registers)


async def test_opening_shorter_than_50_ms_stays_open_on_the_wire_for_50_ms(
        plc: SimRoomPlc, raw: AsyncModbusTcpClient) -> None:
    plc.clear_records()
    plc.touch_collision_pad()
    plc.clear_collision_pad()  # a single-scan pulse (here: far shorter)
    assert not (await _block(raw))[StatusRegister.STATUS_BITS] >> 2 & 1
    await asyncio.sleep(MIN_OPEN_VISIBLE_S + 0.02)
    assert (await _block(raw))[StatusRegister.STATUS_BITS] >> 2 & 1
    (t_open, _, _), (t_close, _, closed) = plc.input_changes
    assert closed and t_close - t_open == pytest.approx(MIN_OPEN_VISIBLE_S)


async def test_each_opening_is_counted_in_its_inputs_4_bit_field() -> None:
    async with SimRoomPlc(cycle_s=0.005, min_open_s=0.0) as plc:
        client = AsyncModbusTcpClient(plc.host, port=plc.port, timeout=1.0, retries=0)
        assert await client.connect()
        try:
            for _ in range(2):
                plc.open_door()
                plc.close_door()
            plc.press_estop()  # door: 2 (bits 0-3), e-stop chain: 1 (bits 4-7)
            plc.set_input("imager_detector_parked", False)  # detector parked: bits 4-7 of reg 8
            rr = await client.read_holding_registers(0, count=9, device_id=1)
            assert rr.registers[7:9] == [0x0012, 0x0010]
        finally:
            client.close()


async def test_opening_counter_wraps_from_15_to_0() -> None:
    async with SimRoomPlc(cycle_s=0.005, min_open_s=0.0) as plc:
        for _ in range(17):
            plc.open_door()
            plc.close_door()
        assert plc.status_block()[StatusRegister.ROOM_OPENINGS] == 1


@pytest.fixture
async def quick_pulse_plc() -> AsyncIterator[SimRoomPlc]:
    # No pulse stretching: only the opening counter can tell the host.
    async with SimRoomPlc(cycle_s=0.005, min_open_s=0.0) as sim:
        yield sim


async def test_opening_between_two_polls_reaches_listeners_as_an_open_interlock(
        quick_pulse_plc: SimRoomPlc) -> None:
    plc = quick_pulse_plc
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.05,
                             heartbeat_stale_s=0.5) as client:
        room = RoomInterlocks(client)
        await client.wait_until(lambda s: s.link_ok and not room.open_interlocks(s), 5.0)
        heard: list[list[str]] = []
        client.add_listener(lambda s: heard.append(room.open_interlocks(s)))
        plc.open_door()
        plc.close_door()  # open for microseconds, well inside a 50 ms poll gap
        assert plc.input("door_closed")  # closed again before any poll
        await client.wait_until(lambda s: bool(heard), 1.0)
        assert heard[0] == [("door open for a moment: opened 1 time(s) since the previous "
                            "room PLC read (opening counter in register 7: 0 -> 1)")]


async def test_listeners_hear_when_the_momentary_opening_has_been_read_past(
        quick_pulse_plc: SimRoomPlc) -> None:
    plc = quick_pulse_plc
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.01,
                             heartbeat_stale_s=0.5) as client:
        room = RoomInterlocks(client)
        await client.wait_until(lambda s: s.link_ok and not room.open_interlocks(s), 5.0)
        heard: list[list[str]] = []
        client.add_listener(lambda s: heard.append(room.open_interlocks(s)))
        plc.open_door()
        plc.close_door()
        await client.wait_until(lambda s: len(heard) >= 2, 1.0)
        assert heard[0] and heard[1] == []


@pytest.mark.parametrize("register, value", [
    (StatusRegister.KV_SOURCE_POSITION, 65535),
    (StatusRegister.OUTPUT_ECHO, 1 << 5),
    (StatusRegister.ARM_OPENINGS, 0x0100),
], ids=["arm_position", "output_echo_reserved_bit", "opening_counter_reserved_bits"])
async def test_register_leaving_its_range_wakes_listeners_at_once(
        plc: SimRoomPlc, register: StatusRegister, value: int) -> None:
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.003,
                             heartbeat_stale_s=0.5) as client:
        room = RoomInterlocks(client)
        await client.wait_until(lambda s: s.link_ok and not room.open_interlocks(s), 5.0)
        heard: list[tuple[float, list[str]]] = []
        client.add_listener(lambda s: heard.append((time.monotonic(), room.open_interlocks(s))))
        forced_at = time.monotonic()
        plc.set_raw_register(register, value)
        await client.wait_until(lambda s: bool(heard), 1.0)
        at, reasons = heard[0]
        assert any(f"register {int(register)} = {value}" in r for r in reasons)
        # A few polls, not the 100 ms heartbeat staleness (generous for a loaded machine).
        assert at - forced_at < 0.08


async def test_an_idle_plc_with_only_the_heartbeat_moving_wakes_no_listener(
        plc: SimRoomPlc) -> None:
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.003,
                             heartbeat_stale_s=0.5) as client:
        RoomInterlocks(client)
        await client.wait_until(lambda s: s.link_ok, 5.0)
        await asyncio.sleep(0.05)
        heard: list[PlcSnapshot] = []
        client.add_listener(heard.append)
        await asyncio.sleep(0.3)
        assert heard == []


async def test_fresh_snapshot_sees_an_opening_made_after_the_last_poll(
        plc: SimRoomPlc) -> None:
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.1,
                             heartbeat_stale_s=0.5) as client:
        room = RoomInterlocks(client)
        await client.wait_until(lambda s: s.link_ok and not room.open_interlocks(s), 5.0)
        await room.fresh_snapshot()  # a poll just answered: the next is ~100 ms away
        plc.open_door()
        assert room.open_interlocks(room.snapshot()) == []  # the last poll predates it
        assert "door open" in room.open_interlocks(await room.fresh_snapshot())
