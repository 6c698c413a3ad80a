"""The correction workflow: sessions, imaging, registration, propose, confirm, approve.

A registration becomes a proposal bound to the open session (patient, plan,
frame of reference, isocentre, patient position), to an imaging session and
to the couch pose at imaging (R-BIND); the verdict tiers apply to the
correction and to the travel from where the couch is now, the stricter
winning. A proposal that needs it is confirmed by one person and, above the
second tier, approved by another. Nothing here moves anything: the first
hold-to-run heartbeat after confirmation starts the move
(daemon/supervision.py). Roles are checked by the RoomService facade.
"""

from __future__ import annotations

import time
from dataclasses import replace

from daemon.api import (
    Actor,
    ImagingRequest,
    ProposeRequest,
    RegisterRequest,
    Reply,
    SessionRequest,
)
from daemon.proposals import (
    QA_SOURCE,
    Confirmation,
    ImagingRecord,
    Proposal,
    TreatmentSession,
    new_id,
)
from daemon.proposals import ProposalStatus as PS
from daemon.registration_worker import RegistrationFailed, RegistrationWorker
from daemon.room import Room, pose_json
from daemon.session_setup import SessionRefused, session_setup
from daemon.workflow import LATCHED, PROPOSABLE, RoomState
from imaging.review_messages import ReviewMessages, ReviewRequest
from safety.calibrated_correction import plan_calibrated_correction
from safety.correction import plan_correction
from safety.geometry import parse_patient_position
from safety.policy import Verdict
from safety.pose import AXES, Pose
from safety.travel import couch_moved_reasons

S = RoomState


def planning_ct_label(session: TreatmentSession) -> str:
    """How the review images name the plan's CT (its archive path means nothing to a person)."""
    return f"planning CT {session.planning_ct_series_uid or session.planning_ct_dir}"


class CorrectionWorkflow:
    def __init__(self, room: Room) -> None:
        self.room = room
        self.registrations = RegistrationWorker()

    def _in_qa_session(self) -> bool:
        return self.room.session is not None and self.room.session.source == QA_SOURCE

    def _qa_refusal(self, cmd: str) -> str:
        return (f"{cmd} refused: a QA session is open (QA phantom, not a patient); finish it "
                "first (qa_finish)")

    def _gate(self, actor: Actor, cmd: str, **details: object) -> None:
        """The daily-QA gate: a clinical correction is refused while this room's daily QA
        has not passed within the configured window (docs/qa.md, H-QA-GATE)."""
        refusal = self.room.qa_gate()
        if refusal is not None:
            raise self.room.refuse(actor, cmd, refusal, gate="qa", **details)

    async def open_session(self, actor: Actor, req: SessionRequest) -> Reply:
        openable = (S.STANDBY, S.READY, S.DONE, S.PROPOSED)
        if self.room.beam_hold_required():
            raise self.room.refuse(actor, "open_session", "beam-on monitoring is running: stop "
                                   "it (monitor_stop) first")
        if self.room.workflow.state not in openable:
            raise self.room.refuse(actor, "open_session",
                                   f"cannot open a session in state {self.room.workflow.state}")
        if self._in_qa_session():
            raise self.room.refuse(actor, "open_session", self._qa_refusal("open_session"))
        dicom = self.room.config.dicom
        archive = dicom.archive_dir(self.room.config.state_dir) if dicom is not None else None
        try:
            setup = await session_setup(
                req, archive, structure=dicom.registration_structure if dicom else None,
                margin_mm=dicom.registration_margin_mm if dicom else 15.0)
        except SessionRefused as exc:
            raise self.room.refuse(actor, "open_session", str(exc)) from None
        if self.room.workflow.state not in openable:  # changed while the plan was read
            raise self.room.refuse(actor, "open_session",
                                   f"cannot open a session in state {self.room.workflow.state}")
        if self._in_qa_session():  # opened while the plan was read
            raise self.room.refuse(actor, "open_session", self._qa_refusal("open_session"))
        self.room.session = TreatmentSession(
            req.patient_id, req.plan_uid, setup.frame_of_reference_uid, setup.iso,
            setup.patient_position, actor.user, time.time(), source=setup.source,
            override_reason=setup.override_reason, beams=setup.beams,
            planning_ct_series_uid=setup.planning_ct_series_uid,
            planning_ct_dir=setup.planning_ct_dir,
            registration_region=None if setup.region is None else (
                setup.region.name, setup.region.centre, setup.region.half_mm),
            patient_envelope=req.patient_envelope)
        self.room.supersede_current("session opened")
        self.room.audit("session", actor.user, action="open", **self.room.session.view())
        if self.room.workflow.state != S.READY:
            self.room.to(S.READY, f"session open for patient {req.patient_id}", actor.user)
        return self.room.snapshot()

    async def close_session(self, actor: Actor) -> Reply:
        if self.room.beam_hold_required():
            raise self.room.refuse(actor, "close_session", "beam-on monitoring is running: stop "
                                   "it (monitor_stop) first")
        if self.room.workflow.state in (S.MOVING, S.VERIFYING, S.MONITORING, *LATCHED):
            raise self.room.refuse(actor, "close_session",
                                   f"cannot close the session in state {self.room.workflow.state}")
        self.room.supersede_current("session closed")
        self.room.audit("session", actor.user, action="close")
        self.room.session = None
        self.room.to(S.STANDBY, "session closed", actor.user)
        return self.room.snapshot()

    async def record_imaging(self, actor: Actor, req: ImagingRequest) -> Reply:
        if self.room.session is None:
            raise self.room.refuse(actor, "record_imaging", "no treatment session is open")
        if self.room.workflow.state in (S.MOVING, S.VERIFYING):
            raise self.room.refuse(actor, "record_imaging", "the couch is moving")
        if req.imaging_session_uid in self.room.session.imaging:
            raise self.room.refuse(actor, "record_imaging",
                                   f"imaging session {req.imaging_session_uid} already recorded")
        status = await self.room.couch.status()
        rec = ImagingRecord(req.imaging_session_uid, req.modality, time.time(), status.pose)
        self.room.session.imaging[rec.uid] = rec
        self.room.audit("imaging", actor.user, imaging_session_uid=rec.uid, modality=rec.modality,
                        couch_pose=rec.couch.as_dict())
        return {"imaging_session_uid": rec.uid, "acquired_at": rec.acquired_at,
                "couch": pose_json(rec.couch)}

    async def register(self, actor: Actor, req: RegisterRequest) -> Reply:
        """Rigid registration in the worker process: motion supervision keeps running
        and keeps the interpreter to itself (daemon/registration_worker.py)."""
        if self._in_qa_session():
            raise self.room.refuse(actor, "register", self._qa_refusal("register") +
                                   "; QA images go to qa_image")
        fixed, iso, half = req.fixed, req.iso, None
        fixed_label, review_iso = req.fixed, req.iso
        if fixed is None:
            # The plan's CT, about the plan's target region or isocentre unless told.
            s = self.room.session
            if s is None or s.planning_ct_dir is None:
                raise self.room.refuse(actor, "register", "no planning CT given, and no session "
                                       "opened from a stored plan to take it from")
            fixed = s.planning_ct_dir
            fixed_label = planning_ct_label(s)
            # The review planes cross at the plan's isocentre, which is in this CT's frame.
            review_iso = review_iso or s.iso
            if iso is None:
                iso, half = s.registration_centre()
        review = self.review_request(fixed_label or fixed, req.moving, review_iso)
        try:
            done = await self.registrations.register(fixed, req.moving, iso, roi_half_mm=half,
                                                     review=review)
        except (ValueError, RegistrationFailed) as exc:
            raise self.room.refuse(actor, "register", str(exc)) from None
        out: Reply = done.result.to_json_dict()
        self.room.audit("registration", actor.user, fixed=fixed, moving=req.moving,
                        converged=out.get("converged"), metric=out.get("metric"),
                        translation_mm=out.get("translation_mm"),
                        rotation_deg=out.get("rotation_deg"),
                        seconds=out.get("seconds"), via=actor.via,
                        **self.reviewed(done.review))
        return out

    def review_request(self, fixed_label: str, moving_label: str,
                       iso: tuple[float, float, float] | None) -> ReviewRequest | None:
        """What the worker needs to make the consoles' review images of a registration;
        None when nobody would publish them (no broker configured)."""
        if not self.room.review_listeners:
            return None
        return ReviewRequest(room=self.room.config.room, registration_id=new_id("reg"),
                             fixed_label=fixed_label, moving_label=moving_label, iso_mm=iso)

    def reviewed(self, review: ReviewMessages | None) -> dict[str, object]:
        """Hand the review images to the consoles; the audit details that name them."""
        if review is None:
            return {}
        self.room.publish_review(review)
        return {"registration_id": review.registration_id}

    def _binding_refusals(self, req: ProposeRequest) -> list[str]:
        s = self.room.session
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
        limit = self.room.config.binding.max_registration_age_s
        if age > limit:
            out.append(f"registration is {age:.0f} s old, limit {limit:.0f} s")
        if age < -5.0:
            out.append(f"registration acquisition time is {-age:.0f} s in the future")
        return out

    async def propose(self, actor: Actor, req: ProposeRequest, *,
                      between_beams: bool = False) -> Reply:
        """A proposal from a registration; `between_beams`: igrtd's own, from the markers
        beam-on monitoring tracks, made in MONITORING with the beam held
        (daemon/between_beams.py). A refused or within-tolerance one leaves the room
        monitoring; any other goes to PROPOSED like every proposal."""
        if self.room.session is None:
            raise self.room.refuse(actor, "propose", "no treatment session is open")
        allowed = frozenset({S.MONITORING}) if between_beams else PROPOSABLE
        if self.room.workflow.state not in allowed:
            raise self.room.refuse(actor, "propose",
                                   f"cannot propose in state {self.room.workflow.state}")
        if not between_beams and self.room.beam_hold_required():
            raise self.room.refuse(actor, "propose", "beam-on monitoring is running with a "
                                   "between-beam correction under way: confirm it, or stop "
                                   "monitoring (monitor_stop) first")
        if self._in_qa_session() or req.source == QA_SOURCE:
            raise self.room.refuse(actor, "propose", self._qa_refusal("propose") +
                                   "; QA moves are made by qa_move")
        self._gate(actor, "propose")
        refusals = self._binding_refusals(req)
        uid = req.binding.imaging_session_uid
        rec = self.room.session.imaging.get(uid)
        # Where the couch is now: the couch travels from here, whatever the imaging
        # pose says (issue 11, item 2). Read afresh: an idle couch pushes no status.
        try:
            current = (await self.room.couch.status()).pose
        except Exception as exc:  # noqa: BLE001 - no pose, no proposal
            raise self.room.refuse(actor, "propose",
                                   f"current couch pose could not be read: {exc}") from None
        tol_mm = self.room.config.binding.couch_moved_tolerance_mm
        tol_deg = self.room.config.binding.couch_moved_tolerance_deg
        if req.couch_at_imaging is not None:
            try:
                p_img = Pose.from_dict(req.couch_at_imaging)
            except (ValueError, TypeError) as exc:
                raise self.room.refuse(actor, "propose", f"couch_at_imaging: {exc}") from None
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
            # (Part of propose: whoever may propose may record imaging, see the role table.)
            await self.record_imaging(actor, ImagingRequest(imaging_session_uid=uid))
            p_img = self.room.session.imaging[uid].couch
        if rec is not None or req.couch_at_imaging is None:
            refusals.extend(couch_moved_reasons(p_img, current, tol_mm, tol_deg))
        axes = frozenset(req.axes) if req.axes else frozenset(AXES)
        calibration = self.room.calibration
        try:
            if calibration is None:
                # No calibration active: exactly the geometry contract (docs/geometry.md).
                plan = plan_correction(req.matrix, req.iso, req.patient_position, p_img,
                                       self.room.model, self.room.policy, axes,
                                       extra_refusals=refusals, current=current)
            else:
                # The target compensates for the approved calibration: the couch is sent
                # where its real pose is the planned one (safety/calibrated_correction.py).
                plan = plan_calibrated_correction(
                    req.matrix, req.iso, req.patient_position, p_img, self.room.model,
                    self.room.policy, calibration, self.room.config.qa.patient_load_kg, axes,
                    extra_refusals=refusals, current=current)
        except ValueError as exc:
            raise self.room.refuse(actor, "propose", str(exc)) from None
        # The whole path checked for collisions at the gantry angle and arms now: below
        # the margin the proposal is refused, naming the objects (issue 17).
        collision = None
        if plan.verdict not in (Verdict.REFUSED, Verdict.WITHIN_TOLERANCE):
            session = self.room.session
            found = await self.room.collision_view(p_img, plan.target)
            if self.room.session is not session or self.room.workflow.state not in allowed:
                raise self.room.refuse(actor, "propose", "the room changed while the path was "
                                       "checked for collisions: propose again")
            if isinstance(found, str) or not found.check.allowed:
                why = found if isinstance(found, str) else f"collision: {found.check.reason}"
                plan = replace(plan, verdict=Verdict.REFUSED, reasons=[*plan.reasons, why])
            if not isinstance(found, str):
                collision = found
        self.room.supersede_current("new proposal")
        pid = new_id("prop")
        now = time.time()
        status = (PS.REFUSED if plan.verdict is Verdict.REFUSED
                  else PS.WITHIN_TOLERANCE if plan.verdict is Verdict.WITHIN_TOLERANCE
                  else PS.PROPOSED)
        p = Proposal(pid, now, time.monotonic(), actor.user, req.binding, req.iso,
                     req.patient_position, req.matrix, p_img, plan, req.source, status,
                     collision=collision)
        self.room.proposals[pid] = p
        self.room.current = p
        self.room.store.save_proposal(pid, p.record())
        self.room.audit("proposal", actor.user, proposal_id=pid, verdict=plan.verdict.value,
                        reasons=plan.reasons, target=plan.target.as_dict(),
                        delta=plan.delta.as_dict(),
                        couch_at_imaging=p_img.as_dict(), couch_now=current.as_dict(),
                        travel=plan.travel.as_dict() if plan.travel else None,
                        binding=req.binding.model_dump(), via=actor.via,
                        calibration_version=(None if calibration is None
                                             else calibration.version),
                        collision=None if collision is None else collision.view())
        if between_beams and plan.verdict in (Verdict.WITHIN_TOLERANCE, Verdict.REFUSED):
            self.room.publish_state()  # still monitoring, the beam held
        elif plan.verdict is Verdict.WITHIN_TOLERANCE:
            self.room.last_result = {"proposal_id": pid, "outcome": "within_tolerance",
                                     "delta": pose_json(plan.delta)}
            self.room.to(S.DONE, f"proposal {pid} within tolerance: no move", actor.user)
        elif plan.verdict is Verdict.REFUSED:
            if self.room.workflow.state == S.READY:
                self.room.publish_state()
            else:
                self.room.to(S.READY, f"proposal {pid} refused", actor.user)
        else:
            self.room.to(S.PROPOSED, f"proposal {pid}: {plan.verdict.value}", actor.user)
        return p.view()

    async def confirm(self, actor: Actor, proposal_id: str) -> Reply:
        p = self.room.proposal(actor, "confirm", proposal_id)
        if p.source == QA_SOURCE:
            raise self.room.refuse(actor, "confirm", f"proposal {proposal_id} is a QA move: "
                                   "QA moves are confirmed by qa_move (make a new one)",
                                   proposal_id=proposal_id)
        if self.room.workflow.state != S.PROPOSED or p.status not in (PS.PROPOSED, PS.INTERRUPTED):
            raise self.room.refuse(actor, "confirm", f"proposal {proposal_id} is {p.status}; "
                                   f"room is {self.room.workflow.state}; nothing to confirm",
                                   proposal_id=proposal_id)
        if p.verdict not in (Verdict.NEEDS_CONFIRMATION, Verdict.NEEDS_SECOND_APPROVAL):
            raise self.room.refuse(actor, "confirm", f"proposal {proposal_id} verdict is "
                                   f"{p.verdict.value}; it cannot be confirmed",
                                   proposal_id=proposal_id)
        if self.room.store.proposal_completed(proposal_id):
            raise self.room.refuse(actor, "confirm", f"proposal {proposal_id} was already applied")
        self._gate(actor, "confirm", proposal_id=proposal_id)
        age = time.time() - p.binding.acquired_at
        if age > self.room.config.binding.max_registration_age_s:
            raise self.room.refuse(actor, "confirm", f"registration is {age:.0f} s old, limit "
                                   f"{self.room.config.binding.max_registration_age_s:.0f} s; "
                                   "re-image")
        now_m = time.monotonic()
        c = Confirmation(new_id("conf"), p.id, actor.user, time.time(), now_m,
                         now_m + self.room.config.motion.confirmation_validity_s)
        self.room.store.record_confirmation(c.id, p.id, actor.user, c.at)
        p.confirmation = c
        self.room.audit("confirmation", actor.user, proposal_id=p.id, confirmation_id=c.id,
                        verdict=p.verdict.value, target=p.target.as_dict(), via=actor.via)
        if p.verdict is Verdict.NEEDS_SECOND_APPROVAL:
            p.to(PS.AWAITING_APPROVAL)
            self.room.to(S.AWAITING_APPROVAL, f"{p.id} needs a second approval", actor.user)
        else:
            p.to(PS.CONFIRMED)
            self.room.to(S.CONFIRMED, f"{p.id} confirmed by {actor.user}", actor.user)
        return p.view()

    async def approve(self, actor: Actor, proposal_id: str) -> Reply:
        p = self.room.proposal(actor, "approve", proposal_id)
        c = p.confirmation
        if self.room.workflow.state != S.AWAITING_APPROVAL or c is None:
            raise self.room.refuse(actor, "approve", f"proposal {proposal_id} is not awaiting a "
                                   "second approval", proposal_id=proposal_id)
        if actor.user == c.user:
            raise self.room.refuse(actor, "approve", "second approval must come from another "
                                   f"person than {c.user}, who confirmed",
                                   proposal_id=proposal_id)
        self._gate(actor, "approve", proposal_id=proposal_id)
        c.approver, c.approved_at = actor.user, time.time()
        self.room.store.record_confirmation(c.id, p.id, c.user, c.at, approver=actor.user)
        p.to(PS.CONFIRMED)
        self.room.audit("approval", actor.user, proposal_id=p.id, confirmation_id=c.id,
                        confirmed_by=c.user, via=actor.via)
        self.room.to(S.CONFIRMED, f"{p.id} approved by {actor.user}", actor.user)
        return p.view()

