"""The standby poll rate (issue 13, item 7): a room with no session reads its PLC
seldom, its staleness limit spans four standby intervals, and leaving standby
reads at once and judges that read by the configured limit again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from daemon.plc_link import poll_rate
from drivers.plc import PlcSnapshot, RoomPlcClient
from sim.plc import SimRoomPlc

STALE_S = 0.1
STANDBY_S = 0.2


@pytest.fixture
async def standby_client(plc: SimRoomPlc) -> AsyncIterator[RoomPlcClient]:
    async with RoomPlcClient(plc.host, plc.port, poll_interval_s=0.005,
                             idle_poll_interval_s=0.02, standby_poll_interval_s=STANDBY_S,
                             heartbeat_stale_s=STALE_S) as c:
        await c.wait_until(lambda s: s.link_ok, 5.0)
        yield c


async def test_a_healthy_plc_polled_at_the_standby_rate_never_reads_as_stale(
        plc: SimRoomPlc, standby_client: RoomPlcClient) -> None:
    lost: list[PlcSnapshot] = []
    standby_client.add_listener(lambda s: lost.append(s) if not s.link_ok else None)
    standby_client.set_poll_rate("standby")
    start = plc.requests_served
    await asyncio.sleep(5 * STANDBY_S)
    assert lost == []
    assert plc.requests_served - start <= 7  # ~5 reads, not the idle rate's 50
    assert standby_client.heartbeat_stale_s == pytest.approx(4 * STANDBY_S)


async def test_a_frozen_heartbeat_in_standby_is_reported_within_four_standby_intervals(
        plc: SimRoomPlc, standby_client: RoomPlcClient) -> None:
    standby_client.set_poll_rate("standby")
    await asyncio.sleep(2 * STANDBY_S)
    plc.freeze_heartbeat()
    t0 = time.monotonic()
    await standby_client.wait_until(lambda s: not s.link_ok, 3.0)
    assert time.monotonic() - t0 <= 5 * STANDBY_S + 0.1


async def test_leaving_standby_reads_at_once_and_restores_the_configured_limit(
        plc: SimRoomPlc, standby_client: RoomPlcClient) -> None:
    standby_client.set_poll_rate("standby")
    await asyncio.sleep(2 * STANDBY_S)
    lost: list[PlcSnapshot] = []
    standby_client.add_listener(lambda s: lost.append(s) if not s.link_ok else None)
    start = plc.requests_served
    standby_client.set_poll_rate("fast")
    await asyncio.sleep(0.05)
    assert plc.requests_served - start >= 3  # the standby wait was cut short
    assert standby_client.heartbeat_stale_s == pytest.approx(STALE_S)
    assert lost == []  # the last standby read was not judged by the short limit


@pytest.mark.parametrize("via_idle", [False, True], ids=["straight", "via_idle"])
async def test_after_standby_the_faster_rate_holds_from_the_first_read_on(
        plc: SimRoomPlc, standby_client: RoomPlcClient, via_idle: bool) -> None:
    standby_client.set_poll_rate("standby")
    await asyncio.sleep(2.5 * STANDBY_S)  # mid-way through a standby wait
    if via_idle:
        standby_client.set_poll_rate("idle")
        await asyncio.sleep(0.05)
    standby_client.set_poll_rate("fast")
    await asyncio.sleep(0.01)
    start = plc.requests_served
    await asyncio.sleep(0.2)
    assert plc.requests_served - start >= 10  # 5 ms reads, not a standby-length gap
    assert standby_client.snapshot().link_ok


async def test_a_heartbeat_frozen_in_standby_reads_as_stale_at_the_first_fast_read(
        plc: SimRoomPlc, standby_client: RoomPlcClient) -> None:
    standby_client.set_poll_rate("standby")
    await asyncio.sleep(STANDBY_S)
    plc.freeze_heartbeat()
    await asyncio.sleep(STANDBY_S)  # frozen for less than the standby limit
    standby_client.set_poll_rate("fast")
    snap = await standby_client.wait_until(lambda s: not s.link_ok, 0.5)
    assert "stale" in snap.link_reason


@pytest.mark.parametrize(("state", "arms_still", "rate"), [
    ("STANDBY", True, "standby"),
    ("STANDBY", False, "idle"),  # an arm out or moving: the idle rate, limit 100 ms
    ("READY", True, "idle"),
    ("DONE", True, "idle"),
    ("SERVICE", True, "idle"),
    ("CONFIRMED", True, "fast"),
    ("MOVING", True, "fast"),
    ("VERIFYING", True, "fast"),
])
def test_the_poll_rate_follows_the_room_state_and_the_arms(
        state: str, arms_still: bool, rate: str) -> None:
    assert poll_rate(state, arms_still) == rate
