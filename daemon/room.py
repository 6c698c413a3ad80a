"""What the parts of RoomService share: the state of one treatment room.

The room's workflow state, the open session, the current proposal, the move
under way, the hold-to-run heartbeat and the last result live here, with the
few operations every part needs: audit (and fan out to consoles), change
state (the one place that calls `Workflow.to`), the status snapshot, the
motion facts the MotionGate authorises against, and STOP.

The parts (daemon/correction_workflow.py, daemon/supervision.py,
daemon/beam_monitoring.py, daemon/service_mode.py, daemon/arms_control.py)
each take this object and import no other part (supervision uses its own
daemon/couch_watch.py); supervision owns the MotionGate, which the facade
hands to service mode and the arms.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.api import Actor, CommandError
from daemon.collision_guard import CollisionGuard, CollisionView
from daemon.config import RoomConfig
from daemon.jsontypes import JsonMapping, JsonObject
from daemon.loop_step import AfterThisStep
from daemon.motion_gate import MotionFacts, StartedMove
from daemon.ports import AuditPort, CorrectionStorePort, CouchPort, RoomSafetyPort
from daemon.proposals import SUPERSEDABLE, Proposal, ProposalStatus, TreatmentSession
from daemon.publications import PublicationHold
from daemon.workflow import RoomState, Workflow
from drivers.plc import PlcSnapshot
from imaging.review_messages import ReviewMessages
from safety.collision_config import PatientEnvelope
from safety.couch_model import CouchModel
from safety.policy import VerdictPolicy
from safety.pose import Pose

if TYPE_CHECKING:
    from safety.qa_calibration import Calibration

log = logging.getLogger("igrt.room")

S = RoomState


def pose_json(pose: Pose) -> JsonObject:
    """A pose as a JSON object of a reply or snapshot (the same dict `as_dict` gives).

    `as_dict` is typed dict[str, float], which mypy will not put where a
    dict[str, JsonValue] goes (dict is invariant), so the values are re-collected.
    """
    return dict(pose.as_dict())


@dataclass
class ActiveMove:
    started: StartedMove
    user: str
    status_after_go: bool = False


@dataclass
class HoldToRun:
    """The last hold-to-run heartbeat: a console's `hold`, a jog step or an arms command."""

    mono: float | None = None
    user: str | None = None
    via: str | None = None
    # A console's `hold` names the proposal it holds for; one held before that
    # proposal is confirmed starts the move as the confirmation lands.
    proposal_id: str | None = None
    actor: Actor | None = None

    def beat(self, actor: Actor, proposal_id: str | None = None) -> None:
        self.mono, self.user, self.via = time.monotonic(), actor.user, actor.via
        self.proposal_id, self.actor = proposal_id, actor

    def within(self, timeout_s: float) -> bool:
        """The last heartbeat arrived no more than `timeout_s` ago."""
        return self.mono is not None and time.monotonic() - self.mono <= timeout_s


class Room:
    def __init__(self, config: RoomConfig, couch: CouchPort, audit: AuditPort,
                 store: CorrectionStorePort, plc: RoomSafetyPort | None) -> None:
        self.config = config
        self.couch = couch
        self.plc = plc
        self.audit_log = audit
        self.store = store
        self.model = (
            CouchModel.from_mapping(config.couch_model) if config.couch_model
            else CouchModel.default()
        )
        self.policy = VerdictPolicy.model_validate(config.policy or {})
        # The collision model of this room (issue 17; daemon/collision_guard.py).
        self.collision = CollisionGuard(
            config.collision, self.model, path_tolerance_mm=config.motion.path_tolerance_mm,
            path_tolerance_deg=config.motion.path_tolerance_deg,
            imaging_tolerance_mm=config.binding.couch_moved_tolerance_mm,
            imaging_tolerance_deg=config.binding.couch_moved_tolerance_deg,
            has_plc=plc is not None)
        self.workflow = Workflow()
        # Told the session whenever one opens or closes (None); igrt's DICOM node
        # learns from it whose images the room expects (daemon/session_beacon.py).
        self.session_listeners: list[Callable[[TreatmentSession | None], None]] = []
        self._session: TreatmentSession | None = None
        self.proposals: dict[str, Proposal] = {}
        self.current: Proposal | None = None
        self.active: ActiveMove | None = None
        self.last_result: JsonObject | None = None
        self.hold = HoldToRun()
        self.state_listeners: list[Callable[[JsonObject], None]] = []
        self._publish_after_step = AfterThisStep(self._publish_state_now)
        self._transition_lines: list[tuple[str, str, str]] = []
        self._log_after_step = AfterThisStep(self._log_transitions)
        # Held while a command that may start motion runs (daemon/publications.py).
        self.publications = PublicationHold(self._tell_event_listeners,
                                            self._publish_after_step)
        # Told the new state on every transition (device polling rates follow it).
        self.transition_listeners: list[Callable[[str], None]] = []
        # An event is an audit record's event, actor and details as the parts passed
        # them (poses as dicts, enums, lists): readable as a mapping; the audit log
        # and the console's message model turn the details into JSON.
        self.event_listeners: list[Callable[[JsonMapping], None]] = []
        # Told the review images of each successful registration, already encoded by
        # the registration worker (the console publishes them). Nobody listening (no
        # broker configured): the worker is not asked to make them.
        self.review_listeners: list[Callable[[ReviewMessages], None]] = []
        # Wakes the supervision loops at once on every state change (a move starting
        # included) and on every couch link change: while nothing can move they wait
        # on it instead of waking on a timer (daemon/supervision.py).
        self.wake = asyncio.Event()
        self._tasks: set[asyncio.Task[object]] = set()
        # Beam-on monitoring's line of the snapshot (set by RoomService).
        self.monitoring_brief: Callable[[], JsonObject | None] = lambda: None
        # True while a beam-on monitoring run is alive (between beams included): the
        # MotionGate then moves nothing unless the PLC reports the beam held, and no
        # other correction may be proposed (daemon/between_beams.py).
        self.beam_hold_required: Callable[[], bool] = lambda: False
        # Why a correction between beams may not move now (its target moved since, or
        # no recent estimate), None if it may or there is none.
        self.correction_refusal: Callable[[], str | None] = lambda: None
        # Daily QA (daemon/qa_workflow.py, wired by RoomService): why a clinical
        # correction may not be proposed or confirmed now (None: it may), and the
        # snapshot's `qa` line.
        self.qa_gate: Callable[[], str | None] = lambda: None
        self.qa_brief: Callable[[], JsonObject | None] = lambda: None
        # The active couch/imaging calibration (approved by two people, versioned):
        # planned clinical targets compensate for it. None: planning exactly as
        # without calibration (docs/geometry.md).
        self.calibration: Calibration | None = None

    @property
    def session(self) -> TreatmentSession | None:
        return self._session

    @session.setter
    def session(self, session: TreatmentSession | None) -> None:
        self._session = session
        for cb in list(self.session_listeners):
            try:
                cb(session)
            except Exception:  # a broken listener must never break the workflow
                log.exception("session listener failed")

    # ------------------------------------------------------------------ audit
    def audit(self, event: str, actor: str, **details: object) -> None:
        self.audit_log.append(event, actor, **details)
        if self.event_listeners:
            self.publications.event(
                {"event": event, "actor": actor, "at": time.time(), **details})

    def _tell_event_listeners(self, payload: JsonMapping) -> None:
        for cb in list(self.event_listeners):
            try:
                cb(payload)
            except Exception:  # a broken listener must never break the workflow
                log.exception("event listener failed")

    def publish_review(self, review: ReviewMessages) -> None:
        for cb in list(self.review_listeners):
            try:
                cb(review)
            except Exception:  # a broken listener must never break the workflow
                log.exception("review listener failed")

    def refuse(self, actor: Actor, cmd: str, reason: str, **details: object) -> CommandError:
        """Audit a refusal and return the error to raise."""
        self.audit("reject", actor.user, command=cmd, reason=reason, via=actor.via, **details)
        return CommandError(reason)

    def to(self, new: RoomState, reason: str, actor: str = "system") -> None:
        if self.workflow.state == new and new not in (S.PROPOSED, S.DONE):
            return
        old = self.workflow.to(new, reason)
        # Logged once this step is done: formatting and writing a log line on the way
        # to a GO (CONFIRMED, MOVING) cost more than the transition itself (issue 13,
        # item 6); the audit record below is the one that counts, and is written now.
        self._transition_lines.append((str(old), str(new), reason))
        self._log_after_step()
        if self.plc is not None:
            self.plc.on_room_state(str(new))
        for cb in list(self.transition_listeners):
            try:
                cb(str(new))
            except Exception:  # a broken listener must never break the workflow
                log.exception("state transition listener failed")
        self.audit("state", actor, old=str(old), new=str(new), reason=reason)
        self.publish_state()
        # Every transition goes through here: the supervision loops re-evaluate at
        # once (e.g. take up their motion-time cadence on CONFIRMED or MOVING).
        self.wake.set()

    def _log_transitions(self) -> None:
        lines, self._transition_lines = self._transition_lines, []
        for old, new, reason in lines:
            log.info("state %s -> %s (%s)", old, new, reason)

    def publish_state(self) -> None:
        """Publish the state snapshot once the current event-loop step is done.

        Built later, not here: a transition on the way to a GO (CONFIRMED, then
        MOVING in the same step) would otherwise build and publish two full
        snapshots before the TARGET is written; deferred, one snapshot, the
        newest, is built while TARGET is on the wire (issue 13, item 6). Every
        transition still reaches consoles as its own `state` event.
        """
        if self.state_listeners:
            self.publications.state()

    def _publish_state_now(self) -> None:
        if not self.state_listeners:
            return
        snap = self.snapshot()
        for cb in list(self.state_listeners):
            try:
                cb(snap)
            except Exception:
                log.exception("state listener failed")

    def spawn(self, coro: Coroutine[object, object, object]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------- proposals
    def proposal(self, actor: Actor, cmd: str, proposal_id: str) -> Proposal:
        """The current proposal by id, or a refusal naming why it is not."""
        p = self.proposals.get(proposal_id)
        if p is None:
            if self.store.proposal_completed(proposal_id):
                raise self.refuse(actor, cmd, f"proposal {proposal_id} was already applied; "
                                  "a confirmed correction applies at most once")
            raise self.refuse(actor, cmd, f"unknown proposal {proposal_id}")
        if p is not self.current:
            raise self.refuse(actor, cmd, f"proposal {proposal_id} is {p.status}, not the "
                              "current proposal")
        return p

    def supersede_current(self, why: str) -> None:
        p = self.current
        if p is not None and p.status in SUPERSEDABLE:
            p.to(ProposalStatus.SUPERSEDED)
            p.note("superseded", why=why)
        self.current = None

    # ------------------------------------------------------------- facts
    def plc_interlocks(self, snap: PlcSnapshot | None = None) -> tuple[list[str], bool | None]:
        """(open interlocks other than hold-to-run, motion-enable pressed or None), of
        `snap` or of a snapshot taken now."""
        if self.plc is None:
            return [], None
        if snap is None:
            snap = self.plc.snapshot()
        return self.plc.open_interlocks(snap), self.plc.motion_enable_pressed(snap)

    def hold_fresh(self, snap: PlcSnapshot | None = None) -> bool:
        if not self.hold.within(self.config.motion.hold_timeout_s):
            return False
        if self.plc is not None and self.config.motion.require_plc_motion_enable:
            _, pressed = self.plc_interlocks(snap)
            return bool(pressed)
        return True

    def couch_link_ok(self) -> bool:
        return bool(self.couch.link_ok)

    def motion_facts(self, kind: str) -> MotionFacts:
        # One PLC snapshot for every fact: one picture of the room, judged once
        # (RoomInterlocks caches the verdict per snapshot), on the way to a GO.
        snap = self.plc.snapshot() if self.plc is not None else None
        open_il, _ = self.plc_interlocks(snap)
        if not self.couch_link_ok():
            open_il = [*open_il, "couch link lost"]
        status = self.couch.latest_status
        arms_parked, arms_moving = True, False
        if self.plc is not None and snap is not None:
            arms_parked, arms_moving = self.plc.arms_state(snap)
        return MotionFacts(
            room_state=str(self.workflow.state),
            current=status.pose if status is not None else None,
            open_interlocks=tuple(open_il),
            couch_moving=bool(status is not None and any(status.moving)),
            imager_arms_parked=arms_parked,
            imager_moving=arms_moving,
            hold_to_run_fresh=self.hold_fresh(snap),
            beam_hold_required=self.beam_hold_required(),
            beam_held=None if snap is None else snap.outputs.get("beam_hold"),
            correction_refusal=self.correction_refusal(),
        )

    def collision_room(self) -> tuple[PlcSnapshot | None, bool]:
        """(PLC snapshot, imager arms vouched parked) for the collision model."""
        snap = self.plc.snapshot() if self.plc is not None else None
        return snap, self.collision_room_arms(snap)

    def collision_room_arms(self, snap: PlcSnapshot | None) -> bool:
        """Whether the PLC vouches for both kV arms parked and still."""
        if self.plc is None or snap is None:
            return self.plc is None
        parked, moving = self.plc.arms_state(snap)
        return parked and not moving

    def patient_envelope(self) -> PatientEnvelope | None:
        return self.session.patient_envelope if self.session is not None else None

    async def collision_view(self, start: Pose, target: Pose) -> CollisionView | str:
        """The proposal-time collision check of the path `start` -> `target` (a view, or
        why it could not be made; daemon/collision_guard.py). In a thread: a path close to
        the margin takes up to ~0.2 s to prove (bench collision_check_max_us), which the
        event loop (supervision, the PLC poll) must not wait for."""
        snap, parked = self.collision_room()
        try:
            return await asyncio.to_thread(self.collision.plan, start, target, snap, parked,
                                           self.patient_envelope())
        except Exception as exc:  # noqa: BLE001 - a path nobody could check does not move
            log.error("collision check failed: %s", exc)
            return f"collision: the path could not be checked: {exc}"

    def collision_gate_reasons(self, planned: CollisionView | None, current: Pose | None,
                               target: Pose) -> list[str]:
        """The MotionGate's collision check of a move about to start ([] if it may)."""
        snap, parked = self.collision_room()
        try:
            return self.collision.gate_reasons(planned, current, target, snap, parked,
                                               self.patient_envelope())
        except Exception as exc:  # noqa: BLE001 - a path nobody could check does not move
            log.error("collision check failed: %s", exc)
            return [f"collision: the path could not be checked: {exc}"]

    def collision_hard_stop(self, pose: Pose) -> str | None:
        """During motion: why the couch must stop now (the hard margin), or None."""
        snap, parked = self.collision_room()
        return self.collision.hard_stop_reason(pose, snap, parked, self.patient_envelope())

    def stop_couch_now(self) -> None:
        """Write STOP in this event-loop step; never raises (the trip goes on)."""
        try:
            self.couch.stop_nowait()
        except Exception as exc:  # noqa: BLE001 - the stop path never raises; trip goes on
            log.error("could not write STOP: %s", exc)

    # ------------------------------------------------------------- views
    def snapshot(self) -> JsonObject:
        status = self.couch.latest_status
        snap = self.plc.snapshot() if self.plc is not None else None
        open_il, pressed = self.plc_interlocks(snap)
        return {
            "v": 1,
            "room": self.config.room,
            "state": str(self.workflow.state),
            "reason": self.workflow.reason,
            "since": self.workflow.since,
            "session": self.session.view() if self.session else None,
            "proposal": self.current.view() if self.current else None,
            "couch": None if status is None else {
                "pose": pose_json(status.pose),
                "state": str(status.state),
                "moving": list(status.moving),
                "link_ok": self.couch_link_ok(),
            },
            "interlocks": {
                "monitored": self.plc is not None,
                "open": list(open_il),  # a list[JsonValue] for mypy: list is invariant
                "motion_enable_pressed": pressed,
            },
            "hold": {"user": self.hold.user, "fresh": self.hold_fresh(snap)},
            "collision": self.collision.brief(
                None if status is None else status.pose, snap,
                self.collision_room_arms(snap), self.patient_envelope()),
            "last_result": self.last_result,
            "monitoring": self.monitoring_brief(),
            "qa": self.qa_brief(),
        }

    def progress(self) -> JsonObject:
        status = self.couch.latest_status
        out: JsonObject = {"state": str(self.workflow.state), "reason": self.workflow.reason,
                               "running": self.workflow.state == S.MOVING}
        if status is not None:
            out["pose"] = pose_json(status.pose)
        if self.current is not None:
            out["proposal_id"] = self.current.id
            out["target"] = pose_json(self.current.target)
            if status is not None:
                rem = self.current.target.minus(status.pose)
                out["remaining"] = pose_json(rem)
        if self.last_result is not None:
            out["result"] = self.last_result
        return out
