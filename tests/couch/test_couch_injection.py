"""Injected device faults show up where a host can see them."""

from __future__ import annotations

import pytest

from drivers.couch import CouchClient
from safety.pose import Pose
from sim.couch import SimCouchController


async def test_overshoot_leaves_translations_past_target_and_reports_it(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.overshoot(0.5)
    echo = await couch.send_target(Pose(lat=10.0, long=-4.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    assert await sim.wait_halted(5.0)
    assert (sim.pose.lat, sim.pose.long) == pytest.approx((10.5, -4.5))
    st = await couch.status()
    assert st.pose.lat == pytest.approx(10.5, abs=0.1)


async def test_silent_stall_ends_the_move_short_without_fault(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.stall_axis("vert", detect=False)
    echo = await couch.send_target(Pose(lat=5.0, vert=5.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    assert await sim.wait_halted(5.0)
    st = await couch.status()
    assert (st.state, st.fault_code) == ("IDLE", "none")
    assert st.pose.vert == pytest.approx(0.0, abs=0.1)  # only a read-back shows the miss


async def test_clear_injections_restores_normal_motion(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.inject(stall_axis="lat", overshoot_mm=1.0, echo_offset_mm=2.0)
    sim.clear_injections()
    echo = await couch.send_target(Pose(lat=3.0), validity_ms=2000)
    assert echo.target.lat == 3.0
    await couch.go(echo.echo_id)
    assert await sim.wait_halted(5.0)
    assert sim.pose.lat == pytest.approx(3.0)
