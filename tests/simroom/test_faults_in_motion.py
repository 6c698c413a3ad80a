"""Couch faults through igrtd's eyes: a runaway while idle and a controller fault during
a hold-to-run move both latch FAULT, and the couch's own record shows the STOP."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.world import PatientWorld

from .conftest import SimUp, description, held, wait_for


def _state(room: SimUp) -> str:
    state: str = room.igrtd("status")["state"]
    return state


def _stops_since(room: SimUp, since: float) -> list[dict]:
    return [c for c in room.ctl("record", device="couch", since=since)["commands"]
            if c["kind"] == "STOP"]


def test_a_runaway_while_idle_is_stopped_and_latches_fault(tmp_path: Path) -> None:
    room = SimUp(tmp_path, description(broker={"enabled": False}, kv_imager=False))
    try:
        since = room.ctl("record", device="couch")["now_monotonic"]
        room.ctl("inject", fault="couch_runaway", axis="lat", speed=5.0)
        wait_for(lambda: _state(room) == "FAULT", 5, "igrtd FAULT")
        wait_for(lambda: _stops_since(room, since), 5, "STOP at the couch")
        wait_for(lambda: not room.ctl("truth")["couch"]["moving"], 5, "couch halted")
    finally:
        room.stop()


def test_a_couch_fault_during_a_move_latches_fault_and_stops(tmp_path: Path) -> None:
    room = SimUp(tmp_path, description(broker={"enabled": False}, kv_imager=False))
    try:
        iso = [8.0, -12.0, 20.0]
        room.igrtd("open_session", patient_id="P1", plan_uid="PL1", frame_of_reference_uid="F1",
                   iso=iso, patient_position="HFS", manual_override="typed for the test room")
        world = PatientWorld.with_setup_error(tuple(iso), "HFS",  # type: ignore[arg-type]
                                              tuple(CouchModel.default().pivot),
                                              Pose(20.0, 15.0, -10.0, 0.0, 0.0, 0.0))
        prop = room.igrtd("propose", matrix=np.asarray(world.true_registration(Pose())).tolist(),
                          iso=iso, patient_position="HFS",
                          binding={"patient_id": "P1", "plan_uid": "PL1",
                                   "frame_of_reference_uid": "F1", "imaging_session_uid": "I1",
                                   "acquired_at": time.time()})
        room.igrtd("confirm", proposal_id=prop["id"])
        room.igrtd("approve", user="bob", proposal_id=prop["id"])
        room.ctl("pendant", pressed=True)
        with held(room, prop["id"]):
            wait_for(lambda: room.ctl("truth")["couch"]["moving"], 10, "couch moving")
            since = room.ctl("record", device="couch")["now_monotonic"]
            room.ctl("inject", fault="couch_fault", code="following_error")
            wait_for(lambda: _state(room) == "FAULT", 5, "igrtd FAULT")
            wait_for(lambda: _stops_since(room, since), 5, "STOP at the couch after the fault")
    finally:
        room.stop()
