"""Daily QA end to end (issue 16 item 7): `igrtctl qa daily --imaging sim` against a
simulated room with imperfections (sim/rooms/imperfect.json), igrtd's QA gate on.

The room's imaging isocentre sits 0.7 mm lateral of the treatment isocentre and 0.9 mm
above it: 1.14 mm in all, within the conventional profile's 2 mm and beyond the SRS
profile's 1 mm. The QA must find the lateral 0.7 mm within 0.1 mm (and the vertical
0.9 mm), fail against SRS, and then igrtd's gate refuses a clinical correction. The
report written from igrtd's stored results holds the same numbers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.igrtctl.exits import ExitCode
from daemon.igrtctl.main import main as igrtctl
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room_description import ROOMS_DIR
from sim.testing import LONG_RUN_PLC_STALE_S, IgrtdRefused, IgrtRoom
from sim.world import PatientWorld

OFFSET = (0.7, 0.0, 0.9)
ISO = [8.0, -12.0, 20.0]


def _description() -> dict[str, Any]:
    d: dict[str, Any] = json.loads((ROOMS_DIR / "imperfect.json").read_text())
    d["broker"] = {"enabled": False}
    d["kv_imager"] = False
    d["qa_gate"] = True
    d["plc_heartbeat_stale_s"] = LONG_RUN_PLC_STALE_S  # a minute of motion on a shared machine
    # The couch at 4x its speed: 24 moves in a quarter of the time (the test's budget is
    # the imaging; qa_bench runs the room as described).
    d["couch"]["speed_scale"] = 4.0
    d["imperfections"]["imaging_iso_offset_mm"] = list(OFFSET)
    return d


def _propose(room: IgrtRoom) -> dict[str, Any]:
    """A clinical correction of a few mm, as test_faults_in_motion.py proposes one."""
    world = PatientWorld.with_setup_error(tuple(ISO), "HFS",  # type: ignore[arg-type]
                                          tuple(CouchModel.default().pivot),
                                          Pose(4.0, 3.0, -2.0, 0.0, 0.0, 0.0))
    return room.igrtd("alice").call(
        "propose", matrix=np.asarray(world.true_registration(Pose())).tolist(), iso=ISO,
        patient_position="HFS",
        binding={"patient_id": "P1", "plan_uid": "PL1", "frame_of_reference_uid": "F1",
                 "imaging_session_uid": "I1", "acquired_at": time.time()})


def test_daily_qa_finds_the_offset_fails_srs_and_closes_the_gate(
        igrt_room_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    room: IgrtRoom = igrt_room_factory(_description())
    run_dir = str(room.run_dir)
    t0 = time.monotonic()
    code = igrtctl(["--user", "bob", "qa", "daily", "--imaging", "sim", "--run-dir", run_dir,
                    "--profile", "srs"])
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert code == ExitCode.REFUSED, f"{out}\n{err}"
    assert "pendant (sim op pendant)" in out and "QA FAILED" in out
    assert "clinical corrections are refused" in out

    # igrtd's stored result: the offset per axis, and what failed.
    stored = room.igrtd("vic").call("qa_results", kind="daily", limit=1)["results"][0]
    assert stored["kind"] == "daily" and stored["profile"] == "srs" and stored["by"] == "bob"
    assert stored["passed"] is False
    found = stored["iso_offset_mm"]
    assert found[0] == pytest.approx(OFFSET[0], abs=0.1), found
    assert found[1] == pytest.approx(OFFSET[1], abs=0.1), found
    assert found[2] == pytest.approx(OFFSET[2], abs=0.1), found
    failed = {(c["name"], c["axis"]) for c in stored["checks"] if not c["passed"]}
    assert failed == {("iso_coincidence", "vector")}, stored["checks"]
    # The couch itself is within tolerance: positioning of every axis measured by imaging.
    positioning = {c["axis"]: c for c in stored["checks"] if c["name"] == "positioning"}
    assert set(positioning) == {"lat", "long", "vert", "yaw", "pitch", "roll"}
    assert all(c["passed"] for c in positioning.values()), positioning
    # The vertical scale error (0.8 %) shows on vert: 10 mm commanded, ~0.08 mm more.
    assert 0.03 < positioning["vert"]["value"] < 0.2, positioning["vert"]
    # The travels (each translation alone +-50 mm) find the injected scale and yaw offset.
    injected = _description()["imperfections"]
    fit = stored["axis_fit"]
    assert fit["scale"]["vert"] == pytest.approx(injected["axis_scale"]["vert"], abs=0.002), fit
    assert fit["scale"]["lat"] == pytest.approx(0.0, abs=0.002), fit
    assert fit["scale"]["long"] == pytest.approx(0.0, abs=0.002), fit
    # The yaw offset's standard error here is ~0.03 deg (0.05 mm repeatability over 120 mm
    # travels): found within 0.1 deg, and at least 3 standard errors from none.
    assert fit["yaw_offset_deg"] == pytest.approx(injected["axis_offset"]["yaw"], abs=0.1), fit
    assert fit["yaw_offset_deg"] > 3 * fit["yaw_offset_se_deg"], fit
    # The repeatability noise (0.05 mm per move) as the returns to home show it.
    assert fit["noise_mm"] == pytest.approx(injected["repeatability_mm"], abs=0.02), fit
    alignment = next(c for c in stored["checks"] if c["name"] == "axis_alignment")
    assert alignment["axis"] == "yaw" and alignment["passed"], alignment
    travel = {c["axis"]: c for c in stored["checks"] if c["name"] == "travel"}
    assert set(travel) == {"lat", "long", "vert"} and all(c["passed"] for c in travel.values())
    assert stored["travels"] and "couch axes" in out and "yaw offset +0." in out
    # What igrtctl printed is igrtd's numbers.
    assert f"x {found[0]:+.3f}" in out
    row = next(line for line in out.splitlines() if line.startswith("iso_coincidence"))
    assert row.split()[-1] == "FAIL" and float(row.split()[3]) == 1.0

    # The gate: a clinical correction is refused until a daily QA passes.
    alice = room.igrtd("alice")
    alice.call("open_session", patient_id="P1", plan_uid="PL1", frame_of_reference_uid="F1",
               iso=ISO, patient_position="HFS", manual_override="typed for the QA test room")
    with pytest.raises(IgrtdRefused) as refused:
        _propose(room)
    assert refused.value.code == "refused"
    assert "daily QA of room" in str(refused.value.error) and "has not passed" in str(
        refused.value.error)
    assert alice.status()["qa"]["clinical_allowed"] is False

    # The report from igrtd's stored results carries the same numbers.
    report = tmp_path / "report"
    assert igrtctl(["--user", "vic", "--socket", room.info["igrtd"]["socket"], "qa", "report",
                    "--out", str(report)]) == ExitCode.OK
    capsys.readouterr()
    html = (report / "index.html").read_text()
    assert f'data-check="iso_offset" data-axis="x" data-field="value">{found[0]:.3f}<' in html
    assert 'data-check="iso_coincidence" data-axis="vector" data-field="limit">1.000<' in html
    assert (report / "trend-x.png").stat().st_size > 1000
    assert elapsed < 60, f"daily QA took {elapsed:.0f} s"


def test_couch_sag_is_measured_at_extensions_and_loads_and_fitted(
        igrt_room_factory: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """`qa couch-sag`: each extension imaged with the phantom brought to the isocentre, per
    load; igrtd's fitted model predicts the room's true sag at extensions and a load it
    was not measured at within 0.2 mm / 0.05 deg."""
    d = _description()
    d["couch"]["speed_scale"] = 10.0  # 1.8 m of long travel per load
    room: IgrtRoom = igrt_room_factory(d)
    t0 = time.monotonic()
    code = igrtctl(["--user", "bob", "qa", "couch-sag", "--imaging", "sim", "--run-dir",
                    str(room.run_dir), "--extensions", "0,300,600", "--loads", "0,150"])
    elapsed = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert code == ExitCode.OK, f"{out}\n{err}"
    assert "couch_load" in out and "couch sag model" in out
    stored = room.igrtd("vic").call("qa_results", kind="sag", limit=1)["results"][0]
    assert stored["passed"] is True and stored["fit_error"] is None
    assert sorted((p["load_kg"], p["extension_mm"]) for p in stored["points"]) == [
        (0.0, 300.0), (0.0, 600.0), (150.0, 300.0), (150.0, 600.0)]
    sag, model = d["imperfections"]["sag"], stored["sag"]

    def truth(ext_mm: float, load_kg: float) -> tuple[float, float]:
        k = ext_mm / 1000.0
        return ((sag["mm_per_m"] + sag["mm_per_m_per_100kg"] * load_kg / 100.0) * k,
                (sag["deg_per_m"] + sag["deg_per_m_per_100kg"] * load_kg / 100.0) * k)

    # Held out: extensions (150, 450 mm) and a load (75 kg) the fit never saw, against the
    # room's true sag there (issue 16 item 7: within 0.2 mm).
    for ext in (150.0, 450.0):
        for load in (0.0, 75.0, 150.0):
            k = ext / 1000.0
            vert = (model["a"] + model["b"] * load / 100.0) * k
            pitch = (model["c"] + model["d"] * load / 100.0) * k
            want_vert, want_pitch = truth(ext, load)
            assert vert == pytest.approx(want_vert, abs=0.2), (ext, load, model)
            assert pitch == pytest.approx(want_pitch, abs=0.05), (ext, load, model)
    # The room is left as found: the pendant released, no load, the phantom at the isocentre.
    truth_now = room.sim.truth()
    assert truth_now["plc"]["inputs"]["motion_enable_pressed"] is False
    assert truth_now["couch_load_kg"] == 0.0
    assert truth_now["qa_phantom"]["laid_at_mm"] == [0.0, 0.0, 0.0]
    assert elapsed < 60, f"couch sag took {elapsed:.0f} s"
