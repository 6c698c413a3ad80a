"""RoomService: the workflow of one treatment room, behind every front end.

It owns the state machine, the proposals and confirmations, the hold-to-run
bookkeeping and the supervision of motion. Motion itself only ever leaves
through `MotionGate`. Roles are checked here, so the local socket and the
MQTT console cannot disagree about who may do what.

Stop always wins: `stop()` and every supervision trip write STOP to the couch
synchronously (`stop_nowait`) before anything else - before auditing, before
changing state - so nothing queued ahead of it on the event loop delays it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from daemon.api import (
    Actor,
    CommandError,
    ImagingRequest,
    JogRequest,
    ProposeRequest,
    RegisterRequest,
    Role,
    SessionRequest,
)
from daemon.config import RoomConfig
from daemon.console.roles import ALLOWED_ROLES
from daemon.motion_gate import ConfirmationTicket, MotionGate, MotionRefused, StartedMove
from daemon.proposals import Confirmation, Proposal, new_id
from daemon.workflow import LATCHED, PROPOSABLE, RoomState, Workflow
from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.geometry import parse_patient_position
from safety.policy import Verdict, VerdictPolicy
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose

log = logging.getLogger("igrt.room")

S = RoomState

# Which roles may issue which command: one table for every front end.
PERMISSIONS = ALLOWED_ROLES


@dataclass
class ImagingRecord:
    uid: str
    modality: str
    acquired_at: float
    couch: Pose


@dataclass
class TreatmentSession:
    patient_id: str
    plan_uid: str
    frame_of_reference_uid: str
    iso: tuple[float, float, float]
    patient_position: str
    opened_by: str
    opened_at: float
    imaging: dict[str, ImagingRecord] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {
            "patient_id": self.patient_id,
            "plan_uid": self.plan_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "iso": list(self.iso),
            "patient_position": self.patient_position,
            "opened_by": self.opened_by,
            "opened_at": self.opened_at,
            "imaging_sessions": sorted(self.imaging),
        }


@dataclass
class ActiveMove:
    started: StartedMove
    user: str
    status_after_go: bool = False


class RoomService:
    def __init__(
        self,
        config: RoomConfig,
        couch: Any,
        audit: Any,
        store: Any,
        *,
        plc: Any | None = None,
        arms: Any | None = None,
    ) -> None:
        self.config = config
        self.couch = couch
        self.plc = plc
        self.audit_log = audit
        self.store = store
        self.model = (
            CouchModel.from_mapping(config.couch_model) if config.couch_model else CouchModel.default()
        )
        self.policy = VerdictPolicy.model_validate(config.policy or {})
        self.workflow = Workflow()
        self.session: TreatmentSession | None = None
        self.proposals: dict[str, Proposal] = {}
        self.current: Proposal | None = None
        self.active: ActiveMove | None = None
        self.last_result: dict[str, Any] | None = None
        self._hold_mono: float | None = None
        self._hold_user: str | None = None
        self._hold_via: str | None = None
        self._last_interlocks: dict[str, Any] = {}
        self._tripping = False
        self._state_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.gate = MotionGate(
            couch, store, self.audit, self._motion_facts, model=self.model,
            target_validity_ms=config.motion.target_validity_ms, arms=arms,
        )

    # ------------------------------------------------------------------ audit
    def audit(self, event: str, actor: str, **details: Any) -> None:
        self.audit_log.append(event, actor, **details)
        payload = {"event": event, "actor": actor, "at": time.time(), **details}
        for cb in list(self._event_listeners):
            try:
                cb(payload)
            except Exception:  # a broken listener must never break the workflow
                log.exception("event listener failed")

    def add_state_listener(self, cb: Callable[[dict[str, Any]], None]) -> None:
        self._state_listeners.append(cb)

    def add_event_listener(self, cb: Callable[[dict[str, Any]], None]) -> None:
        self._event_listeners.append(cb)

    def _to(self, new: RoomState, reason: str, actor: str = "system") -> None:
        if self.workflow.state == new and new not in (S.PROPOSED, S.DONE):
            return
        old = self.workflow.to(new, reason)
        log.info("state %s -> %s (%s)", old, new, reason)
        if self.plc is not None:
            self.plc.on_room_state(str(new))
        self.audit("state", actor, old=str(old), new=str(new), reason=reason)
        self._publish_state()

    def _publish_state(self) -> None:
        if not self._state_listeners:
            return
        snap = self.snapshot()
        for cb in list(self._state_listeners):
            try:
                cb(snap)
            except Exception:
                log.exception("state listener failed")

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Reconcile after a (possibly unclean) restart; the room comes up stopped."""
        # Stop first: whatever the couch was doing before we (re)started, it stops now.
        self._stop_couch_now()
        if self.plc is not None:
            self.plc.add_listener(self._on_plc_change)
        else:
            log.warning("no room PLC configured: interlocks are not monitored "
                        "(acceptable only for simulation and bench work)")
        for move in self.store.unfinished_moves():
            self.store.mark_interrupted(move["confirmation_id"], {"by": "restart"})
            self.audit("recovery", "system", confirmation_id=move["confirmation_id"],
                       proposal_id=move.get("proposal_id"),
                       outcome="interrupted move marked interrupted; it is never re-sent")
        pose = None
        status = None
        try:
            status = await self.couch.status()
            pose = status.pose
        except Exception as exc:  # the couch may simply not be there yet
            log.warning("couch status at start-up failed: %s", exc)
        self.audit("startup", "system", couch_pose=pose.as_dict() if pose else None,
                   couch_state=status.state if status else None,
                   couch_fault=status.fault_code if status else None,
                   plc=self.plc is not None,
                   audit_head=list(getattr(self.audit_log, "head", ()) or ()))
        if status is not None and status.state == "FAULT":
            if status.fault_code == "heartbeat_lost":
                # The controller stopped because igrtd was not there to send heartbeats
                # (restart, crash). Clearing that moves nothing; any other fault stays latched.
                await self.couch.reset()
                self.audit("recovery", "system", outcome="controller heartbeat fault from "
                           "igrtd's absence cleared; couch is stopped",
                           couch_pose=status.pose.as_dict())
            else:
                self._to(S.FAULT, f"couch controller fault {status.fault_code} at start-up")
                return
        if pose is not None:
            self._to(S.STANDBY, "couch link up")

    async def run(self) -> None:
        """Supervision: event driven for the PLC, polled for hold-to-run and the couch."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._supervise())
            tg.create_task(self._track_motion())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------- facts
    def _plc_interlocks(self) -> tuple[list[str], bool | None]:
        """(open interlocks other than hold-to-run, motion-enable pressed or None)."""
        if self.plc is None:
            return [], None
        snap = self.plc.snapshot()
        return self.plc.open_interlocks(snap), self.plc.motion_enable_pressed(snap)

    def _hold_fresh(self) -> bool:
        if self._hold_mono is None:
            return False
        if time.monotonic() - self._hold_mono > self.config.motion.hold_timeout_s:
            return False
        if self.plc is not None and self.config.motion.require_plc_motion_enable:
            _, pressed = self._plc_interlocks()
            return bool(pressed)
        return True

    def _couch_link_ok(self) -> bool:
        return bool(getattr(self.couch, "link_ok", True))

    def _motion_facts(self, kind: str) -> dict[str, Any]:
        open_il, _ = self._plc_interlocks()
        if not self._couch_link_ok():
            open_il = [*open_il, "couch link lost"]
        status = getattr(self.couch, "latest_status", None)
        arms_parked, arms_moving = True, False
        if self.plc is not None:
            arms_parked, arms_moving = self.plc.arms_state(self.plc.snapshot())
        return {
            # The gate is asked while the workflow is in the state that permits the
            # kind of motion: CONFIRMED for a move, service for jog.
            "room_state": str(self.workflow.state),
            "current": status.pose if status is not None else None,
            "open_interlocks": open_il,
            "couch_moving": bool(status is not None and any(status.moving)),
            "imager_arms_parked": arms_parked,
            "imager_moving": arms_moving,
            "hold_to_run_fresh": self._hold_fresh(),
        }

    # ------------------------------------------------------------- helpers
    def _require(self, actor: Actor, cmd: str) -> None:
        allowed = PERMISSIONS[cmd]
        if actor.role not in allowed:
            roles = ", ".join(sorted(r.value for r in allowed))
            self.audit("reject", actor.user, command=cmd, reason=f"role {actor.role} not allowed",
                       via=actor.via)
            raise CommandError(f"{cmd} needs role {roles}; {actor.user} is {actor.role}",
                               "forbidden")

    def _refuse(self, actor: Actor, cmd: str, reason: str, **details: Any) -> CommandError:
        self.audit("reject", actor.user, command=cmd, reason=reason, via=actor.via, **details)
        return CommandError(reason)

    def _proposal(self, actor: Actor, cmd: str, proposal_id: str) -> Proposal:
        p = self.proposals.get(proposal_id)
        if p is None:
            if self.store.proposal_completed(proposal_id):
                raise self._refuse(actor, cmd, f"proposal {proposal_id} was already applied; "
                                   "a confirmed correction applies at most once")
            raise self._refuse(actor, cmd, f"unknown proposal {proposal_id}")
        if p is not self.current:
            raise self._refuse(actor, cmd, f"proposal {proposal_id} is {p.status}, not the "
                               "current proposal")
        return p

    def snapshot(self) -> dict[str, Any]:
        status = getattr(self.couch, "latest_status", None)
        open_il, pressed = self._plc_interlocks()
        return {
            "v": 1,
            "room": self.config.room,
            "state": str(self.workflow.state),
            "reason": self.workflow.reason,
            "since": self.workflow.since,
            "session": self.session.view() if self.session else None,
            "proposal": self.current.view() if self.current else None,
            "couch": None if status is None else {
                "pose": status.pose.as_dict(),
                "state": str(status.state),
                "moving": list(status.moving),
                "link_ok": self._couch_link_ok(),
            },
            "interlocks": {
                "monitored": self.plc is not None,
                "open": open_il,
                "motion_enable_pressed": pressed,
            },
            "hold": {"user": self._hold_user, "fresh": self._hold_fresh()},
            "last_result": self.last_result,
        }

    # ------------------------------------------------------------ commands
    async def status(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "status")
        return self.snapshot()

    async def interlocks(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "interlocks")
        if self.plc is None:
            return {"monitored": False, "inputs": [], "open": []}
        return self.plc.describe()

    async def open_session(self, actor: Actor, req: SessionRequest) -> dict[str, Any]:
        self._require(actor, "open_session")
        if self.workflow.state not in (S.STANDBY, S.READY, S.DONE, S.PROPOSED):
            raise self._refuse(actor, "open_session",
                               f"cannot open a session in state {self.workflow.state}")
        try:
            position = parse_patient_position(req.patient_position).value
        except ValueError as exc:
            raise self._refuse(actor, "open_session", str(exc)) from None
        if not all(math.isfinite(v) for v in req.iso):
            raise self._refuse(actor, "open_session", "isocentre must be 3 finite numbers in mm")
        self.session = TreatmentSession(req.patient_id, req.plan_uid, req.frame_of_reference_uid,
                                        req.iso, position, actor.user, time.time())
        self._supersede_current("session opened")
        self.audit("session", actor.user, action="open", **self.session.view())
        if self.workflow.state != S.READY:
            self._to(S.READY, f"session open for patient {req.patient_id}", actor.user)
        return self.snapshot()

    async def close_session(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "close_session")
        if self.workflow.state in (S.MOVING, S.VERIFYING, *LATCHED):
            raise self._refuse(actor, "close_session",
                               f"cannot close the session in state {self.workflow.state}")
        self._supersede_current("session closed")
        self.audit("session", actor.user, action="close")
        self.session = None
        self._to(S.STANDBY, "session closed", actor.user)
        return self.snapshot()

    async def record_imaging(self, actor: Actor, req: ImagingRequest) -> dict[str, Any]:
        self._require(actor, "record_imaging")
        if self.session is None:
            raise self._refuse(actor, "record_imaging", "no treatment session is open")
        if self.workflow.state in (S.MOVING, S.VERIFYING):
            raise self._refuse(actor, "record_imaging", "the couch is moving")
        if req.imaging_session_uid in self.session.imaging:
            raise self._refuse(actor, "record_imaging",
                               f"imaging session {req.imaging_session_uid} already recorded")
        status = await self.couch.status()
        rec = ImagingRecord(req.imaging_session_uid, req.modality, time.time(), status.pose)
        self.session.imaging[rec.uid] = rec
        self.audit("imaging", actor.user, imaging_session_uid=rec.uid, modality=rec.modality,
                   couch_pose=rec.couch.as_dict())
        return {"imaging_session_uid": rec.uid, "acquired_at": rec.acquired_at,
                "couch": rec.couch.as_dict()}

    async def register(self, actor: Actor, req: RegisterRequest) -> dict[str, Any]:
        """Rigid registration in a worker thread: motion supervision keeps running."""
        self._require(actor, "register")
        from imaging.registration import register_rigid
        from imaging.volumes import read_image

        def work() -> Any:
            fixed = read_image(req.fixed)
            moving = read_image(req.moving)
            return register_rigid(fixed.image, moving.image, iso_mm=req.iso)

        try:
            result = await asyncio.to_thread(work)
        except ValueError as exc:
            raise self._refuse(actor, "register", str(exc)) from None
        out: dict[str, Any] = result.to_json_dict()
        self.audit("registration", actor.user, fixed=req.fixed, moving=req.moving,
                   converged=out.get("converged"), metric=out.get("metric"),
                   translation_mm=out.get("translation_mm"), rotation_deg=out.get("rotation_deg"),
                   seconds=out.get("seconds"), via=actor.via)
        return out

    def _binding_refusals(self, req: ProposeRequest) -> list[str]:
        s = self.session
        assert s is not None
        b = req.binding
        out: list[str] = []
        if b.patient_id != s.patient_id:
            out.append(f"registration is for patient {b.patient_id}, session is for {s.patient_id}")
        if b.plan_uid != s.plan_uid:
            out.append(f"registration names plan {b.plan_uid}, session plan is {s.plan_uid}")
        if b.frame_of_reference_uid != s.frame_of_reference_uid:
            out.append(f"registration frame of reference {b.frame_of_reference_uid} is not the "
                       f"plan's {s.frame_of_reference_uid}")
        if any(abs(a - c) > 1e-6 for a, c in zip(req.iso, s.iso)):
            out.append(f"isocentre {list(req.iso)} mm differs from the plan's {list(s.iso)} mm")
        try:
            if parse_patient_position(req.patient_position).value != s.patient_position:
                out.append(f"patient position {req.patient_position} differs from the plan's "
                           f"{s.patient_position}")
        except ValueError as exc:
            out.append(str(exc))
        age = time.time() - b.acquired_at
        limit = self.config.binding.max_registration_age_s
        if age > limit:
            out.append(f"registration is {age:.0f} s old, limit {limit:.0f} s")
        if age < -5.0:
            out.append(f"registration acquisition time is {-age:.0f} s in the future")
        return out

    def _supersede_current(self, why: str) -> None:
        p = self.current
        if p is not None and p.status in ("proposed", "confirmed", "awaiting_approval"):
            p.status = "superseded"
            p.note("superseded", why=why)
        self.current = None

    async def propose(self, actor: Actor, req: ProposeRequest) -> dict[str, Any]:
        self._require(actor, "propose")
        if self.session is None:
            raise self._refuse(actor, "propose", "no treatment session is open")
        if self.workflow.state not in PROPOSABLE:
            raise self._refuse(actor, "propose", f"cannot propose in state {self.workflow.state}")
        refusals = self._binding_refusals(req)
        uid = req.binding.imaging_session_uid
        rec = self.session.imaging.get(uid)
        if req.couch_at_imaging is not None:
            try:
                p_img = Pose.from_dict(req.couch_at_imaging)
            except (ValueError, TypeError) as exc:
                raise self._refuse(actor, "propose", f"couch_at_imaging: {exc}") from None
            if rec is not None and any(abs(p_img.get(a) - rec.couch.get(a)) > 0.05 for a in AXES):
                refusals.append(f"couch pose at imaging in the registration ({p_img}) differs "
                                f"from the pose recorded for {uid} ({rec.couch})")
        elif rec is not None:
            p_img = rec.couch
        else:
            # No pose recorded for this imaging session: read the couch now and bind it.
            await self.record_imaging(actor, ImagingRequest(imaging_session_uid=uid))
            p_img = self.session.imaging[uid].couch
        axes = frozenset(req.axes) if req.axes else frozenset(AXES)
        try:
            plan = plan_correction(req.matrix, req.iso, req.patient_position, p_img, self.model,
                                   self.policy, axes, extra_refusals=refusals)
        except ValueError as exc:
            raise self._refuse(actor, "propose", str(exc)) from None
        self._supersede_current("new proposal")
        pid = new_id("prop")
        now = time.time()
        p = Proposal(pid, now, time.monotonic(), actor.user, req.binding, req.iso,
                     req.patient_position, req.matrix, p_img, plan, req.source)
        if plan.verdict is Verdict.REFUSED:
            p.status = "refused"
        elif plan.verdict is Verdict.WITHIN_TOLERANCE:
            p.status = "within_tolerance"
        self.proposals[pid] = p
        self.current = p
        self.store.save_proposal(pid, p.record())
        self.audit("proposal", actor.user, proposal_id=pid, verdict=plan.verdict.value,
                   reasons=plan.reasons, target=plan.target.as_dict(), delta=plan.delta.as_dict(),
                   couch_at_imaging=p_img.as_dict(), binding=req.binding.model_dump(),
                   via=actor.via)
        if plan.verdict is Verdict.WITHIN_TOLERANCE:
            self.last_result = {"proposal_id": pid, "outcome": "within_tolerance",
                                "delta": plan.delta.as_dict()}
            self._to(S.DONE, f"proposal {pid} within tolerance: no move", actor.user)
        elif plan.verdict is Verdict.REFUSED:
            if self.workflow.state == S.READY:
                self._publish_state()
            else:
                self._to(S.READY, f"proposal {pid} refused", actor.user)
        else:
            self._to(S.PROPOSED, f"proposal {pid}: {plan.verdict.value}", actor.user)
        return p.view()

    async def confirm(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self._require(actor, "confirm")
        p = self._proposal(actor, "confirm", proposal_id)
        if self.workflow.state != S.PROPOSED or p.status not in ("proposed", "interrupted"):
            raise self._refuse(actor, "confirm", f"proposal {proposal_id} is {p.status}; room is "
                               f"{self.workflow.state}; nothing to confirm", proposal_id=proposal_id)
        if p.verdict not in (Verdict.NEEDS_CONFIRMATION, Verdict.NEEDS_SECOND_APPROVAL):
            raise self._refuse(actor, "confirm", f"proposal {proposal_id} verdict is "
                               f"{p.verdict.value}; it cannot be confirmed", proposal_id=proposal_id)
        if self.store.proposal_completed(proposal_id):
            raise self._refuse(actor, "confirm", f"proposal {proposal_id} was already applied")
        age = time.time() - p.binding.acquired_at
        if age > self.config.binding.max_registration_age_s:
            raise self._refuse(actor, "confirm", f"registration is {age:.0f} s old, limit "
                               f"{self.config.binding.max_registration_age_s:.0f} s; re-image")
        now_m = time.monotonic()
        c = Confirmation(new_id("conf"), p.id, actor.user, time.time(), now_m,
                         now_m + self.config.motion.confirmation_validity_s)
        self.store.record_confirmation(c.id, p.id, actor.user, c.at)
        p.confirmation = c
        self.audit("confirmation", actor.user, proposal_id=p.id, confirmation_id=c.id,
                   verdict=p.verdict.value, target=p.target.as_dict(), via=actor.via)
        if p.verdict is Verdict.NEEDS_SECOND_APPROVAL:
            p.status = "awaiting_approval"
            self._to(S.AWAITING_APPROVAL, f"{p.id} needs a second approval", actor.user)
        else:
            p.status = "confirmed"
            self._to(S.CONFIRMED, f"{p.id} confirmed by {actor.user}", actor.user)
        return p.view()

    async def approve(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        self._require(actor, "approve")
        p = self._proposal(actor, "approve", proposal_id)
        c = p.confirmation
        if self.workflow.state != S.AWAITING_APPROVAL or c is None:
            raise self._refuse(actor, "approve", f"proposal {proposal_id} is not awaiting a "
                               "second approval", proposal_id=proposal_id)
        if actor.user == c.user:
            raise self._refuse(actor, "approve", f"second approval must come from another person "
                               f"than {c.user}, who confirmed", proposal_id=proposal_id)
        c.approver, c.approved_at = actor.user, time.time()
        self.store.record_confirmation(c.id, p.id, c.user, c.at, approver=actor.user)
        p.status = "confirmed"
        self.audit("approval", actor.user, proposal_id=p.id, confirmation_id=c.id,
                   confirmed_by=c.user, via=actor.via)
        self._to(S.CONFIRMED, f"{p.id} approved by {actor.user}", actor.user)
        return p.view()

    async def hold(self, actor: Actor, proposal_id: str) -> dict[str, Any]:
        """Hold-to-run heartbeat. The first one after confirmation starts the move."""
        self._require(actor, "hold")
        state = self.workflow.state
        if state == S.MOVING:
            if self.active is None or self.active.started.proposal_id != proposal_id:
                raise CommandError(f"the couch is moving for another proposal")
            if actor.user != self._hold_user:
                raise CommandError(f"motion is held by {self._hold_user}, not {actor.user}")
            self._hold_mono = time.monotonic()
            return self._progress()
        if state != S.CONFIRMED:
            # Not an error worth auditing each heartbeat: tell the console where we are.
            return {**self._progress(), "running": False}
        p = self._proposal(actor, "hold", proposal_id)
        c = p.confirmation
        assert c is not None
        if time.monotonic() > c.expires_mono:
            p.status, p.confirmation = "proposed", None
            self.audit("expired", actor.user, proposal_id=p.id, confirmation_id=c.id)
            self._to(S.PROPOSED, f"confirmation {c.id} expired; confirm again", actor.user)
            raise CommandError(f"confirmation {c.id} expired; confirm again")
        self._hold_mono, self._hold_user, self._hold_via = time.monotonic(), actor.user, actor.via
        ticket = ConfirmationTicket(c.id, p.id, c.user, p.target, c.at_mono, c.expires_mono)
        try:
            started = await self.gate.move_couch(ticket)
        except MotionRefused as exc:
            self._hold_mono = None
            # The confirmation may be consumed (claimed) even if GO failed: be safe.
            self._stop_couch_now()
            consumed = self.store.move_for_confirmation(c.id) is not None
            if consumed:
                p.status, p.confirmation = "proposed", None
                self._to(S.PROPOSED, f"move not started: {exc}", actor.user)
            raise CommandError(f"move not started: {exc}") from None
        p.status = "moving"
        self.active = ActiveMove(started, actor.user)
        self._to(S.MOVING, f"moving to {p.target}", actor.user)
        self._wake.set()
        return self._progress()

    async def release(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "release")
        self._hold_mono = None
        if self.workflow.state == S.MOVING:
            self._trip("hold-to-run released by " + actor.user, S.STOPPED, actor.user)
        return self._progress()

    async def stop(self, actor: Actor, reason: str = "") -> dict[str, Any]:
        # Stop is accepted in every state, from every role but viewer, before anything else.
        if actor.role == Role.VIEWER:
            self._require(actor, "stop")
        self._stop_couch_now()
        why = f"stop by {actor.user}" + (f": {reason}" if reason else "")
        self.audit("stop", actor.user, reason=reason, state=str(self.workflow.state),
                   via=actor.via)
        if self.workflow.state in (S.MOVING, S.VERIFYING, S.CONFIRMED, S.AWAITING_APPROVAL):
            self._trip(why, S.STOPPED, actor.user)
        try:
            await self.couch.stop()
        except Exception as exc:
            self.audit("fault", "system", what="stop acknowledgement", error=str(exc))
            if self.workflow.can(S.FAULT):
                self._to(S.FAULT, f"stop not acknowledged by couch: {exc}")
        return self.snapshot()

    async def reset(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "reset")
        if self.workflow.state not in LATCHED:
            raise self._refuse(actor, "reset", f"nothing to reset in state {self.workflow.state}")
        if not self._couch_link_ok():
            raise self._refuse(actor, "reset", "couch link is down")
        try:
            await self.couch.reset()
            await self.couch.status()
        except Exception as exc:
            raise self._refuse(actor, "reset", f"couch did not reset: {exc}") from None
        self._hold_mono = self._hold_user = None
        self.audit("reset", actor.user, state=str(self.workflow.state))
        self._to(S.READY if self.session else S.STANDBY, f"reset by {actor.user}", actor.user)
        # An interrupted proposal may be confirmed afresh; nothing is resumed by itself.
        p = self.current
        if p is not None and p.status == "interrupted" and self.session is not None:
            p.confirmation = None
            self._to(S.PROPOSED, f"{p.id} interrupted; confirm again to continue", actor.user)
        return self.snapshot()

    # --------------------------------------------------------- service mode
    async def enter_service(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "enter_service")
        if self.workflow.state not in (S.STANDBY, S.READY, S.DONE):
            raise self._refuse(actor, "enter_service",
                               f"cannot enter service mode in state {self.workflow.state}")
        self._supersede_current("service mode")
        if self.session is not None:
            self.audit("session", actor.user, action="close", reason="service mode")
            self.session = None
        self.audit("service_mode", actor.user, action="enter", via=actor.via)
        self._to(S.SERVICE, f"service mode ({actor.user}); clinical workflow locked out",
                 actor.user)
        return self.snapshot()

    async def exit_service(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "exit_service")
        if self.workflow.state != S.SERVICE:
            raise self._refuse(actor, "exit_service", "the room is not in service mode")
        self._stop_couch_now()
        self.audit("service_mode", actor.user, action="exit", via=actor.via)
        self._to(S.STANDBY, f"service mode ended by {actor.user}", actor.user)
        return self.snapshot()

    async def jog(self, actor: Actor, req: JogRequest) -> dict[str, Any]:
        """One jog step at reduced speed; each step is itself the hold-to-run heartbeat."""
        self._require(actor, "jog")
        if self.workflow.state != S.SERVICE:
            raise self._refuse(actor, "jog", f"jog needs service mode; room is {self.workflow.state}")
        rotation = req.axis in ROTATION_AXES
        limit = (self.config.motion.jog_max_speed_deg_s if rotation
                 else self.config.motion.jog_max_speed_mm_s)
        unit = "deg/s" if rotation else "mm/s"
        if not math.isfinite(req.velocity) or abs(req.velocity) > limit:
            raise self._refuse(actor, "jog", f"jog speed {req.velocity:g} {unit} exceeds the "
                               f"service limit {limit:g} {unit}")
        status = await self.couch.status()
        end = status.pose.as_dict()
        end[req.axis] += req.velocity * req.duration_ms / 1000.0
        self._hold_mono, self._hold_user, self._hold_via = time.monotonic(), actor.user, actor.via
        try:
            await self.gate.jog(actor.user, req.axis, req.velocity, req.duration_ms,
                                Pose.from_dict(end))
        except MotionRefused as exc:
            raise CommandError(f"jog refused: {exc}") from None
        except Exception as exc:
            raise self._refuse(actor, "jog", f"couch refused the jog: {exc}") from None
        return self._progress()

    async def diag(self, actor: Actor, bundle: bool = False) -> dict[str, Any]:
        """Device self-test for service engineers; optionally a diagnostics bundle."""
        self._require(actor, "diag")
        from daemon import diagnostics

        result: dict[str, Any] = await diagnostics.diag_command(self, bundle=bundle)
        self.audit("diag", actor.user, bundle=bundle, via=actor.via,
                   sha256=(result.get("bundle") or {}).get("sha256"))
        return result

    # ------------------------------------------------------------- motion
    def _progress(self) -> dict[str, Any]:
        status = getattr(self.couch, "latest_status", None)
        out: dict[str, Any] = {"state": str(self.workflow.state), "reason": self.workflow.reason,
                               "running": self.workflow.state == S.MOVING}
        if status is not None:
            out["pose"] = status.pose.as_dict()
        if self.current is not None:
            out["proposal_id"] = self.current.id
            out["target"] = self.current.target.as_dict()
            if status is not None:
                rem = self.current.target.minus(status.pose)
                out["remaining"] = rem.as_dict()
        if self.last_result is not None:
            out["result"] = self.last_result
        return out

    def _stop_couch_now(self) -> None:
        try:
            self.couch.stop_nowait()
        except Exception as exc:
            log.error("could not write STOP: %s", exc)

    def _trip(self, reason: str, new_state: RoomState = S.FAULT, actor: str = "system") -> None:
        """Stop motion now; then record why and latch the room."""
        self._stop_couch_now()
        self._hold_mono = None
        if self._tripping:
            return
        self._tripping = True
        try:
            move = self.active
            self.active = None
            p = self.current
            if move is not None:
                self.store.finish_move(move.started.confirmation_id, "interrupted",
                                       {"reason": reason})
                if p is not None:
                    p.status = "interrupted"
                    p.note("interrupted", reason=reason)
            elif p is not None and p.status in ("confirmed", "awaiting_approval"):
                # A stopped confirmation is spent: recovery needs a fresh one.
                p.status, p.confirmation = "proposed", None
            self.audit("fault" if new_state == S.FAULT else "motion_stopped", actor,
                       reason=reason, state=str(self.workflow.state),
                       confirmation_id=move.started.confirmation_id if move else None)
            if self.workflow.can(new_state):
                self._to(new_state, reason, actor)
        finally:
            self._tripping = False

    def on_console_link(self, connected: bool) -> None:
        """The MQTT console link changed; without it a console's heartbeats cannot arrive."""
        if connected:
            self._publish_state()
            return
        self.audit("fault", "system", what="console broker link lost",
                   state=str(self.workflow.state))
        if self.workflow.state == S.MOVING and (self._hold_via or "").startswith("mqtt"):
            self._trip("console broker link lost: hold-to-run cannot arrive", S.STOPPED)

    def _on_plc_change(self, snap: Any = None) -> None:
        """Called by the PLC driver on any input change: trip at once when needed."""
        if self.workflow.state == S.MOVING:
            self._check_plc_during_motion()
        elif self.workflow.state == S.SERVICE and self.plc is not None:
            # A jog in progress stops on any open interlock or a released enable, like a move.
            snap = self.plc.snapshot()
            if self.plc.open_interlocks(snap) or not self.plc.motion_enable_pressed(snap):
                self._stop_couch_now()
        # Then record the change (after any STOP went out).
        if snap is not None:
            view = {"link_ok": snap.link_ok, "link_reason": snap.link_reason,
                    **{n: st.closed for n, st in snap.inputs.items()},
                    "arms_moving": any(snap.arms_moving.values())}
            if view != self._last_interlocks:
                changed = {k: v for k, v in view.items() if self._last_interlocks.get(k) != v}
                self._last_interlocks = view
                self.audit("interlock", "system", changed=changed)
        self._publish_state()

    def _check_plc_during_motion(self) -> bool:
        """Trip on anything the PLC reports that forbids motion; True if it tripped."""
        if self.plc is None:
            return False
        snap = self.plc.snapshot()
        open_il = self.plc.open_interlocks(snap)
        if open_il:
            self._trip("interlock open: " + ", ".join(open_il))
            return True
        parked, arms_moving = self.plc.arms_state(snap)
        if not parked or arms_moving:
            self._trip("imager arm left its parked position during couch motion")
            return True
        if self.config.motion.require_plc_motion_enable and not self.plc.motion_enable_pressed(snap):
            self._trip("motion enable released", S.STOPPED)
            return True
        return False

    def _check_motion(self) -> None:
        if self.workflow.state != S.MOVING or self.active is None:
            return
        if not self._couch_link_ok():
            self._trip("couch link lost")
            return
        if self._check_plc_during_motion():
            return
        if self._hold_mono is None or (
            time.monotonic() - self._hold_mono > self.config.motion.hold_timeout_s
        ):
            self._trip("hold-to-run heartbeat lost", S.STOPPED)
            return
        if time.monotonic() - self.active.started.started_mono > self.config.motion.move_timeout_s:
            self._trip(f"move did not finish within {self.config.motion.move_timeout_s:.0f} s")

    async def _supervise(self) -> None:
        period = self.config.motion.supervision_period_s
        while True:
            if self.workflow.state == S.MOVING:
                self._check_motion()
                await asyncio.sleep(period)
            else:
                if self.workflow.state not in (S.OFFLINE, S.FAULT) and not self._couch_link_ok():
                    if self.workflow.can(S.FAULT) and self.workflow.state in (
                            S.CONFIRMED, S.VERIFYING):
                        self._trip("couch link lost")
                    elif self.workflow.can(S.OFFLINE):
                        self._to(S.OFFLINE, "couch link lost")
                elif self.workflow.state == S.OFFLINE and self._couch_link_ok():
                    self._to(S.STANDBY, "couch link up")
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.05)
                except TimeoutError:
                    pass

    async def _track_motion(self) -> None:
        """Poll the couch while moving; detect arrival and verify it."""
        while True:
            if self.workflow.state != S.MOVING or self.active is None:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.1)
                except TimeoutError:
                    pass
                continue
            active = self.active
            try:
                status = await self.couch.status()
            except Exception as exc:
                if self.workflow.state == S.MOVING:
                    self._trip(f"couch status failed during motion: {exc}")
                continue
            if self.active is not active or self.workflow.state != S.MOVING:
                continue
            if status.state == "FAULT":
                self._trip(f"couch controller fault {status.fault_code}")
                continue
            if status.state == "IDLE" and not any(status.moving):
                await self._verify_arrival(active, status)
                continue
            self._publish_state()
            await asyncio.sleep(0.04)

    async def _verify_arrival(self, active: ActiveMove, status: Any) -> None:
        self._to(S.VERIFYING, "couch reports motion complete")
        self.active = None
        self._hold_mono = None
        target = active.started.target
        pose = status.pose
        err = pose.minus(target)
        tol_mm = self.config.motion.arrival_tolerance_mm
        tol_deg = self.config.motion.arrival_tolerance_deg
        missed = [
            f"{a} {err.get(a):+.3f} {UNITS[a]} off (deadband {tol_deg if a in ROTATION_AXES else tol_mm} {UNITS[a]})"
            for a in AXES
            if abs(err.get(a)) > (tol_deg if a in ROTATION_AXES else tol_mm)
        ]
        p = self.current
        result = {
            "proposal_id": active.started.proposal_id,
            "confirmation_id": active.started.confirmation_id,
            "target": target.as_dict(),
            "reached": pose.as_dict(),
            "error": err.as_dict(),
            "outcome": "missed_target" if missed else "reached",
        }
        self.last_result = result
        if missed:
            self.store.finish_move(active.started.confirmation_id, "failed", result)
            if p is not None:
                p.status = "failed"
            self.audit("fault", "system", what="missed target", details=missed, **result)
            self._to(S.FAULT, "couch missed target: " + "; ".join(missed))
            return
        self.store.finish_move(active.started.confirmation_id, "completed", result)
        if p is not None:
            p.status = "completed"
        self.audit("verified", "system", **result)
        self._to(S.DONE, f"reached target within {tol_mm} mm / {tol_deg} deg")
