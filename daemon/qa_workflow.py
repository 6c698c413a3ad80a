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
  the phantom's three air holes (QA_PHANTOM_AIR_HOLES, imaging.qa_bb.find_air_hole)
  are found, a least-squares rigid fit of the four points (safety.qa.rigid_fit)
  gives the phantom's motion, and that is turned into the measured room-frame
  change (safety.qa.room_shift_from_registration) and the couch delta. (An
  image registration of the nearly featureless cube gave rotations biased by
  ~0.2 deg: 0.5-0.8 mm of false error through the couch's pivot lever.)
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
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from daemon.api import (
    Actor,
    Binding,
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
    Reply,
)
from daemon.config_sections import QA_PROFILE_RANK, QaConfig
from daemon.jsontypes import JsonObject, JsonValue, as_float, as_list, as_object
from daemon.proposals import QA_SOURCE, Confirmation, Proposal, TreatmentSession, new_id
from daemon.proposals import ProposalStatus as PS
from daemon.qa_store import QaStore, QaStoreError
from daemon.registration_worker import QaBb, QaShift, RegistrationFailed
from daemon.room import Room, pose_json
from daemon.workflow import RoomState
from safety.correction import CorrectionPlan
from safety.policy import Verdict
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose
from safety.qa import DailyQaResult, QaMeasurement, evaluate_daily, iso_offset_from_bb
from safety.qa_calibration import Calibration
from safety.qa_calibration_proposal import propose_calibration
from safety.qa_sag import SagModel, SagPoint, fit_sag

log = logging.getLogger("igrt.qa")

S = RoomState
Vec3 = tuple[float, float, float]
Six = tuple[float, float, float, float, float, float]

QA_PATIENT = "QA-PHANTOM"
BASELINE = "baseline"
QA_ISO: Vec3 = (0.0, 0.0, 0.0)
QA_POSITION = "HFS"
BB_SEARCH_RADIUS_MM = 40.0
# The room's QA phantom: centres (phantom frame = its planning frame, DICOM LPS mm about
# the cube's centre, as imaged HFS: x = room x, y = -room z, z = room y when laid along
# the lasers) and radii (mm) of its three air holes. With the BB they are the fiducials
# whose rigid fit measures each QA image's motion (registration_worker._qa_shift_files).
# They describe the physical phantom (sim/qa_phantom.py AIR_HOLES models the same one;
# tests/simroom/test_qa_phantom.py checks they agree).
QA_PHANTOM_AIR_HOLES: tuple[tuple[Vec3, float], ...] = (
    ((-45.0, 35.0, 50.0), 5.0),
    ((50.0, -40.0, -35.0), 4.0),
    ((-35.0, -50.0, -50.0), 6.0),
)
# A couch-sag move changes long only: the other axes stay at home within this.
SAG_OTHER_AXES_TOLERANCE = 0.01
_IDENTITY = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
             [0.0, 0.0, 0.0, 1.0]]
# States a QA session may be finished (or aborted) in: nothing moving, nothing latched.
_FINISHABLE = frozenset({S.READY, S.DONE, S.PROPOSED, S.CONFIRMED})
# A commanded pose within this of the home pose (mm, deg) is the home pose (safety.qa).
HOME_EPSILON = 1e-6
# States in which a calibration may change: no correction pending, nothing moving.
_CALIBRATION_STATES = frozenset({S.OFFLINE, S.STANDBY, S.READY, S.DONE, S.SERVICE,
                                 S.STOPPED, S.FAULT})


class QaImaging(Protocol):
    """Where QA images are analysed (the registration worker; a fake in rule tests)."""

    async def qa_bb(self, image: str, expected_mm: Vec3, search_radius_mm: float) -> QaBb: ...
    async def qa_shift(self, baseline: str, image: str, bb_mm: Vec3, bb_room_mm: Vec3,
                       home: Six, pivot_mm: Vec3,
                       holes: tuple[tuple[Vec3, float], ...] = ()) -> QaShift: ...


def room_from_image(q: Vec3) -> Vec3:
    """An image (DICOM LPS, HFS about iso 0) point in the room frame: M(HFS) q."""
    return (q[0], q[2], -q[1])


def image_from_room(r: Vec3) -> Vec3:
    """A room point in the image frame of a QA CBCT: M(HFS)^-1 r."""
    return (r[0], -r[2], r[1])


def holes_from_bb(bb_offset_room_mm: Vec3) -> tuple[tuple[Vec3, float], ...]:
    """The phantom's air holes relative to its BB in the image frame of a QA CBCT (DICOM
    LPS, mm; HFS) and their radii: hole centre - BB centre in the phantom frame, the BB
    being at `bb_offset_room_mm` (config `qa.phantom_bb_offset_mm`) from the centre."""
    bb = image_from_room(bb_offset_room_mm)
    return tuple(((c[0] - bb[0], c[1] - bb[1], c[2] - bb[2]), r)
                 for c, r in QA_PHANTOM_AIR_HOLES)


def _vec(values: list[float] | tuple[float, ...]) -> list[JsonValue]:
    return [float(v) for v in values]


def envelope_refusals(kind: str, target: Pose, home: Pose, cfg: QaConfig) -> list[str]:
    """Why a QA move to `target` is outside the QA envelope of `home` (value, limit, unit
    named); [] when inside. Written "not <=" so that NaN refuses."""
    out: list[str] = []
    for axis in AXES:
        d = target.get(axis) - home.get(axis)
        unit = UNITS[axis]
        if kind == "sag":
            if axis == "long":
                lim = cfg.sag_max_extension_mm
                if not (d >= 0.0 and d <= lim):
                    out.append(f"long {d:+.2f} mm from the QA home pose is outside the couch-sag "
                               f"range 0..{lim:g} mm")
            elif not abs(d) <= SAG_OTHER_AXES_TOLERANCE:
                out.append(f"{axis} {d:+.3f} {unit} from the QA home pose: a couch-sag move "
                           f"changes long only (limit {SAG_OTHER_AXES_TOLERANCE:g} {unit})")
            continue
        lim = cfg.envelope_deg if axis in ROTATION_AXES else cfg.envelope_mm
        if not abs(d) <= lim:
            out.append(f"{axis} {d:+.2f} {unit} from the QA home pose exceeds the QA envelope "
                       f"{lim:g} {unit}")
    return out


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(at))


@dataclass
class _Baseline:
    image: str
    bb_dicom_mm: Vec3
    iso_offset_mm: Vec3
    load_kg: float
    index: int  # in QaRun.measurements


@dataclass
class QaRun:
    """One open QA session."""

    id: str
    kind: str
    profile: str
    home: Pose
    started_at: float
    started_by: str
    load_kg: float
    session: TreatmentSession
    calibration_version: int | None
    baselines: list[_Baseline] = field(default_factory=list)
    measurements: list[JsonObject] = field(default_factory=list)
    last_move: str | None = None  # proposal id of the latest QA move
    # The calibration active at qa_start: the daily result judges the room under it.
    calibration: Calibration | None = None

    def view(self) -> JsonObject:
        return {"id": self.id, "kind": self.kind, "profile": self.profile,
                "home": pose_json(self.home), "started_at": self.started_at,
                "started_by": self.started_by, "load_kg": self.load_kg,
                "calibration_version": self.calibration_version,
                "images": [m["label"] for m in self.measurements],
                "last_move": self.last_move}


@dataclass(frozen=True)
class _Override:
    session: TreatmentSession
    by: str
    at: float
    reason: str

    def view(self) -> JsonObject:
        return {"by": self.by, "at": self.at, "reason": self.reason,
                "patient_id": self.session.patient_id}


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


class QaWorkflow:
    def __init__(self, room: Room, imaging: QaImaging, *,
                 store_path: Path | None = None) -> None:
        self.room = room
        self.imaging = imaging
        self.store_path = store_path or room.config.state_dir / "qa.sqlite"
        self.store: QaStore | None = None
        self.store_problem: str | None = "QA store not opened yet"
        self.run: QaRun | None = None
        self.override: _Override | None = None
        self._last_daily: JsonObject | None = None
        self._last_pass: JsonObject | None = None
        self._calibration: JsonObject | None = None  # the active one, as stored

    @property
    def cfg(self) -> QaConfig:
        return self.room.config.qa

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

    async def _refresh(self) -> None:
        """The gate's and planning's view of the store (kept in memory: the status snapshot
        and every propose read it)."""
        store = self.store
        if store is None:
            return
        allowed = tuple(p for p, r in QA_PROFILE_RANK.items()
                        if r >= QA_PROFILE_RANK[self.cfg.profile])
        self._last_daily = await asyncio.to_thread(store.last_result, "daily")
        self._last_pass = await asyncio.to_thread(store.last_result, "daily", passed=True,
                                                  profiles=allowed)
        active = await asyncio.to_thread(store.active_calibration)
        self._calibration = active
        self.room.calibration = (None if active is None else Calibration.from_json(
            as_object(active["calibration"], "calibration")))

    # ------------------------------------------------------------ gate
    def _current_run(self) -> QaRun | None:
        run = self.run
        if run is not None and self.room.session is not run.session:
            # The session closed (close_session, service mode): the run is over, unstored.
            self.run = None
            return None
        return run

    def _override_now(self) -> _Override | None:
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

    # ------------------------------------------------------------ helpers
    def _store(self, actor: Actor, cmd: str) -> QaStore:
        if self.store is None:
            raise self.room.refuse(actor, cmd, f"QA store unavailable: {self.store_problem}")
        return self.store

    def _need_run(self, actor: Actor, cmd: str) -> QaRun:
        run = self._current_run()
        if run is None:
            raise self.room.refuse(actor, cmd, "no QA session is open (qa_start)")
        return run

    async def _couch_pose(self, actor: Actor, cmd: str) -> Pose:
        try:
            return (await self.room.couch.status()).pose
        except Exception as exc:  # noqa: BLE001 - no pose, no QA step
            raise self.room.refuse(actor, cmd, f"couch pose could not be read: {exc}") from None

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
                     [list(r) for r in _IDENTITY], current, plan, QA_SOURCE)
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

    # ------------------------------------------------------------ images
    def _commanded(self, actor: Actor, run: QaRun) -> Pose:
        """The couch pose the latest QA move reached (the home pose before any)."""
        if run.last_move is None:
            return run.home
        p = self.room.proposals.get(run.last_move)
        if p is None or p.status is not PS.COMPLETED:
            status = "unknown" if p is None else str(p.status)
            raise self.room.refuse(actor, "qa_image", f"QA move {run.last_move} has not reached "
                                   f"its target ({status}): finish it (hold) or make a new "
                                   "qa_move before imaging")
        return p.target

    async def qa_image(self, actor: Actor, req: QaImageRequest) -> Reply:
        run = self._need_run(actor, "qa_image")
        state = self.room.workflow.state
        if state not in (S.READY, S.DONE):
            raise self.room.refuse(actor, "qa_image", f"cannot take a QA image in state {state} "
                                   "(the couch must be at rest after its QA move)")
        commanded = self._commanded(actor, run)
        pose = await self._couch_pose(actor, "qa_image")
        off = pose.minus(commanded)
        tol = self.room.config.motion
        away = [f"{a} {off.get(a):+.3f} {UNITS[a]}" for a in AXES
                if not abs(off.get(a)) <= (tol.arrival_tolerance_deg if a in ROTATION_AXES
                                           else tol.arrival_tolerance_mm)]
        if away:
            raise self.room.refuse(actor, "qa_image", "the couch is not at the commanded QA pose "
                                   f"({', '.join(away)} off): the image would not measure it")
        relative = Pose(*(0.0 if abs(v) <= HOME_EPSILON else v
                          for v in commanded.minus(run.home).as_tuple()))
        load = run.load_kg if req.load_kg is None else req.load_kg
        last_move = run.last_move
        record: JsonObject = {"label": req.label, "image": req.image, "at": time.time(),
                              "couch_pose": pose_json(pose), "commanded": pose_json(relative),
                              "load_kg": load}
        if req.label == BASELINE:
            record.update(await self._baseline(actor, run, req, relative, load))
        else:
            record.update(await self._measure(actor, run, req, relative))
        if self._current_run() is not run:
            raise self.room.refuse(actor, "qa_image", "the QA session closed while the image was "
                                   "analysed")
        if run.last_move != last_move or self.room.workflow.state not in (S.READY, S.DONE):
            raise self.room.refuse(actor, "qa_image", "a QA move was made while the image was "
                                   "analysed: image again")
        if req.label == BASELINE:
            offset = as_list(record["iso_offset_mm"], "iso_offset_mm")
            bb = as_list(record["bb_dicom_mm"], "bb_dicom_mm")
            run.baselines.append(_Baseline(
                req.image, (as_float(bb[0]), as_float(bb[1]), as_float(bb[2])),
                (as_float(offset[0]), as_float(offset[1]), as_float(offset[2])), load,
                len(run.measurements)))
        run.measurements.append(record)
        self.room.audit("qa", actor.user, action="image", qa_session=run.id, via=actor.via,
                        **{k: v for k, v in record.items() if k != "registration"})
        return record

    async def _baseline(self, actor: Actor, run: QaRun, req: QaImageRequest, relative: Pose,
                        load: float) -> JsonObject:
        if run.baselines and run.kind != "sag":
            raise self.room.refuse(actor, "qa_image", "the baseline of this QA session is taken; "
                                   "label later images otherwise")
        if any(relative.as_tuple()):
            raise self.room.refuse(actor, "qa_image", "the baseline is taken at the QA home pose; "
                                   f"the couch is commanded {relative} from it")
        expected_room = self.cfg.phantom_bb_offset_mm
        try:
            bb = await self.imaging.qa_bb(req.image, image_from_room(expected_room),
                                          BB_SEARCH_RADIUS_MM)
        except (ValueError, OSError, RegistrationFailed) as exc:
            raise self.room.refuse(actor, "qa_image", f"baseline: {exc}") from None
        found_room = room_from_image(bb.position_mm)
        offset = iso_offset_from_bb(bb.position_mm, expected_room, QA_POSITION, QA_ISO)
        out: JsonObject = {"bb_mm": _vec(found_room), "bb_dicom_mm": _vec(bb.position_mm),
                           "expected_bb_mm": _vec(expected_room), "iso_offset_mm": _vec(offset),
                           "peak_hu": bb.peak_hu, "voxels": bb.voxels}
        if run.calibration is not None:  # what the calibrated system still sees
            o = run.calibration.imaging_iso_offset_mm
            out["iso_offset_residual_mm"] = _vec([v - c for v, c in zip(offset, o, strict=True)])
        return out

    async def _measure(self, actor: Actor, run: QaRun, req: QaImageRequest,
                       relative: Pose) -> JsonObject:
        if not run.baselines:
            raise self.room.refuse(actor, "qa_image", "take the baseline first (label "
                                   f"{BASELINE!r}, couch at the QA home pose)")
        base = run.baselines[-1]
        pivot = self.room.model.pivot
        offset = self.cfg.phantom_bb_offset_mm
        at = req.phantom_at_mm
        # The BB's room position at the home pose: where the phantom's centre was laid
        # (`phantom_at_mm`, the treatment isocentre by default) plus the BB's offset. A few
        # mm off changes the couch delta negligibly, but a couch-sag run lays the phantom
        # up to 700 mm toward the foot, which times the sag's pitch is not negligible
        # (safety.qa.couch_delta_from_room_shift).
        bb_home = (at[0] + offset[0], at[1] + offset[1], at[2] + offset[2])
        try:
            got = await self.imaging.qa_shift(
                base.image, req.image, base.bb_dicom_mm, bb_home,
                run.home.as_tuple(), (float(pivot[0]), float(pivot[1]), float(pivot[2])),
                holes_from_bb(offset))
        except (ValueError, OSError, RegistrationFailed) as exc:
            raise self.room.refuse(actor, "qa_image", f"{req.label}: {exc}") from None
        reg: JsonObject = {"converged": got.converged, "metric": got.metric}
        if not got.converged or not all(math.isfinite(v) for v in (*got.shift, *got.couch)):
            raise self.room.refuse(actor, "qa_image", f"{req.label}: registration to the "
                                   f"baseline not usable: {got.reason or 'not converged'}",
                                   registration=reg)
        measured = Pose(*got.couch)
        return {"measured": pose_json(measured), "shift": _vec(got.shift),
                "error": pose_json(measured.minus(relative)), "registration": reg,
                "bb_dicom_mm": _vec(got.bb_mm), "baseline": base.index}

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

    def _daily_result(self, actor: Actor, run: QaRun) -> tuple[JsonObject, bool]:
        if not run.baselines:
            raise self.room.refuse(actor, "qa_finish", "daily QA incomplete: no baseline image; "
                                   "abort with a reason instead (qa_finish abort)")
        steps: list[QaMeasurement] = []
        returns: list[QaMeasurement] = []
        seen: set[tuple[str, int]] = set()
        for m in run.measurements:
            if "measured" not in m:
                continue
            commanded = Pose.from_dict(_floats(m["commanded"]))
            measured = Pose.from_dict(_floats(m["measured"]))
            meas = QaMeasurement(commanded=commanded, measured=measured,
                                 label=str(m.get("label", "")))
            moved = [a for a in AXES if commanded.get(a) != 0.0]
            if moved:
                steps.append(meas)
                seen.update((a, 1 if commanded.get(a) > 0 else -1) for a in moved)
            else:
                returns.append(meas)
        missing = [f"{a} {'+' if sign > 0 else '-'}" for a in AXES for sign in (1, -1)
                   if (a, sign) not in seen]
        if not returns:
            missing.append("a return to the home pose")
        if missing:
            raise self.room.refuse(actor, "qa_finish", "daily QA incomplete: no measurement of "
                                   f"{', '.join(missing)}; measure the whole pattern or abort "
                                   "(qa_finish abort)")
        try:
            profile = self.cfg.profile_for(run.profile)
            result = evaluate_daily(run.baselines[0].iso_offset_mm, steps, returns, profile,
                                    run.calibration, home=run.home, load_kg=run.load_kg)
        except ValueError as exc:
            raise self.room.refuse(actor, "qa_finish", f"daily QA not evaluated: {exc}") from None
        return as_object(result.to_json(), "daily QA result"), bool(result.passed)

    def _sag_result(self, run: QaRun) -> tuple[JsonObject, bool]:
        points: list[SagPoint] = []
        for m in run.measurements:
            if "measured" not in m:
                continue
            commanded = Pose.from_dict(_floats(m["commanded"]))
            measured = Pose.from_dict(_floats(m["measured"]))
            # Positive sag: the table top is lower (and pitched down) than commanded.
            points.append(SagPoint(extension_mm=commanded.long,
                                   load_kg=as_float(m["load_kg"], "load_kg"),
                                   vert_sag_mm=-(measured.vert - commanded.vert),
                                   pitch_deg=-(measured.pitch - commanded.pitch)))
        model: SagModel | None = None
        problem: str | None = None
        try:
            model = fit_sag(points)
        except ValueError as exc:
            problem = str(exc)
        points_json: list[JsonValue] = [dict(p.to_json()) for p in points]
        return {"sag": None if model is None else dict(model.to_json()), "fit_error": problem,
                "points": points_json}, model is not None

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
        self.override = _Override(s, actor.user, time.time(), reason)
        self.room.audit("qa", actor.user, action="override", reason=reason, session=session_key,
                        patient_id=s.patient_id, gate_was=gate_was, stored=stored is not None,
                        via=actor.via)
        self.room.publish_state()
        return {"override": self.override.view(), "gate_was": gate_was}

    # ------------------------------------------------------------ calibration
    def _calibration_may_change(self, actor: Actor, cmd: str) -> None:
        state = self.room.workflow.state
        if state not in _CALIBRATION_STATES:
            raise self.room.refuse(actor, cmd, f"the calibration cannot change in state {state} "
                                   "(a correction is pending or moving)")

    async def qa_calibration_propose(self, actor: Actor,
                                     req: QaCalibrationProposeRequest) -> Reply:
        store = self._store(actor, "qa_calibration_propose")
        daily = await self._result_for(actor, store, req.result_id, "daily")
        sag_row = await self._result_for(actor, store, req.sag_result_id, "sag",
                                         required=req.sag_result_id is not None)
        sag_json = sag_row.get("sag")
        try:
            sag = SagModel.from_json(sag_json) if isinstance(sag_json, dict) else None
            previous = self.room.calibration
            cal = propose_calibration(DailyQaResult.from_json(daily), sag, previous=previous,
                                      version=1 if previous is None else previous.version + 1)
        except ValueError as exc:
            raise self.room.refuse(actor, "qa_calibration_propose", str(exc)) from None
        basis: JsonObject = {"result_id": daily["id"],
                             "sag_result_id": sag_row.get("id") if sag is not None else None,
                             "previous_version": None if previous is None else previous.version,
                             "reason": req.reason}
        try:
            row = await asyncio.to_thread(store.propose_calibration, actor.user,
                                          as_object(cal.to_json(), "calibration"), basis)
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_calibration_propose", str(exc)) from None
        self.room.audit("calibration", actor.user, action="propose", version=row["version"],
                        calibration=row["calibration"], basis=basis, via=actor.via)
        return row

    async def _result_for(self, actor: Actor, store: QaStore, result_id: int | None, kind: str,
                          *, required: bool = True) -> JsonObject:
        if result_id is not None:
            row = await asyncio.to_thread(store.result, result_id)
            if row is None or row.get("kind") != kind or row.get("aborted"):
                raise self.room.refuse(actor, "qa_calibration_propose",
                                       f"no {kind} QA result {result_id} in room "
                                       f"{self.room.config.room}")
            return row
        row = await asyncio.to_thread(store.last_result, kind,
                                      passed=True if kind == "sag" else None)
        if row is None and required:
            raise self.room.refuse(actor, "qa_calibration_propose",
                                   f"no {kind} QA result in room {self.room.config.room} to "
                                   "calibrate from")
        return row if row is not None else {}

    async def qa_calibration_approve(self, actor: Actor,
                                     req: QaCalibrationApproveRequest) -> Reply:
        store = self._store(actor, "qa_calibration_approve")
        self._calibration_may_change(actor, "qa_calibration_approve")
        try:
            row = await asyncio.to_thread(store.approve_calibration, req.version, actor.user)
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_calibration_approve", str(exc)) from None
        await self._refresh()
        self.room.audit("calibration", actor.user, action="approve", version=req.version,
                        proposed_by=row["proposed_by"], calibration=row["calibration"],
                        via=actor.via)
        self.room.publish_state()
        return row

    async def qa_calibration_revert(self, actor: Actor, req: QaCalibrationRevertRequest) -> Reply:
        store = self._store(actor, "qa_calibration_revert")
        self._calibration_may_change(actor, "qa_calibration_revert")
        was = None if self._calibration is None else self._calibration.get("version")
        try:
            active = await asyncio.to_thread(store.revert_calibration, req.version, actor.user,
                                             req.reason.strip())
        except QaStoreError as exc:
            raise self.room.refuse(actor, "qa_calibration_revert", str(exc)) from None
        await self._refresh()
        self.room.audit("calibration", actor.user, action="revert", from_version=was,
                        to_version=req.version or None, reason=req.reason.strip(),
                        via=actor.via)
        self.room.publish_state()
        return {"active": None if active is None else active["version"], "was": was}

    async def qa_calibrations(self, actor: Actor, req: QaCalibrationsRequest) -> Reply:
        store = self._store(actor, "qa_calibrations")
        rows = await asyncio.to_thread(store.calibrations, req.limit)
        return {"active": None if self._calibration is None else self._calibration["version"],
                "calibrations": list(rows)}


def _floats(value: JsonValue) -> dict[str, float]:
    d = as_object(value, "pose")
    return {a: as_float(d[a], a) for a in AXES}
