"""Fixtures: a simulated room PLC on a real loopback Modbus TCP socket, and a client on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest

from drivers.plc import PlcSnapshot, RoomPlcClient
from sim.plc import SimRoomPlc

STALE_S = 0.25


async def polled(client: RoomPlcClient, predicate: Callable[[PlcSnapshot], bool],
                 timeout_s: float = 2.0) -> PlcSnapshot:
    """Poll the snapshot: values that change every PLC cycle (a turning gantry, a
    travelling arm's position) do not wake listeners, so wait_until would not see them."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = client.snapshot()
        if predicate(snap):
            return snap
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


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
