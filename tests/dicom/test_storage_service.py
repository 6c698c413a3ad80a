"""igrt-dicomd with third-party DICOM clients (dcmtk's echoscu and storescu, and
pynetdicom as an SCU calling from another address): allow-listed peers store
and are indexed; everyone and everything else is refused with the DICOM status,
audited with one line, and nothing of it is kept."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import SimpleITK as sitk
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE as ScuAE

from imaging.dicom_instances import CT_IMAGE
from imaging.volumes import ImageIdentity, write_dicom_series

from .builders import ct_slice, part10, rt_plan
from .service import AE, SENDER, RunningService, running_dicom_service


@contextlib.contextmanager
def chunked_send() -> Iterator[None]:
    """pynetdicom sends a file's dataset bytes as they are, undecoded."""
    from pynetdicom import _config

    before = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


def _dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    assert exe is not None, f"{tool} (Debian dcmtk) is not installed: run make setup"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=60, check=False)


def _store(svc: RunningService, files: list[Path], calling: str = SENDER) -> \
        subprocess.CompletedProcess[str]:
    return _dcmtk("storescu", "-v", "-aet", calling, "-aec", AE, "127.0.0.1", str(svc.port),
                  *map(str, files))


def _series(tmp_path: Path, slices: int = 4) -> tuple[list[Path], ImageIdentity]:
    img = sitk.Image([16, 16, slices], sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 2.5))
    ident = write_dicom_series(img, tmp_path / "ct", ImageIdentity(patient_id="PAT-001"))
    return sorted((tmp_path / "ct").glob("*.dcm")), ident


def test_an_allowed_peer_verifies_the_connection(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path) as svc:
        done = _dcmtk("echoscu", "-aet", SENDER, "-aec", AE, "127.0.0.1", str(svc.port))
    assert done.returncode == 0, done.stderr


def test_an_unknown_calling_ae_title_is_rejected_at_association_and_audited(
        tmp_path: Path) -> None:
    with running_dicom_service(tmp_path) as svc:
        done = _dcmtk("echoscu", "-aet", "STRANGER", "-aec", AE, "127.0.0.1", str(svc.port))
        events = svc.audit_events()
    assert done.returncode != 0
    assert "Calling AE Title Not Recognized" in done.stderr
    [(_, details)] = [e for e in events if e[0] == "dicom.association_rejected"]
    assert "'STRANGER' is not a peer allowed to send" in str(details["reason"])


def test_a_listed_ae_title_calling_from_another_address_is_rejected(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path) as svc:
        scu = ScuAE(ae_title=SENDER)
        scu.add_requested_context("1.2.840.10008.1.1")
        assoc = scu.associate("127.0.0.1", svc.port, ae_title=AE,
                              bind_address=("127.0.0.2", 0))
        rejected = assoc.is_rejected
        if assoc.is_established:
            assoc.release()
        events = svc.audit_events()
    assert rejected
    reasons = [str(d["reason"]) for e, d in events if e == "dicom.association_rejected"]
    assert reasons == [(f"calling AE title '{SENDER}' called from 127.0.0.2, configured for "
                        "127.0.0.1")]


def test_a_ct_series_from_storescu_is_stored_durably_and_indexed(tmp_path: Path) -> None:
    files, ident = _series(tmp_path)
    with running_dicom_service(tmp_path) as svc:
        done = _store(svc, files)
        stored = [d for e, d in svc.audit_events() if e == "dicom.instance_stored"]
    assert done.returncode == 0, done.stderr
    assert len(stored) == 4 and {d["series"] for d in stored} == {ident.series_uid}
    kept = sorted((svc.storage / "series" / str(ident.series_uid)).glob("*.dcm"))
    assert [p.read_bytes()[128:132] for p in kept] == [b"DICM"] * 4


def test_a_plan_from_storescu_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "plan.dcm"
    rt_plan().save_as(path, enforce_file_format=True)
    with running_dicom_service(tmp_path) as svc:
        done = _store(svc, [path])
        events = [e for e, _ in svc.audit_events()]
    assert done.returncode == 0, done.stderr
    assert "dicom.instance_stored" in events


def test_an_instance_with_a_non_finite_position_is_refused_with_its_status_and_not_kept(
        tmp_path: Path) -> None:
    ds = ct_slice()
    ds.ImagePositionPatient = ["0", "nan", "0"]
    path = tmp_path / "bad.dcm"
    ds.save_as(path, enforce_file_format=True)
    with running_dicom_service(tmp_path) as svc:
        done = _store(svc, [path])
        refused = [d for e, d in svc.audit_events() if e == "dicom.instance_refused"]
    assert "Received Store Response (Error: CannotUnderstand)" in done.stderr
    assert [d["status"] for d in refused] == ["0xC000"]
    assert "ImagePositionPatient" in str(refused[0]["reason"])
    assert not list((svc.storage / "series").glob("*/*.dcm"))


def test_an_unsupported_modality_is_refused_at_negotiation(tmp_path: Path) -> None:
    ds = ct_slice()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.Modality = "MR"
    path = tmp_path / "mr.dcm"
    ds.save_as(path, enforce_file_format=True)
    with running_dicom_service(tmp_path) as svc:
        done = _store(svc, [path])
    assert done.returncode != 0
    assert not list((svc.storage / "series").glob("*/*.dcm"))


def test_a_dataset_that_cannot_be_read_is_refused_in_one_line_and_not_kept(
        tmp_path: Path) -> None:
    """Bytes a parser chokes on (an element of a value representation that does not
    exist), sent as they are: igrt answers Cannot Understand, audits one line, keeps
    nothing."""
    good = part10(ct_slice())
    bad = good + b"\xe1\x7f\x10\x00ZZ\x04\x00abcd"  # (7FE1,0010), VR "ZZ"
    path = tmp_path / "truncated.dcm"
    path.write_bytes(bad)
    scu = ScuAE(ae_title=SENDER)
    scu.add_requested_context(CT_IMAGE, ExplicitVRLittleEndian)
    with running_dicom_service(tmp_path) as svc:
        assoc = scu.associate("127.0.0.1", svc.port, ae_title=AE)
        assert assoc.is_established
        with chunked_send():
            status = assoc.send_c_store(path)
        assoc.release()
        refused = [d for e, d in svc.audit_events() if e == "dicom.instance_refused"]
    assert status.Status == 0xC000
    assert [d["status"] for d in refused] == ["0xC000"]
    assert "\n" not in str(refused[0]["reason"])
    assert not list((svc.storage / "series").glob("*/*.dcm"))


def test_associations_beyond_the_limit_are_rejected_while_the_others_are_served(
        tmp_path: Path) -> None:
    scu = ScuAE(ae_title=SENDER)
    scu.add_requested_context("1.2.840.10008.1.1")
    with running_dicom_service(tmp_path, max_associations=2) as svc:
        held = [scu.associate("127.0.0.1", svc.port, ae_title=AE) for _ in range(2)]
        extra = scu.associate("127.0.0.1", svc.port, ae_title=AE)
        try:
            assert all(a.is_established for a in held)
            assert extra.is_rejected
            assert held[0].send_c_echo().Status == 0x0000
        finally:
            for a in held:
                a.release()
        reasons = [str(d["reason"]) for e, d in svc.audit_events()
                   if e == "dicom.association_rejected"]
    assert reasons == ["too many associations at once (dicom.max_associations)"]


def test_a_call_to_another_ae_title_is_rejected_and_audited(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path) as svc:
        done = _dcmtk("echoscu", "-aet", SENDER, "-aec", "NOT_IGRT", "127.0.0.1", str(svc.port))
        reasons = [str(d["reason"]) for e, d in svc.audit_events()
                   if e == "dicom.association_rejected"]
    assert done.returncode != 0
    assert reasons == ["called AE title not recognised (not igrt's AE title)"]


def test_a_room_config_without_a_dicom_section_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "room.json"
    config.write_text('{"room": "r", "state_dir": "%s", "couch": {"port": "/dev/null"}, '
                      '"users": [{"name": "alice", "role": "therapist"}]}' % (tmp_path / "s"))
    done = subprocess.run([sys.executable, "-m", "daemon.dicom_service", "--config", str(config)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no dicom section" in done.stderr


def test_the_service_stops_on_sigterm_and_records_it(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path) as svc:
        svc.proc.terminate()
        assert svc.proc.wait(15) == 0
        events = [e for e, _ in svc.audit_events()]
    assert events[0] == "dicom.service_started" and events[-1] == "dicom.service_stopped"


def _sent_at(svc: RunningService, series_uid: str) -> float | None:
    from daemon.dicom_archive import DicomArchive

    archive = DicomArchive(svc.storage, read_only=True)
    try:
        [series] = [s for s in archive.series() if s.series_uid == series_uid]
        return series.sent_at
    finally:
        archive.close()


def test_a_series_whose_association_is_released_is_marked_sent(tmp_path: Path) -> None:
    files, ident = _series(tmp_path)
    with running_dicom_service(tmp_path) as svc:
        assert _store(svc, files).returncode == 0
        deadline = time.monotonic() + 5
        while _sent_at(svc, str(ident.series_uid)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _sent_at(svc, str(ident.series_uid)) is not None


def test_a_series_whose_association_is_aborted_is_not_marked_sent(tmp_path: Path) -> None:
    files, ident = _series(tmp_path)
    scu = ScuAE(ae_title=SENDER)
    scu.add_requested_context(CT_IMAGE, ExplicitVRLittleEndian)
    with running_dicom_service(tmp_path) as svc:
        assoc = scu.associate("127.0.0.1", svc.port, ae_title=AE)
        assert assoc.is_established
        for f in files:
            assert assoc.send_c_store(f).Status == 0x0000
        assoc.abort()
        time.sleep(0.3)
        assert _sent_at(svc, str(ident.series_uid)) is None
