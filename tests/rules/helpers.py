"""Steps of the correction workflow on a RoomService built on fakes (tests/fakes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import numpy as np
from fakes import FakeRoom

from daemon.api import Actor, ProposeRequest, Role, SessionRequest
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.world import PatientWorld

ISO = (0.0, 0.0, 0.0)
ALICE = Actor(user="alice", role=Role.THERAPIST)
BOB = Actor(user="bob", role=Role.APPROVER)
SMALL = Pose(2.0, -1.5, 1.5, 0.0, 0.0, 0.0)  # needs one confirmation
LARGE = Pose(8.0, 0.0, 0.0, 0.0, 0.0, 0.0)  # needs a second approval


async def propose(room: FakeRoom, error: Pose, by: Actor = ALICE, *,
                  open_session: bool = True) -> str:
    """Open a session (unless told not to) and propose the correction of `error`;
    the proposal id."""
    if open_session:
        await room.service.open_session(by, SessionRequest(
            patient_id="P", plan_uid="PL", frame_of_reference_uid="F", iso=ISO,
            patient_position="HFS", manual_override="typed for the test room"))
    p = CouchModel.default().pivot
    world = PatientWorld.with_setup_error(ISO, "HFS", (float(p[0]), float(p[1]), float(p[2])),
                                          error)
    matrix = np.asarray(world.true_registration(Pose())).tolist()
    prop = await room.service.propose(by, ProposeRequest.model_validate({
        "matrix": matrix, "iso": ISO, "patient_position": "HFS",
        "binding": {"patient_id": "P", "plan_uid": "PL", "frame_of_reference_uid": "F",
                    "imaging_session_uid": "I1", "acquired_at": time.time()}}))
    return str(prop["id"])


async def start_move(room: FakeRoom) -> str:
    """A small correction proposed, confirmed and started by the first hold."""
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    progress = await room.service.hold(ALICE, pid)
    assert progress["state"] == "MOVING", progress
    return pid


@asynccontextmanager
async def supervised(room: FakeRoom) -> AsyncIterator[None]:
    """The supervision loops running, as igrtd runs them."""
    task = asyncio.create_task(room.service.run())
    try:
        yield
    finally:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


async def until(condition: Callable[[], bool], timeout_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)
