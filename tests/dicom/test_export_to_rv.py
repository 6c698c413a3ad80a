"""igrt-dicomd exports igrt's registrations to a record-and-verify system: a real
Orthanc as the R&V stand-in, igrt-dicomd as a real process, REGs dropped into
its outbox as igrtd drops them (daemon/dicom_outbox.py). A peer that is down or
rejects the association is retried with back-off until it takes the instance;
a kill -9 mid-queue delivers each instance once; a foreign file is never sent.
(After a real verified move: tests/room/test_dicom_export_after_move.py.)"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support.orthanc import ORTHANC_AET, Orthanc, running_orthanc

from daemon.dicom_outbox import VerifiedRegistration, outbox_dir, write_to_outbox

from .service import AE, RunningService, free_port, running_dicom_service

PLANNING_FOR = "1.2.826.0.1.3680043.8.498.77"
SHIFT = ((1.0, 0.0, 0.0, 3.0), (0.0, 1.0, 0.0, -2.0), (0.0, 0.0, 1.0, 1.5), (0.0, 0.0, 0.0, 1.0))
FAST_RETRY = {"export_retry_initial_s": 0.2, "export_retry_max_s": 0.8}


@contextlib.contextmanager
def _rv(directory: Path, **kw: Any) -> Iterator[Orthanc]:
    """Orthanc as the R&V system, killed at the end: its graceful stop takes 3 s, and
    nothing it holds is needed after the test has read it."""
    with running_orthanc(directory, **kw) as rv:
        try:
            yield rv
        finally:
            rv.proc.kill()


def _queue_reg(storage: Path, confirmation: str = "conf-1") -> str:
    reg = VerifiedRegistration("dicomroom", "prop-1", confirmation, "alice", "PAT-001",
                               PLANNING_FOR, "IMG-1", SHIFT, time.time())
    return write_to_outbox(reg, storage).stem


def _export_peer(port: int, ae_title: str = ORTHANC_AET) -> list[dict[str, object]]:
    return [{"ae_title": ae_title, "host": "127.0.0.1", "port": port, "roles": ["export"]}]


def _events(svc: RunningService, event: str) -> list[dict[str, object]]:
    return [d for e, d in svc.audit_events() if e == event]


def _wait_for(svc: RunningService, event: str, count: int = 1,
              timeout_s: float = 20.0) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout_s
    while True:
        found = _events(svc, event)
        if len(found) >= count:
            return found
        assert svc.proc.poll() is None, svc.log.read_text()[-500:]
        assert time.monotonic() < deadline, f"{count} x {event} not within {timeout_s} s"
        time.sleep(0.02)


def test_a_peer_that_is_down_is_retried_with_back_off_and_gets_the_reg_when_it_comes_up(
        tmp_path: Path) -> None:
    port = free_port()
    uid = _queue_reg(tmp_path / "state" / "dicom")
    with running_dicom_service(tmp_path, peers=_export_peer(port), **FAST_RETRY) as svc:
        failed = _wait_for(svc, "dicom.export_failed", 3)
        with _rv(tmp_path, peers={"igrt": (AE, "127.0.0.1", svc.port)},
                             dicom_port=port) as rv:
            _wait_for(svc, "dicom.export_sent")
            held = rv.sop_instance_uids()
    assert [d["next_attempt_in_s"] for d in failed[:3]] == [0.2, 0.4, 0.8]
    assert all("cannot connect" in str(d["reason"]) for d in failed)
    assert held == [uid]


def test_a_rejected_association_is_retried_its_reason_shown_until_the_peer_accepts(
        tmp_path: Path) -> None:
    port = free_port()
    uid = _queue_reg(tmp_path / "state" / "dicom")
    with running_dicom_service(tmp_path, peers=_export_peer(port, "RV"), **FAST_RETRY) as svc:
        peers = {"igrt": (AE, "127.0.0.1", svc.port)}
        with _rv(tmp_path / "wrong", peers=peers, dicom_port=port):
            _wait_for(svc, "dicom.export_failed", 2)
            shown = subprocess.run([sys.executable, "-m", "daemon.igrtctl", "dicom", "status",
                                    "--dir", str(svc.storage)], capture_output=True, text=True,
                                   check=False, timeout=60)
        with _rv(tmp_path / "rv", aet="RV", peers=peers, dicom_port=port) as rv:
            _wait_for(svc, "dicom.export_sent")
            held = rv.sop_instance_uids()
    assert shown.returncode == 0, shown.stderr
    [line] = [ln for ln in shown.stdout.splitlines() if "FAILING" in ln]
    assert uid in line and "association rejected by RV" in line
    assert "called AE title not recognised" in line
    assert held == [uid]


def test_kill_9_of_the_service_mid_queue_leaves_each_instance_in_the_rv_system_once(
        tmp_path: Path) -> None:
    storage = tmp_path / "state" / "dicom"
    uids = sorted(_queue_reg(storage, f"conf-{i}") for i in range(30))
    with _rv(tmp_path, peers={"igrt": (AE, "127.0.0.1", 11112)}) as rv:
        with running_dicom_service(tmp_path, peers=_export_peer(rv.dicom_port)) as svc:
            _wait_for(svc, "dicom.export_sent")
            svc.proc.kill()
            svc.proc.wait(10)
            before = {str(d["sop_instance_uid"]) for d in _events(svc, "dicom.export_sent")}
        with running_dicom_service(tmp_path, peers=_export_peer(rv.dicom_port)) as svc:
            _wait_for(svc, "dicom.export_sent", len(uids), timeout_s=40)
            records = svc.audit_events()
        held = rv.sop_instance_uids()
    assert 0 < len(before) < len(uids), "the kill did not land mid-queue"
    assert sorted(held) == uids
    restarted = max(i for i, (e, _) in enumerate(records) if e == "dicom.service_started")
    again = {str(d["sop_instance_uid"]) for e, d in records[restarted:]
             if e == "dicom.export_attempt"}
    assert not again & before  # what the peer took before the kill is never offered again
    sent = [str(d["sop_instance_uid"]) for e, d in records if e == "dicom.export_sent"]
    assert sorted(set(sent)) == uids and len(sent) == len(uids)


def test_a_foreign_file_in_the_outbox_is_refused_in_one_line_and_never_sent(
        tmp_path: Path) -> None:
    box = outbox_dir(tmp_path / "state" / "dicom")
    box.mkdir(parents=True)
    (box / "notes.dcm").write_bytes(b"not a DICOM file at all\n" * 20)
    with running_dicom_service(tmp_path, peers=_export_peer(free_port())) as svc:
        [refused] = _wait_for(svc, "dicom.export_refused")
        time.sleep(0.5)
        attempts = _events(svc, "dicom.export_attempt") + _events(svc, "dicom.export_failed")
    assert refused["file"] == "notes.dcm" and "\n" not in str(refused["reason"])
    assert attempts == []
    assert (box / "refused" / "notes.dcm").exists() and not (box / "notes.dcm").exists()


def test_an_rv_system_killed_during_export_holds_each_reg_once_after_it_returns(
        tmp_path: Path) -> None:
    storage = tmp_path / "state" / "dicom"
    uids = sorted(_queue_reg(storage, f"conf-{i}") for i in range(30))
    port = free_port()
    with running_dicom_service(tmp_path, peers=_export_peer(port), **FAST_RETRY) as svc:
        peers = {"igrt": (AE, "127.0.0.1", svc.port)}
        with _rv(tmp_path, peers=peers, dicom_port=port) as rv:
            _wait_for(svc, "dicom.export_sent")
            rv.proc.kill()  # mid-queue, as a power cut would
            rv.proc.wait(10)
        before = {str(d["sop_instance_uid"]) for d in _events(svc, "dicom.export_sent")}
        _wait_for(svc, "dicom.export_failed")
        with _rv(tmp_path, peers=peers, dicom_port=port) as rv:  # back, with its storage
            _wait_for(svc, "dicom.export_sent", len(uids), timeout_s=40)
            held = rv.sop_instance_uids()
        records = svc.audit_events()
    assert 0 < len(before) < len(uids), "the kill did not land mid-queue"
    assert sorted(held) == uids  # each once: nothing lost, nothing twice
    sent = [str(d["sop_instance_uid"]) for e, d in records if e == "dicom.export_sent"]
    assert sorted(sent) == uids
