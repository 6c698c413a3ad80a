"""Daily QA and couch-sag commissioning inside igrtd (issue 16; docs/qa.md).

A QA session reuses the clinical machinery, so that a QA move is checked
exactly like a treatment move:

* `qa_start` opens a session of source "qa" (patient "QA-PHANTOM") when no
  clinical session is open; the QA home pose is the couch pose then.
* `qa_move` makes a proposal of source "qa" to an absolute couch pose within
  the QA envelope of the home pose (no verdict tier: the envelope is the
  limit) and records the sender's confirmation. The `hold` heartbeats that
  follow start it through the MotionGate (daemon/supervision.py) with every
  check a clinical move has: interlocks, limits, freshness, the couch still
  where the move was planned from, hold-to-run and the PLC pendant, apply-once,
  then the arrival check. Nothing here moves anything.
* `qa_image` hands an image file to the registration worker (images are read
  there, never on igrtd's loop): the baseline's BB is found
  (imaging.qa_bb.find_bb); in each later image and in the baseline the BB and
  the phantom's three air holes (QA_PHANTOM_AIR_HOLES, imaging.qa_air_holes.find_air_hole)
  are found, a least-squares rigid fit of the four points (safety.qa_geometry.rigid_fit)
  gives the phantom's motion, and that is turned into the measured room-frame
  change (safety.qa_geometry.room_shift_from_registration) and the couch delta. (An
  image registration of the nearly featureless cube gave rotations biased by
  ~0.2 deg: 0.5-0.8 mm of false error through the couch's pivot lever.)
* A daily travel (one translation alone beyond the envelope, at most
  `qa.travel_mm`; safety.qa_travel) is imaged and measured by its BB alone,
  searched where the commanded travel should have carried it.
* `qa_finish` evaluates (safety.qa.evaluate_daily with the profile's TG-142
  tolerances, or safety.qa_sag.fit_sag), stores the result durably
  (daemon/qa_store.py), audits `qa` action "result" and closes the session.

Isocentre offset (daily). The phantom is set up at the QA home pose with its
centre on the treatment isocentre (lasers), so its BB is at room point
e = (0, 0, 0) + `qa.phantom_bb_offset_mm`. A CBCT is reconstructed about the
imaging isocentre but labelled as if it were the treatment isocentre, patient
position HFS at DICOM origin: image point q is room point M q with
M(HFS): room x = q.x, room y = q.z, room z = -q.y (docs/geometry.md,
"Patient orientation"). If the imaging isocentre sits at room point o, an
object at room point r appears at M^-1 (r - o). So with b = M q_bb, the
BB found in the baseline converted to the room frame,

    iso_offset_mm = o = e - b

is where the imaging isocentre is relative to the treatment isocentre, per
room axis (the quantity sim/room_imperfections.py calls
`imaging_iso_offset_mm`, and safety.qa_calibration's `imaging_iso_offset_mm`).
The baseline must be taken at the QA home pose; later images are measured
relative to it, which cancels o.

The gate (H-QA-GATE): with `qa.gate` on, `propose`, `confirm` and `approve` of
a clinical correction are refused while no daily QA of this room has passed
within `qa.window_h` under the configured profile or a stricter one, unless a
physicist has overridden it, with a written reason, for the open clinical
session only (`qa_override`, audited and stored).

Calibration (H-CALIBRATION): proposed from stored results, active only after
a second approval by another physicist than the proposer, versioned, audited,
and revertible to an earlier approved version or to none; the active one is
`Room.calibration`, which clinical planning compensates for
(daemon/correction_workflow.py, safety/calibrated_correction.py). QA moves are
not compensated: QA measures the couch itself. A daily QA judges the room as the
calibrated system sees it (issue 16 item 7, safety.qa module doc): under the
calibration active at `qa_start` (the session's `calibration_version`), `qa_finish`
reports the measured `iso_offset_mm` and `iso_offset_residual_mm` = measured minus
the calibration's imaging offset (the baseline image reports it too), the
iso_coincidence check uses the residual, and each positioning check compares the
measured couch motion with the motion the calibration predicts for the commanded,
uncompensated step (safety.qa_calibration.predict_real). The result records
`calibration_version` (0: none) and the calibration it used; with none active the
verdict and every value are exactly those without calibration.

The parts: daemon/qa_base.py (the open run, shared refusals), qa_envelope.py
(how far a QA move may go), qa_phantom_geometry.py (the phantom and the QA CBCT
frame), qa_images.py (qa_image), qa_results.py (the verdicts),
qa_calibration_commands.py (calibrations); this module: sessions, moves, the
gate and the override.
"""

from __future__ import annotations

import asyncio
import logging
import time

from daemon.api import (
    Actor,
    Binding,
    QaFinishRequest,
    QaMoveRequest,
    QaOverrideRequest,
    QaResultsRequest,
    QaStartRequest,
    Reply,
)
from daemon.jsontypes import JsonObject, as_float, as_list
from daemon.proposals import QA_SOURCE, Confirmation, Proposal, TreatmentSession, new_id
from daemon.proposals import ProposalStatus as PS
from daemon.qa_base import QaBase, QaOverride, QaRun
from daemon.qa_calibration_commands import QaCalibrationCommands
from daemon.qa_envelope import envelope_refusals
from daemon.qa_images import QaImages
from daemon.qa_phantom_geometry import QA_ISO, QA_POSITION
from daemon.qa_results import QaResults
from daemon.qa_store import QaStore, QaStoreError
from daemon.room import pose_json
from daemon.workflow import RoomState
from safety.correction import CorrectionPlan
from safety.policy import Verdict
from safety.pose import Pose

log = logging.getLogger("igrt.qa")

S = RoomState
Vec3 = tuple[float, float, float]
Six = tuple[float, float, float, float, float, float]

QA_PATIENT = "QA-PHANTOM"
_IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
             [0.0, 0.0, 0.0, 1.0]]
# States a QA session may be finished (or aborted) in: nothing moving, nothing latched.
_FINISHABLE = frozenset({S.READY, S.DONE, S.PROPOSED, S.CONFIRMED})

def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


def _version_of(result: JsonObject) -> int:
    """The calibration version a stored daily result was judged under (0: none; results
    stored before calibrations were recorded count as none)."""
    v = result.get("calibration_version")
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0


def _brief(record: JsonObject | None) -> JsonObject | None:
    if record is None:
        return None
    return {"id": record.get("id"), "passed": record.get("passed"), "at": record.get("at"),
            "by": record.get("by"), "profile": record.get("profile")}

class QaWorkflow(QaImages, QaResults, QaCalibrationCommands, QaBase):
    """igrtd's QA commands (module doc)."""

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the room's QA store and read what the gate and planning need from it."""
        try:
            self.store = await asyncio.to_thread(QaStore, self.store_path, self.room.config.room)
            self.store_problem = None
        except QaStoreError as exc:
            self.store_problem = str(exc)
            log.error("%s: daily QA results and calibrations unavailable", exc)
            self.room.audit("fault", "system", what="qa store", error=str(exc))
            return
        await self._refresh()
        if self._calibration is not None:
            self.room.audit("calibration", "system", action="loaded",
                            version=self._calibration.get("version"))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # ------------------------------------------------------------ gate
    def _override_now(self) -> QaOverride | None:
        o = self.override
        if o is not None and self.room.session is not o.session:
            self.override = None  # per session only: another (or no) session now
            return None
        return o

    def gate_refusal(self) -> str | None:
        """Why a clinical correction may not be proposed or confirmed now; None if it may."""
        cfg = self.cfg
        if not cfg.gate or self._override_now() is not None:
            return None
        last = self._last_pass
        window_s = cfg.window_h * 3600.0
        active = self._active_version()
        if last is not None:
            age = time.time() - as_float(last.get("at"), "qa result at")
            # A pass "from the future" (a clock set back) is not trusted beyond 5 min.
            # And only under the calibration in use now: a pass under another one (or
            # under none, before one was approved or after it was reverted) vouches for
            # a planning this room no longer does.
            if -300.0 <= age <= window_s and _version_of(last) == active:
                return None
        when = "none" if last is None else (
            f"{_when(as_float(last.get('at'), 'qa result at'))} by {last.get('by')}")
        under = "" if last is None or _version_of(last) == active else (
            f" under calibration version {_version_of(last)}; version {active} is in use now")
        return (f"daily QA of room {self.room.config.room} has not passed within "
                f"{cfg.window_h:g} h (last pass: {when}{under}); a physicist may override for "
                "this session (qa_override)")

    def _active_version(self) -> int:
        cal = self._calibration
        return 0 if cal is None else int(as_float(cal.get("version"), "calibration version"))

    def brief(self) -> JsonObject:
        run = self._current_run()
        cal = self._calibration
        o = self._override_now()
        return {
            "gate": self.cfg.gate,
            "window_h": self.cfg.window_h,
            "profile": self.cfg.profile,
            "clinical_allowed": self.gate_refusal() is None,
            "last_daily": _brief(self._last_daily),
            "last_pass": _brief(self._last_pass),
            "override": None if o is None else o.view(),
            "session": None if run is None else run.view(),
            "calibration": None if cal is None else {
                "version": cal.get("version"), "proposed_by": cal.get("proposed_by"),
                "approved_by": cal.get("approved_by"), "approved_at": cal.get("approved_at")},
            "store": "ok" if self.store_problem is None else self.store_problem,
        }

    def _close(self, actor: Actor, run: QaRun, why: str) -> None:
        self.room.supersede_current(why)
        self.room.audit("session", actor.user, action="close", source=QA_SOURCE, qa_session=run.id)
        self.room.session = None
        self.run = None
        # A trip while the result was stored latched STOPPED or FAULT: only `reset` leaves
        # that (to STANDBY, the session being closed now).
        if self.room.workflow.state in _FINISHABLE:
            self.room.to(S.STANDBY, why, actor.user)

    # ------------------------------------------------------------ session
    async def qa_start(self, actor: Actor, req: QaStartRequest) -> Reply:
        state = self.room.workflow.state
        s = self.room.session
        if s is not None:
            what = ("a QA session is already open" if s.source == QA_SOURCE else
                    f"a clinical session is open (patient {s.patient_id}); QA runs only "
                    "without one: close it first")
            raise self.room.refuse(actor, "qa_start", what)
        if state not in (S.STANDBY, S.READY, S.DONE):
            raise self.room.refuse(actor, "qa_start", f"cannot start QA in state {state}")
        self._store(actor, "qa_start")
        home = await self._couch_pose(actor, "qa_start")
        if self.room.session is not None or self.room.workflow.state not in (
                S.STANDBY, S.READY, S.DONE):  # changed while the couch answered
            raise self.room.refuse(actor, "qa_start", "the room changed while QA was starting")
        now = time.time()
        run_id = new_id("qa")
        session = TreatmentSession(QA_PATIENT, f"QA-{req.kind.upper()}", f"QA-{run_id}", QA_ISO,
                                   QA_POSITION, actor.user, now, source=QA_SOURCE)
        cal = self.room.calibration
        run = QaRun(run_id, req.kind, req.profile or self.cfg.profile, home, now, actor.user,
                    req.load_kg, session, None if cal is None else cal.version,
                    calibration=cal)
        self.room.supersede_current("QA session opened")
        self.room.session = session
        self.run = run
        self.room.audit("qa", actor.user, action="start", qa_session=run_id, kind=run.kind,
                        profile=run.profile, home=home.as_dict(), load_kg=run.load_kg,
                        calibration_version=run.calibration_version, via=actor.via)
        if self.room.workflow.state != S.READY:
            self.room.to(S.READY, f"QA session {run_id} ({run.kind}) open", actor.user)
        return {**run.view(), "state": str(self.room.workflow.state)}

    # ------------------------------------------------------------ moves
    async def qa_move(self, actor: Actor, req: QaMoveRequest) -> Reply:
        run = self._need_run(actor, "qa_move")
        state = self.room.workflow.state
        if state not in (S.READY, S.DONE, S.PROPOSED):
            raise self.room.refuse(actor, "qa_move", f"cannot make a QA move in state {state}")
        target = Pose(**req.target.model_dump())
        outside = envelope_refusals(run.kind, target, run.home, self.cfg)
        outside += [v.message for v in self.room.model.check_pose(target)]
        if outside:
            raise self.room.refuse(actor, "qa_move", "QA move refused: " + "; ".join(outside),
                                   target=target.as_dict())
        current = await self._couch_pose(actor, "qa_move")
        if self._current_run() is not run or self.room.workflow.state not in (
                S.READY, S.DONE, S.PROPOSED):  # changed while the couch answered
            raise self.room.refuse(actor, "qa_move", "the room changed while the QA move was "
                                   "being made")
        found = await self.room.collision_view(current, target)  # the path, at the gantry now
        if self._current_run() is not run or self.room.workflow.state not in (
                S.READY, S.DONE, S.PROPOSED):
            raise self.room.refuse(actor, "qa_move", "the room changed while the QA move's path "
                                   "was checked for collisions")
        if isinstance(found, str) or not found.check.allowed:
            raise self.room.refuse(actor, "qa_move", "QA move refused: " + (
                found if isinstance(found, str) else f"collision: {found.check.reason}"),
                target=target.as_dict())
        travel = target.minus(current)
        zero = {"x": 0.0, "y": 0.0, "z": 0.0}
        # No verdict tier: the QA envelope above is the limit; one person confirms.
        plan = CorrectionPlan(target, travel, dict(zero), dict(zero), Verdict.NEEDS_CONFIRMATION,
                              [], travel)
        now, now_m = time.time(), time.monotonic()
        pid = new_id("prop")
        binding = Binding(patient_id=QA_PATIENT, plan_uid=run.session.plan_uid,
                          frame_of_reference_uid=run.session.frame_of_reference_uid,
                          imaging_session_uid=run.id, acquired_at=now)
        # The move starts from the couch pose read now: the MotionGate refuses it if the
        # couch is elsewhere when TARGET and GO go out (couch moved since "imaging").
        p = Proposal(pid, now, now_m, actor.user, binding, QA_ISO, QA_POSITION,
                     [list(r) for r in _IDENTITY], current, plan, QA_SOURCE, collision=found)
        self.room.supersede_current("new QA move")
        self.room.proposals[pid] = p
        self.room.current = p
        self.room.store.save_proposal(pid, p.record())
        run.last_move = pid
        self.room.audit("qa", actor.user, action="move", qa_session=run.id, proposal_id=pid,
                        target=target.as_dict(), relative=target.minus(run.home).as_dict(),
                        couch_now=current.as_dict(), via=actor.via)
        self.room.to(S.PROPOSED, f"QA move {pid}", actor.user)
        c = Confirmation(new_id("conf"), pid, actor.user, now, now_m,
                         now_m + self.room.config.motion.confirmation_validity_s)
        self.room.store.record_confirmation(c.id, pid, actor.user, c.at)
        p.confirmation = c
        p.to(PS.CONFIRMED)
        self.room.audit("confirmation", actor.user, proposal_id=pid, confirmation_id=c.id,
                        verdict=plan.verdict.value, target=target.as_dict(), source=QA_SOURCE,
                        via=actor.via)
        self.room.to(S.CONFIRMED, f"QA move {pid} confirmed by {actor.user}; hold to run",
                     actor.user)
        return p.view()

    # ------------------------------------------------------------ result
    async def qa_finish(self, actor: Actor, req: QaFinishRequest) -> Reply:
        run = self._need_run(actor, "qa_finish")
        state = self.room.workflow.state
        if state not in _FINISHABLE:
            raise self.room.refuse(actor, "qa_finish", f"cannot finish QA in state {state}"
                                   + (" (reset first)" if state in (S.STOPPED, S.FAULT) else ""))
        if state == S.CONFIRMED and self.room.hold.within(
                self.room.config.motion.hold_timeout_s):
            raise self.room.refuse(actor, "qa_finish", "a QA move is being held: release it "
                                   "first")
        store = self._store(actor, "qa_finish")
        common: JsonObject = {"session": run.id, "home": pose_json(run.home),
                              "load_kg": run.load_kg, "started_at": run.started_at,
                              "started_by": run.started_by,
                              "calibration_version": run.calibration_version,
                              "measurements": list(run.measurements)}
        if req.abort:
            if req.reason is None:
                raise self.room.refuse(actor, "qa_finish", "abort needs a reason")
            record: JsonObject = {**common, "reason": req.reason}
            stored = await self._add(actor, store, run, False, True, record)
            self.room.audit("qa", actor.user, action="abort", qa_session=run.id,
                            result_id=stored["id"], reason=req.reason, via=actor.via)
            self._close(actor, run, f"QA session {run.id} aborted by {actor.user}")
            return stored
        if run.kind == "sag":
            record, passed = self._sag_result(run)
        else:
            record, passed = self._daily_result(actor, run)
        stored = await self._add(actor, store, run, passed, False, {**common, **record})
        self.room.audit("qa", actor.user, action="result", qa_session=run.id, kind=run.kind,
                        result_id=stored["id"], passed=passed, profile=run.profile,
                        failed=[c for c in as_list(record.get("checks", []), "checks")
                                if isinstance(c, dict) and c.get("passed") is False],
                        via=actor.via)
        await self._refresh()
        self._close(actor, run, f"QA session {run.id} finished: "
                    f"{'passed' if passed else 'FAILED'}")
        return stored

    async def _add(self, actor: Actor, store: QaStore, run: QaRun, passed: bool, aborted: bool,
                   record: JsonObject) -> JsonObject:
        try:
            return await asyncio.to_thread(store.add_result, run.kind, run.id, actor.user,
                                           run.profile, passed, aborted, record)
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_finish", str(exc)) from None

    async def qa_results(self, actor: Actor, req: QaResultsRequest) -> Reply:
        store = self._store(actor, "qa_results")
        rows = await asyncio.to_thread(store.results, req.kind, req.limit)
        return {"room": self.room.config.room, "results": list(rows)}

    # ------------------------------------------------------------ override
    async def qa_override(self, actor: Actor, req: QaOverrideRequest) -> Reply:
        s = self.room.session
        if s is None or s.source == QA_SOURCE:
            raise self.room.refuse(actor, "qa_override", "no clinical session is open: an "
                                   "override is for the open clinical session only")
        if not self.cfg.gate:
            raise self.room.refuse(actor, "qa_override", "the daily-QA gate is off in this room "
                                   "(qa.gate false): nothing to override")
        reason = req.reason.strip()
        gate_was = self.gate_refusal()
        session_key = f"{s.patient_id}/{s.plan_uid}@{s.opened_at:.3f}"
        stored: JsonObject | None = None
        if self.store is not None:
            try:
                stored = await asyncio.to_thread(self.store.add_override, actor.user,
                                                 session_key, reason)
            except QaStoreError as exc:  # the audit record below is the record then
                log.error("%s", exc)
        if self.room.session is not s:
            raise self.room.refuse(actor, "qa_override", "the session changed while the override "
                                   "was recorded")
        self.override = QaOverride(s, actor.user, time.time(), reason)
        self.room.audit("qa", actor.user, action="override", reason=reason, session=session_key,
                        patient_id=s.patient_id, gate_was=gate_was, stored=stored is not None,
                        via=actor.via)
        self.room.publish_state()
        return {"override": self.override.view(), "gate_was": gate_was}
