"""STOP is accepted in every state and pre-empts everything."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from drivers import couch_protocol as cp
from drivers.couch import CouchClient, CouchRefused
from safety.pose import Pose
from sim.couch import SimCouchController


async def _start_long_move(couch: CouchClient) -> None:
    echo = await couch.send_target(Pose(lat=200.0, long=-200.0, yaw=10.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    await asyncio.sleep(0.15)


async def test_stop_during_move_halts_all_axes(sim: SimCouchController, couch: CouchClient) -> None:
    await _start_long_move(couch)
    assert sim.is_moving
    await couch.stop()
    assert await sim.wait_halted(1.0)
    halted = sim.pose
    await asyncio.sleep(0.1)
    assert sim.pose == halted
    assert halted.lat < 200.0
    assert sim.state == "IDLE" and sim.echo_id == 0


async def test_stop_is_not_queued_behind_a_pending_request(sim: SimCouchController) -> None:
    async with CouchClient(sim.device_path, reply_timeout_s=2.0) as couch:
        echo = await couch.send_target(Pose(lat=100.0), validity_ms=2000)
        sim.delay_replies(0.5)
        go = asyncio.create_task(couch.go(echo.echo_id))
        await asyncio.sleep(0.05)
        stop = asyncio.create_task(couch.stop())
        while not sim.executed("STOP"):
            await asyncio.sleep(0.005)
        assert not go.done()  # STOP reached the controller while GO awaited its ACK
        await asyncio.gather(go, stop)


async def test_stop_nowait_writes_stop_immediately(
    sim: SimCouchController, couch: CouchClient
) -> None:
    await _start_long_move(couch)
    assert couch.stop_nowait()
    assert await sim.wait_halted(1.0)
    assert sim.executed("STOP")


async def test_stop_is_accepted_in_fault(sim: SimCouchController, couch: CouchClient) -> None:
    sim.force_fault("internal")
    await couch.stop()
    assert sim.state == "FAULT" and sim.executed("STOP")


async def test_stop_when_idle_is_acknowledged(sim: SimCouchController, couch: CouchClient) -> None:
    await couch.stop()
    assert sim.state == "IDLE"


async def test_stop_cancels_the_outstanding_echo(
    sim: SimCouchController, couch: CouchClient
) -> None:
    echo = await couch.send_target(Pose(lat=5.0), validity_ms=2000)
    await couch.stop()
    with pytest.raises(CouchRefused) as err:
        await couch.go(echo.echo_id)
    assert err.value.reason == "cancelled_echo"
    assert not sim.motion_log


async def test_stop_behind_a_truncated_frame_is_acted_on_at_once(make_raw_host: Any) -> None:
    # The partial-frame timeout is far away, so only the STOP look-ahead can explain a prompt STOP.
    async with SimCouchController(partial_frame_timeout_ms=10_000, heartbeat_timeout_ms=5000) as sim:
        host = make_raw_host(sim.device_path)
        truncated = cp.encode(1, cp.Target((0,) * 6, 100))[:9]  # claims 26 payload bytes
        host.write(truncated + cp.encode(2, cp.Stop()))
        deadline = time.monotonic() + 2.0
        while not sim.executed("STOP") and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert sim.executed("STOP")
