"""RoomService: the workflow of one treatment room, behind every front end.

A thin facade over the room's parts. It checks roles here, so the local socket
and the MQTT console cannot disagree about who may do what, and hands each
command to the part that owns it; the parts check the room's state:

* daemon/correction_workflow.py: sessions, imaging, registration, propose,
  confirm, approve;
* daemon/supervision.py: hold-to-run and the start of a move, release, stop,
  reset, trips, the supervision loops and the arrival check; it owns the
  MotionGate (daemon/motion_gate.py), the one choke point for couch and imager
  motion, and daemon/couch_watch.py (uncommanded motion, position plausibility);
* daemon/beam_monitoring.py: beam-on intrafraction monitoring;
* daemon/service_mode.py: service mode, jog, diag;
* daemon/arms_control.py: the kV imager arms;
* daemon/qa_workflow.py: daily QA and calibration (a QA move is a proposal of
  source "qa" that supervision runs like any other), and the daily-QA gate that
  the correction workflow asks through `Room.qa_gate`.

What they share (state, audit, state changes, snapshot, motion facts, STOP)
is daemon/room.py. Devices come in through the Protocols of daemon/ports.py.

Stop always wins: `stop()` and every supervision trip write STOP to the couch
synchronously (`stop_nowait`) before anything else - before auditing, before
changing state - so nothing queued ahead of it on the event loop delays it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from daemon.api import (
    Actor,
    ArmsRequest,
    CommandError,
    ImagingRequest,
    JogRequest,
    MonitorStartRequest,
    MonitorStopRequest,
    ProposeRequest,
    QaCalibrationApproveRequest,
    QaCalibrationProposeRequest,
    QaCalibrationRevertRequest,
    QaCalibrationsRequest,
    QaFinishRequest,
    QaImageRequest,
    QaMoveRequest,
    QaOverrideRequest,
    QaResultsRequest,
    QaStartRequest,
    RegisterRequest,
    Reply,
    Role,
    SessionRequest,
)
from daemon.arms_control import ArmsControl
from daemon.beam_monitoring import BeamMonitoring
from daemon.commands import ALLOWED_ROLES
from daemon.config import RoomConfig
from daemon.correction_workflow import CorrectionWorkflow
from daemon.daily_series import DailySeriesWatch
from daemon.jsontypes import JsonMapping, JsonObject
from daemon.motion_gate import MotionGate
from daemon.ports import (
    AuditPort,
    CorrectionStorePort,
    CouchPort,
    ImagerArmsPort,
    ImagerLinkPort,
    RoomSafetyPort,
)
from daemon.proposals import QA_SOURCE, Proposal, TreatmentSession
from daemon.qa_workflow import QaWorkflow
from daemon.room import ActiveMove, Room
from daemon.service_mode import ServiceMode
from daemon.session_beacon import SessionBeacon
from daemon.supervision import MotionSupervisor
from daemon.workflow import Workflow
from imaging.review_messages import ReviewMessages

log = logging.getLogger("igrt.room")

# Which roles may issue which command: one table for every front end.
PERMISSIONS = ALLOWED_ROLES


class RoomService:
    def __init__(
        self,
        config: RoomConfig,
        couch: CouchPort,
        audit: AuditPort,
        store: CorrectionStorePort,
        *,
        plc: RoomSafetyPort | None = None,
        arms: ImagerArmsPort | None = None,
        barrier: Callable[[], Awaitable[None]] | None = None,
        go_barrier: Callable[[], Awaitable[None]] | None = None,
        hold_syncs: Callable[[], Callable[[], None]] | None = None,
    ) -> None:
        self.room = Room(config, couch, audit, store, plc)
        # `barrier`: everything audited and stored so far made durable (igrtd's group
        # commit); None where the audit log and store sync each write themselves.
        # `go_barrier`: the audit log alone, what a GO waits for (daemon/motion_gate.py).
        # `hold_syncs`: the group commit's background flushes held while a motion
        # command runs (`hold_background`).
        self._hold_syncs = hold_syncs
        self.motion = MotionSupervisor(self.room, arms, barrier, go_barrier)
        self.corrections = CorrectionWorkflow(self.room)
        self.monitoring = BeamMonitoring(self.room, self.corrections)
        self.room.beam_hold_required = self.monitoring.beam_hold_required
        self.room.correction_refusal = self.monitoring.correction_refusal
        self.service_mode = ServiceMode(self.room, self.motion.gate)
        self.arms_control = ArmsControl(self.room, self.motion.gate)
        dicom = config.dicom
        if dicom is not None:
            # No session outlives igrtd: the DICOM node learns which one is open.
            beacon = SessionBeacon(dicom.archive_dir(config.state_dir))
            beacon.clear()
            self.room.session_listeners.append(beacon)
        self.daily_series = (
            DailySeriesWatch(self.room, self.corrections, dicom.archive_dir(config.state_dir),
                             quiet_s=dicom.series_quiet_s)
            if dicom is not None and dicom.auto_register else None)
        self.room.monitoring_brief = self.monitoring.brief
        self.motion.monitoring_plc_check = self.monitoring.plc_check
        # QA images go to the registration worker the clinical registrations use.
        self.qa = QaWorkflow(self.room, self.corrections.registrations)
        self.room.qa_gate = self.qa.gate_refusal
        self.room.qa_brief = self.qa.brief

    # ------------------------------------------------- what diagnostics reads
    @property
    def config(self) -> RoomConfig:
        return self.room.config

    @property
    def couch(self) -> CouchPort:
        return self.room.couch

    @property
    def plc(self) -> RoomSafetyPort | None:
        return self.room.plc

    @plc.setter
    def plc(self, plc: RoomSafetyPort | None) -> None:
        self.room.plc = plc

    @property
    def audit_log(self) -> AuditPort:
        return self.room.audit_log

    @property
    def store(self) -> CorrectionStorePort:
        return self.room.store

    @property
    def workflow(self) -> Workflow:
        return self.room.workflow

    @property
    def session(self) -> TreatmentSession | None:
        return self.room.session

    @property
    def current(self) -> Proposal | None:
        return self.room.current

    @property
    def active(self) -> ActiveMove | None:
        return self.room.active

    @property
    def last_result(self) -> JsonObject | None:
        return self.room.last_result

    @property
    def gate(self) -> MotionGate:
        return self.motion.gate

    @property
    def imager(self) -> ImagerLinkPort | None:
        return self.monitoring.imager

    # ------------------------------------------------------------ plumbing
    def audit(self, event: str, actor: str, **details: object) -> None:
        self.room.audit(event, actor, **details)

    def add_state_listener(self, cb: Callable[[JsonObject], None]) -> None:
        self.room.state_listeners.append(cb)

    def add_event_listener(self, cb: Callable[[JsonMapping], None]) -> None:
        """`cb` gets each audit record's event, actor, time and details (see Room.audit)."""
        self.room.event_listeners.append(cb)

    def add_review_listener(self, cb: Callable[[ReviewMessages], None]) -> None:
        """`cb` gets the encoded review images of each successful registration."""
        self.room.review_listeners.append(cb)

    def hold_background(self) -> Callable[[], None]:
        """Hold what a command that may start motion does not need done on its way to
        the couch until the returned function is called: the consoles' events and state
        (daemon/publications.py) and the group commit's background flushes
        (daemon/group_commit.py `GroupCommit.hold`; a barrier still flushes)."""
        publications = self.room.publications.hold()
        if self._hold_syncs is None:
            return publications
        syncs = self._hold_syncs()

        def release() -> None:
            syncs()
            publications()
        return release

    def snapshot(self) -> JsonObject:
        return self.room.snapshot()

    def stop_couch_now(self) -> None:
        """Write STOP in this event-loop step (igrtd stopping, a task failing)."""
        self.room.stop_couch_now()

    def on_console_link(self, connected: bool) -> None:
        self.motion.on_console_link(connected)

    def attach_imager(self, link: ImagerLinkPort) -> None:
        self.monitoring.attach_imager(link)

    def close_workers(self) -> None:
        """igrtd is stopping: end the registration worker process, close the QA store."""
        self.corrections.registrations.close()
        self.qa.close()

    async def shutdown_monitoring(self) -> None:
        """igrtd is stopping: end monitoring with the beam held (fail safe)."""
        await self.monitoring.shutdown()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Reconcile after a (possibly unclean) restart; the room comes up stopped. Then the
        room's QA store: the daily-QA gate and the active calibration."""
        await self.motion.start()
        await self.qa.start()

    async def run(self) -> None:
        """Supervision: event driven for the PLC, polled for hold-to-run and the couch;
        and, where the room has a DICOM archive, daily series to propose from."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.motion.run())
            if self.daily_series is not None:
                tg.create_task(self.daily_series.run())

    # ------------------------------------------------------------- roles
    def _require(self, actor: Actor, cmd: str) -> None:
        allowed = PERMISSIONS[cmd]
        if actor.role not in allowed:
            roles = ", ".join(sorted(r.value for r in allowed))
            self.room.audit("reject", actor.user, command=cmd,
                            reason=f"role {actor.role} not allowed", via=actor.via)
            raise CommandError(f"{cmd} needs role {roles}; {actor.user} is {actor.role}",
                               "forbidden")

    # ------------------------------------------------------------ commands
    async def status(self, actor: Actor) -> Reply:
        self._require(actor, "status")
        return self.room.snapshot()

    async def interlocks(self, actor: Actor) -> Reply:
        self._require(actor, "interlocks")
        if self.room.plc is None:
            return {"monitored": False, "inputs": [], "open": []}
        return self.room.plc.describe()

    async def open_session(self, actor: Actor, req: SessionRequest) -> Reply:
        self._require(actor, "open_session")
        return await self.corrections.open_session(actor, req)

    async def close_session(self, actor: Actor) -> Reply:
        self._require(actor, "close_session")
        return await self.corrections.close_session(actor)

    async def record_imaging(self, actor: Actor, req: ImagingRequest) -> Reply:
        self._require(actor, "record_imaging")
        return await self.corrections.record_imaging(actor, req)

    async def register(self, actor: Actor, req: RegisterRequest) -> Reply:
        """Rigid registration in the worker process: motion supervision keeps running."""
        self._require(actor, "register")
        return await self.corrections.register(actor, req)

    async def propose(self, actor: Actor, req: ProposeRequest) -> Reply:
        self._require(actor, "propose")
        return await self.corrections.propose(actor, req)

    async def confirm(self, actor: Actor, proposal_id: str) -> Reply:
        self._require(actor, "confirm")
        reply = await self.corrections.confirm(actor, proposal_id)
        return await self._move_if_held(proposal_id, reply)

    async def approve(self, actor: Actor, proposal_id: str) -> Reply:
        self._require(actor, "approve")
        reply = await self.corrections.approve(actor, proposal_id)
        return await self._move_if_held(proposal_id, reply)

    async def _move_if_held(self, proposal_id: str, reply: Reply) -> Reply:
        """A confirmation (or second approval) that lands while hold-to-run for its
        proposal is already held starts the move at once. The reply says so under
        "move" ("started", or "not started" and why under "move_refused"); a move
        refused then (interlock, limits, ...) leaves the confirmation recorded, as a
        refused first heartbeat after it would."""
        try:
            started = await self.motion.start_if_held(proposal_id)
        except CommandError as exc:
            return {**reply, "move": "not started", "move_refused": str(exc)}
        return reply if started is None else {**reply, "move": "started"}

    async def hold(self, actor: Actor, proposal_id: str) -> Reply:
        """Hold-to-run heartbeat. The first one after confirmation starts the move."""
        self._require(actor, "hold")
        if actor.role == Role.SERVICE:
            # A service engineer holds QA moves only (the QA phantom, never a patient).
            p = self.room.current
            if p is None or p.id != proposal_id or p.source != QA_SOURCE:
                self.room.audit("reject", actor.user, command="hold", proposal_id=proposal_id,
                                reason="service role holds QA moves only", via=actor.via)
                raise CommandError(f"hold of {proposal_id}: a {actor.role} user may hold QA "
                                   "moves only", "forbidden")
        return await self.motion.hold(actor, proposal_id)

    async def release(self, actor: Actor) -> Reply:
        self._require(actor, "release")
        return await self.motion.release(actor)

    async def stop(self, actor: Actor, reason: str = "") -> Reply:
        # Stop is accepted in every state, from every role but viewer, before anything else.
        if actor.role == Role.VIEWER:
            self._require(actor, "stop")
        return await self.motion.stop(actor, reason)

    async def reset(self, actor: Actor) -> Reply:
        self._require(actor, "reset")
        return await self.motion.reset(actor)

    async def arms(self, actor: Actor, req: ArmsRequest) -> Reply:
        """Extend the kV arms for imaging or park them, through the motion gate."""
        self._require(actor, "arms")
        return await self.arms_control.arms(actor, req)

    async def enter_service(self, actor: Actor) -> Reply:
        self._require(actor, "enter_service")
        return await self.service_mode.enter_service(actor)

    async def exit_service(self, actor: Actor) -> Reply:
        self._require(actor, "exit_service")
        return await self.service_mode.exit_service(actor)

    async def jog(self, actor: Actor, req: JogRequest) -> Reply:
        """One jog step at reduced speed; each step is itself the hold-to-run heartbeat."""
        self._require(actor, "jog")
        return await self.service_mode.jog_step(actor, req)

    async def diag(self, actor: Actor, bundle: bool = False) -> Reply:
        """Device self-test for service engineers; optionally a diagnostics bundle."""
        self._require(actor, "diag")
        return await self.service_mode.diag(actor, self, bundle)

    async def monitor_start(self, actor: Actor, req: MonitorStartRequest) -> Reply:
        self._require(actor, "monitor_start")
        return await self.monitoring.monitor_start(actor, req)

    async def monitor_stop(self, actor: Actor, req: MonitorStopRequest) -> Reply:
        self._require(actor, "monitor_stop")
        return await self.monitoring.monitor_stop(actor, req)

    async def monitor_status(self, actor: Actor) -> Reply:
        self._require(actor, "monitor_status")
        return await self.monitoring.monitor_status(actor)

    # ------------------------------------------------------------ daily QA
    async def qa_start(self, actor: Actor, req: QaStartRequest) -> Reply:
        self._require(actor, "qa_start")
        return await self.qa.qa_start(actor, req)

    async def qa_image(self, actor: Actor, req: QaImageRequest) -> Reply:
        """A QA image analysed in the registration worker: motion supervision keeps running."""
        self._require(actor, "qa_image")
        return await self.qa.qa_image(actor, req)

    async def qa_move(self, actor: Actor, req: QaMoveRequest) -> Reply:
        """A QA move proposed and confirmed by the sender; `hold` runs it (MotionGate)."""
        self._require(actor, "qa_move")
        return await self.qa.qa_move(actor, req)

    async def qa_finish(self, actor: Actor, req: QaFinishRequest) -> Reply:
        self._require(actor, "qa_finish")
        return await self.qa.qa_finish(actor, req)

    async def qa_results(self, actor: Actor, req: QaResultsRequest) -> Reply:
        self._require(actor, "qa_results")
        return await self.qa.qa_results(actor, req)

    async def qa_override(self, actor: Actor, req: QaOverrideRequest) -> Reply:
        self._require(actor, "qa_override")
        return await self.qa.qa_override(actor, req)

    async def qa_calibration_propose(self, actor: Actor,
                                     req: QaCalibrationProposeRequest) -> Reply:
        self._require(actor, "qa_calibration_propose")
        return await self.qa.qa_calibration_propose(actor, req)

    async def qa_calibration_approve(self, actor: Actor,
                                     req: QaCalibrationApproveRequest) -> Reply:
        self._require(actor, "qa_calibration_approve")
        return await self.qa.qa_calibration_approve(actor, req)

    async def qa_calibration_revert(self, actor: Actor,
                                    req: QaCalibrationRevertRequest) -> Reply:
        self._require(actor, "qa_calibration_revert")
        return await self.qa.qa_calibration_revert(actor, req)

    async def qa_calibrations(self, actor: Actor, req: QaCalibrationsRequest) -> Reply:
        self._require(actor, "qa_calibrations")
        return await self.qa.qa_calibrations(actor, req)
