"""Issue 11, item 1 (daemon/main.py): the last line of defence. Every outside
input is guarded where it is handled; if a bug still lets an exception out of
one of igrtd's top-level tasks, igrtd stops the couch first, audits the fault,
and exits non-zero for systemd to restart it (never a silent death, never a
traceback as its only record)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from daemon import main as igrtd
from daemon.audit import read_records
from daemon.config import load_config
from daemon.service import RoomService
from sim.room import SimRoom

from .conftest import executed


def _config_file(room: SimRoom, tmp_path: Path) -> Path:
    path = tmp_path / "room.json"
    path.write_text(json.dumps(room.room_config(tmp_path / "state")))
    return path


async def test_a_task_failing_unexpectedly_stops_the_couch_audits_and_ends_serve(
    room: SimRoom, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(_config_file(room, tmp_path))
    fail_now = asyncio.Event()

    async def supervision_with_a_bug(self: RoomService) -> None:
        await fail_now.wait()
        raise RuntimeError("injected supervision bug")

    monkeypatch.setattr(RoomService, "run", supervision_with_a_bug)
    serving = asyncio.create_task(igrtd.serve(config))
    sock = tmp_path / "state" / "igrtd.sock"
    async with asyncio.timeout(20):
        while not sock.exists():
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    stops_before = len(executed(room, "STOP"))
    fail_now.set()
    with pytest.raises(igrtd.DaemonFault, match="injected supervision bug"):
        await asyncio.wait_for(serving, 20)
    deadline = time.monotonic() + 5
    while len(executed(room, "STOP")) <= stops_before and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert len(executed(room, "STOP")) > stops_before, "no STOP reached the couch"
    faults = [r for r in read_records(tmp_path / "state" / "audit")
              if r.event == "fault" and r.details.get("what") == "igrtd task failed unexpectedly"]
    assert len(faults) == 1
    assert "RuntimeError: injected supervision bug" in faults[0].details["reason"]


def test_igrtd_exits_1_with_one_line_after_an_internal_fault(
    room: SimRoom, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str]
) -> None:
    async def faulty_serve(config: Any, stop_event: Any = None) -> None:
        raise igrtd.DaemonFault("RuntimeError: injected")

    monkeypatch.setattr(igrtd, "serve", faulty_serve)
    assert igrtd.main(["--config", str(_config_file(room, tmp_path))]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "igrtd: stopped the couch and exited after an internal fault: RuntimeError: injected"]
