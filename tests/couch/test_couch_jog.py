"""Service JOG: one axis, reduced speed, only from IDLE, stops by itself."""

from __future__ import annotations

import asyncio

import pytest

from drivers.couch import CouchClient, CouchRefused
from safety.pose import Pose
from sim.couch import SimCouchController


async def test_jog_moves_one_axis_a_little_and_stops_by_itself(
    sim: SimCouchController, couch: CouchClient
) -> None:
    await couch.jog("vert", 5.0, 200)  # 10 % of 100 mm/s at speed scale 5 allows 10 mm/s
    assert await sim.wait_halted(1.0)
    p = sim.pose
    assert 0.3 < p.vert < 1.5
    assert (p.lat, p.long, p.yaw, p.pitch, p.roll) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert sim.state == "IDLE"


async def test_jog_faster_than_service_speed_is_refused(
    sim: SimCouchController, couch: CouchClient
) -> None:
    with pytest.raises(CouchRefused) as err:
        await couch.jog("lat", 50.0, 100)
    e = err.value
    assert (e.reason, e.field, e.value, e.limit, e.unit) == (
        "out_of_range", "lat jog velocity", 50.0, 10.0, "mm/s")
    assert sim.executed("JOG") == []


async def test_jog_while_a_target_is_armed_is_refused(
    sim: SimCouchController, couch: CouchClient
) -> None:
    await couch.send_target(Pose(lat=1.0), validity_ms=2000)
    with pytest.raises(CouchRefused) as err:
        await couch.jog("lat", 1.0, 100)
    assert err.value.reason == "bad_state"
    await asyncio.sleep(0.05)
    assert not sim.motion_log


async def test_jog_longer_than_allowed_is_refused(couch: CouchClient) -> None:
    with pytest.raises(CouchRefused) as err:
        await couch.jog("roll", 0.1, 5000)
    assert (err.value.field, err.value.limit) == ("jog duration", 2000)
