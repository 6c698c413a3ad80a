"""The gantry angle (register 9, map version 3) goes from the simulated PLC over a real
Modbus TCP socket into the driver's snapshot; a value outside 0..35999 is unknown to the
driver and unsafe to the host's one rule; a PLC of map version 2 is refused; the
simulator's `gantry` operation turns the gantry at the speed it is given."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from daemon.plc_link import RoomInterlocks
from drivers.plc import PlcSnapshot, RoomPlcClient, StatusRegister
from sim.control_ops import OpError, run_op
from sim.plc import SimRoomPlc
from sim.plc_gantry import SimGantry

from .conftest import STALE_S, polled


def link_down(snap: PlcSnapshot) -> bool:
    return not snap.link_ok


# ------------------------------------------------------------------ over the wire


async def test_gantry_angle_reaches_the_snapshot_over_the_wire(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    assert client.snapshot().gantry_deg == 0.0  # the simulator's gantry starts at 0
    plc.gantry.set_angle(123.45)
    snap = await polled(client, lambda s: s.gantry_deg != 0.0)
    assert snap.gantry_deg == 123.45
    assert snap.registers is not None and snap.registers[StatusRegister.GANTRY_ANGLE] == 12345


async def test_gantry_angle_just_below_360_is_within_the_map(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.gantry.set_angle(359.99)
    snap = await polled(client, lambda s: s.gantry_deg != 0.0)
    assert snap.gantry_deg == 359.99
    assert RoomInterlocks(client).open_interlocks(snap) == []


@pytest.mark.parametrize("raw", [36000, 65535])
async def test_gantry_register_out_of_range_is_unknown_and_unsafe_in_one_line(
    plc: SimRoomPlc, client: RoomPlcClient, raw: int
) -> None:
    room = RoomInterlocks(client)
    plc.gantry.set_angle(90.0)
    await polled(client, lambda s: s.gantry_deg == 90.0)
    plc.set_raw_register(StatusRegister.GANTRY_ANGLE, raw)
    snap = await polled(client, lambda s: s.gantry_deg is None)
    assert snap.link_ok  # the link is fine: only the angle is not vouched for
    assert snap.registers is not None and snap.registers[StatusRegister.GANTRY_ANGLE] == raw
    reasons = room.open_interlocks(snap)
    text = f"room PLC value out of range: register 9 = {raw}, documented 0..35999"
    assert [r for r in reasons if r.startswith(text)], reasons
    assert all("\n" not in r for r in reasons)
    plc.set_raw_register(StatusRegister.GANTRY_ANGLE, None)
    snap = await polled(client, lambda s: s.gantry_deg == 90.0)
    assert room.open_interlocks(snap) == []


async def test_gantry_angle_is_unknown_while_the_heartbeat_is_stale(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.gantry.set_angle(45.0)
    await polled(client, lambda s: s.gantry_deg == 45.0)
    plc.freeze_heartbeat()
    snap = await client.wait_until(link_down, 2.0)
    assert snap.gantry_deg is None
    assert snap.heartbeat_age_s >= STALE_S


async def test_gantry_angle_is_unknown_when_the_link_is_lost(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.gantry.set_angle(45.0)
    await polled(client, lambda s: s.gantry_deg == 45.0)
    plc.refuse_connections(True)
    snap = await client.wait_until(link_down, 2.0)
    assert snap.gantry_deg is None


# ------------------------------------------------------------------ map version 2


async def test_a_plc_reporting_map_version_2_is_refused(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    plc.set_raw_register(StatusRegister.MAP_VERSION, 2)
    snap = await client.wait_until(link_down, 2.0)
    assert snap.link_reason == "room PLC register map version 2, expected 3"
    assert snap.gantry_deg is None and snap.open_inputs() == tuple(snap.inputs)
    assert RoomInterlocks(client).open_interlocks(snap) == [
        "room PLC: room PLC register map version 2, expected 3"]


@pytest.fixture
async def plc_v2() -> AsyncIterator[tuple[str, int]]:
    """A PLC still programmed with map version 2: a 9-register status block, heartbeat
    frozen at 1 (a live heartbeat is not needed: the host refuses the block first)."""
    block = [0b0011_0111, 1, 0, 0, 0, 0, 2, 0, 0]
    device = SimDevice(1, simdata=(
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        [SimData(0, count=16, values=False, datatype=DataType.BITS)],
        # count=1: the values once (count repeats them), 9 registers and no more
        [SimData(0, count=1, values=block, datatype=DataType.REGISTERS, readonly=True)],
        [SimData(0, count=1, values=block, datatype=DataType.REGISTERS, readonly=True)],
    ))
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    try:
        yield "127.0.0.1", server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    finally:
        await server.shutdown()


async def test_a_map_version_2_plc_with_its_shorter_block_is_refused(
    plc_v2: tuple[str, int]
) -> None:
    host, port = plc_v2
    async with RoomPlcClient(host, port, heartbeat_stale_s=STALE_S) as client:
        snap = await client.wait_until(lambda s: "exception" in s.link_reason, 2.0)
        assert not snap.link_ok and snap.gantry_deg is None
        assert snap.link_reason == (
            "room PLC answered with Modbus exception code 2 (illegal data address: is its "
            "status block shorter than map version 3's 10 registers?)")
        assert all(not state.closed for state in snap.inputs.values())


# ------------------------------------------------------------------ the simulator's gantry


async def test_gantry_op_turns_the_gantry_at_the_given_speed_over_the_wire(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    room = SimpleNamespace(plc=plc, cache={})
    before = time.monotonic()
    out = await run_op(room, "gantry", {"angle_deg": 3.0, "speed_deg_s": 6.0})  # type: ignore[arg-type]
    after = time.monotonic()  # the turn started between `before` and `after`
    assert out["seconds"] == 0.5
    assert out["gantry"]["rotating"] and out["gantry"]["target_deg"] == 3.0
    seen: list[tuple[float, float]] = []  # (read_at, angle) of every distinct read
    while True:
        snap = client.snapshot()
        assert snap.gantry_deg is not None
        if not seen or snap.read_at != seen[-1][0]:
            seen.append((snap.read_at, snap.gantry_deg))
        if snap.gantry_deg == 3.0:
            break
        assert time.monotonic() - before < 3.0, f"gantry not at 3 deg in time: {seen[-5:]}"
        await asyncio.sleep(0.01)
    angles = [a for _, a in seen]
    assert angles == sorted(angles), "the angle on the wire went backwards"
    assert len({a for a in angles if 0.0 < a < 3.0}) >= 3, angles  # it turned, not jumped
    # 3 deg at 6 deg/s is 0.5 s: never earlier (no faster than asked) than the register's
    # resolution allows (it reads 3.00 from 2.995 deg on: 0.8 ms early), not much later.
    first_at_target = next(t for t, a in seen if a == 3.0)
    assert 0.5 - 0.01 / 6.0 <= first_at_target - before < 1.5
    # Every read in between follows 6 deg/s: not ahead of it, and not behind it by more
    # than a read may take (a fresh answer is one within the staleness limit).
    for t, a in seen:
        if 0.0 < a < 3.0:
            assert 6.0 * (t - after - STALE_S) - 0.01 <= a <= 6.0 * (t - before) + 0.01, (
                t - before, a)
    assert (await run_op(room, "gantry", {"angle_deg": 3.0}))["gantry"]["rotating"] is False  # type: ignore[arg-type]


async def test_gantry_op_sets_the_angle_at_once_and_reports_the_register(
    plc: SimRoomPlc, client: RoomPlcClient
) -> None:
    room = SimpleNamespace(plc=plc, cache={})
    out = await run_op(room, "gantry", {"angle_deg": 180.0})  # type: ignore[arg-type]
    assert out["seconds"] == 0.0
    assert out["gantry"]["angle_deg"] == 180.0 and out["gantry"]["register"] == 18000
    assert "register 9" in out["gantry"]["note"]
    snap = await polled(client, lambda s: s.gantry_deg == 180.0)
    assert RoomInterlocks(client).open_interlocks(snap) == []


async def test_gantry_op_in_a_room_without_plc_keeps_the_gantry_in_the_world() -> None:
    room = SimpleNamespace(plc=None, cache={})
    out = await run_op(room, "gantry", {"angle_deg": 30.0})  # type: ignore[arg-type]
    assert out["gantry"]["angle_deg"] == 30.0 and "no PLC" in out["gantry"]["note"]
    assert room.cache["gantry"].angle_deg() == 30.0


@pytest.mark.parametrize("args, expect", [
    ({"angle_deg": 90.0, "speed_deg_s": float("nan")}, "not a finite number"),
    ({"angle_deg": 90.0, "speed_deg_s": float("inf")}, "not a finite number"),
    ({"angle_deg": 90.0, "speed_deg_s": 0.0}, "speed_deg_s: 0.0 deg/s must be above 0"),
    ({"angle_deg": 90.0, "speed_deg_s": -6.0}, "must be above 0"),
    ({"angle_deg": 90.0, "speed_deg_s": 100.0}, "exceeds the limit 24.0 deg/s"),
    ({"angle_deg": 360.0, "speed_deg_s": 6.0}, "360.0 deg must be below 360"),
    ({"angle_deg": 90.0, "speed_deg_s": "6"}, "valid number"),
])
def test_gantry_op_refuses_bad_arguments_in_one_line(args: dict, expect: str) -> None:
    # Arguments are validated before the room is touched, so no room is needed here.
    with pytest.raises(OpError) as info:
        asyncio.run(run_op(None, "gantry", args))  # type: ignore[arg-type]
    assert expect in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------ the gantry model


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_gantry_turns_at_constant_speed_either_way_and_stops_at_the_target() -> None:
    clock = Clock()
    g = SimGantry(90.0, clock=clock)
    assert g.rotate_to(80.0, 5.0) == 2.0
    clock.t += 1.0
    assert g.angle_deg() == 85.0 and g.rotating() and g.register_value() == 8500
    clock.t += 5.0
    assert g.angle_deg() == 80.0 and not g.rotating()
    g.rotate_to(100.0, 10.0)
    clock.t += 1.0
    assert g.angle_deg() == 90.0


def test_a_new_rotation_continues_from_where_the_gantry_is() -> None:
    clock = Clock()
    g = SimGantry(0.0, clock=clock)
    g.rotate_to(90.0, 6.0)
    clock.t += 5.0
    g.rotate_to(0.0, 6.0)  # turned back at 30 deg
    clock.t += 1.0
    assert g.angle_deg() == 24.0


def test_the_register_wraps_just_below_360_to_0() -> None:
    assert SimGantry(359.996).register_value() == 0
    assert SimGantry(359.994).register_value() == 35999


@pytest.mark.parametrize("angle", [math.nan, math.inf, -0.5, 360.0])
def test_gantry_refuses_an_angle_outside_the_circle(angle: float) -> None:
    with pytest.raises(ValueError, match="gantry angle .* deg is out of range 0..360 deg"):
        SimGantry(angle)
    with pytest.raises(ValueError, match="out of range"):
        SimGantry().rotate_to(angle, 6.0)


@pytest.mark.parametrize("speed", [math.nan, math.inf, 0.0, -1.0, 25.0])
def test_gantry_refuses_a_speed_no_gantry_has(speed: float) -> None:
    g = SimGantry(10.0)
    with pytest.raises(ValueError, match="gantry speed .* deg/s is out of range 0..24 deg/s"):
        g.rotate_to(20.0, speed)
    assert g.angle_deg() == 10.0 and not g.rotating()
