"""`igrtctl dicom status` (daemon/igrtctl/dicom.py): what the storage service
holds, whether each CT series makes a volume, and the latest refusals."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from daemon.dicom_archive import DicomArchive
from daemon.igrtctl.dicom import run_dicom
from imaging.dicom_instances import CT_IMAGE, RT_PLAN, check_instance

from .builders import ct_slice, part10, rt_plan
from .service import SENDER, running_dicom_service


def _status(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_dicom(["status", *argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _store_series(archive: DicomArchive, zs: list[float]) -> str:
    first = ct_slice(z=zs[0])
    for i, z in enumerate(zs):
        ds = first if i == 0 else ct_slice(z=z, series=first.SeriesInstanceUID,
                                           study=first.StudyInstanceUID,
                                           frame=first.FrameOfReferenceUID)
        archive.keep(check_instance(ds, CT_IMAGE), part10(ds), SENDER)
    return str(first.SeriesInstanceUID)


def test_a_complete_ct_series_shows_its_volume(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    uid = _store_series(archive, [0.0, 2.5, 5.0])
    plan = rt_plan()
    archive.keep(check_instance(plan, RT_PLAN), part10(plan), SENDER)
    archive.close()
    code, out, _ = _status("--dir", str(tmp_path))
    assert code == 0
    assert f"{uid}  3 slices 8x8, 2.500 mm apart" in out
    assert "RTPLAN" in out


def test_a_ct_series_with_a_missing_slice_shows_why_it_cannot_be_used(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    _store_series(archive, [0.0, 2.5, 7.5, 10.0])
    archive.close()
    _, out, _ = _status("--dir", str(tmp_path))
    assert "REFUSED:" in out and "1 slice(s) missing" in out


def test_the_latest_refusals_are_listed_with_status_and_reason(tmp_path: Path) -> None:
    ds = ct_slice()
    ds.ImagePositionPatient = ["0", "nan", "0"]
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad, enforce_file_format=True)
    with running_dicom_service(tmp_path) as svc:
        subprocess.run(["storescu", "-aet", SENDER, "-aec", "IGRT_TEST", "127.0.0.1",
                        str(svc.port), str(bad)], capture_output=True, check=False, timeout=60)
        done = subprocess.run([sys.executable, "-m", "daemon.igrtctl", "dicom", "status",
                               "--dir", str(svc.storage)], capture_output=True, text=True,
                              check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    [line] = [ln for ln in done.stdout.splitlines() if "0xC000" in ln]
    assert f"dicom:{SENDER}" in line and "ImagePositionPatient" in line


def test_no_archive_is_a_one_line_error(tmp_path: Path) -> None:
    code, out, err = _status("--dir", str(tmp_path / "nothing"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "no DICOM archive" in err
