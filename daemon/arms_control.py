"""The kV imager arms: extend for imaging, park for couch motion.

Arm motion leaves through the MotionGate like couch motion: it is refused
while the couch moves (and the couch is refused while an arm is out or
moving), and needs the PLC's motion-enable pendant held. Roles are checked by
the RoomService facade.
"""

from __future__ import annotations

from daemon.api import Actor, ArmsRequest, CommandError, Reply
from daemon.motion_gate import MotionGate, MotionRefused
from daemon.room import Room


class ArmsControl:
    def __init__(self, room: Room, gate: MotionGate) -> None:
        self.room = room
        self.gate = gate

    async def arms(self, actor: Actor, req: ArmsRequest) -> Reply:
        """Extend the kV arms for imaging or park them; through the motion gate, which
        refuses while the couch moves (and the couch refuses while they are out)."""
        # The command is its own console heartbeat; the PLC's motion-enable pendant must
        # be held (and the PLC stops the arm drives when it is let go).
        self.room.hold.beat(actor)
        try:
            if self.room.plc is not None:
                # Judge the arm move on a read sent now: in STANDBY the PLC is polled
                # only every standby_poll_interval_s.
                await self.room.plc.fresh_snapshot()
            await self.gate.move_arms(actor.user, req.extend)
        except MotionRefused as exc:
            raise CommandError(f"imager arms not moved: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - PLC refused or link down: one line, no move
            raise self.room.refuse(actor, "arms", f"room PLC did not take the arm command: {exc}") \
                from None
        return self.room.snapshot()

