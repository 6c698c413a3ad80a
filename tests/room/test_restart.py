"""A restarted daemon comes up stopped and never re-sends a move."""

from __future__ import annotations

import time

from safety.pose import Pose
from sim.room import DaemonProcess

from .conftest import Console, executed


def test_daemon_killed_mid_move_never_resends_after_restart(room, tmp_path) -> None:
    state = tmp_path / "state"
    d = DaemonProcess(room.room_config(state), state, tmp_path / "igrtd.log").start()
    alice = Console(d.socket_path, "alice")
    alice.open_session()
    prop = alice.propose(Pose(25.0, 0.0, 0.0, 0.0, 0.0, 0.0))
    pid = prop["result"]["id"]
    alice.ok("confirm", proposal_id=pid)
    if prop["result"]["verdict"] == "needs_second_approval":
        Console(d.socket_path, "bob").ok("approve", proposal_id=pid)
    holder = alice.hold_in_background(pid)
    alice.wait_state("MOVING")
    d.kill()
    holder.stop()
    # The controller's own heartbeat watchdog stops the couch when igrtd dies.
    deadline = time.monotonic() + 2
    while room.call(lambda: room.couch.is_moving) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not room.call(lambda: room.couch.is_moving)
    gos = len(executed(room, "GO"))
    assert gos == 1

    d2 = DaemonProcess(room.room_config(state), state, tmp_path / "igrtd2.log").start()
    try:
        alice2 = Console(d2.socket_path, "alice")
        st = alice2.ok("status")
        assert st["state"] in ("STANDBY", "OFFLINE")
        assert not alice2.call("confirm", proposal_id=pid)["ok"]
        alice2.open_session()
        assert not alice2.call("hold", proposal_id=pid).get("result", {}).get("running")
        time.sleep(0.3)
        assert len(executed(room, "GO")) == gos
    finally:
        d2.stop()
    from daemon.audit import read_records

    events = [r.event for r in read_records(state / "audit")]
    assert "recovery" in events
