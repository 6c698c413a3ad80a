"""Each interlock input reaches the host as it is on the PLC, and listeners hear changes at once."""

from __future__ import annotations

import asyncio
import time
from functools import partial

import pytest

from daemon.plc_link import RoomInterlocks
from drivers.plc import INTERLOCK_INPUTS, PlcSnapshot, RoomPlcClient
from sim.plc import ROOM_INPUTS, SimRoomPlc

from .conftest import STALE_S


def input_is(name: str, closed: bool, snap: PlcSnapshot) -> bool:
    return snap.inputs[name].closed == closed


def closed_inputs(snap: PlcSnapshot) -> dict[str, bool]:
    return {name: state.closed for name, state in snap.inputs.items()}


async def test_idle_room_reads_all_closed_except_motion_enable(client: RoomPlcClient) -> None:
    snap = client.snapshot()
    assert snap.link_ok
    assert snap.open_inputs() == ("motion_enable_pressed",)


@pytest.mark.parametrize("name", ROOM_INPUTS)
async def test_each_room_input_is_read_from_the_plc(
    plc: SimRoomPlc, client: RoomPlcClient, name: str
) -> None:
    for closed in (not plc.input(name), plc.input(name)):
        plc.set_input(name, closed)
        snap = await client.wait_until(partial(input_is, name, closed), 2.0)
        expected = plc.inputs()
        assert closed_inputs(snap) == {n: expected[n] for n in INTERLOCK_INPUTS}


@pytest.mark.parametrize("name", ["imager_kv_source_parked", "imager_detector_parked"])
async def test_arm_parked_sensor_reading_open_is_reported_open(
    plc: SimRoomPlc, client: RoomPlcClient, name: str
) -> None:
    plc.set_input(name, False)
    snap = await client.wait_until(lambda s: not s.inputs[name].closed, 2.0)
    assert snap.open_inputs() == ("motion_enable_pressed", name)


async def test_input_flip_reaches_the_listener_within_a_few_poll_cycles(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    heard: list[tuple[float, bool]] = []
    client.add_listener(lambda s: heard.append((time.monotonic(), s.inputs["door_closed"].closed)))
    plc.open_door()
    flipped_at = plc.input_changes[-1][0]
    await client.wait_until(lambda s: not s.inputs["door_closed"].closed, 2.0)
    # Loose bound on a shared machine; the real figure comes from bench/plc_bench.py.
    assert heard and heard[0][1] is False
    assert heard[0][0] - flipped_at < 0.5


async def test_changed_at_records_when_the_host_saw_the_change(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    before = time.monotonic()
    plc.press_motion_enable()
    snap = await client.wait_until(lambda s: s.inputs["motion_enable_pressed"].closed, 2.0)
    assert before <= snap.inputs["motion_enable_pressed"].changed_at <= time.monotonic()
    assert snap.inputs["door_closed"].changed_at < before


async def test_heartbeat_alone_does_not_wake_listeners(plc: SimRoomPlc) -> None:
    # A generous staleness limit, so a stall of this shared machine cannot notify.
    async with RoomPlcClient(plc.host, plc.port, heartbeat_stale_s=1.0) as client:
        await client.wait_until(lambda s: s.link_ok, 5.0)
        heard: list[PlcSnapshot] = []
        client.add_listener(heard.append)
        first = client.snapshot().heartbeat
        await asyncio.sleep(0.1)
        assert heard == []
        assert client.snapshot().heartbeat != first


async def test_a_failing_listener_does_not_keep_news_from_the_others(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    def broken(_: PlcSnapshot) -> None:
        raise RuntimeError("listener bug")

    heard: list[PlcSnapshot] = []
    client.add_listener(broken)
    client.add_listener(heard.append)
    plc.open_door()
    await client.wait_until(lambda s: not s.inputs["door_closed"].closed, 2.0)
    assert heard and not heard[-1].inputs["door_closed"].closed


async def test_fault_code_is_reported(plc: SimRoomPlc, client: RoomPlcClient) -> None:
    plc.set_fault_code(7)
    snap = await client.wait_until(lambda s: s.fault_code == 7, 2.0)
    assert snap.link_ok


async def test_snapshot_is_judged_by_the_one_safety_rule(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    room = RoomInterlocks(client)
    plc.press_motion_enable()
    snap = await client.wait_until(lambda s: s.all_closed(), 2.0)
    verdict = room.verdict(snap)
    assert (verdict.open_interlocks, verdict.motion_enable_pressed,
            verdict.imager_arms_parked) == ((), True, True)
    plc.set_input("imager_detector_parked", False)
    snap = await client.wait_until(lambda s: not s.all_closed(), 2.0)
    assert room.verdict(snap).arm_reasons == ("imager detector arm not parked",)


async def test_idle_polling_is_slower_and_fast_polling_resumes_on_request(
    plc: SimRoomPlc,
) -> None:
    async with RoomPlcClient(plc.host, plc.port, idle_poll_interval_s=0.05,
                             heartbeat_stale_s=STALE_S) as client:
        await client.wait_until(lambda s: s.link_ok, 5.0)
        client.set_fast_poll(False)
        start = plc.requests_served
        await asyncio.sleep(0.3)
        idle = plc.requests_served - start
        client.set_fast_poll(True)
        start = plc.requests_served
        await asyncio.sleep(0.3)
        fast = plc.requests_served - start
        assert idle <= 8
        assert fast >= 3 * idle
