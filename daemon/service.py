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
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from daemon.api import (
    Actor,
    ArmsRequest,
    CommandError,
    ImagingRequest,
    JogRequest,
    MonitorStartRequest,
    MonitorStopRequest,
    ProposeRequest,
    RegisterRequest,
    Role,
    SessionRequest,
)
from daemon.config import RoomConfig
from daemon.console.roles import ALLOWED_ROLES
from daemon.monitoring import FrameRecord, HoldEvent, IntrafractionMonitor
from daemon.motion_gate import ConfirmationTicket, MotionGate, MotionRefused, StartedMove
from daemon.proposals import Confirmation, Proposal, new_id
from daemon.workflow import LATCHED, PROPOSABLE, RoomState, Workflow
from drivers.kv_imager import WireFrame
from imaging.tracking import KvFrame, MarkerTracker, TargetEstimate
from safety.beam_hold import BeamHoldPolicy
from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.geometry import parse_patient_position
from safety.plausibility import PlausibilityLimits, PoseReport, implausible_reasons
from safety.policy import Verdict, VerdictPolicy
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose
from safety.travel import couch_moved_reasons

log = logging.getLogger("igrt.room")

S = RoomState

# Room states in which the couch controller may legitimately report MOVING.
_MAY_MOVE = frozenset({S.MOVING, S.CONFIRMED, S.SERVICE})
# A status reporting the couch at rest counts as "settled" only when no GO is in
# flight (the controller reports IDLE as a GO uses its echo, then MOVING, before
# the ACK) and it arrived this long after igrtd last wrote GO or JOG: one made
# before the controller acted on a command must not make the motion that follows
# look uncommanded. While not settled outside motion, igrtd asks for a status
# every _SETTLE_PROBE_S (an idle controller pushes none).
_SETTLE_GRACE_S = 0.02
_SETTLE_PROBE_S = 0.1
_UPTIME_MOD = 1 << 32  # the controller's uptime is a 32-bit millisecond counter


def _newer(a: int, b: int) -> bool:
    """Controller uptime a is later than b (wrap-aware)."""
    return 0 < (a - b) % _UPTIME_MOD < _UPTIME_MOD // 2

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


# ---------------------------------------------------------------------------
# Intrafraction monitoring: state of one beam-on run (used by the section
# "Intrafraction monitoring" at the end of RoomService).
# ---------------------------------------------------------------------------

# A frame stamped further than this ahead of igrtd's clock is refused: fed to
# the monitor it would make every later frame look out of order.
FUTURE_FRAME_TOLERANCE_S = 0.05
BEAM_HOLD_RETRY_S = 0.05


@dataclass(frozen=True)
class _MonitorFrame(KvFrame):
    """A received frame and, if it cannot give an estimate, why (wrong geometry)."""

    problem: str = ""


@dataclass
class MonitoringRun:
    """MONITORING from monitor_start to monitor_stop (or a fault).

    One IntrafractionMonitor per imager connection (a "segment"): losing the
    connection ends the segment and holds the beam; the next connection starts
    a segment that is initially held, so only a fresh valid in-tolerance run
    releases the beam."""

    user: str
    policy: BeamHoldPolicy
    tracker: MarkerTracker
    geometries: tuple[Any, ...]
    markers_mm: list[list[float]]
    target_mm: tuple[float, float, float]
    return_state: RoomState
    started_at: float
    started_mono: float
    coil_held: bool | None  # beam-hold output as last acknowledged; None: unknown
    active: bool = True
    monitor: IntrafractionMonitor | None = None
    frames: asyncio.Queue[KvFrame | None] | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[Any] | None = None
    segments: int = 0
    records: list[FrameRecord] = field(default_factory=list)
    events: list[HoldEvent] = field(default_factory=list)
    frames_skipped: int = 0
    frames_refused: int = 0
    imager_link_losses: int = 0
    ended: str | None = None


async def _queued_frames(queue: asyncio.Queue[KvFrame | None]) -> Any:
    """The frames of one segment, until the None that ends it."""
    while True:
        frame = await queue.get()
        if frame is None:
            return
        yield frame


def _tightened(site: BeamHoldPolicy, req: MonitorStartRequest) -> BeamHoldPolicy:
    """The site policy with the request's overrides; only tighter values are accepted."""
    from dataclasses import replace

    problems = []
    changes: dict[str, Any] = {}
    if req.tolerance_mm is not None:
        if not req.tolerance_mm <= site.tolerance_mm:
            problems.append(f"tolerance {req.tolerance_mm} mm is looser than the site's "
                            f"{site.tolerance_mm} mm")
        changes["tolerance_mm"] = req.tolerance_mm
    if req.debounce_s is not None:
        if not req.debounce_s <= site.debounce_s:
            problems.append(f"debounce {req.debounce_s} s is longer than the site's "
                            f"{site.debounce_s} s")
        changes["debounce_s"] = req.debounce_s
    if req.release_after_s is not None:
        if not req.release_after_s >= site.release_after_s:
            problems.append(f"release delay {req.release_after_s} s is shorter than the site's "
                            f"{site.release_after_s} s")
        changes["release_after_s"] = req.release_after_s
    if problems:
        raise ValueError("; ".join(problems) + " (a treatment may only tighten the site policy)")
    return replace(site, **changes)


def _angle_diff(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)


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
        self._restop_at = 0.0
        # Uncommanded motion (issue 11, item 4): True once the couch was seen at rest
        # after igrtd's last GO or JOG (and after any motion it reported); a GO or JOG
        # written clears it. Controller uptimes order the reports (replies can be late).
        self._couch_settled = False
        self._motion_sent_mono = 0.0
        self._rest_uptime: int | None = None
        self._moving_uptime: int | None = None
        # Proposals under which a GO may have gone out: resuming one after an
        # interruption starts part of the way to the target (safety.travel).
        self._moved_under: set[str] = set()
        self._probe_at = 0.0
        # Position plausibility during a move (issue 11, item 5): the previous report.
        self._last_report: PoseReport | None = None
        self.plausibility = self._plausibility_limits(config)
        self._state_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._event_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # Intrafraction monitoring (section at the end of the class).
        self.imager: Any | None = None  # daemon.imager_link.ImagerLink, attached by serve()
        self._mon: MonitoringRun | None = None
        self._mon_last: dict[str, Any] | None = None
        self._fault_hold: asyncio.Task[Any] | None = None
        # What igrtd last wrote to the beam-hold output (the PLC's echo lags a poll).
        self._beam_hold_written: bool | None = None
        self.gate = MotionGate(
            couch, store, self.audit, self._motion_facts, model=self.model,
            target_validity_ms=config.motion.target_validity_ms, arms=arms,
            imaging_tolerance_mm=config.binding.couch_moved_tolerance_mm,
            imaging_tolerance_deg=config.binding.couch_moved_tolerance_deg,
            on_motion_sent=self._motion_commanded,
        )

    def _plausibility_limits(self, config: RoomConfig) -> PlausibilityLimits:
        m = config.motion
        speeds = dict(self.model.max_speed or {})
        for axis in AXES:
            speeds.setdefault(axis, m.plausible_speed_deg_s if axis in ROTATION_AXES
                              else m.plausible_speed_mm_s)
        # A status may arrive this late (a delayed reply) and still be used.
        delay = config.couch.reply_timeout_s + config.couch.link_timeout_s
        return PlausibilityLimits(speeds, m.plausibility_margin_mm, m.plausibility_margin_deg,
                                  m.path_tolerance_mm, m.path_tolerance_deg, delay)

    def _motion_commanded(self) -> None:
        """The MotionGate is about to write GO or JOG: motion from here on is ours."""
        self._couch_settled = False
        self._motion_sent_mono = time.monotonic()

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
        if hasattr(self.couch, "add_listener"):
            self.couch.add_listener(self._on_couch_event)
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
        except Exception as exc:  # noqa: BLE001 - the couch may simply not be there yet
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
            "monitoring": self._monitoring_brief(),
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
        if self.workflow.state in (S.MOVING, S.VERIFYING, S.MONITORING, *LATCHED):
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
        # Where the couch is now: the couch travels from here, whatever the imaging
        # pose says (issue 11, item 2). Read afresh: an idle couch pushes no status.
        try:
            current = (await self.couch.status()).pose
        except Exception as exc:  # noqa: BLE001 - no pose, no proposal
            raise self._refuse(actor, "propose",
                               f"current couch pose could not be read: {exc}") from None
        tol_mm = self.config.binding.couch_moved_tolerance_mm
        tol_deg = self.config.binding.couch_moved_tolerance_deg
        if req.couch_at_imaging is not None:
            try:
                p_img = Pose.from_dict(req.couch_at_imaging)
            except (ValueError, TypeError) as exc:
                raise self._refuse(actor, "propose", f"couch_at_imaging: {exc}") from None
            if rec is not None and any(abs(p_img.get(a) - rec.couch.get(a)) > 0.05 for a in AXES):
                refusals.append(f"couch pose at imaging in the registration ({p_img}) differs "
                                f"from the pose recorded for {uid} ({rec.couch})")
            if rec is None:
                # igrtd did not see this imaging: the only pose it can vouch for is now.
                refusals.extend(couch_moved_reasons(
                    p_img, current, tol_mm, tol_deg,
                    what=f"couch_at_imaging of imaging session {uid}, which igrtd did not "
                         "record, differs from the current couch pose"))
        elif rec is not None:
            p_img = rec.couch
        else:
            # No pose recorded for this imaging session: read the couch now and bind it.
            await self.record_imaging(actor, ImagingRequest(imaging_session_uid=uid))
            p_img = self.session.imaging[uid].couch
        if rec is not None or req.couch_at_imaging is None:
            refusals.extend(couch_moved_reasons(p_img, current, tol_mm, tol_deg))
        axes = frozenset(req.axes) if req.axes else frozenset(AXES)
        try:
            plan = plan_correction(req.matrix, req.iso, req.patient_position, p_img, self.model,
                                   self.policy, axes, extra_refusals=refusals, current=current)
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
                   couch_at_imaging=p_img.as_dict(), couch_now=current.as_dict(),
                   travel=plan.travel.as_dict() if plan.travel else None,
                   binding=req.binding.model_dump(), via=actor.via)
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
        if state == S.MONITORING:
            raise self._refuse(actor, "hold", "no couch motion while the beam is on: the room is "
                               "MONITORING (end monitoring first)", proposal_id=proposal_id)
        if state == S.MOVING:
            if self.active is None or self.active.started.proposal_id != proposal_id:
                raise CommandError("the couch is moving for another proposal")
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
        ticket = ConfirmationTicket(c.id, p.id, c.user, p.target, c.at_mono, c.expires_mono,
                                    couch_at_imaging=p.couch_at_imaging,
                                    resumes_interrupted=p.id in self._moved_under)
        try:
            started = await self.gate.move_couch(ticket)
        except MotionRefused as exc:
            self._hold_mono = None
            consumed = self.store.move_for_confirmation(c.id) is not None
            if exc.go_unanswered:
                # GO went out and was never answered: the couch may be moving. Not a
                # refusal: STOP and latch, like any loss of control during motion.
                self._moved_under.add(p.id)
                self._trip(f"GO not acknowledged by the couch: {exc}", S.FAULT, actor.user,
                           what="go not acknowledged")
                raise CommandError(f"move not started: {exc}") from None
            if consumed:
                self._moved_under.add(p.id)  # TARGET, maybe GO, went out
                # TARGET (and maybe GO) went out: stop, and the confirmation is spent.
                self._stop_couch_now()
                if self.workflow.state == S.CONFIRMED:
                    p.status, p.confirmation = "proposed", None
                    self._to(S.PROPOSED, f"move not started: {exc}", actor.user)
                # else a trip (STOPPED/FAULT) during the gate's awaits already latched
                # the room and spent the confirmation: nothing more to change.
            # Refused before anything was sent: nothing to stop, and the confirmation
            # stays valid (a STOP here would make the next GO look like a resumption).
            raise CommandError(f"move not started: {exc}") from None
        self._moved_under.add(p.id)
        if self.workflow.state != S.CONFIRMED:
            # Tripped (interlock, implausible report, ...) while the GO was on its way:
            # the trip already wrote STOP and spent the confirmation.
            self._stop_couch_now()
            self.store.finish_move(c.id, "interrupted", {"reason": self.workflow.reason})
            raise CommandError(f"move stopped as it started: room is {self.workflow.state} "
                               f"({self.workflow.reason})")
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
        except Exception as exc:  # noqa: BLE001 - stop must answer; any failure latches FAULT
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
        except Exception as exc:  # noqa: BLE001 - any couch failure is a one-line refusal
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

    # ----------------------------------------------------------- imager arms
    async def arms(self, actor: Actor, req: ArmsRequest) -> dict[str, Any]:
        """Extend the kV arms for imaging or park them; through the motion gate, which
        refuses while the couch moves (and the couch refuses while they are out)."""
        self._require(actor, "arms")
        # The command is its own console heartbeat; the PLC's motion-enable pendant must
        # be held (and the PLC stops the arm drives when it is let go).
        self._hold_mono, self._hold_user, self._hold_via = time.monotonic(), actor.user, actor.via
        try:
            await self.gate.move_arms(actor.user, req.extend)
        except MotionRefused as exc:
            raise CommandError(f"imager arms not moved: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - PLC refused or link down: one line, no move
            raise self._refuse(actor, "arms", f"room PLC did not take the arm command: {exc}") \
                from None
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
        except Exception as exc:  # noqa: BLE001 - any couch failure is a one-line refusal
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
        except Exception as exc:  # noqa: BLE001 - the stop path never raises; trip goes on
            log.error("could not write STOP: %s", exc)

    def _trip(self, reason: str, new_state: RoomState = S.FAULT, actor: str = "system",
              **details: Any) -> None:
        """Stop motion now; then record why (with `details`) and latch the room."""
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
                       confirmation_id=move.started.confirmation_id if move else None,
                       **details)
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
        elif self.workflow.state == S.CONFIRMED and self.plc is not None:
            # An interlock opening between confirmation and motion spends the
            # confirmation: motion after it needs a fresh, explicit one (issue 5).
            # Hold-to-run and the imager arms are not interlocks here: before the
            # move they are legitimately released / extended.
            open_il = self.plc.open_interlocks(self.plc.snapshot())
            if open_il:
                self._trip("interlock open before motion: " + ", ".join(open_il), S.STOPPED)
        elif self.workflow.state == S.SERVICE and self.plc is not None:
            # A jog in progress stops on any open interlock or a released enable, like a move.
            snap = self.plc.snapshot()
            if self.plc.open_interlocks(snap) or not self.plc.motion_enable_pressed(snap):
                self._stop_couch_now()
        elif self.workflow.state == S.MONITORING:
            self._monitoring_plc_check()
        # Then record the change (after any STOP went out).
        if snap is not None:
            view = {"link_ok": snap.link_ok, "link_reason": snap.link_reason,
                    **{n: st.closed for n, st in snap.inputs.items()},
                    "arms_moving": any(snap.arms_moving.values()),
                    "fault_code": snap.fault_code}
            if view != self._last_interlocks:
                changed = {k: v for k, v in view.items() if self._last_interlocks.get(k) != v}
                self._last_interlocks = view
                self.audit("interlock", "system", changed=changed)
        self._publish_state()

    def _on_couch_event(self, event: Any) -> None:
        """Every status the controller sends (pushed or asked for), synchronously.

        * During a move, a reported pose that is impossible for the commanded
          motion (too fast for the axis, or away from both start and target)
          stops the couch and latches FAULT (issue 11, item 5).
        * Motion reported (MOVING, or axes moving in any state) while the room
          allows no motion: if igrtd commanded
          motion that has not been seen at rest since (a move winding down, a STOP
          lost on the line), STOP is written again on MOVING, at most every 20 ms; if
          nothing was commanded since the couch was last seen at rest, it is a
          runaway: STOP, then an audited FAULT that needs a reset (issue 11, item 4).
        * In CONFIRMED the controller reports MOVING for a GO just written, before
          it ACKs it; that GO cleared `_couch_settled`, so it is neither stopped
          nor taken for a runaway. MOVING in CONFIRMED with nothing written is.
        """
        state = getattr(event, "state", None)
        pose = getattr(event, "pose", None)
        if state is None or not isinstance(pose, Pose):
            return  # a link event: supervision handles link loss
        room = self.workflow.state
        uptime = int(getattr(event, "uptime_ms", 0))
        report = PoseReport(pose, uptime, float(getattr(event, "received_at", time.monotonic())))
        previous, self._last_report = self._last_report, report
        active = self.active
        if room == S.MOVING and active is not None:
            if active.started.start is not None:
                self._check_plausible(active.started.start, active.started.target, previous,
                                      report)
        elif self.gate.in_flight is not None:  # GO written, its ACK not processed yet
            self._check_plausible(*self.gate.in_flight, previous, report)
        moving_bits = tuple(getattr(event, "moving", ()))
        if state != "MOVING" and not any(moving_bits):
            if state != "STOPPING" and not self.gate.go_in_flight and (
                    self._moving_uptime is None or _newer(uptime, self._moving_uptime)) and (
                    time.monotonic() - self._motion_sent_mono > _SETTLE_GRACE_S):
                self._couch_settled = True
                self._rest_uptime = uptime
            return
        if self._rest_uptime is not None and not _newer(uptime, self._rest_uptime):
            return  # a late reply from before the couch was last seen at rest
        if self._moving_uptime is None or _newer(uptime, self._moving_uptime):
            self._moving_uptime = uptime
        if room in (S.MOVING, S.SERVICE) or self.gate.go_in_flight:
            return  # motion igrtd is commanding (the gate may not have seen the ACK yet)
        if self._couch_settled:
            # Any motion reported (MOVING, or axes moving in STOPPING / FAULT / IDLE)
            # after the couch was at rest with nothing commanded since: a runaway.
            self._uncommanded_motion(pose, moving_bits, room)
            return
        if state != "MOVING" or room == S.CONFIRMED:
            return  # commanded motion winding down, or the GO just written starting
        now = time.monotonic()
        if now - self._restop_at < 0.02:  # at most one repeat per status push period
            return
        self._restop_at = now
        log.warning("couch executing motion while the room is %s: STOP again", room)
        self._stop_couch_now()

    def _probe_settled(self) -> None:
        """Ask the couch for a status while igrtd has not seen it at rest since its last
        motion command, so that a runaway afterwards is recognised as one."""
        now = time.monotonic()
        if (self._couch_settled or self.gate.go_in_flight or now - self._probe_at < _SETTLE_PROBE_S
                or self.workflow.state in (S.MOVING, S.SERVICE) or not self._couch_link_ok()):
            return
        self._probe_at = now

        async def probe() -> None:
            with contextlib.suppress(Exception):  # a failed read is tried again later
                await self.couch.status()

        self._spawn(probe())

    def _uncommanded_motion(self, pose: Pose, moving: tuple[bool, ...], room: RoomState) -> None:
        """The couch moves and nothing was commanded: STOP, audit, latch FAULT."""
        self._stop_couch_now()
        self._restop_at = time.monotonic()
        # The STOP is now the motion in progress: repeats of this episode only
        # re-STOP; a new runaway after the couch was seen at rest is audited anew.
        self._couch_settled = False
        axes = [a for a, m in zip(AXES, moving) if m]
        log.error("uncommanded couch motion (%s) while the room is %s: STOP, FAULT",
                  ", ".join(axes) or "MOVING reported", room)
        self._trip(f"uncommanded couch motion ({', '.join(axes) or 'controller reports MOVING'}) "
                   f"while the room was {room}", S.FAULT, what="uncommanded motion",
                   pose=pose.as_dict(), moving_axes=axes, room_state=str(room))

    def _check_plausible(self, start: Pose, target: Pose, previous: PoseReport | None,
                         report: PoseReport) -> None:
        reasons = implausible_reasons(start, target, previous, report, self.plausibility)
        if not reasons:
            return
        self._stop_couch_now()
        log.error("implausible couch position during motion: %s", "; ".join(reasons))
        self._trip("implausible couch position during motion: " + "; ".join(reasons),
                   S.FAULT, what="implausible position", pose=report.pose.as_dict(),
                   previous_pose=previous.pose.as_dict() if previous else None,
                   start=start.as_dict(), target=target.as_dict(), details=reasons)

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
                self._probe_settled()
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
            except Exception as exc:  # noqa: BLE001 - supervision must outlive any couch error
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

    # =====================================================================
    # Intrafraction monitoring (docs/intrafraction-monitoring.md, "In igrtd")
    #
    # MONITORING is beam-on. kV frames arrive over the imager link
    # (daemon/imager_link.py); an IntrafractionMonitor (daemon/monitoring.py)
    # turns each into a beam-hold decision written to the room PLC first,
    # then audited (the audit fans out to consoles). Fail safe: losing the
    # imager link holds the beam at once; losing the PLC link is a FAULT and
    # the hold is written as soon as the link is back; igrtd stopping holds
    # the beam. Nothing moves: no motion kind is permitted in MONITORING
    # (safety.motion.DEFAULT_MOTION_STATES), and `hold` is refused in it.
    # =====================================================================
    def attach_imager(self, link: Any) -> None:
        """serve() hands over the kV imaging link; its events come back to on_imager_*."""
        self.imager = link
        link.set_listener(self)

    async def monitor_start(self, actor: Actor, req: MonitorStartRequest) -> dict[str, Any]:
        self._require(actor, "monitor_start")
        cfg = self.config.monitoring
        if cfg is None:
            raise self._refuse(actor, "monitor_start", "intrafraction monitoring is not "
                               "configured in this room (no monitoring section)")
        if self.session is None:
            raise self._refuse(actor, "monitor_start", "no treatment session is open")
        if self.workflow.state not in (S.READY, S.DONE):
            raise self._refuse(actor, "monitor_start", f"monitoring starts from READY or DONE "
                               f"(after positioning); room is {self.workflow.state}")
        if self.plc is None:
            raise self._refuse(actor, "monitor_start", "no room PLC is configured: igrtd "
                               "cannot hold the beam")
        if self._fault_hold is not None and not self._fault_hold.done():
            raise self._refuse(actor, "monitor_start", "the beam hold asserted after the last "
                               "monitoring fault has not reached the room PLC yet")
        snap = self.plc.snapshot()
        if not snap.link_ok:
            raise self._refuse(actor, "monitor_start", f"room PLC link is down "
                               f"({snap.link_reason}): igrtd cannot hold the beam")
        echo = snap.outputs.get("beam_hold")
        if echo is None and self._beam_hold_written is None:
            raise self._refuse(actor, "monitor_start", "the room PLC has not reported its "
                               "beam-hold output yet")
        # Held if either says so; a held start is re-asserted before the first frame.
        coil = bool(echo) or bool(self._beam_hold_written)
        if self.imager is None or not self.imager.connected:
            raise self._refuse(actor, "monitor_start", "no kV imaging system is connected on "
                               f"{self.config.imager_socket}")
        status = getattr(self.couch, "latest_status", None)
        if status is not None and any(status.moving):
            raise self._refuse(actor, "monitor_start", "the couch is moving")
        bad = [list(p) for p in [*req.markers_mm, req.target_mm]
               if not all(math.isfinite(v) for v in p)]
        if bad:
            raise self._refuse(actor, "monitor_start", f"marker/target positions {bad} are not "
                               "finite numbers (mm)")
        try:
            policy = _tightened(cfg.policy(), req)
            geometries = cfg.geometries()
            tracker = MarkerTracker(geometries, req.markers_mm, req.target_mm,
                                    search_radius_mm=cfg.search_radius_mm,
                                    marker_size_mm=cfg.marker_size_mm, min_cnr=cfg.min_cnr,
                                    max_ray_miss_mm=cfg.max_ray_miss_mm)
        except ValueError as exc:
            raise self._refuse(actor, "monitor_start", str(exc)) from None
        run = MonitoringRun(actor.user, policy, tracker, geometries,
                            [list(p) for p in req.markers_mm], req.target_mm,
                            self.workflow.state, time.time(), time.monotonic(), bool(coil))
        self._mon = run
        self.audit("monitoring", actor.user, action="start", markers_mm=run.markers_mm,
                   target_mm=list(run.target_mm), tolerance_mm=policy.tolerance_mm,
                   debounce_s=policy.debounce_s, release_after_s=policy.release_after_s,
                   max_image_age_s=policy.max_image_age_s, frame_rate_hz=cfg.frame_rate_hz,
                   beam_hold_at_start=bool(coil), via=actor.via)
        self._to(S.MONITORING, f"beam-on monitoring started by {actor.user}", actor.user)
        run.task = asyncio.get_running_loop().create_task(self._monitoring_loop(run),
                                                          name="monitoring")
        return self._monitoring_view()

    async def monitor_stop(self, actor: Actor, req: MonitorStopRequest) -> dict[str, Any]:
        self._require(actor, "monitor_stop")
        run = self._mon
        if run is None or self.workflow.state != S.MONITORING:
            raise self._refuse(actor, "monitor_stop", f"monitoring is not running (room is "
                               f"{self.workflow.state})")
        await self._end_monitoring(run, f"stopped by {actor.user}")
        release_error = None
        if req.release_hold and run.coil_held is not False:
            try:
                await self._write_beam_hold(False)
            except Exception as exc:  # noqa: BLE001 - reported, the hold stays
                release_error = f"beam hold not released: {exc}"
                self.audit("beam_hold_write_failed", actor.user, hold=False, error=str(exc))
            else:
                run.coil_held = False
                t = time.monotonic()
                run.events.append(HoldEvent("beam_release", "operator", f"released by "
                                            f"{actor.user} at monitor_stop", None, None, t, t,
                                            None))
                self.audit("beam_release", actor.user, cause="operator",
                           reason="released at the end of monitoring by the operator",
                           via=actor.via)
        self.audit("monitoring", actor.user, action="stop", beam_held=run.coil_held,
                   frames=len(run.records), holds=sum(e.event == "beam_hold" for e in run.events),
                   via=actor.via)
        self._mon = None
        self._mon_last = self._run_view(run)
        self._to(run.return_state, f"beam-on monitoring ended by {actor.user}"
                 + ("; beam hold left asserted" if run.coil_held is not False else ""),
                 actor.user)
        out = dict(self._mon_last)
        if release_error:
            out["release_error"] = release_error
        if req.include_records:
            out["records"] = [asdict(r) for r in run.records]
            out["events"] = [asdict(e) for e in run.events]
        return out

    async def monitor_status(self, actor: Actor) -> dict[str, Any]:
        self._require(actor, "monitor_status")
        return self._monitoring_view()

    async def shutdown_monitoring(self) -> None:
        """igrtd is stopping: end monitoring with the beam held (fail safe)."""
        run = self._mon
        if run is None:
            return
        await self._end_monitoring(run, "igrtd stopping")
        try:
            async with asyncio.timeout(1.0):
                await self._write_beam_hold(True)
        except Exception as exc:  # noqa: BLE001 - the PLC must hold on host loss itself
            log.error("beam hold at shutdown not written: %s", exc)
            self.audit("beam_hold_write_failed", "system", hold=True, error=str(exc))
            return
        if run.coil_held is not True:
            self.audit("beam_hold", "monitor", cause="daemon_stopping",
                       reason="igrtd stopping during beam-on monitoring", frame_id=None)
        run.coil_held = True

    # -- imager link events (daemon.imager_link.ImagerListener) ------------
    def on_imager_frame(self, frame: WireFrame, received_mono: float,
                        received_unix: float) -> None:
        run = self._mon
        if run is None or run.frames is None:
            return  # not monitoring: frames are not used
        # The imaging system stamps UNIX time; the monitor times by the monotonic clock.
        t_acq = received_mono - (received_unix - frame.acquired_at)
        if t_acq > received_mono + FUTURE_FRAME_TOLERANCE_S:
            run.frames_refused += 1
            reason = (f"frame {frame.frame_id} acquired {t_acq - received_mono:.3f} s in the "
                      "future: the imaging system's clock is ahead of igrtd's")
            if run.frames_refused == 1 or run.frames_refused % 100 == 0:
                log.error("kV frame refused: %s", reason)
                self.audit("imager_frame_rejected", "system", error=reason,
                           refused=run.frames_refused)
            return
        problem = self._geometry_problem(run, frame)
        run.frames.put_nowait(_MonitorFrame(frame.frame_id, t_acq, frame.images, problem))

    def on_imager_connection(self, connected: bool, detail: str) -> None:
        self.audit("imager_link", "system", connected=connected, detail=detail,
                   state=str(self.workflow.state))
        run = self._mon
        if run is not None:
            if not connected and run.frames is not None:
                run.frames.put_nowait(None)  # ends the segment; the loop holds the beam
            run.wake.set()
        self._publish_state()

    def on_imager_rejected(self, error: str) -> None:
        self.audit("imager_frame_rejected", "system", error=error,
                   state=str(self.workflow.state))

    # -- internals ----------------------------------------------------------
    async def _write_beam_hold(self, hold: bool) -> None:
        if self.plc is None:
            raise RuntimeError("no room PLC configured")
        self._beam_hold_written = None  # unknown until the PLC acknowledges
        await self.plc.set_beam_hold(hold)
        self._beam_hold_written = hold

    def _monitor_estimator(self, run: MonitoringRun) -> Callable[[KvFrame], TargetEstimate]:
        tracker, max_age = run.tracker, run.policy.max_image_age_s

        def estimate(frame: KvFrame) -> TargetEstimate:
            problem = getattr(frame, "problem", "")
            if problem:
                return TargetEstimate(None, problem)
            age = time.monotonic() - frame.t_acquired
            if age > max_age:  # not worth the work: the stale rule decides
                return TargetEstimate(None, f"frame {frame.frame_id} acquired {age:.3f} s ago "
                                            f"(maximum image age {max_age} s)")
            return tracker.estimate(frame)

        return estimate

    @staticmethod
    def _geometry_problem(run: MonitoringRun, frame: WireFrame) -> str:
        """Why the frame's geometry is not the commissioned one ('' if it is)."""
        fid = frame.frame_id
        if len(frame.geometries) != len(run.geometries):
            return (f"frame {fid} has {len(frame.geometries)} views, the commissioned kV "
                    f"imaging has {len(run.geometries)}")
        for i, (g, c) in enumerate(zip(frame.geometries, run.geometries)):
            if tuple(g.size_px) != tuple(c.size_px):
                return (f"frame {fid} view {i} is {g.size_px[0]} x {g.size_px[1]} px, "
                        f"commissioned {c.size_px[0]} x {c.size_px[1]} px")
            checks = [
                ("angle", _angle_diff(g.angle_deg, c.angle_deg), g.angle_deg, c.angle_deg,
                 0.1, "deg"),
                ("SAD", abs(g.sad_mm - c.sad_mm), g.sad_mm, c.sad_mm, 0.5, "mm"),
                ("SID", abs(g.sid_mm - c.sid_mm), g.sid_mm, c.sid_mm, 0.5, "mm"),
                ("pixel pitch", abs(g.pixel_mm - c.pixel_mm), g.pixel_mm, c.pixel_mm, 1e-3,
                 "mm"),
                ("detector offset u", abs(g.offset_mm[0] - c.offset_mm[0]), g.offset_mm[0],
                 c.offset_mm[0], 0.1, "mm"),
                ("detector offset v", abs(g.offset_mm[1] - c.offset_mm[1]), g.offset_mm[1],
                 c.offset_mm[1], 0.1, "mm"),
            ]
            for name, diff, got, want, tol, unit in checks:
                if diff > tol:
                    return (f"frame {fid} view {i}: {name} {got:g} {unit} differs from the "
                            f"commissioned {want:g} {unit} by more than {tol:g} {unit}")
        return ""

    async def _monitoring_loop(self, run: MonitoringRun) -> None:
        try:
            while run.active:
                if self.imager is None or not self.imager.connected:
                    run.wake.clear()
                    await run.wake.wait()
                    continue
                # A segment that starts held must really be held (the monitor trusts it).
                if run.coil_held is not False and not await self._assert_beam_hold(
                        run, "segment_start", "beam held at the start of a monitoring segment"):
                    continue
                await self._monitor_segment(run)
                if run.active:  # the imager link ended the segment, not monitor_stop
                    run.imager_link_losses += 1
                    await self._assert_beam_hold(run, "imager_link_lost",
                                                 "kV imaging link lost during beam-on")
        except Exception as exc:  # a bug here must end in a held beam, not a silent task
            log.exception("intrafraction monitoring failed")
            self._monitoring_fault(run, f"intrafraction monitoring failed: {exc!r}")

    async def _monitor_segment(self, run: MonitoringRun) -> None:
        cfg = self.config.monitoring
        assert cfg is not None and self.imager is not None
        queue: asyncio.Queue[KvFrame | None] = asyncio.Queue()
        monitor = IntrafractionMonitor(self._monitor_estimator(run), self._write_beam_hold,
                                       run.policy, self.audit, run.target_mm, actor="monitor")
        monitor.start(initially_held=bool(run.coil_held))
        run.monitor, run.frames = monitor, queue
        run.segments += 1
        if not self.imager.connected:  # lost before the segment could listen
            queue.put_nowait(None)
        try:
            if not await self.imager.request_acquisition(cfg.frame_rate_hz):
                queue.put_nowait(None)
            await monitor.run(_queued_frames(queue))
        finally:
            run.records.extend(monitor.records)
            run.events.extend(monitor.events)
            run.frames_skipped += monitor.frames_skipped
            run.coil_held = monitor.beam_hold_acknowledged
            run.monitor = run.frames = None

    async def _assert_beam_hold(self, run: MonitoringRun, cause: str, reason: str) -> bool:
        """Write the hold, retrying while monitoring lasts; audited if it changed anything."""
        was = run.coil_held
        failing = False
        while True:
            try:
                await self._write_beam_hold(True)
                break
            except Exception as exc:  # noqa: BLE001 - audited once, retried
                run.coil_held = None
                if not failing:
                    log.error("beam hold (%s) not written: %s", cause, exc)
                    self.audit("beam_hold_write_failed", "monitor", hold=True, error=str(exc),
                               cause=cause)
                    failing = True
                if not run.active:
                    return False
                await asyncio.sleep(BEAM_HOLD_RETRY_S)
        t = time.monotonic()
        run.coil_held = True
        if was is True:
            if cause != "segment_start":
                self.audit("monitoring", "monitor", action=cause,
                           reason=f"{reason}; beam stays held")
        else:
            run.events.append(HoldEvent("beam_hold", cause, reason, None, None, t, t, None))
            self.audit("beam_hold", "monitor", cause=cause, reason=reason, frame_id=None,
                       deviation_mm=None, tolerance_mm=run.policy.tolerance_mm)
        return True

    async def _end_monitoring(self, run: MonitoringRun, why: str) -> None:
        run.active = False
        run.ended = why
        if run.frames is not None:
            run.frames.put_nowait(None)
        run.wake.set()
        task = run.task
        if task is not None and task is not asyncio.current_task():
            try:
                await asyncio.wait_for(asyncio.shield(task), 5.0)
            except TimeoutError:
                log.error("monitoring did not end within 5 s; cancelled")
                task.cancel()
        if self.imager is not None:
            await self.imager.stop_acquisition()

    def _monitoring_plc_check(self) -> None:
        run = self._mon
        if run is None or self.plc is None or not run.active:
            return
        snap = self.plc.snapshot()
        if not snap.link_ok:
            self._monitoring_fault(run, f"room PLC link lost during beam-on monitoring "
                                        f"({snap.link_reason})")

    def _monitoring_fault(self, run: MonitoringRun, reason: str) -> None:
        """End monitoring in FAULT; the hold is written as soon as the PLC takes it."""
        if run.ended is not None:
            return
        run.active = False
        run.ended = reason
        if run.frames is not None:
            run.frames.put_nowait(None)
        run.wake.set()
        self.audit("fault", "system", what="monitoring", reason=reason)
        self._mon = None
        self._mon_last = self._run_view(run)
        if self.workflow.can(S.FAULT):
            self._to(S.FAULT, reason)
        self._fault_hold = asyncio.get_running_loop().create_task(
            self._hold_after_fault(run, reason), name="monitoring-fault-hold")

    async def _hold_after_fault(self, run: MonitoringRun, reason: str) -> None:
        if run.task is not None and run.task is not asyncio.current_task():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(run.task), 5.0)
        failing = False
        while True:
            try:
                await self._write_beam_hold(True)
                break
            except Exception as exc:  # noqa: BLE001 - retried until the PLC takes it
                if not failing:
                    self.audit("beam_hold_write_failed", "monitor", hold=True, error=str(exc),
                               cause="fault")
                    failing = True
                await asyncio.sleep(0.1)
        if run.coil_held is not True:
            self.audit("beam_hold", "monitor", cause="fault", reason=reason, frame_id=None)
        run.coil_held = True
        self._mon_last = self._run_view(run)

    def _run_view(self, run: MonitoringRun) -> dict[str, Any]:
        m = run.monitor
        records = run.records + (m.records if m is not None else [])
        events = run.events + (m.events if m is not None else [])
        last = records[-1] if records else None
        return {
            "started_by": run.user,
            "started_at": run.started_at,
            "seconds": round(time.monotonic() - run.started_mono, 3),
            "ended": run.ended,
            "policy": asdict(run.policy),
            "markers_mm": run.markers_mm,
            "target_mm": list(run.target_mm),
            "segments": run.segments,
            "frames_processed": len(records),
            "frames_skipped": run.frames_skipped + (m.frames_skipped if m is not None else 0),
            "frames_refused": run.frames_refused,
            "frames_without_estimate": sum(r.deviation_mm is None for r in records),
            "imager_link_losses": run.imager_link_losses,
            "hold_wanted": m.hold if m is not None else run.coil_held,
            "beam_held": m.beam_hold_acknowledged if m is not None else run.coil_held,
            "holds": sum(e.event == "beam_hold" for e in events),
            "releases": sum(e.event == "beam_release" for e in events),
            "last_frame": None if last is None else {
                "frame_id": last.frame_id,
                "age_s": round(time.monotonic() - last.t_available, 3),
                "deviation_mm": None if last.deviation_mm is None
                else [round(v, 3) for v in last.deviation_mm],
                "deviation_norm_mm": None if last.deviation_norm_mm is None
                else round(last.deviation_norm_mm, 3),
                "hold": last.hold,
                "reason": last.reason,
            },
        }

    def _monitoring_view(self) -> dict[str, Any]:
        coil = None
        if self.plc is not None:
            coil = self.plc.snapshot().outputs.get("beam_hold")
        out: dict[str, Any] = {
            "configured": self.config.monitoring is not None,
            "active": self._mon is not None,
            "room_state": str(self.workflow.state),
            "beam_hold_output": coil,
            "imager": self.imager.describe() if self.imager is not None else None,
        }
        if self._mon is not None:
            out["run"] = self._run_view(self._mon)
        else:
            out["last_run"] = self._mon_last
        return out

    def _monitoring_brief(self) -> dict[str, Any] | None:
        if self.config.monitoring is None:
            return None
        run = self._mon
        m = run.monitor if run is not None else None
        return {
            "active": run is not None,
            "imager_connected": bool(self.imager is not None and self.imager.connected),
            "beam_held": (m.beam_hold_acknowledged if m is not None
                          else run.coil_held if run is not None else None),
        }
