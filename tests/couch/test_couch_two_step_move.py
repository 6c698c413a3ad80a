"""TARGET -> TARGET_ECHO -> GO: motion only on a fresh, current, unused echo."""

from __future__ import annotations

import asyncio

import pytest

from drivers.couch import CouchClient, CouchRefused
from safety.pose import Pose
from sim.couch import SimCouchController

MOVE = Pose(lat=10.0, long=-5.0, vert=2.0, yaw=0.5, pitch=1.5, roll=-1.0)


async def test_status_round_trip_reports_the_true_pose_within_noise(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.set_pose(Pose(lat=12.0, yaw=1.0))
    st = await couch.status()
    assert st.state == "IDLE" and st.fault_code == "none" and not st.any_moving
    assert st.pose.lat == pytest.approx(12.0, abs=0.1)
    assert st.pose.yaw == pytest.approx(1.0, abs=0.01)
    assert couch.latest_status == st


async def test_echo_names_the_requested_target(couch: CouchClient) -> None:
    echo = await couch.send_target(MOVE, validity_ms=2000)
    assert echo.echo_id >= 1
    assert echo.target == MOVE
    assert echo.validity_ms == 2000
    assert (await couch.status()).state == "ARMED"


async def test_the_echo_says_where_the_couch_was_and_that_it_was_at_rest_when_armed(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.set_pose(Pose(lat=12.0, yaw=1.0))
    echo = await couch.send_target(MOVE, validity_ms=2000)
    assert echo.pose.lat == pytest.approx(12.0, abs=0.1)
    assert echo.pose.yaw == pytest.approx(1.0, abs=0.01)
    assert not any(echo.moving)


async def test_the_echo_goes_out_before_the_armed_push(couch: CouchClient) -> None:
    """The host checks the echo's pose before GO: no push has to arrive first."""
    seen: list[object] = []
    couch.add_listener(seen.append)
    echo = await couch.send_target(MOVE, validity_ms=2000)
    assert not [e for e in seen if getattr(e, "state", None) == "ARMED"]
    for _ in range(100):  # the push follows the echo on the line
        if [e for e in seen if getattr(e, "state", None) == "ARMED"]:
            break
        await asyncio.sleep(0.005)
    armed = [e for e in seen if getattr(e, "state", None) == "ARMED"]
    assert armed and armed[0].received_at > echo.received_at  # type: ignore[attr-defined]


async def test_target_alone_moves_nothing(sim: SimCouchController, couch: CouchClient) -> None:
    await couch.send_target(MOVE, validity_ms=500)
    await asyncio.sleep(0.1)
    assert sim.executed("GO") == [] and not sim.motion_log
    assert sim.pose == Pose()


async def test_go_with_echo_moves_to_target(sim: SimCouchController, couch: CouchClient) -> None:
    echo = await couch.send_target(MOVE, validity_ms=2000)
    await couch.go(echo.echo_id)
    assert await sim.wait_halted(5.0)
    for axis in ("lat", "long", "vert", "yaw", "pitch", "roll"):
        assert sim.pose.get(axis) == pytest.approx(MOVE.get(axis), abs=1e-6)
    st = await couch.status()
    assert st.state == "IDLE"
    assert st.pose.lat == pytest.approx(MOVE.lat, abs=0.1)
    assert st.pose.pitch == pytest.approx(MOVE.pitch, abs=0.01)


async def test_go_pushes_status_while_moving(sim: SimCouchController, couch: CouchClient) -> None:
    seen: list[object] = []
    couch.add_listener(seen.append)
    echo = await couch.send_target(Pose(lat=10.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    assert await sim.wait_halted(5.0)
    await asyncio.sleep(0.05)
    states = [getattr(e, "state", None) for e in seen]
    assert "MOVING" in states
    assert couch.latest_status is not None and couch.latest_status.state == "IDLE"


async def test_go_with_expired_echo_is_refused_and_nothing_moves(
    sim: SimCouchController, couch: CouchClient
) -> None:
    echo = await couch.send_target(MOVE, validity_ms=50)
    await asyncio.sleep(0.15)
    with pytest.raises(CouchRefused) as err:
        await couch.go(echo.echo_id)
    assert err.value.reason == "expired_echo"
    assert sim.executed("GO") == [] and not sim.motion_log


async def test_go_with_unknown_echo_is_refused_and_nothing_moves(
    sim: SimCouchController, couch: CouchClient
) -> None:
    await couch.send_target(MOVE, validity_ms=2000)
    with pytest.raises(CouchRefused) as err:
        await couch.go(4242)
    assert err.value.reason == "unknown_echo"
    assert sim.executed("GO") == [] and not sim.motion_log


async def test_go_with_superseded_echo_is_refused_and_nothing_moves(
    sim: SimCouchController, couch: CouchClient
) -> None:
    first = await couch.send_target(MOVE, validity_ms=2000)
    await couch.send_target(Pose(lat=1.0), validity_ms=2000)
    with pytest.raises(CouchRefused) as err:
        await couch.go(first.echo_id)
    assert err.value.reason == "superseded_echo"
    assert sim.executed("GO") == [] and not sim.motion_log


async def test_refused_target_also_retires_the_previous_echo(
    sim: SimCouchController, couch: CouchClient
) -> None:
    first = await couch.send_target(MOVE, validity_ms=2000)
    with pytest.raises(CouchRefused):
        await couch.send_target(Pose(lat=900.0), validity_ms=2000)
    with pytest.raises(CouchRefused) as err:
        await couch.go(first.echo_id)
    assert err.value.reason == "superseded_echo"
    assert not sim.motion_log


async def test_echo_is_single_use(sim: SimCouchController, couch: CouchClient) -> None:
    echo = await couch.send_target(Pose(lat=2.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    assert await sim.wait_halted(5.0)
    samples = len(sim.motion_log)
    with pytest.raises(CouchRefused) as err:
        await couch.go(echo.echo_id)
    assert err.value.reason == "used_echo"
    await asyncio.sleep(0.05)
    assert len(sim.executed("GO")) == 1 and len(sim.motion_log) == samples


async def test_out_of_range_target_is_refused_with_axis_value_and_limit(
    sim: SimCouchController, couch: CouchClient
) -> None:
    with pytest.raises(CouchRefused) as err:
        await couch.send_target(Pose(long=700.0), validity_ms=2000)
    e = err.value
    assert (e.reason, e.field, e.value, e.limit, e.unit) == ("out_of_range", "long", 700.0, 600.0, "mm")
    assert "700.000 mm" in str(e) and "600.000 mm" in str(e)
    assert sim.executed("TARGET") == [] and sim.echo_id == 0


async def test_coupled_roll_limit_is_refused_not_clipped(couch: CouchClient) -> None:
    with pytest.raises(CouchRefused) as err:
        await couch.send_target(Pose(pitch=2.5, roll=2.5), validity_ms=2000)
    assert (err.value.field, err.value.limit) == ("roll", 2.0)


async def test_validity_beyond_controller_maximum_is_refused(couch: CouchClient) -> None:
    with pytest.raises(CouchRefused) as err:
        await couch.send_target(MOVE, validity_ms=60000)
    assert (err.value.field, err.value.value, err.value.unit) == ("validity", 60000, "ms")


async def test_target_while_moving_is_refused(sim: SimCouchController, couch: CouchClient) -> None:
    echo = await couch.send_target(Pose(lat=50.0), validity_ms=2000)
    await couch.go(echo.echo_id)
    with pytest.raises(CouchRefused) as err:
        await couch.send_target(Pose(lat=-50.0), validity_ms=2000)
    assert err.value.reason == "bad_state"
    await couch.stop()


async def test_echo_offset_is_visible_to_the_host_before_go(
    sim: SimCouchController, couch: CouchClient
) -> None:
    sim.offset_echo(3.0)
    echo = await couch.send_target(Pose(lat=10.0), validity_ms=2000)
    assert echo.target.lat == pytest.approx(13.0)
    assert sim.executed("GO") == []
