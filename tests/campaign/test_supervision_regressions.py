"""Supervision gaps the fault campaign found, each as one short, deterministic
scenario (the campaign's report names them too; docs/motion-supervision.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.plc import RoomPlcClient
from safety.pose import Pose
from sim.plc import SimRoomPlc

from .rig import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with Rig(tmp_path) as r:
        r.ready_for_next()
        yield r


def _executed(rig: Rig, since: float) -> list[tuple[float, str]]:
    return rig.executed_since(since)


def _confirmed(rig: Rig, shift_mm: float) -> tuple[str, Pose]:
    st = rig.ready_for_next()
    cur = Pose.from_dict(st["couch"]["pose"])
    target = Pose(cur.lat + (shift_mm if cur.lat <= 0 else -shift_mm), cur.long, cur.vert)
    prop = rig.propose_to(target, cur)
    if rig.confirm(prop["id"]).get("status") == "awaiting_approval":  # above 5 mm
        assert rig.try_approve(prop["id"])["ok"]
    return prop["id"], target


def test_a_stop_lost_on_the_serial_line_is_sent_again(rig: Rig) -> None:
    pid, target = _confirmed(rig, 25.0)  # ~0.25 s of travel
    holder = rig.hold(pid)
    rig.wait_until(lambda s: s["state"] == "MOVING")
    time.sleep(0.03)
    silence_end = rig.inject("couch_silence", 0.06) + 0.06
    t_door = rig.inject("door_closed", False)  # igrtd's STOP is lost in the silence
    time.sleep(0.4)
    holder.stop()
    stops = [t for t, kind in _executed(rig, t_door) if kind in ("STOP", "FAULT")]
    assert stops, "the couch never executed a STOP after the door opened"
    assert stops[0] - silence_end < 0.05, f"STOP only {stops[0] - silence_end:.3f} s after " \
        "the line came back"
    assert abs(rig.couch_pose().lat - target.lat) > 1.0, "the move ran to its end"


def test_an_interlock_opening_before_the_move_starts_spends_the_confirmation(rig: Rig) -> None:
    pid, _ = _confirmed(rig, 3.0)
    rig.inject("door_closed", False)
    # Once igrtd has seen the door (one PLC poll later; the race before that is the
    # campaign's reaction allowance, not this rule), the confirmation must be spent.
    rig.wait_until(lambda s: "door open" in (s.get("interlocks") or {}).get("open", []))
    holder = rig.hold(pid)  # the console holds; the door is open: nothing may start
    time.sleep(0.1)
    rig.inject("door_closed", True)
    time.sleep(0.15)  # the console is still holding the old confirmation
    holder.stop()
    st = rig.status()
    gos = [t for t, kind in _executed(rig, 0.0) if kind == "GO"]
    assert gos == [], f"a GO ran on a confirmation given before the door opened ({st['state']})"


def test_a_start_refused_before_anything_is_sent_writes_nothing_to_the_couch(rig: Rig) -> None:
    """A hold that arrives before the pendant's motion enable is refused without a
    precautionary STOP: the STOP would make the GO that follows (same
    confirmation, nothing ever moved) indistinguishable from a resumption."""
    pid, _ = _confirmed(rig, 3.0)
    rig.inject("motion_enable_pressed", False)
    rig.wait_until(lambda s: s["interlocks"]["motion_enable_pressed"] is False)
    t0 = time.monotonic()
    reply = rig.call("hold", proposal_id=pid)
    assert not reply["ok"] and "hold-to-run" in reply["error"]
    time.sleep(0.05)
    assert [k for _, k in _executed(rig, t0)] == []
    rig.inject("motion_enable_pressed", True)
    holder = rig.hold(pid)
    st = rig.wait_until(lambda s: s["state"] in ("DONE", "STOPPED", "FAULT"))
    holder.stop()
    assert st["state"] == "DONE"


async def test_plc_reconnect_back_off_starts_over_after_a_healthy_link() -> None:
    """Eight PLC outages in a row, each followed by a healthy link: the ninth
    reconnects as fast as the first (before: 2 s, the back-off never reset)."""
    async with SimRoomPlc() as plc, RoomPlcClient(plc.host, plc.port) as client:
        await client.wait_until(lambda s: s.link_ok, 2.0)
        took = []
        for _ in range(9):
            await asyncio.sleep(0.05)  # healthy for a while
            plc.drop_connections()
            t0 = time.monotonic()
            await client.wait_until(lambda s: not s.link_ok, 1.0)
            await client.wait_until(lambda s: s.link_ok, 3.0)
            took.append(time.monotonic() - t0)
    assert took[-1] < 0.5, [round(t, 2) for t in took]
