"""Sessions opened from the stored plan through a real igrtd (issue 14, item 2):
the isocentre, patient position, frame of reference and planning CT come from
the RT Plan and CT igrt-dicomd stored; typed values are a cross-check, and used
instead only under an audited manual override."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dicom.builders import PATIENT, ct_series, part10, rt_plan
from pydicom.dataset import FileDataset

from daemon.audit import read_records
from daemon.dicom_archive import DicomArchive
from imaging.dicom_instances import check_instance
from sim.room import DaemonProcess, SimRoom

from .conftest import Console

ISO = (3.0, 4.0, 5.0)
FRAME = "1.2.826.0.1.3680043.8.498.78"


def _store(directory: Path, *datasets: FileDataset) -> None:
    archive = DicomArchive(directory)
    for ds in datasets:
        archive.keep(check_instance(ds, str(ds.SOPClassUID)), part10(ds), "TPS")
    archive.close()


@pytest.fixture
def plan(tmp_path: Path) -> FileDataset:
    ct = ct_series(frame=FRAME)
    plan = rt_plan(isocentre=ISO, frame=FRAME, setups={1: "HFS"})
    _store(tmp_path / "dicom", *ct, plan)
    return plan


@pytest.fixture
def plan_daemon(room: SimRoom, tmp_path: Path) -> Iterator[DaemonProcess]:
    cfg = room.room_config(tmp_path / "state",
                           dicom={"storage_dir": str(tmp_path / "dicom")})
    d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
    yield d
    d.stop()


def _sessions(tmp_path: Path) -> list[dict[str, Any]]:
    return [r.details for r in read_records(tmp_path / "state" / "audit")
            if r.event == "session" and r.details.get("action") == "open"]


def test_a_session_takes_isocentre_position_frame_and_ct_from_the_stored_plan(
        plan: FileDataset, plan_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice = Console(plan_daemon.socket_path, "alice")
    session = alice.ok("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID)["session"]
    assert (session["iso"], session["patient_position"], session["frame_of_reference_uid"],
            session["source"]) == ([*ISO], "HFS", FRAME, "plan")
    assert session["planning_ct_series_uid"]
    [audited] = _sessions(tmp_path)
    assert (audited["source"], audited["iso"]) == ("plan", [*ISO])


def test_a_typed_isocentre_that_differs_from_the_plan_is_refused(
        plan: FileDataset, plan_daemon: DaemonProcess) -> None:
    alice = Console(plan_daemon.socket_path, "alice")
    reply = alice.call("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID,
                       iso=[3.0, 4.0, 15.0])
    assert not reply["ok"]
    assert "isocentre [3.0, 4.0, 15.0] mm typed, the plan's is [3.0, 4.0, 5.0] mm" in \
        reply["error"]
    assert alice.ok("status")["state"] == "STANDBY"


def test_typed_values_that_agree_with_the_plan_open_it(
        plan: FileDataset, plan_daemon: DaemonProcess) -> None:
    alice = Console(plan_daemon.socket_path, "alice")
    alice.ok("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID,
             iso=[*ISO], patient_position="HFS", frame_of_reference_uid=FRAME)


def test_another_patients_session_on_this_plan_is_refused(
        plan: FileDataset, plan_daemon: DaemonProcess) -> None:
    reply = Console(plan_daemon.socket_path, "alice").call(
        "open_session", patient_id="PAT-2", plan_uid=plan.SOPInstanceUID)
    assert not reply["ok"] and f"is for patient '{PATIENT}', not 'PAT-2'" in reply["error"]


def test_a_plan_not_stored_is_refused_naming_how_to_retrieve_it(
        plan: FileDataset, plan_daemon: DaemonProcess) -> None:
    reply = Console(plan_daemon.socket_path, "alice").call(
        "open_session", patient_id=PATIENT, plan_uid="1.2.3.4")
    assert not reply["ok"] and "igrtctl dicom retrieve" in reply["error"]


def test_typed_values_without_an_override_are_refused_in_a_room_without_an_archive(
        daemon: DaemonProcess) -> None:
    reply = Console(daemon.socket_path, "alice").call(
        "open_session", patient_id=PATIENT, plan_uid="1.2.3", frame_of_reference_uid=FRAME,
        iso=[*ISO], patient_position="HFS")
    assert not reply["ok"] and "manual override" in reply["error"]


def test_a_manual_override_opens_typed_values_and_is_audited_with_its_reason(
        plan: FileDataset, plan_daemon: DaemonProcess, tmp_path: Path) -> None:
    alice = Console(plan_daemon.socket_path, "alice")
    reason = "TPS export down, plan printout checked by physicist"
    session = alice.ok("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID,
                       frame_of_reference_uid=FRAME, iso=[1.0, 2.0, 3.0],
                       patient_position="FFS", manual_override=reason)["session"]
    assert (session["source"], session["override_reason"], session["iso"]) == \
        ("manual", reason, [1.0, 2.0, 3.0])
    [audited] = _sessions(tmp_path)
    assert (audited["source"], audited["override_reason"]) == ("manual", reason)


def test_a_manual_override_without_the_typed_values_is_refused(
        plan_daemon: DaemonProcess) -> None:
    reply = Console(plan_daemon.socket_path, "alice").call(
        "open_session", patient_id=PATIENT, plan_uid="1.2.3", iso=[*ISO],
        manual_override="TPS export down today")
    assert not reply["ok"]
    assert "needs the typed frame_of_reference_uid, patient_position" in reply["error"]


def test_registration_without_a_planning_ct_needs_a_session_from_a_stored_plan(
        daemon: DaemonProcess) -> None:
    alice = Console(daemon.socket_path, "alice")
    alice.ok("open_session", patient_id=PATIENT, plan_uid="1.2.3", frame_of_reference_uid=FRAME,
             iso=[*ISO], patient_position="HFS", manual_override="typed for the test room")
    reply = alice.call("register", moving="/nonexistent/cbct")
    assert not reply["ok"]
    assert "no session opened from a stored plan" in reply["error"]


def test_igrtd_tells_the_dicom_node_whose_session_is_open_and_when_it_closes(
        plan: FileDataset, plan_daemon: DaemonProcess, tmp_path: Path) -> None:
    from daemon.session_beacon import read_beacon

    alice = Console(plan_daemon.socket_path, "alice")
    alice.ok("open_session", patient_id=PATIENT, plan_uid=plan.SOPInstanceUID)
    beacon = read_beacon(tmp_path / "dicom")
    assert beacon is not None and (beacon.patient_id, beacon.plan_uid) == \
        (PATIENT, plan.SOPInstanceUID)
    alice.ok("close_session")
    assert read_beacon(tmp_path / "dicom") is None


def test_a_session_left_by_an_earlier_igrtd_is_not_told_to_the_dicom_node(
        room: SimRoom, tmp_path: Path) -> None:
    from daemon.session_beacon import BEACON_FILE

    (tmp_path / "dicom").mkdir()
    stale = tmp_path / "dicom" / BEACON_FILE
    stale.write_text('{"patient_id": "P", "plan_uid": "1.2", "frame_of_reference_uid": "1.3"}')
    cfg = room.room_config(tmp_path / "state", dicom={"storage_dir": str(tmp_path / "dicom")})
    d = DaemonProcess(cfg, tmp_path / "state", tmp_path / "igrtd.log").start()
    try:
        assert not stale.exists()
    finally:
        d.stop()
