"""The host heartbeat's rate (issue 13, item 7): slower in STANDBY, where nothing
can move, and back to the motion rate at once when a session opens."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from daemon.config import CouchLinkConfig
from daemon.main import follow_heartbeat_rate
from drivers import couch_protocol as cp
from drivers.couch import CouchClient
from sim.couch import SimCouchController


class _Tx:
    """The heartbeats the driver wrote to the line, with their times."""

    def __init__(self, couch: CouchClient) -> None:
        self.times: list[float] = []
        couch.tap = self._on_frame

    def _on_frame(self, direction: str, frame: bytes) -> None:
        if direction != "tx":
            return
        for f in cp.FrameDecoder().feed(frame):
            if isinstance(f, cp.Frame) and f.type == cp.MsgType.HEARTBEAT:
                self.times.append(time.monotonic())

    def since(self, t0: float) -> int:
        return sum(1 for t in self.times if t >= t0)


async def test_a_slower_heartbeat_goes_out_at_that_rate(
        sim: SimCouchController, couch: CouchClient) -> None:
    tx = _Tx(couch)
    couch.set_heartbeat_interval(0.1)
    await asyncio.sleep(0.15)  # the current 50 ms wait ends first
    t0 = time.monotonic()
    await asyncio.sleep(1.0)
    assert 8 <= tx.since(t0) <= 12
    assert sim.state != "FAULT"  # twice per 250 ms watchdog still keeps it content


async def test_a_faster_heartbeat_takes_effect_at_once(
        sim: SimCouchController, couch: CouchClient) -> None:
    tx = _Tx(couch)
    couch.set_heartbeat_interval(0.125)
    await asyncio.sleep(0.3)
    t0 = time.monotonic()
    couch.set_heartbeat_interval(0.05)
    await asyncio.sleep(0.03)
    assert tx.since(t0) >= 1  # not after the rest of a 125 ms wait


@pytest.mark.parametrize("interval", [0.0, -0.05, float("nan")])
def test_a_heartbeat_interval_that_is_not_positive_is_refused(interval: float) -> None:
    client = CouchClient("/dev/null")
    with pytest.raises(ValueError, match="must be > 0"):
        client.set_heartbeat_interval(interval)


class _Couch:
    def __init__(self) -> None:
        self.intervals: list[float] = []

    def set_heartbeat_interval(self, interval_s: float) -> None:
        self.intervals.append(interval_s)


def test_the_heartbeat_follows_the_room_state() -> None:
    link = CouchLinkConfig(port="/dev/x")
    room = SimpleNamespace(transition_listeners=[], workflow=SimpleNamespace(state="STANDBY"))
    couch = _Couch()
    follow_heartbeat_rate(room, couch, link)  # type: ignore[arg-type]
    for state in ("READY", "CONFIRMED", "MOVING", "DONE", "STANDBY", "SERVICE"):
        for cb in room.transition_listeners:
            cb(state)
    assert couch.intervals == [link.standby_heartbeat_interval_s] + [
        link.heartbeat_interval_s] * 4 + [link.standby_heartbeat_interval_s,
                                          link.heartbeat_interval_s]
