"""Service mode: the clinical workflow locked out, reduced-speed hold-to-run jog, diag.

SERVICE is entered from STANDBY, READY or DONE (the session is closed and the
current proposal superseded) and left to STANDBY with a STOP written first.
Each jog step is its own hold-to-run heartbeat and leaves through the
MotionGate, which checks interlocks, limits and the pendant like any motion
(docs/service-mode.md). Roles are checked by the RoomService facade.
"""

from __future__ import annotations

import math

from daemon.api import Actor, CommandError, JogRequest, Reply
from daemon.motion_gate import MotionGate, MotionRefused
from daemon.room import Room
from daemon.workflow import RoomState
from safety.pose import ROTATION_AXES, Pose

S = RoomState


class ServiceMode:
    def __init__(self, room: Room, gate: MotionGate) -> None:
        self.room = room
        self.gate = gate

    async def enter_service(self, actor: Actor) -> Reply:
        if self.room.workflow.state not in (S.STANDBY, S.READY, S.DONE):
            raise self.room.refuse(actor, "enter_service",
                                   f"cannot enter service mode in state {self.room.workflow.state}")
        self.room.supersede_current("service mode")
        if self.room.session is not None:
            self.room.audit("session", actor.user, action="close", reason="service mode")
            self.room.session = None
        self.room.audit("service_mode", actor.user, action="enter", via=actor.via)
        self.room.to(S.SERVICE, f"service mode ({actor.user}); clinical workflow locked out",
                     actor.user)
        return self.room.snapshot()

    async def exit_service(self, actor: Actor) -> Reply:
        if self.room.workflow.state != S.SERVICE:
            raise self.room.refuse(actor, "exit_service", "the room is not in service mode")
        self.room.stop_couch_now()
        self.room.audit("service_mode", actor.user, action="exit", via=actor.via)
        self.room.to(S.STANDBY, f"service mode ended by {actor.user}", actor.user)
        return self.room.snapshot()

    async def jog_step(self, actor: Actor, req: JogRequest) -> Reply:
        """One jog step at reduced speed; each step is itself the hold-to-run heartbeat."""
        if self.room.workflow.state != S.SERVICE:
            raise self.room.refuse(actor, "jog",
                                   f"jog needs service mode; room is {self.room.workflow.state}")
        rotation = req.axis in ROTATION_AXES
        limit = (self.room.config.motion.jog_max_speed_deg_s if rotation
                 else self.room.config.motion.jog_max_speed_mm_s)
        unit = "deg/s" if rotation else "mm/s"
        if not math.isfinite(req.velocity) or abs(req.velocity) > limit:
            raise self.room.refuse(actor, "jog", f"jog speed {req.velocity:g} {unit} exceeds the "
                                   f"service limit {limit:g} {unit}")
        status = await self.room.couch.status()
        end = status.pose.as_dict()
        end[req.axis] += req.velocity * req.duration_ms / 1000.0
        self.room.hold.beat(actor)
        try:
            await self.gate.jog(actor.user, req.axis, req.velocity, req.duration_ms,
                                Pose.from_dict(end))
        except MotionRefused as exc:
            raise CommandError(f"jog refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any couch failure is a one-line refusal
            raise self.room.refuse(actor, "jog", f"couch refused the jog: {exc}") from None
        return self.room.progress()

    async def diag(self, actor: Actor, subject: object, bundle: bool = False) -> Reply:
        """Device self-test for service engineers; optionally a diagnostics bundle.

        `subject` is the RoomService the report describes (its couch, PLC, audit,
        store, configuration and last move)."""
        from daemon import diagnostics

        result: Reply = await diagnostics.diag_command(subject, bundle=bundle)
        packed = result.get("bundle")  # the bundle's object, or None when not asked for
        self.room.audit("diag", actor.user, bundle=bundle, via=actor.via,
                        sha256=packed.get("sha256") if isinstance(packed, dict) else None)
        return result

