"""The store of received instances (daemon/dicom_archive.py): durable files, an
index by patient, series and frame of reference, a UID names one instance, a
series is never mixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.dicom_archive import Conflict, DicomArchive
from imaging.dicom_instances import CT_IMAGE, check_instance

from .builders import ct_slice, part10


def _keep(archive: DicomArchive, ds: object) -> Path:
    facts = check_instance(ds, CT_IMAGE)  # type: ignore[arg-type]
    return archive.keep(facts, part10(ds), "TPS").path  # type: ignore[arg-type]


def test_a_kept_instance_is_on_disk_as_sent_and_indexed(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    ds = ct_slice()
    path = _keep(archive, ds)
    assert path.read_bytes() == part10(ds)
    [series] = archive.series("PAT-001")
    assert (series.series_uid, series.instances) == (ds.SeriesInstanceUID, 1)
    assert archive.instance_paths(ds.SeriesInstanceUID) == [path]


def test_the_index_survives_reopening(tmp_path: Path) -> None:
    ds = ct_slice()
    archive = DicomArchive(tmp_path)
    _keep(archive, ds)
    archive.close()
    assert [s.series_uid for s in DicomArchive(tmp_path).series()] == [ds.SeriesInstanceUID]


def test_the_same_instance_again_changes_nothing(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    ds = ct_slice()
    first = _keep(archive, ds)
    assert _keep(archive, ds) == first
    assert archive.series()[0].instances == 1


def test_other_content_under_a_stored_uid_is_refused(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    ds = ct_slice()
    _keep(archive, ds)
    ds.PatientName = "SOMEONE^ELSE"
    with pytest.raises(Conflict, match="already stored with other content"):
        _keep(archive, ds)


def test_an_instance_that_would_mix_a_series_is_refused(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    first = ct_slice()
    _keep(archive, first)
    other = ct_slice(series=first.SeriesInstanceUID, study=first.StudyInstanceUID,
                     frame=first.FrameOfReferenceUID, patient="PAT-002")
    with pytest.raises(Conflict, match="PatientID 'PAT-001'"):
        _keep(archive, other)
    assert archive.series()[0].instances == 1


def test_a_write_a_crash_interrupted_is_removed_at_the_next_open(tmp_path: Path) -> None:
    archive = DicomArchive(tmp_path)
    ds = ct_slice()
    _keep(archive, ds)
    archive.close()
    leftover = tmp_path / "series" / ds.SeriesInstanceUID / ".1.2.3.dcm.tmp"
    leftover.write_bytes(b"half")
    DicomArchive(tmp_path)
    assert not leftover.exists()


def test_a_reader_opens_an_archive_named_by_a_relative_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _keep(DicomArchive(tmp_path / "dicom"), ct_slice())
    monkeypatch.chdir(tmp_path)
    assert len(DicomArchive(Path("dicom"), read_only=True).series()) == 1
