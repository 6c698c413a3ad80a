"""A finished QA session's result: the daily verdict (safety.qa.evaluate_daily with the
run's profile, calibration and travels) or the couch-sag fit (safety.qa_sag)."""

from __future__ import annotations

from daemon.api import (
    Actor,
)
from daemon.jsontypes import JsonObject, JsonValue, as_float, as_object
from daemon.qa_base import QaBase, QaRun, floats_of
from safety.pose import AXES, Pose
from safety.qa import QaMeasurement, evaluate_daily
from safety.qa_sag import SagModel, SagPoint, fit_sag
from safety.qa_travel import TravelMeasurement


class QaResults(QaBase):
    def _daily_result(self, actor: Actor, run: QaRun) -> tuple[JsonObject, bool]:
        if not run.baselines:
            raise self.room.refuse(actor, "qa_finish", "daily QA incomplete: no baseline image; "
                                   "abort with a reason instead (qa_finish abort)")
        steps: list[QaMeasurement] = []
        returns: list[QaMeasurement] = []
        travels: list[TravelMeasurement] = []
        seen: set[tuple[str, int]] = set()
        for m in run.measurements:
            if "travel" in m:
                try:
                    travels.append(TravelMeasurement.from_json(as_object(m["travel"], "travel")))
                except ValueError as exc:
                    raise self.room.refuse(actor, "qa_finish", f"travel image {m.get('label')}: "
                                           f"{exc}") from None
                continue
            if "measured" not in m:
                continue
            commanded = Pose.from_dict(floats_of(m["commanded"]))
            measured = Pose.from_dict(floats_of(m["measured"]))
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
                                    run.calibration, home=run.home, load_kg=run.load_kg,
                                    travels=travels)
        except ValueError as exc:
            raise self.room.refuse(actor, "qa_finish", f"daily QA not evaluated: {exc}") from None
        return as_object(result.to_json(), "daily QA result"), bool(result.passed)

    def _sag_result(self, run: QaRun) -> tuple[JsonObject, bool]:
        points: list[SagPoint] = []
        for m in run.measurements:
            if "measured" not in m:
                continue
            commanded = Pose.from_dict(floats_of(m["commanded"]))
            measured = Pose.from_dict(floats_of(m["measured"]))
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
