"""Fixtures: a simulated couch controller on a real pty and the real driver on it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import serial

from drivers import couch_protocol as cp
from drivers.couch import CouchClient
from sim.couch import SimCouchController

# Fast motion keeps tests short; a generous heartbeat timeout keeps them
# robust on a loaded machine (the watchdog tests set their own).
FAST = 5.0


@pytest.fixture
async def sim() -> AsyncIterator[SimCouchController]:
    async with SimCouchController(speed_scale=FAST, heartbeat_timeout_ms=1000, seed=1) as s:
        yield s


@pytest.fixture
async def couch(sim: SimCouchController) -> AsyncIterator[CouchClient]:
    async with CouchClient(sim.device_path, reply_timeout_s=0.5) as c:
        yield c


class RawHost:
    """A host that writes raw bytes to the controller, for damaged-frame tests."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, baudrate=115200, timeout=0)
        self.decoder = cp.FrameDecoder()
        self.seq = 0

    def send(self, msg: cp.Message) -> int:
        self.seq = self.seq % 255 + 1
        self.port.write(cp.encode(self.seq, msg))
        return self.seq

    def write(self, data: bytes) -> None:
        self.port.write(data)

    async def reply(self, seq: int, timeout_s: float = 1.0) -> cp.Message:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for item in self.decoder.feed(self.port.read(4096)):
                if isinstance(item, cp.Frame) and item.seq == seq:
                    return cp.decode_message(item)
            await asyncio.sleep(0.002)
        raise TimeoutError(f"no reply to seq {seq}")

    def close(self) -> None:
        self.port.close()


@pytest.fixture
def make_raw_host() -> Iterator[Callable[[str], RawHost]]:
    """Open a RawHost on a device path; closed after the test."""
    opened: list[RawHost] = []

    def make(path: str) -> RawHost:
        opened.append(RawHost(path))
        return opened[-1]

    yield make
    for host in opened:
        host.close()


@pytest.fixture
def raw_host(sim: SimCouchController, make_raw_host: Callable[[str], RawHost]) -> RawHost:
    return make_raw_host(sim.device_path)


assert os.name == "posix", "couch tests need a pty"
