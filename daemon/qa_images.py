"""QA images in igrtd: the baseline's BB and imaging-isocentre offset, each later image's
motion from the phantom's fiducials, and a travel's from its BB (daemon/qa_workflow.py
module doc). The images are read and analysed in the registration worker, never on
igrtd's event loop."""

from __future__ import annotations

import math
import time

import numpy as np

from daemon.api import (
    Actor,
    QaImageRequest,
    Reply,
)
from daemon.jsontypes import JsonObject, as_float, as_list
from daemon.proposals import ProposalStatus as PS
from daemon.qa_base import BASELINE, QaBase, QaBaseline, QaRun, vec_json
from daemon.qa_envelope import HOME_EPSILON, travel_axis
from daemon.qa_phantom_geometry import (
    BB_SEARCH_RADIUS_MM,
    QA_ISO,
    QA_POSITION,
    holes_from_bb,
    image_from_room,
    room_from_image,
)
from daemon.registration_worker import RegistrationFailed
from daemon.room import pose_json
from daemon.workflow import RoomState
from safety.geometry import rot_z
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose
from safety.qa_geometry import iso_offset_from_bb
from safety.qa_travel import TRAVEL_AXES, TravelMeasurement

S = RoomState


class QaImages(QaBase):
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
        elif run.kind == "daily" and travel_axis(commanded, run.home, self.cfg) is not None:
            record.update(await self._measure_travel(actor, run, req, relative))
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
            run.baselines.append(QaBaseline(
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
        out: JsonObject = {"bb_mm": vec_json(found_room), "bb_dicom_mm": vec_json(bb.position_mm),
                           "expected_bb_mm": vec_json(expected_room), "iso_offset_mm": vec_json(offset),
                           "peak_hu": bb.peak_hu, "voxels": bb.voxels}
        if run.calibration is not None:  # what the calibrated system still sees
            o = run.calibration.imaging_iso_offset_mm
            out["iso_offset_residual_mm"] = vec_json([v - c for v, c in zip(offset, o, strict=True)])
        return out

    async def _measure_travel(self, actor: Actor, run: QaRun, req: QaImageRequest,
                              relative: Pose) -> JsonObject:
        """A travel image (safety.qa_travel): the BB alone, searched where the commanded
        translation should have carried it; its motion from the baseline turned into couch
        translation axes (a translation moves the table top along Rz(home yaw))."""
        if not run.baselines:
            raise self.room.refuse(actor, "qa_image", "take the baseline first (label "
                                   f"{BASELINE!r}, couch at the QA home pose)")
        base = run.baselines[-1]
        axis = next(a for a in TRAVEL_AXES if relative.get(a) != 0.0)
        turn = rot_z(run.home.yaw)  # F_P: a translation moves the table top along Rz(yaw)
        room_cmd = turn @ np.array([relative.lat, relative.long, relative.vert])
        step = image_from_room((float(room_cmd[0]), float(room_cmd[1]), float(room_cmd[2])))
        expected = (base.bb_dicom_mm[0] + step[0], base.bb_dicom_mm[1] + step[1],
                    base.bb_dicom_mm[2] + step[2])
        try:
            bb = await self.imaging.qa_bb(req.image, expected, BB_SEARCH_RADIUS_MM)
        except (ValueError, OSError, RegistrationFailed) as exc:
            raise self.room.refuse(actor, "qa_image", f"{req.label}: {exc}") from None
        found, b0 = bb.position_mm, base.bb_dicom_mm
        moved = room_from_image((found[0] - b0[0], found[1] - b0[1], found[2] - b0[2]))
        back = turn.T @ np.array(moved)
        couch = (float(back[0]), float(back[1]), float(back[2]))
        try:
            travel = TravelMeasurement(axis, relative.get(axis), couch, req.label)
        except ValueError as exc:
            raise self.room.refuse(actor, "qa_image", f"{req.label}: {exc}") from None
        return {"travel": travel.to_json(), "shift": vec_json(moved),
                "bb_dicom_mm": vec_json(bb.position_mm), "baseline": base.index}

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
        # (safety.qa_geometry.couch_delta_from_room_shift).
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
        return {"measured": pose_json(measured), "shift": vec_json(got.shift),
                "error": pose_json(measured.minus(relative)), "registration": reg,
                "bb_dicom_mm": vec_json(got.bb_mm), "baseline": base.index}
