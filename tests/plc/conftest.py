"""Fixtures: a simulated room PLC on a real loopback Modbus TCP socket, and a client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from drivers.plc import RoomPlcClient
from sim.plc import SimRoomPlc

STALE_S = 0.25


@pytest.fixture
async def plc() -> AsyncIterator[SimRoomPlc]:
    async with SimRoomPlc(cycle_s=0.005, arm_travel_s=0.2) as sim:
        yield sim


@pytest.fixture
async def client(plc: SimRoomPlc) -> AsyncIterator[RoomPlcClient]:
    # 250 ms staleness rather than the 100 ms default: a stall of this shared test
    # machine must not look like a PLC fault in tests that expect a healthy link.
    async with RoomPlcClient(plc.host, plc.port, heartbeat_stale_s=STALE_S,
                             reconnect_min_s=0.02) as c:
        await c.wait_until(lambda s: s.link_ok, 5.0)
        yield c
