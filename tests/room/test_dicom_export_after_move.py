"""After a verified move igrtd hands the registration it applied to igrt-dicomd
for record-and-verify (docs/dicom.md, "Export to record-and-verify"): end to
end with a real igrtd, couch, igrt-dicomd and Orthanc as the R&V system, and
igrtd killed -9 right after its outbox write."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from dicom.service import AE, free_port, running_dicom_service
from support.orthanc import running_orthanc

from daemon.dicom_outbox import outbox_dir
from imaging.dicom_reg import read_registration
from safety.couch_model import CouchModel
from safety.pose import Pose
from sim.room import DaemonProcess, SimRoom
from sim.world import PatientWorld

from .conftest import ISO, PATIENT, Console

SMALL = Pose(2.0, 1.5, -1.0, 0.6, 0.0, 0.0)
PLAN_UID = "1.2.826.0.1.3680043.8.498.10"
FOR_UID = "1.2.826.0.1.3680043.8.498.11"


def test_the_reg_of_a_verified_move_reaches_the_rv_system_though_igrtd_is_killed_after_writing_it(
        room: SimRoom, tmp_path: Path) -> None:
    state = tmp_path / "state"
    with running_orthanc(tmp_path, peers={"igrt": (AE, "127.0.0.1", 11112)}) as rv:
        export = [{"ae_title": rv.aet, "host": "127.0.0.1", "port": rv.dicom_port,
                   "roles": ["export"]}]
        dicom = {"ae_title": AE, "port": free_port(), "peers": export}
        igrtd = DaemonProcess(room.room_config(state, dicom=dicom), state,
                              tmp_path / "igrtd.log").start()
        alice = Console(igrtd.socket_path, "alice")
        try:
            alice.ok("open_session", patient_id=PATIENT, plan_uid=PLAN_UID,
                     frame_of_reference_uid=FOR_UID, iso=list(ISO), patient_position="HFS",
                     manual_override="typed for the export test room")
            prop = alice.propose(SMALL, plan_uid=PLAN_UID, frame_of_reference_uid=FOR_UID)
            assert prop["ok"], prop
            pid = prop["result"]["id"]
            alice.ok("confirm", proposal_id=pid)
            holder = alice.hold_in_background(pid)
            assert alice.wait_state("DONE", "FAULT", "STOPPED")["state"] == "DONE"
            holder.stop()
            box = outbox_dir(state / "dicom")
            deadline = time.monotonic() + 10
            while not list(box.glob("*.dcm")):
                assert time.monotonic() < deadline, "no REG in the outbox after the move"
                time.sleep(0.02)
            igrtd.kill()
        finally:
            alice.c.close()
            igrtd.stop()
        with running_dicom_service(tmp_path, peers=export) as svc:
            deadline = time.monotonic() + 20
            while not [e for e, _ in svc.audit_events() if e == "dicom.export_sent"]:
                assert time.monotonic() < deadline, svc.log.read_text()[-500:]
                time.sleep(0.05)
        [held] = rv.instances()
        reg = tmp_path / "from-rv.dcm"
        reg.write_bytes(rv.download(held))
        rv.proc.kill()  # its graceful stop takes 3 s; nothing more is read from it
    record = read_registration(reg, fixed_frame_of_reference_uid=FOR_UID)
    assert record.patient_id == PATIENT
    world = PatientWorld.with_setup_error(ISO, "HFS", tuple(CouchModel.default().pivot), SMALL)
    applied = np.asarray(world.true_registration(Pose()))
    assert np.allclose(record.matrix, applied, atol=1e-6)  # the registration that was applied
