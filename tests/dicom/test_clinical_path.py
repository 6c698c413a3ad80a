"""The clinical path end to end, as `make demo` runs it (sim/demo_dicom.py), with
real parts only: Orthanc sends the plan, structures and planning CT to
igrt-dicomd; the session opens from the plan UID; dcmtk's storescu sends the
daily CBCT; igrtd registers it and proposes; the move is confirmed, approved
and held to run; the verification CBCT goes the same way; and the REG of the
verified move is found in Orthanc as record-and-verify."""

from __future__ import annotations

import json
from pathlib import Path

from sim import demo_dicom
from sim.clinic import storescu_path
from sim.pacs import orthanc_binary


def test_a_fraction_goes_from_the_pacs_through_igrt_to_the_reg_in_record_and_verify(
        tmp_path: Path) -> None:
    assert orthanc_binary() is not None and storescu_path() is not None, "run make setup"
    assert demo_dicom.run(tmp_path / "demo", seed=2) == 0
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    session = report["session"]
    assert (session["source"], session["iso"], session["patient_position"]) == \
        ("plan", list(demo_dicom.ISO), "HFS")
    assert report["proposal"]["verdict"] == "needs_second_approval"
    assert report["verification"]["verdict"] == "within_tolerance"
    assert report["exported_reg_series"]
