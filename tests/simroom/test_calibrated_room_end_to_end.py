"""After calibration the same room passes and a clinical fraction is within tolerance
(issue 16 item 7), end to end in the simulated imperfect room (sim/rooms/imperfect.json)
with igrtd's QA gate on.

The room's imaging isocentre sits 0.7 mm lateral of the treatment isocentre and 1.2 mm
above it (1.39 mm: beyond the SRS profile's 1 mm), with the description's vertical
scale error, yaw offset, sag and repeatability:

1. `igrtctl qa daily --profile srs` fails, on iso coincidence only;
2. `igrtctl qa calibrate` is proposed by one physicist (bob) and approved by another
   (carol); the gate stays shut (no pass under the new calibration yet);
3. the daily QA again passes under the calibration, and the gate opens;
4. a clinical fraction as the demo runs it: session opened with typed values
   (--manual-override), a patient CBCT through the simulated imager, registered in
   igrtd (`reg run`), proposed, confirmed (alice), approved (bob), held to run with the
   simulated pendant pressed;
5. the simulator's truth: the patient's residual at the couch's real pose is within the
   demo's tolerance, 0.5 mm (worst point of the 100 mm cube about the isocentre) and
   0.2 deg.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.main import main as igrtctl
from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.policy import VerdictPolicy
from safety.pose import Pose
from safety.qa_calibration import Calibration, predict_real
from sim.demo_steps import TOL_DEG, TOL_MM
from sim.room_description import ROOMS_DIR
from sim.testing import LONG_RUN_PLC_STALE_S, IgrtRoom

OFFSET = (0.7, 0.0, 1.2)
ISO = [8.0, -12.0, 20.0]
ISO_ARG = ",".join(map(str, ISO))
PATIENT, PLAN, FOR = "P-CAL-1", "PL-CAL-1", "F-CAL-1"


def _description() -> dict[str, Any]:
    d: dict[str, Any] = json.loads((ROOMS_DIR / "imperfect.json").read_text())
    d["broker"] = {"enabled": False}
    d["kv_imager"] = False
    d["qa_gate"] = True
    d["plc_heartbeat_stale_s"] = LONG_RUN_PLC_STALE_S  # a minute of motion on a shared machine
    # The couch faster than described: two daily QAs of 33 moves each in the budget.
    d["couch"]["speed_scale"] = 4.0
    d["imperfections"]["imaging_iso_offset_mm"] = list(OFFSET)
    # A second physicist: a calibration is approved by another than its proposer.
    d["users"].append({"name": "carol", "role": "approver", "identity": "demo_key"})
    return d


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = igrtctl(list(argv))
    out, err = capsys.readouterr()
    return code, out + err


def _json(text: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(text[text.index("{"):text.rindex("}") + 1])
    return result


def _last_daily(room: IgrtRoom) -> dict[str, Any]:
    result: dict[str, Any] = room.igrtd("vic").call("qa_results", kind="daily",
                                                   limit=1)["results"][0]
    return result


def test_after_calibration_the_room_passes_and_a_fraction_is_within_tolerance(
        igrt_room_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.monotonic()
    room: IgrtRoom = igrt_room_factory(_description())
    run_dir, sock = str(room.run_dir), room.info["igrtd"]["socket"]
    bob_key = next(u["key"] for u in room.info["users"] if u["name"] == "bob")
    timings = {"room_up": time.monotonic() - t0}
    status = room.igrtd("vic")

    # 1. Daily QA under SRS fails on the imaging/treatment isocentre coincidence only.
    t = time.monotonic()
    code, out = _run(capsys, "--user", "bob", "qa", "daily", "--imaging", "sim", "--run-dir",
                     run_dir, "--profile", "srs")
    timings["qa_daily_1"] = time.monotonic() - t
    assert code == ExitCode.REFUSED, out
    first = _last_daily(room)
    assert first["passed"] is False and first.get("calibration_version") in (0, None), first
    assert {(c["name"], c["axis"]) for c in first["checks"] if not c["passed"]} == {
        ("iso_coincidence", "vector")}, first["checks"]
    for found, want in zip(first["iso_offset_mm"], OFFSET, strict=True):
        assert found == pytest.approx(want, abs=0.1), first["iso_offset_mm"]
    assert status.status()["qa"]["clinical_allowed"] is False

    # 2. Proposed by one physicist, approved by another: active, but the gate stays shut
    # until a daily QA passes under it.
    code, out = _run(capsys, "--user", "bob", "--json", "qa", "calibrate", "--run-dir", run_dir,
                     "--reason", "iso offset beyond SRS at daily QA")
    assert code == ExitCode.OK, out
    proposed = _json(out)
    version = int(proposed["version"])
    code, out = _run(capsys, "--user", "bob", "qa", "calibrate", "--run-dir", run_dir,
                     "--approve", str(version))
    assert code != ExitCode.OK, "the proposer approved his own calibration"
    code, out = _run(capsys, "--user", "carol", "qa", "calibrate", "--run-dir", run_dir,
                     "--approve", str(version))
    assert code == ExitCode.OK, out
    cal_row = room.igrtd("vic").call("qa_calibrations")
    assert cal_row["active"] == version, cal_row
    calibration = Calibration.from_json(
        next(c for c in cal_row["calibrations"] if c["version"] == version)["calibration"])
    for found, want in zip(calibration.imaging_iso_offset_mm, OFFSET, strict=True):
        assert found == pytest.approx(want, abs=0.1), calibration
    # The travels found the vertical scale and the yaw offset the room was built with.
    injected = _description()["imperfections"]
    assert calibration.scale("vert") == pytest.approx(injected["axis_scale"]["vert"],
                                                      abs=0.002), calibration
    assert calibration.offset("yaw") == pytest.approx(injected["axis_offset"]["yaw"],
                                                      abs=0.1), calibration
    assert status.status()["qa"]["clinical_allowed"] is False

    # 3. The daily QA again: under the calibration it passes, and the gate opens.
    t = time.monotonic()
    code, out = _run(capsys, "--user", "bob", "qa", "daily", "--imaging", "sim", "--run-dir",
                     run_dir, "--profile", "srs")
    timings["qa_daily_2"] = time.monotonic() - t
    assert code == ExitCode.OK, out
    second = _last_daily(room)
    assert second["passed"] is True and second.get("calibration_version") == version, second
    assert status.status()["qa"]["clinical_allowed"] is True

    # 4. A clinical fraction, as the demo runs it.
    t = time.monotonic()
    alice = ("--socket", sock, "--user", "alice")
    bob = ("--socket", sock, "--user", "bob", "--key", bob_key)
    code, out = _run(capsys, *alice, "session", "open", "--patient", PATIENT, "--plan", PLAN,
                     "--frame-of-reference", FOR, "--iso", ISO_ARG, "--patient-position", "HFS",
                     "--manual-override", "simulated room: no planning system")
    assert code == ExitCode.OK, out
    imaging_uid = "1.2.826.0.1.3680043.10.1234.77"
    code, out = _run(capsys, *alice, "imaging", imaging_uid)
    assert code == ExitCode.OK, out
    acquired_at = time.time()
    shot = room.sim.acquire_cbct("fraction-cbct.mha")
    code, out = _run(capsys, *alice, "--json", "reg", "run", "--fixed", shot["planning_ct"],
                     "--moving", shot["path"], "--iso", ISO_ARG)
    assert code == ExitCode.OK, out
    registration = _json(out)
    assert registration["converged"] is True, registration
    reg_file = tmp_path / "registration.json"
    reg_file.write_text(json.dumps({"matrix": registration["matrix"], "patient_id": PATIENT,
                                    "frame_of_reference_uid": FOR}))
    code, out = _run(capsys, *alice, "--json", "propose", str(reg_file), "--iso", ISO_ARG,
                     "--patient-position", "HFS", "--plan", PLAN, "--imaging-session",
                     imaging_uid, "--acquired-at", str(acquired_at))
    assert code == ExitCode.OK, out
    proposal = _json(out)
    pid = proposal["id"]
    assert proposal["verdict"] == "needs_second_approval", proposal
    code, out = _run(capsys, *alice, "confirm", pid, "--no-hold")
    assert code == ExitCode.OK, out
    code, out = _run(capsys, *bob, "approve", pid)
    assert code == ExitCode.OK, out
    room.sim.pendant(True)
    try:
        code, out = _run(capsys, *alice, "hold", pid)
    finally:
        room.sim.pendant(False)
    assert code == ExitCode.OK, out
    timings["fraction"] = time.monotonic() - t

    # 5. The truth: the patient at the couch's real pose.
    truth = room.sim.truth()
    residual = truth["patient"]["residual"]
    commanded = Pose.from_dict(proposal["target"])
    # igrtd plans with qa.patient_load_kg (75 kg by default); this calibration has no sag.
    planned_real = predict_real(commanded, calibration, 75.0)
    # What the same registration would have planned without the calibration: the couch
    # sent by about the imaging isocentre offset (1.39 mm) away from where it went.
    uncalibrated = plan_correction(registration["matrix"], ISO, "HFS",
                                   Pose.from_dict(proposal["couch_at_imaging"]),
                                   CouchModel.default(), VerdictPolicy()).target
    moved_by_calibration = math.dist(
        [planned_real.get(a) for a in ("lat", "long", "vert")],
        [uncalibrated.get(a) for a in ("lat", "long", "vert")])
    timings["total"] = time.monotonic() - t0
    facts = (f"calibration {calibration.to_json()}\n"
             f"registration translation {registration['translation_mm']} mm, rotation "
             f"{registration['rotation_deg']} deg\n"
             f"couch at imaging (reported) {shot['couch_pose']}, real {shot['true_pose']}\n"
             f"ideal real pose (the set-up error) {truth['patient']['setup_error']}\n"
             f"planned real target {planned_real.as_dict()}\n"
             f"commanded (compensated) target {commanded.as_dict()}\n"
             f"uncalibrated target {uncalibrated.as_dict()} ({moved_by_calibration:.3f} mm "
             f"from the planned real target)\n"
             f"couch now: reported {truth['couch']['pose']}, real {truth['couch']['true_pose']}\n"
             f"true residual {residual}\ntimings {timings}")
    assert residual["max_mm"] <= TOL_MM, facts
    assert residual["rotation_deg"] <= TOL_DEG, facts
    assert moved_by_calibration > 1.0, facts  # the calibration is what brought it within
