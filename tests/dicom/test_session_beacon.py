"""The room's imaging system sends images of the patient igrt is set up for: igrtd
says which (daemon/session_beacon.py), igrt-dicomd refuses the others at C-STORE,
so the imaging system's operator sees the mix-up at once."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import SimpleITK as sitk

from daemon.proposals import TreatmentSession
from daemon.session_beacon import BEACON_FILE, SessionBeacon, read_beacon
from imaging.volumes import ImageIdentity, write_dicom_series

from .service import AE, RunningService, running_dicom_service

IMAGER = "CBCT_WS"
PLAN_FRAME = "1.2.826.0.1.3680043.8.498.80"
PEERS: list[dict[str, object]] = [
    {"ae_title": IMAGER, "host": "127.0.0.1", "roles": ["send", "imaging"]}]


def _session(patient: str = "PAT-001") -> TreatmentSession:
    return TreatmentSession(patient, "1.2.3", PLAN_FRAME, (0.0, 0.0, 0.0), "HFS", "alice", 0.0)


def _cbct(tmp_path: Path, patient: str, frame: str | None = None) -> list[Path]:
    img = sitk.Image([8, 8, 3], sitk.sitkInt16)
    write_dicom_series(img, tmp_path / patient, ImageIdentity(
        patient_id=patient, frame_of_reference_uid=frame))
    return sorted((tmp_path / patient).glob("*.dcm"))


def _send(svc: RunningService, files: list[Path]) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("storescu")
    assert exe is not None, "storescu (Debian dcmtk) is not installed: run make setup"
    return subprocess.run([exe, "-aet", IMAGER, "-aec", AE, "127.0.0.1", str(svc.port),
                           *map(str, files)], capture_output=True, text=True, timeout=60,
                          check=False)


def _refusals(svc: RunningService) -> list[str]:
    return [str(d["reason"]) for e, d in svc.audit_events() if e == "dicom.instance_refused"]


def test_an_image_of_the_sessions_patient_is_kept(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path, peers=PEERS) as svc:
        SessionBeacon(svc.storage)(_session())
        assert _send(svc, _cbct(tmp_path, "PAT-001")).returncode == 0
        assert _refusals(svc) == []


def test_an_image_of_another_patient_is_refused_at_c_store(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path, peers=PEERS) as svc:
        SessionBeacon(svc.storage)(_session())
        sent = _send(svc, _cbct(tmp_path, "PAT-002"))
        refusals = _refusals(svc)
    assert sent.returncode != 0 or "0xc000" in (sent.stdout + sent.stderr).lower()
    assert refusals and all("PatientID 'PAT-002' is not the patient of the session open in "
                            "igrt ('PAT-001')" in r for r in refusals)


def test_an_image_while_no_session_is_open_is_refused(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path, peers=PEERS) as svc:
        _send(svc, _cbct(tmp_path, "PAT-001"))
        refusals = _refusals(svc)
    assert refusals and "no treatment session is open in igrt" in refusals[0]


def test_an_image_in_the_plans_frame_is_refused(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path, peers=PEERS) as svc:
        SessionBeacon(svc.storage)(_session())
        _send(svc, _cbct(tmp_path, "PAT-001", frame=PLAN_FRAME))
        refusals = _refusals(svc)
    assert refusals and "in the plan's frame of reference" in refusals[0]


def test_the_beacon_is_gone_when_the_session_closes(tmp_path: Path) -> None:
    beacon = SessionBeacon(tmp_path)
    beacon(_session())
    assert read_beacon(tmp_path) is not None
    beacon(None)
    assert not (tmp_path / BEACON_FILE).exists() and read_beacon(tmp_path) is None


def test_an_unreadable_beacon_means_no_session(tmp_path: Path) -> None:
    for junk in (b"", b"{", b"[]", b'{"patient_id": 7}', b"x" * 10_000):
        (tmp_path / BEACON_FILE).write_bytes(junk)
        assert read_beacon(tmp_path) is None
