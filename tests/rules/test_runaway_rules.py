"""Uncommanded motion while a STOP winds down (daemon/couch_watch.py), on fakes.

The controller reports MOVING after it reported STOPPING for igrtd's STOP, with
nothing commanded since: a runaway, although igrtd never saw the couch at rest.
Reports are ordered by the controller's uptime (replies can arrive late), so
these tests hand the watch reports with chosen uptimes, as the couch link does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fakes import FakeRoom, fake_room

from daemon.couch_watch import _SETTLE_GRACE_S
from drivers.couch import CouchStatus
from safety.pose import Pose

from .helpers import ALICE, start_move

LAT = (True, False, False, False, False, False)
LAT_LONG = (True, True, False, False, False, False)


def report(room: FakeRoom, state: str, uptime_ms: int, moving: tuple[bool, ...]) -> None:
    """The couch link hands the watch a status the controller made at `uptime_ms`."""
    status = CouchStatus(state, Pose(), moving, (False,) * 6, "none", 0, 0, 0, 0, 250,
                         uptime_ms, 0.0)
    room.service.motion.watch.on_couch_event(status)


async def stopped_mid_move(tmp_path: Path) -> tuple[FakeRoom, int]:
    """A move released (STOPPED, STOP written); the uptime the next report may carry."""
    room = await fake_room(tmp_path)
    await start_move(room)
    await asyncio.sleep(_SETTLE_GRACE_S + 0.01)  # the GO has long taken effect
    await room.service.release(ALICE)
    assert str(room.service.workflow.state) == "STOPPED"
    assert room.couch.latest_status is not None
    return room, room.couch.latest_status.uptime_ms + 100


def faults(room: FakeRoom) -> list[object]:
    return [f["what"] for f in room.audit.events("fault")]


async def test_a_runaway_in_the_millisecond_of_a_later_stopping_push_is_a_runaway(
        tmp_path: Path) -> None:
    """The reproduced defect (tests/room/test_motion_plausibility.py, one run in three):
    the wind-down pushes STOPPING every 20 ms, and the runaway's MOVING was stamped in
    the millisecond of one of those pushes. igrtd ordered it against the newest
    STOPPING, could not, and only wrote STOP again: the room stayed STOPPED, the
    runaway unaudited. It is ordered against the first STOPPING."""
    room, t = await stopped_mid_move(tmp_path)
    report(room, "STOPPING", t, LAT)  # igrtd's STOP taken: the controller gives up
    report(room, "STOPPING", t + 20, LAT)  # the wind-down's next push
    stops = room.journal.count("STOP")
    report(room, "MOVING", t + 20, LAT_LONG)  # nothing commanded since
    assert str(room.service.workflow.state) == "FAULT"
    assert faults(room) == ["uncommanded motion"]
    assert room.journal.count("STOP") > stops  # written first (and by the trip again)
    stop = [i for i, (w, _) in enumerate(room.journal.entries) if w == "STOP"][stops]
    assert stop < room.journal.index("audit:fault")


async def test_a_runaway_is_audited_once_though_a_late_reply_reports_the_earlier_stopping(
        tmp_path: Path) -> None:
    """After the runaway's trip, a late reply made during the earlier wind-down
    (STOPPING, stamped before the runaway) says nothing of the STOP written for the
    runaway: the runaway's next MOVING, made before that STOP took effect, is the
    same runaway, not a second one. MOVING after the controller reported STOPPING
    for that STOP is a new one."""
    room, t = await stopped_mid_move(tmp_path)
    report(room, "STOPPING", t, LAT)
    report(room, "MOVING", t + 10, LAT_LONG)  # the runaway: STOP, FAULT
    assert faults(room) == ["uncommanded motion"]
    report(room, "STOPPING", t + 5, LAT)  # a late reply from before the runaway
    report(room, "MOVING", t + 15, LAT_LONG)  # the same runaway, before the STOP took effect
    assert faults(room) == ["uncommanded motion"]
    assert str(room.service.workflow.state) == "FAULT"
    report(room, "STOPPING", t + 20, LAT_LONG)  # the runaway's STOP taken
    stops = room.journal.count("STOP")
    report(room, "MOVING", t + 30, LAT_LONG)  # moving again after giving up: a new runaway
    assert faults(room) == ["uncommanded motion", "uncommanded motion"]
    assert room.journal.count("STOP") > stops


async def test_motion_in_the_millisecond_of_the_first_stopping_is_stopped_again(
        tmp_path: Path) -> None:
    """Reports stamped in the same millisecond cannot be ordered: a MOVING in the first
    STOPPING report's millisecond may have been made before it (a late reply from the
    move), so it is stopped again, not taken for a runaway."""
    room, t = await stopped_mid_move(tmp_path)
    report(room, "STOPPING", t, LAT)
    stops = room.journal.count("STOP")
    report(room, "MOVING", t, LAT)
    assert room.journal.count("STOP") == stops + 1
    assert faults(room) == []
    assert str(room.service.workflow.state) == "STOPPED"
