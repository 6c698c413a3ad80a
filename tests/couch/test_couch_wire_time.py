"""The simulated couch line takes a frame's real wire time (8N1, 10 bit times a byte)
in each direction, so latencies measured on the device records include it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers import couch_protocol as cp
from safety.pose import AXES, ROTATION_AXES, Pose
from sim.couch import SimCouchController
from sim.room import SimRoom
from sim.room_description import RoomDescription, parse_description
from sim.serial_wire import SerialWire, wire_time_s
from sim.stack import SimulatedRoom

SLOW = 9600  # slow enough that the wire time dwarfs scheduling noise


def _wire(n_bytes: int, baud: int) -> float:
    return n_bytes * 10 / baud


async def _until(cond: Callable[[], Any], timeout_s: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (got := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.001)
    return got


def _target(pose: Pose, validity_ms: int = 1000) -> cp.Target:
    units = tuple("deg" if a in ROTATION_AXES else "mm" for a in AXES)
    return cp.Target(cp.positions_to_wire(pose.as_tuple(), AXES, units), validity_ms)


def _received(sim: SimCouchController, kind: str) -> float:
    return next(r.t for r in sim.frames_received if r.kind == kind)


def test_wire_time_is_ten_bit_times_a_byte() -> None:
    assert wire_time_s(1, 115200) == pytest.approx(86.8e-6, rel=1e-3)
    assert wire_time_s(40, 9600) == pytest.approx(0.041667, rel=1e-4)


async def test_bytes_written_back_to_back_queue_on_the_wire() -> None:
    got: list[tuple[bytes, float]] = []
    wire = SerialWire(SLOW, lambda data, t: got.append((data, t)))
    t0 = time.monotonic()
    first = wire.send(b"x" * 33, t0)
    second = wire.send(b"y" * 7, t0)  # written at the same moment: waits for the first
    assert first == pytest.approx(t0 + _wire(33, SLOW))
    assert second == pytest.approx(t0 + _wire(40, SLOW))
    assert not got  # nothing is there before its last byte is
    await _until(lambda: len(got) == 2)
    assert [d for d, _ in got] == [b"x" * 33, b"y" * 7]
    assert time.monotonic() >= second


@pytest.mark.parametrize("baud", [SLOW, 115200])
async def test_a_host_frame_is_received_its_wire_time_after_it_was_written(
    baud: int, make_raw_host: Any
) -> None:
    async with SimCouchController(baudrate=baud, heartbeat_timeout_ms=5000) as sim:
        host = make_raw_host(sim.device_path)
        frame = cp.encode(1, _target(Pose(lat=5.0)))
        assert len(frame) == 33
        t_write = time.monotonic()
        host.write(frame)
        t_rx = await _until(lambda: sim.frames_received and _received(sim, "TARGET"))
        assert t_rx - t_write >= _wire(33, baud)  # 34.4 ms at 9600, 2.9 ms at 115200
        # The device-side record of what the frame did carries the same time.
        assert sim.executed("TARGET")[0].t == t_rx


async def test_a_controller_frame_reaches_the_host_its_wire_time_after_it_was_sent(
    make_raw_host: Any
) -> None:
    async with SimCouchController(baudrate=SLOW, heartbeat_timeout_ms=5000) as sim:
        host = make_raw_host(sim.device_path)
        seq = host.send(cp.StatusRequest())
        reply = asyncio.create_task(host.reply(seq, timeout_s=2.0))
        await _until(lambda: sim.frames_received)
        t_request = _received(sim, "STATUS_REQ")  # the STATUS is built and sent then
        assert isinstance(await reply, cp.Status)
        # 49 bytes: 51 ms at 9600 before the host can have all of it.
        assert time.monotonic() - t_request >= _wire(49, SLOW)


async def test_a_stop_written_behind_a_long_frame_waits_for_it(make_raw_host: Any) -> None:
    async with SimCouchController(baudrate=SLOW, heartbeat_timeout_ms=5000) as sim:
        host = make_raw_host(sim.device_path)
        t_write = time.monotonic()
        host.write(cp.encode(1, _target(Pose())))  # 33 bytes
        host.write(cp.encode(2, cp.Stop()))  # 7 bytes, written straight after
        await _until(lambda: sim.executed("STOP"))
        kinds = [r.kind for r in sim.frames_received]
        assert kinds == ["TARGET", "STOP"]  # in wire order
        # 40 bytes at 9600: the STOP is whole on the couch 41.7 ms after it was written.
        assert sim.executed("STOP")[0].t - t_write >= _wire(40, SLOW)


async def test_the_two_directions_are_separate_wires(make_raw_host: Any) -> None:
    async with SimCouchController(baudrate=SLOW, heartbeat_timeout_ms=5000) as sim:
        host = make_raw_host(sim.device_path)
        host.send(cp.StatusRequest())
        await _until(lambda: sim.frames_received)
        # A 49-byte STATUS is now going out for 51 ms; a STOP coming in does not wait for it.
        t_write = time.monotonic()
        host.send(cp.Stop())
        t_stop = (await _until(lambda: sim.executed("STOP")))[0].t
        assert _wire(7, SLOW) <= t_stop - t_write < _wire(49, SLOW)


async def test_a_stop_during_a_move_is_acted_on_when_its_last_byte_arrives(
    make_raw_host: Any
) -> None:
    async with SimCouchController(baudrate=SLOW, heartbeat_timeout_ms=5000,
                                  speed_scale=5.0) as sim:
        host = make_raw_host(sim.device_path)
        seq = host.send(_target(Pose(lat=100.0), 2000))
        echo = await host.reply(seq)
        assert isinstance(echo, cp.TargetEchoMsg)
        host.send(cp.Go(echo.echo_id))
        await _until(lambda: sim.is_moving)
        t_write = time.monotonic()
        host.send(cp.Stop())
        await _until(lambda: sim.executed("STOP"))
        assert sim.executed("STOP")[0].t - t_write >= _wire(7, SLOW)
        assert await sim.wait_halted(2.0)


def test_the_simulated_room_writes_its_own_line_speed_into_igrtds_config(
    tmp_path: Path
) -> None:
    with SimRoom(couch_kwargs={"baudrate": 460800}) as room:
        assert room.couch.baudrate == 460800
        assert room.room_config(tmp_path)["couch"]["baudrate"] == 460800
    with SimRoom() as room:  # the default is igrtd's default
        assert room.room_config(tmp_path)["couch"]["baudrate"] == cp.DEFAULT_BAUDRATE


def test_a_room_description_names_one_line_speed_for_both_ends() -> None:
    d = RoomDescription.model_validate(
        {"format": "igrt-sim-room/1", "couch": {"link": {"baudrate": 460800}}})
    room = SimulatedRoom(d)
    room.couch = SimCouchController(baudrate=d.couch.link.baudrate)  # as start() makes it
    assert room._igrtd_config()["couch"]["baudrate"] == room.couch.baudrate == 460800
    with pytest.raises(ValueError, match="115201 baud"):
        parse_description('{"format": "igrt-sim-room/1", "couch": {"link": {"baudrate": 115201}}}')
