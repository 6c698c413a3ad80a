"""The controller watches the host heartbeat itself; FAULT needs an explicit RESET."""

from __future__ import annotations

import asyncio

import pytest

from drivers.couch import CouchClient, CouchRefused
from safety.pose import Pose
from sim.couch import SimCouchController


async def test_heartbeat_keeps_an_idle_controller_out_of_fault() -> None:
    async with (
        SimCouchController(heartbeat_timeout_ms=250) as sim,
        CouchClient(sim.device_path),
    ):
        await asyncio.sleep(0.6)
        assert sim.state == "IDLE"


async def test_lost_host_heartbeat_stops_the_couch_and_faults() -> None:
    # heartbeat_interval_s=0: a host that falls silent after its last command.
    async with (
        SimCouchController(speed_scale=5.0, heartbeat_timeout_ms=200) as sim,
        CouchClient(sim.device_path, heartbeat_interval_s=0) as couch,
    ):
        echo = await couch.send_target(Pose(lat=200.0), validity_ms=2000)
        await couch.go(echo.echo_id)
        await asyncio.sleep(0.05)
        assert sim.is_moving
        assert await sim.wait_halted(2.0)
        assert (sim.state, sim.fault_code) == ("FAULT", "heartbeat_lost")
        assert sim.pose.lat < 200.0
        st = await couch.status()
        assert (st.state, st.fault_code) == ("FAULT", "heartbeat_lost")


async def test_heartbeat_loss_cancels_the_outstanding_echo() -> None:
    async with (
        SimCouchController(heartbeat_timeout_ms=150) as sim,
        CouchClient(sim.device_path, heartbeat_interval_s=0) as couch,
    ):
        echo = await couch.send_target(Pose(lat=5.0), validity_ms=5000)
        await asyncio.sleep(0.4)
        assert sim.state == "FAULT"
        await couch.reset()
        with pytest.raises(CouchRefused) as err:
            await couch.go(echo.echo_id)
        assert err.value.reason == "cancelled_echo"
        assert not sim.motion_log


async def test_closing_the_host_link_faults_the_controller() -> None:
    async with SimCouchController(heartbeat_timeout_ms=150) as sim:
        async with CouchClient(sim.device_path):
            pass
        await asyncio.sleep(0.4)
        assert (sim.state, sim.fault_code) == ("FAULT", "heartbeat_lost")


async def test_reset_clears_fault_without_motion(sim: SimCouchController, couch: CouchClient) -> None:
    sim.force_fault("internal")
    before = sim.pose
    await couch.reset()
    st = await couch.status()
    assert (st.state, st.fault_code) == ("IDLE", "none")
    await asyncio.sleep(0.05)
    assert sim.pose == before and not sim.motion_log


async def test_motion_commands_are_refused_in_fault(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.force_fault("internal")
    with pytest.raises(CouchRefused) as err:
        await couch.send_target(Pose(lat=1.0), validity_ms=1000)
    assert err.value.reason == "bad_state"
    with pytest.raises(CouchRefused):
        await couch.jog("lat", 1.0, 100)


async def test_stalled_axis_faults_with_following_error(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.stall_axis("long")
    echo = await couch.send_target(Pose(lat=20.0, long=20.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    await asyncio.sleep(0.6)
    st = await couch.status()
    assert (st.state, st.fault_code) == ("FAULT", "following_error")
    assert st.faults == (False, True, False, False, False, False)
    assert sim.pose.long == 0.0
