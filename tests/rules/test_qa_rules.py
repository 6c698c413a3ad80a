"""Daily QA in igrtd (issue 16; daemon/qa_workflow.py) on in-memory fakes.

The gate on clinical corrections (H-QA-GATE), the physicist's per-session
override, QA moves (envelope, sessions, hold-to-run through the MotionGate),
QA images and results, and calibrations (two approvers, versions, revert,
compensation of the planned target; H-CALIBRATION). The QA images are a fake
of the registration worker: tests/room/test_qa_in_daemon.py runs the real one.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import FakeRoom, fake_room
from pydantic import ValidationError

from daemon.api import (
    Actor,
    CommandError,
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
    Role,
    SessionRequest,
)
from daemon.qa_store import QaStore, QaStoreError
from daemon.registration_worker import QaBb, QaShift
from safety.calibrated_correction import plan_calibrated_correction
from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.policy import VerdictPolicy
from safety.pose import AXES, ROTATION_AXES, Pose
from safety.qa import QaMeasurement, evaluate_daily, qa_pattern
from safety.qa_calibration import Calibration
from sim.world import PatientWorld

from .helpers import ALICE, BOB, ISO, SMALL, propose, supervised, until

CAROL = Actor(user="carol", role=Role.APPROVER)
SAM = Actor(user="sam", role=Role.SERVICE)
GATE_ON = {"gate": True}
BB_ROOM = (4.0, -3.0, 2.5)


class FakeQaImaging:
    """The registration worker's QA analysis, as a perfect (or biased) imager would see
    the fake couch: the BB where the phantom was set up, shifted by `iso_offset`; every
    later image measures the couch's delta from home plus `error`."""

    def __init__(self, room: FakeRoom, iso_offset: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 error: Pose | None = None) -> None:
        self.room = room
        self.iso_offset = iso_offset
        self.error = error or Pose()
        self.calls: list[str] = []
        self.shift_args: tuple[object, tuple[object, ...]] = ((), ())

    async def qa_bb(self, image: str, expected_mm: tuple[float, float, float],
                    search_radius_mm: float) -> QaBb:
        self.calls.append(f"bb {image}")
        run = self.room.service.qa.run  # a travel image: the BB where the couch carried it
        d = Pose() if run is None else self.room.couch.pose.minus(run.home)
        d = d.plus(self.error) if any(d.as_tuple()) else d  # the error of a move, not home's
        seen = tuple(b - o + m for b, o, m in zip(BB_ROOM, self.iso_offset,
                                                   (d.lat, d.long, d.vert), strict=True))
        return QaBb((seen[0], -seen[2], seen[1]), 2800.0, 33)  # room -> DICOM (HFS)

    async def qa_shift(self, baseline: str, image: str, bb_mm: tuple[float, float, float],
                       bb_room_mm: tuple[float, float, float], home: tuple[float, ...],
                       pivot_mm: tuple[float, float, float],
                       holes: tuple[object, ...] = ()) -> QaShift:
        self.calls.append(f"shift {image}")
        self.shift_args = (bb_room_mm, holes)
        d = self.room.couch.pose.minus(Pose(*home)).plus(self.error)
        return QaShift(d.as_tuple(), d.as_tuple(), True, -0.95)


async def qa_room(tmp_path: Path, qa: dict[str, object] | None = None, **imaging: object
                  ) -> tuple[FakeRoom, FakeQaImaging]:
    room = await fake_room(tmp_path, qa=qa)
    fake = FakeQaImaging(room, **imaging)  # type: ignore[arg-type]
    room.service.qa.imaging = fake
    return room, fake


async def open_clinical(room: FakeRoom, by: Actor = ALICE) -> None:
    await room.service.open_session(by, SessionRequest(
        patient_id="P", plan_uid="PL", frame_of_reference_uid="F", iso=ISO,
        patient_position="HFS", manual_override="typed for the test room"))


async def qa_move(room: FakeRoom, rel: Pose, by: Actor = BOB) -> str:
    """A QA move to home + `rel` run to its end: qa_move, hold, the couch arrives (the
    supervision loops must be running)."""
    run = room.service.qa.run
    assert run is not None
    target = run.home.plus(rel)
    view = await room.service.qa_move(by, QaMoveRequest.model_validate(
        {"target": target.as_dict()}))
    pid = str(view["id"])
    assert view["status"] == "confirmed" and view["source"] == "qa"
    progress = await room.service.hold(by, pid)
    assert progress["state"] == "MOVING", progress
    room.couch.arrive(target)
    await until(lambda: str(room.service.workflow.state) == "DONE")
    return pid


async def image(room: FakeRoom, label: str, by: Actor = BOB) -> dict[str, object]:
    return await room.service.qa_image(by, QaImageRequest(image=f"/qa/{label}.mha", label=label))


async def daily_qa(room: FakeRoom, by: Actor = BOB, profile: str | None = None
                   ) -> dict[str, object]:
    """The whole daily pattern (every axis +-, home after each), then qa_finish."""
    await room.service.qa_start(by, QaStartRequest(profile=profile))  # type: ignore[arg-type]
    await image(room, "baseline", by)
    async with supervised(room):
        for n, rel in enumerate(qa_pattern(10.0, 1.0)):
            await qa_move(room, rel, by)
            await image(room, f"step{n}", by)
    return await room.service.qa_finish(by, QaFinishRequest())


def gate_refusal(room: FakeRoom) -> str | None:
    return room.service.qa.gate_refusal()


# ---------------------------------------------------------------- the gate


async def test_the_gate_refuses_a_clinical_proposal_naming_why(tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path, GATE_ON)
    with pytest.raises(CommandError) as err:
        await propose(room, SMALL)
    assert err.value.reason == (
        "daily QA of room fakeroom has not passed within 24 h (last pass: none); a physicist "
        "may override for this session (qa_override)")
    assert room.service.current is None and room.journal.count("TARGET") == 0
    [reject] = [d for d in room.audit.events("reject") if d.get("gate") == "qa"]
    assert reject["command"] == "propose"
    snap = await room.service.status(ALICE)
    assert snap["qa"]["gate"] is True and snap["qa"]["clinical_allowed"] is False  # type: ignore[index]


async def test_the_gate_is_checked_again_at_confirmation(tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path, GATE_ON)
    store = room.service.qa.store
    assert store is not None
    store.add_result("daily", "qa-x", "bob", "conventional", True, False, {},
                     at=time.time() - 3600)
    await room.service.qa._refresh()
    pid = await propose(room, SMALL)  # the pass an hour ago lets it through
    last = room.service.qa._last_pass
    assert last is not None
    # The window runs out between proposal and confirmation.
    room.service.qa._last_pass = {**last, "at": time.time() - 25 * 3600}
    with pytest.raises(CommandError, match=r"has not passed within 24 h \(last pass: .* by bob\)"):
        await room.service.confirm(ALICE, pid)
    assert str(room.service.workflow.state) == "PROPOSED"


async def test_only_a_passed_non_aborted_daily_qa_of_this_room_and_profile_opens_the_gate(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path, {"gate": True, "profile": "srs"})
    store = room.service.qa.store
    assert store is not None
    store.add_result("daily", "qa-1", "bob", "srs", False, False, {})  # failed
    store.add_result("daily", "qa-2", "bob", "srs", True, True, {})  # aborted
    store.add_result("daily", "qa-3", "bob", "conventional", True, False, {})  # looser profile
    store.add_result("sag", "qa-4", "bob", "srs", True, False, {})  # not a daily QA
    store.add_result("daily", "qa-5", "bob", "srs", True, False, {},
                     at=time.time() - 25 * 3600)  # too old
    with QaStore(store.path, "another-room") as other:
        other.add_result("daily", "qa-6", "bob", "srs", True, False, {})  # another room's
    await room.service.qa._refresh()
    assert gate_refusal(room) is not None
    store.add_result("daily", "qa-7", "carol", "srs", True, False, {})
    await room.service.qa._refresh()
    assert gate_refusal(room) is None
    await propose(room, SMALL)


async def test_a_physicist_overrides_the_gate_for_this_session_only_audited(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path, GATE_ON)
    await open_clinical(room)
    with pytest.raises(CommandError, match="needs role approver"):
        await room.service.qa_override(ALICE, QaOverrideRequest(reason="therapist would like"))
    reply = await room.service.qa_override(BOB, QaOverrideRequest(
        reason="phantom cracked; QA tomorrow, physicist checked lasers"))
    assert reply["override"]["by"] == "bob"  # type: ignore[index]
    [audited] = [d for d in room.audit.events("qa") if d.get("action") == "override"]
    assert audited["reason"] == "phantom cracked; QA tomorrow, physicist checked lasers"
    assert audited["patient_id"] == "P"
    pid = await propose(room, SMALL, open_session=False)
    await room.service.confirm(ALICE, pid)
    snap = await room.service.status(ALICE)
    assert snap["qa"]["override"]["by"] == "bob"  # type: ignore[index]
    # A new session (the next patient) needs its own override.
    await room.service.close_session(ALICE)
    with pytest.raises(CommandError, match="daily QA of room fakeroom has not passed"):
        await propose(room, SMALL)
    assert (await room.service.status(ALICE))["qa"]["override"] is None  # type: ignore[index]


async def test_an_override_needs_a_clinical_session_a_reason_and_the_gate(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path, GATE_ON)
    with pytest.raises(CommandError, match="no clinical session is open"):
        await room.service.qa_override(BOB, QaOverrideRequest(reason="a good long reason"))
    with pytest.raises(ValidationError):
        QaOverrideRequest(reason="short")
    off, _ = await qa_room(tmp_path / "off")
    await open_clinical(off)
    with pytest.raises(CommandError, match="gate is off"):
        await off.service.qa_override(BOB, QaOverrideRequest(reason="a good long reason"))


# ---------------------------------------------------------------- sessions and moves


async def test_qa_and_clinical_sessions_exclude_each_other(tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    await open_clinical(room)
    with pytest.raises(CommandError, match="no QA session is open"):
        await room.service.qa_move(BOB, QaMoveRequest.model_validate(
            {"target": Pose(lat=10.0).as_dict()}))
    with pytest.raises(CommandError, match="a clinical session is open"):
        await room.service.qa_start(BOB, QaStartRequest())
    await room.service.close_session(ALICE)
    started = await room.service.qa_start(BOB, QaStartRequest())
    assert started["home"] == Pose().as_dict() and started["state"] == "READY"
    snap = await room.service.status(ALICE)
    assert snap["session"]["source"] == "qa"  # type: ignore[index]
    assert snap["session"]["patient_id"] == "QA-PHANTOM"  # type: ignore[index]
    with pytest.raises(CommandError, match="a QA session is open"):
        await propose(room, SMALL, open_session=False)
    with pytest.raises(CommandError, match="a QA session is open"):
        await room.service.register(ALICE, RegisterRequest(fixed="/ct", moving="/cbct"))
    with pytest.raises(CommandError, match="a QA session is open"):
        await open_clinical(room)
    with pytest.raises(CommandError, match="a QA session is already open"):
        await room.service.qa_start(SAM, QaStartRequest())


async def test_a_qa_move_outside_the_envelope_is_refused_naming_value_limit_and_unit(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    await room.service.qa_start(BOB, QaStartRequest())
    for target, words in ((Pose(lat=30.0, vert=1.0), (
                              "lat +30.00 mm from the QA home pose exceeds the QA envelope 25 mm "
                              "(a travel moves one translation alone, at most 60 mm)")),
                          (Pose(long=-61.0), ("long -61.00 mm from the QA home pose exceeds "
                                              "the QA envelope 25 mm")),
                          (Pose(roll=-2.6), ("roll -2.60 deg from the QA home pose exceeds "
                                             "the QA envelope 2.5 deg"))):
        with pytest.raises(CommandError) as err:
            await room.service.qa_move(BOB, QaMoveRequest.model_validate(
                {"target": target.as_dict()}))
        assert words in err.value.reason
    assert room.service.current is None and room.journal.count("TARGET") == 0
    assert str(room.service.workflow.state) == "READY"
    with pytest.raises(ValidationError):  # NaN and Infinity never reach the envelope check
        QaMoveRequest.model_validate({"target": {**Pose().as_dict(), "lat": math.nan}})


async def test_a_daily_travel_moves_one_translation_alone_up_to_the_travel_limit(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    await room.service.qa_start(BOB, QaStartRequest())
    view = await room.service.qa_move(BOB, QaMoveRequest.model_validate(
        {"target": Pose(vert=-60.0).as_dict()}))
    assert view["status"] == "confirmed"


async def test_a_daily_qa_with_travels_measures_them_by_the_bb_and_fits_the_axes(
        tmp_path: Path) -> None:
    room, fake = await qa_room(tmp_path, error=Pose(lat=0.1))
    await room.service.qa_start(BOB, QaStartRequest())
    await image(room, "baseline")
    async with supervised(room):
        for n, rel in enumerate(qa_pattern(10.0, 1.0, travel_mm=50.0)):
            await qa_move(room, rel)
            record = await image(room, f"p{n}")
    assert "travel" in record or "measured" in record
    result = await room.service.qa_finish(BOB, QaFinishRequest())
    travels = result["travels"]
    assert [(t["axis"], t["commanded_mm"]) for t in travels] == [
        ("lat", 50.0), ("lat", -50.0), ("long", 50.0), ("long", -50.0), ("vert", 50.0),
        ("vert", -50.0)]
    # Every move lands 0.1 mm further lateral than commanded (the fake's error).
    assert travels[0]["measured_mm"] == pytest.approx({"lat": 50.1, "long": 0.0, "vert": 0.0})
    checks = {(c["name"], c["axis"]): c for c in result["checks"]}
    assert checks[("travel", "lat")]["value"] == pytest.approx(0.1)
    assert ("axis_alignment", "yaw") in checks and result["axis_fit"]["scale"]["lat"] == 0.0
    assert sum(c.startswith("bb ") for c in fake.calls) == 1 + 6  # baseline and six travels


async def test_a_couch_sag_move_changes_long_only_within_its_range(tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    await room.service.qa_start(SAM, QaStartRequest(kind="sag", load_kg=80.0))
    for target, words in ((Pose(long=800.0), ("long +800.00 mm from the QA home pose is "
                                              "outside the couch-sag range 0..700 mm")),
                          (Pose(long=-5.0), "outside the couch-sag range"),
                          (Pose(long=200.0, vert=5.0), "changes long only")):
        with pytest.raises(CommandError, match=re.escape(words)):
            await room.service.qa_move(SAM, QaMoveRequest.model_validate(
                {"target": target.as_dict()}))
    view = await room.service.qa_move(SAM, QaMoveRequest.model_validate(
        {"target": Pose(long=600.0).as_dict()}))
    assert view["status"] == "confirmed" and view["target"]["long"] == 600.0  # type: ignore[index]


async def test_a_qa_move_runs_only_through_hold_to_run_and_the_motion_gate(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    await room.service.qa_start(BOB, QaStartRequest())
    view = await room.service.qa_move(BOB, QaMoveRequest.model_validate(
        {"target": Pose(lat=10.0).as_dict()}))
    pid = str(view["id"])
    assert str(room.service.workflow.state) == "CONFIRMED"
    assert room.journal.count("TARGET") == 0  # confirmed, nothing sent without hold-to-run
    # A clinical confirm of the QA proposal is refused: qa_move confirms QA moves.
    with pytest.raises(CommandError, match="QA move"):
        await room.service.confirm(ALICE, pid)
    # Every check of the MotionGate stays: an open interlock refuses the first hold.
    room.plc.open = ["treatment room door"]
    with pytest.raises(CommandError, match="move not started"):
        await room.service.hold(BOB, pid)
    assert room.journal.count("TARGET") == 0
    room.plc.open = []
    async with supervised(room):
        progress = await room.service.hold(BOB, pid)
        assert progress["state"] == "MOVING"
        target = room.journal.entries[room.journal.index("TARGET")][1]
        assert target == Pose(lat=10.0)
        assert room.journal.index("audit:command") < room.journal.index("TARGET") \
            < room.journal.index("GO")
        room.couch.arrive(Pose(lat=10.0))
        await until(lambda: str(room.service.workflow.state) == "DONE")
    assert room.service.last_result["outcome"] == "reached"  # type: ignore[index]
    assert [d["action"] for d in room.audit.events("qa")] == ["start", "move"]


async def test_a_service_user_holds_qa_moves_only(tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    pid = await propose(room, SMALL)
    await room.service.confirm(ALICE, pid)
    with pytest.raises(CommandError, match="QA moves only") as err:
        await room.service.hold(SAM, pid)
    assert err.value.code == "forbidden" and room.journal.count("TARGET") == 0


# ---------------------------------------------------------------- images and results


async def test_a_perfect_daily_qa_passes_is_stored_and_opens_the_gate(tmp_path: Path) -> None:
    room, fake = await qa_room(tmp_path, GATE_ON, iso_offset=(0.5, -0.3, 0.2))
    result = await daily_qa(room)
    assert result["passed"] is True and result["kind"] == "daily"
    assert result["profile"] == "conventional" and result["by"] == "bob"
    assert result["iso_offset_mm"] == pytest.approx([0.5, -0.3, 0.2])
    assert {c["name"] for c in result["checks"]} == {  # type: ignore[union-attr]
        "iso_coincidence", "positioning", "repeatability"}
    assert str(room.service.workflow.state) == "STANDBY" and room.service.session is None
    assert fake.calls[0] == "bb /qa/baseline.mha" and len(fake.calls) == 25
    [stored] = (await room.service.qa_results(ALICE, QaResultsRequest()))["results"]  # type: ignore[misc]
    assert stored["id"] == result["id"] and stored["passed"] is True
    assert gate_refusal(room) is None
    await propose(room, SMALL)
    actions = [d["action"] for d in room.audit.events("qa")]
    assert actions[:2] == ["start", "image"] and actions[-1] == "result"
    assert actions.count("move") == 24 and actions.count("image") == 25


async def test_a_daily_qa_off_tolerance_fails_and_keeps_the_gate_closed(tmp_path: Path) -> None:
    room, fake = await qa_room(tmp_path, GATE_ON)
    fake.error = Pose(vert=1.4)  # every image measures the couch 1.4 mm high
    result = await daily_qa(room)
    assert result["passed"] is False
    failed = [(c["name"], c["axis"]) for c in result["checks"] if not c["passed"]]  # type: ignore[union-attr,index]
    assert ("positioning", "vert") in failed and ("repeatability", "vert") in failed
    assert gate_refusal(room) is not None
    [audited] = [d for d in room.audit.events("qa") if d.get("action") == "result"]
    assert audited["passed"] is False and audited["failed"]


async def test_qa_images_need_the_baseline_first_and_the_couch_where_commanded(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    await room.service.qa_start(BOB, QaStartRequest())
    with pytest.raises(CommandError, match="take the baseline first"):
        await image(room, "lat+10")
    room.couch.pose = Pose(lat=0.8)  # pushed by hand
    with pytest.raises(CommandError, match="not at the commanded QA pose"):
        await image(room, "baseline")
    room.couch.pose = Pose()
    base = await image(room, "baseline")
    assert base["bb_mm"] == list(BB_ROOM) and base["iso_offset_mm"] == [0.0, 0.0, 0.0]
    with pytest.raises(CommandError, match="baseline of this QA session is taken"):
        await image(room, "baseline")
    with pytest.raises(CommandError, match="daily QA incomplete: no measurement of lat \\+"):
        await room.service.qa_finish(BOB, QaFinishRequest())


async def test_the_bb_home_position_follows_where_the_phantom_was_laid(tmp_path: Path) -> None:
    # A couch-sag run lays the phantom E mm toward the foot at home (phantom_at_mm): the
    # BB's home room position is that plus the configured BB offset; the worker also gets
    # the phantom's air holes relative to the BB (its fiducials).
    room, fake = await qa_room(tmp_path)
    await room.service.qa_start(BOB, QaStartRequest(kind="sag"))
    await image(room, "baseline")
    async with supervised(room):
        await qa_move(room, Pose(long=300.0))
    await room.service.qa_image(BOB, QaImageRequest.model_validate(
        {"image": "/qa/e300.mha", "label": "e300", "phantom_at_mm": [0.0, -300.0, 0.0]}))
    bb_home, holes = fake.shift_args
    assert bb_home == (BB_ROOM[0], BB_ROOM[1] - 300.0, BB_ROOM[2])
    assert len(holes) == 3
    with pytest.raises(ValidationError):
        QaImageRequest.model_validate({"image": "x", "label": "y", "phantom_at_mm": [0, 2000, 0]})


async def test_an_aborted_qa_is_stored_closes_the_session_and_never_passes(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path, GATE_ON)
    await room.service.qa_start(BOB, QaStartRequest())
    with pytest.raises(CommandError, match="abort needs a reason"):
        await room.service.qa_finish(BOB, QaFinishRequest(abort=True))
    out = await room.service.qa_finish(BOB, QaFinishRequest(abort=True,
                                                            reason="imager would not start"))
    assert out["aborted"] is True and out["passed"] is False
    assert room.service.session is None and gate_refusal(room) is not None
    assert [d["action"] for d in room.audit.events("qa")] == ["start", "abort"]


# ---------------------------------------------------------------- calibration


def _daily_record(iso: tuple[float, float, float], scale: dict[str, float]) -> dict[str, object]:
    steps, returns = [], []
    for rel in qa_pattern(10.0, 1.0):
        measured = Pose(**{a: rel.get(a) * (1.0 + scale.get(a, 0.0)) for a in AXES})
        (steps if any(rel.as_tuple()) else returns).append(QaMeasurement(rel, measured))
    return evaluate_daily(iso, steps, returns, "conventional").to_json()


async def test_a_calibration_needs_a_second_different_physicist_is_versioned_and_reverts(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    svc = room.service
    with pytest.raises(CommandError, match="no daily QA result"):
        await svc.qa_calibration_propose(BOB, QaCalibrationProposeRequest())
    store = svc.qa.store
    assert store is not None
    store.add_result("daily", "qa-1", "bob", "conventional", True, False,
                     _daily_record((1.0, 0.0, -0.5), {"vert": 0.01}))
    with pytest.raises(CommandError, match="needs role approver"):
        await svc.qa_calibration_propose(SAM, QaCalibrationProposeRequest())
    v1 = await svc.qa_calibration_propose(BOB, QaCalibrationProposeRequest(reason="monthly"))
    assert v1["version"] == 1 and v1["state"] == "proposed"
    cal = v1["calibration"]
    assert cal["imaging_iso_offset_mm"] == [1.0, 0.0, -0.5]  # type: ignore[index]
    assert cal["axis_scale"] == {"vert": pytest.approx(0.01)}  # type: ignore[index]
    assert svc.room.calibration is None  # proposed is not applied
    with pytest.raises(CommandError, match="another person"):
        await svc.qa_calibration_approve(BOB, QaCalibrationApproveRequest(version=1))
    with pytest.raises(CommandError, match="needs role approver"):
        await svc.qa_calibration_approve(ALICE, QaCalibrationApproveRequest(version=1))
    assert svc.room.calibration is None
    active = await svc.qa_calibration_approve(CAROL, QaCalibrationApproveRequest(version=1))
    assert active["state"] == "active" and active["approved_by"] == "carol"
    assert svc.room.calibration is not None and svc.room.calibration.version == 1
    with pytest.raises(CommandError, match="is active, not proposed"):
        await svc.qa_calibration_approve(CAROL, QaCalibrationApproveRequest(version=1))
    v2 = await svc.qa_calibration_propose(CAROL, QaCalibrationProposeRequest())
    await svc.qa_calibration_approve(BOB, QaCalibrationApproveRequest(version=int(v2["version"])))
    listed = await svc.qa_calibrations(ALICE, QaCalibrationsRequest())
    assert listed["active"] == 2
    assert [(c["version"], c["state"]) for c in listed["calibrations"]] == [  # type: ignore[union-attr,index]
        (2, "active"), (1, "superseded")]
    back = await svc.qa_calibration_revert(BOB, QaCalibrationRevertRequest(
        version=1, reason="v2 drifted after the service visit"))
    assert back == {"active": 1, "was": 2} and svc.room.calibration.version == 1  # type: ignore[union-attr]
    none = await svc.qa_calibration_revert(BOB, QaCalibrationRevertRequest(
        version=0, reason="back to the geometry contract"))
    assert none["active"] is None and svc.room.calibration is None
    actions = [(d["action"], d.get("version")) for d in room.audit.events("calibration")]
    assert actions[:3] == [("propose", 1), ("approve", 1), ("propose", 2)]
    assert [a for a, _ in actions].count("revert") == 2
    # The database itself refuses a calibration approved by its proposer.
    store.propose_calibration("dan", {}, {})
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        store._db.execute("UPDATE calibrations SET state='active', approved_by='dan' "
                          "WHERE version=3")
    with pytest.raises(QaStoreError, match="never approved"):
        store.revert_calibration(3, "bob", "a proposal is no approved version")


async def test_a_calibration_cannot_change_while_a_correction_is_pending(tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    store = room.service.qa.store
    assert store is not None
    store.add_result("daily", "qa-1", "bob", "conventional", True, False,
                     _daily_record((0.0, 0.0, 0.0), {}))
    v = await room.service.qa_calibration_propose(BOB, QaCalibrationProposeRequest())
    await propose(room, SMALL)
    with pytest.raises(CommandError, match="cannot change in state PROPOSED"):
        await room.service.qa_calibration_approve(CAROL, QaCalibrationApproveRequest(
            version=int(v["version"])))


# ---------------------------------------------------------------- compensation


def _matrix(error: Pose) -> list[list[float]]:
    p = CouchModel.default().pivot
    world = PatientWorld.with_setup_error(ISO, "HFS", (float(p[0]), float(p[1]), float(p[2])),
                                          error)
    return np.asarray(world.true_registration(Pose())).tolist()


@pytest.mark.parametrize("axes", [tuple(AXES), ("lat", "long", "vert", "yaw")])
@pytest.mark.parametrize("error", [SMALL, Pose(6.0, 4.0, -3.0, 1.5, 1.0, -0.8),
                                   Pose(-0.3, 0.2, 0.1, 0.0, 0.0, 0.0)])
def test_an_identity_calibration_leaves_the_plan_unchanged_bit_for_bit(
        axes: tuple[str, ...], error: Pose) -> None:
    model, policy = CouchModel.default(), VerdictPolicy()
    p_img, current = Pose(1.0, -2.0, 3.0, 0.5, 0.2, -0.1), Pose(1.1, -2.0, 3.0, 0.5, 0.2, -0.1)
    plain = plan_correction(_matrix(error), ISO, "HFS", p_img, model, policy, axes,
                            current=current)
    cal = plan_calibrated_correction(_matrix(error), ISO, "HFS", p_img, model, policy,
                                     Calibration.identity(), 75.0, axes, current=current)
    assert cal == plain
    assert cal.target.as_tuple() == plain.target.as_tuple()  # the same floats, exactly


def test_a_calibration_compensates_the_planned_target() -> None:
    model, policy = CouchModel.default(), VerdictPolicy()
    p_img = Pose(0.0, 100.0, 0.0, 0.0, 0.0, 0.0)
    plain = plan_correction(_matrix(SMALL), ISO, "HFS", p_img, model, policy, current=p_img)
    # The CBCT sits 1 mm to the right of the treatment isocentre: everything in it appears
    # 1 mm to the left, so the couch must go 1 mm further left than the image says.
    iso = Calibration((1.0, 0.0, 0.0))
    t = plan_calibrated_correction(_matrix(SMALL), ISO, "HFS", p_img, model, policy, iso, 75.0,
                                   current=p_img).target
    assert t.lat == pytest.approx(plain.target.lat - 1.0, abs=1e-9)
    assert t.long == pytest.approx(plain.target.long, abs=1e-9)
    # Vertical travel 1 % long: the couch is told 1 % less of the vertical change.
    scaled = Calibration(axis_scale={"vert": 0.01})
    t = plan_calibrated_correction(_matrix(SMALL), ISO, "HFS", p_img, model, policy, scaled,
                                   75.0, current=p_img).target
    assert t.vert == pytest.approx(plain.target.vert / 1.01, abs=1e-9)


async def test_the_daemon_plans_with_the_active_calibration_and_exactly_without_one(
        tmp_path: Path) -> None:
    room, _ = await qa_room(tmp_path)
    pid = await propose(room, SMALL)
    plain = room.service.room.proposals[pid].target
    room.service.room.calibration = Calibration.identity()
    same = room.service.room.proposals[await propose(room, SMALL)].target
    assert same.as_tuple() == plain.as_tuple()
    room.service.room.calibration = Calibration((0.0, 2.0, 0.0), version=3)
    shifted = room.service.room.proposals[await propose(room, SMALL)].target
    assert shifted.long == pytest.approx(plain.long - 2.0, abs=1e-9)
    assert room.audit.events("proposal")[-1]["calibration_version"] == 3


async def test_after_calibration_the_same_room_passes_its_daily_qa(tmp_path: Path) -> None:
    """Issue 16 item 7: a room whose imaging isocentre sits 1.2 mm off fails SRS; with
    that offset calibrated (two physicists) the same measurements pass, and the result
    shows the measured and the residual offset and the calibration version."""
    room, _ = await qa_room(tmp_path, iso_offset=(0.7, 0.0, 1.2))
    svc = room.service
    before = await daily_qa(room, profile="srs")
    assert before["passed"] is False and before["calibration_version"] == 0
    assert before["iso_offset_mm"] == pytest.approx([0.7, 0.0, 1.2])
    assert before["iso_offset_residual_mm"] == before["iso_offset_mm"]
    failed = [(c["name"], c["axis"]) for c in before["checks"] if not c["passed"]]  # type: ignore[union-attr,index]
    assert failed == [("iso_coincidence", "vector")]
    v = await svc.qa_calibration_propose(BOB, QaCalibrationProposeRequest())
    await svc.qa_calibration_approve(CAROL, QaCalibrationApproveRequest(version=int(v["version"])))
    assert svc.room.calibration is not None and svc.room.calibration.version == 1
    after = await daily_qa(room, profile="srs")
    assert after["passed"] is True and after["calibration_version"] == 1
    assert after["iso_offset_mm"] == pytest.approx([0.7, 0.0, 1.2])  # physical, as measured
    assert after["iso_offset_residual_mm"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    baseline = after["measurements"][0]  # type: ignore[index]
    assert baseline["iso_offset_residual_mm"] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert after["calibration"]["calibration"]["version"] == 1  # type: ignore[index]
    # The physical offset is still what a new calibration is proposed from.
    v2 = await svc.qa_calibration_propose(CAROL, QaCalibrationProposeRequest())
    assert v2["calibration"]["imaging_iso_offset_mm"] == pytest.approx([0.7, 0.0, 1.2])  # type: ignore[index]
    # Reverted to none: the same room fails again, exactly as before calibration.
    await svc.qa_calibration_revert(BOB, QaCalibrationRevertRequest(
        version=0, reason="back to the geometry contract"))
    again = await daily_qa(room, profile="srs")
    assert again["passed"] is False and again["calibration_version"] == 0
    assert again["checks"] == before["checks"]


async def test_a_daily_qa_under_calibration_expects_the_predicted_couch_motion(
        tmp_path: Path) -> None:
    """Positioning under a calibration: the couch's vertical travel is 5 % long (the fake
    imager measures 1.05 x each vertical step); uncompensated QA moves are compared with
    the motion the calibration predicts for them, so a calibrated room passes and the
    residual stays within 0.5 mm / 0.2 deg."""
    room, _ = await qa_room(tmp_path)
    svc = room.service

    class Long(FakeQaImaging):
        async def qa_shift(self, *args: object, **kwargs: object) -> QaShift:
            got = await super().qa_shift(*args, **kwargs)  # type: ignore[arg-type]
            d = Pose(*got.couch)
            d = Pose(d.lat, d.long, d.vert * 1.05, d.yaw, d.pitch, d.roll)
            return QaShift(d.as_tuple(), d.as_tuple(), True, -0.95)

    svc.qa.imaging = Long(room)
    raw = await daily_qa(room)
    assert raw["accuracy"]["vert"] == pytest.approx(0.5)  # type: ignore[index]
    svc.room.calibration = Calibration(axis_scale={"vert": 0.05}, version=7)
    r = await daily_qa(room)
    assert r["passed"] is True and r["calibration_version"] == 7
    assert r["accuracy"]["vert"] == pytest.approx(0.0, abs=1e-9)  # type: ignore[index]
    assert all(abs(v) <= 0.5 for v in r["accuracy"].values())  # type: ignore[union-attr]
    step = next(s for s in r["steps"] if s["commanded"]["vert"] == 10.0)  # type: ignore[union-attr,index]
    assert step["commanded"]["vert"] == 10.0 and step["expected"]["vert"] == pytest.approx(10.5)
    assert step["error"]["vert"] == pytest.approx(0.5) and step["residual"]["vert"] == 0.0


def test_every_qa_argument_model_refuses_non_finite_numbers() -> None:
    with pytest.raises(ValidationError):
        QaStartRequest.model_validate({"load_kg": math.inf})
    with pytest.raises(ValidationError):
        QaImageRequest.model_validate({"image": "/x", "label": "a", "load_kg": math.nan})
    with pytest.raises(ValidationError):
        QaImageRequest.model_validate({"image": "/x", "label": "two words"})
    for a in AXES:
        with pytest.raises(ValidationError):
            QaMoveRequest.model_validate({"target": {**Pose().as_dict(), a: math.inf}})
    assert set(ROTATION_AXES) < set(AXES)


def test_a_real_room_has_the_gate_on_and_a_simulated_room_has_it_off(tmp_path: Path) -> None:
    from daemon.config import RoomConfig
    from sim.room import room_config

    real = RoomConfig.model_validate({"couch": {"port": "/dev/ttyUSB0"},
                                      "users": [{"name": "alice", "role": "therapist"}]})
    assert real.qa.gate is True and real.qa.window_h == 24.0
    assert real.qa.profile == "conventional" and real.qa.phantom_bb_offset_mm == BB_ROOM
    assert room_config(tmp_path, "/dev/pts/9", None)["qa"] == {"gate": False}
    assert room_config(tmp_path, "/dev/pts/9", None, qa_gate=True)["qa"] == {"gate": True}
    srs = real.qa.profile_for("srs")
    assert (srs.iso_coincidence_mm, srs.repeatability_mm, srs.rotation_deg) == (1.0, 0.5, 0.5)


async def test_only_a_pass_under_the_calibration_in_use_opens_the_gate(tmp_path: Path) -> None:
    """A new calibration, or one reverted, changes how the couch is planned: the daily QA
    that vouched for the old planning no longer does, until one passes under the new."""
    room, _ = await qa_room(tmp_path, qa={"gate": True})
    svc = room.service
    assert (await daily_qa(room))["passed"] is True
    assert gate_refusal(room) is None
    v = await svc.qa_calibration_propose(BOB, QaCalibrationProposeRequest())
    await svc.qa_calibration_approve(CAROL, QaCalibrationApproveRequest(version=int(v["version"])))
    refusal = gate_refusal(room)
    assert refusal is not None and "under calibration version 0; version 1 is in use" in refusal
    assert (await daily_qa(room))["passed"] is True
    assert gate_refusal(room) is None
    await svc.qa_calibration_revert(BOB, QaCalibrationRevertRequest(version=0, reason="back to no calibration"))
    assert gate_refusal(room) is not None
