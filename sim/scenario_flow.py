"""What a scenario does to igrtd: its users on igrtd's local socket, the usual
fraction flow (session, proposal from the couch's true pose, confirmation,
second approval, hold-to-run) and the replies, for `reply` expectations.

Every igrtd call is the blocking `daemon.control.ControlClient` the demo and the
tests use, run in a worker thread so the room's devices (on this loop) never
wait for igrtd. alice is this OS account (peer credentials); a user with a demo
key signs with the key the room wrote into its run directory.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from daemon.control import ControlClient
from daemon.igrtctl.room_cli import HOLD_RATE_HZ
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.scenario import Propose, Shift
from sim.stack import SimulatedRoom
from sim.world import PatientWorld

PATIENT, PLAN, FOR = "SCN-PATIENT", "SCN-PLAN", "SCN-FOR"
PIVOT = tuple(float(v) for v in CouchModel.default().pivot)


def _pose(s: Shift) -> Pose:
    return Pose(s.lat, s.long, s.vert, s.yaw, s.pitch, s.roll)


class Holder:
    """A console holding hold-to-run: `hold` at igrtctl's rate on its own connection."""

    def __init__(self, client: ControlClient, proposal_id: str) -> None:
        self.client = client
        self.proposal_id = proposal_id
        self.replies: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scenario-hold")
        self._thread.start()

    def _run(self) -> None:
        period = 1.0 / HOLD_RATE_HZ
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.replies.append(self.client.call("hold", proposal_id=self.proposal_id))
            except OSError:  # igrtd went away: nothing left to hold
                return
            next_at += period
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.client.close()


class Flow:
    """The scenario's consoles. Actions are sequential: one call at a time."""

    def __init__(self, room: SimulatedRoom) -> None:
        self.room = room
        self.proposals: list[str] = []
        self.last_reply: dict[str, Any] | None = None
        self._last_cmd = ""
        self._clients: dict[str, ControlClient] = {}
        self._holders: list[Holder] = []
        self._status: ControlClient | None = None

    # ------------------------------------------------------------ clients
    def _connect(self, user: str) -> ControlClient:
        spec = next((u for u in self.room.description.users if u.name == user), None)
        if spec is None:
            raise ValueError(f"user {user!r} is not a user of this room")
        key: Path | None = (self.room.key_dir / f"{user}.key" if spec.identity == "demo_key"
                            else None)
        assert self.room.daemon is not None
        return ControlClient(self.room.daemon.socket_path, user, key=key)

    def _call_sync(self, user: str, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        client = self._clients.get(user)
        if client is None:
            client = self._clients[user] = self._connect(user)
        return dict(client.call(cmd, **args))

    async def call(self, user: str, cmd: str, args: dict[str, Any]) -> dict[str, Any]:
        reply = await asyncio.to_thread(self._call_sync, user, cmd, args)
        self.last_reply, self._last_cmd = reply, cmd
        return reply

    async def status(self) -> dict[str, Any]:
        """igrtd's status on a connection of its own (status is read-only: any user)."""
        if self._status is None:
            self._status = await asyncio.to_thread(
                self._connect, self.room.description.users[0].name)
        reply = await asyncio.to_thread(self._status.call, "status")
        result = reply.get("result")
        return dict(result) if isinstance(result, dict) else {}

    def last_reply_text(self) -> str:
        if self.last_reply is None:
            return " (no igrtd call yet)"
        error = self.last_reply.get("error")
        return f" (to {self._last_cmd}{': ' + str(error) if error else ''})"

    # ------------------------------------------------------------ the fraction
    def proposal(self, ref: int) -> str:
        if not self.proposals:
            raise RuntimeError("no proposal was accepted earlier in this scenario")
        if ref > len(self.proposals):
            raise RuntimeError(f"proposal {ref}: only {len(self.proposals)} were accepted")
        return self.proposals[ref - 1] if ref else self.proposals[-1]

    async def open_session(self, user: str) -> dict[str, Any]:
        p = self.room.description.patient
        return await self.call(user, "open_session", {
            "patient_id": PATIENT, "plan_uid": PLAN, "frame_of_reference_uid": FOR,
            "iso": list(p.iso_mm), "patient_position": p.patient_position,
            "manual_override": "simulated room: no planning system"})

    async def propose(self, a: Propose) -> dict[str, Any]:
        if self.room.couch is None:
            raise RuntimeError("the couch controller is not running")
        p = self.room.description.patient
        true = self.room.couch.pose  # read on the room's loop, where the couch moves
        claimed = true.plus(_pose(a.claimed_offset))
        world = PatientWorld.with_setup_error(p.iso_mm, p.patient_position, PIVOT,  # type: ignore[arg-type]
                                              true.plus(_pose(a.shift)))
        reply = await self.call(a.as_, "propose", {
            "matrix": np.asarray(world.true_registration(claimed)).tolist(),
            "iso": list(p.iso_mm), "patient_position": p.patient_position,
            "couch_at_imaging": claimed.as_dict(),
            "binding": {"patient_id": PATIENT, "plan_uid": PLAN, "frame_of_reference_uid": FOR,
                        "imaging_session_uid": f"SCN-IMG-{uuid.uuid4().hex[:12]}",
                        "acquired_at": time.time() - a.age_s}})
        if reply.get("ok"):
            self.proposals.append(str(reply["result"]["id"]))
        return reply

    async def hold(self, user: str, proposal_id: str, pendant: bool) -> None:
        if pendant:
            if self.room.plc is None:
                raise RuntimeError("this room has no PLC, so no pendant to press")
            self.room.plc.set_input("motion_enable_pressed", True)
        client = await asyncio.to_thread(self._connect, user)
        self._holders.append(Holder(client, proposal_id))

    async def hold_stop(self, pendant: bool) -> None:
        holders, self._holders = self._holders, []
        for h in holders:
            await asyncio.to_thread(h.stop)
        if pendant and self.room.plc is not None:
            self.room.plc.set_input("motion_enable_pressed", False)

    async def close(self) -> None:
        await self.hold_stop(False)
        for client in [*self._clients.values(), *([self._status] if self._status else [])]:
            client.close()
        self._clients.clear()
