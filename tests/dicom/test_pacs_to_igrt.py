"""A real PACS sends to igrt: Orthanc (the planning system's and the clinic's
archive stand-in) C-STOREs a plan, its structures and its planning CT to
igrt-dicomd, which keeps them; a PACS igrt does not list is turned away."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import SimpleITK as sitk
from support.orthanc import ORTHANC_AET, PacsError, running_orthanc

from daemon.dicom_archive import DicomArchive
from daemon.igrtctl.dicom import run_dicom
from imaging.volumes import ImageIdentity, write_dicom_series

from .builders import part10, rt_plan, rt_structures
from .service import AE, running_dicom_service


def _planning_ct(tmp_path: Path, frame: str) -> list[Path]:
    img = sitk.Image([16, 16, 5], sitk.sitkInt16)
    img.SetSpacing((1.0, 1.0, 2.5))
    write_dicom_series(img, tmp_path / "ct", ImageIdentity(patient_id="PAT-001",
                                                           frame_of_reference_uid=frame))
    return sorted((tmp_path / "ct").glob("*.dcm"))


def test_a_plan_its_structures_and_its_ct_pushed_from_orthanc_are_kept(tmp_path: Path) -> None:
    plan = rt_plan()
    frame = str(plan.FrameOfReferenceUID)
    structures = rt_structures(frame=frame)
    files = [p.read_bytes() for p in _planning_ct(tmp_path, frame)]
    peers = [{"ae_title": ORTHANC_AET, "host": "127.0.0.1", "roles": ["send"]}]
    with running_dicom_service(tmp_path, peers=peers) as svc, \
            running_orthanc(tmp_path, peers={"igrt": (AE, "127.0.0.1", svc.port)}) as pacs:
        ids = [pacs.upload(b) for b in [part10(plan), part10(structures), *files]]
        pacs.store_to("igrt", ids)
        stored = [d for e, d in svc.audit_events() if e == "dicom.instance_stored"]
        out = io.StringIO()
        assert run_dicom(["status", "--dir", str(svc.storage)], out=out) == 0
    assert len(stored) == 7
    archive = DicomArchive(svc.storage, read_only=True)
    modalities = sorted(s.modality for s in archive.series("PAT-001"))
    assert modalities == ["CT", "RTPLAN", "RTSTRUCT"]
    assert {s.frame_of_reference_uid for s in archive.series()} == {frame}
    assert "5 slices 16x16, 2.500 mm apart" in out.getvalue()


def test_a_pacs_igrt_does_not_list_is_turned_away(tmp_path: Path) -> None:
    with running_dicom_service(tmp_path, peers=[]) as svc, \
            running_orthanc(tmp_path, peers={"igrt": (AE, "127.0.0.1", svc.port)}) as pacs:
        ident = pacs.upload(part10(rt_plan()))
        with pytest.raises(PacsError):
            pacs.store_to("igrt", [ident])
        rejected = [d for e, d in svc.audit_events() if e == "dicom.association_rejected"]
    assert [str(d["reason"]) for d in rejected] == [
        f"calling AE title '{ORTHANC_AET}' is not a peer allowed to send"]
