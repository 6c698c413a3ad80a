"""igrtctl dicom find / retrieve (daemon/igrtctl/dicom_retrieve.py): igrt asks a
real PACS (Orthanc, filled through its REST API) for a patient's studies and
series, and has it C-MOVE a plan and its planning CT to igrt-dicomd, which
admits, validates and stores them like anything pushed; what arrived is read
from igrt's archive, and what igrt-dicomd refused is named with its reason.

One Orthanc and one igrt-dicomd serve the whole module (each takes seconds to
start); each scenario uses a patient of its own."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydicom.dataset import Dataset, FileDataset
from pydicom.uid import generate_uid
from pynetdicom import AE as ScpAE
from pynetdicom import evt
from pynetdicom.events import Event
from support.orthanc import ORTHANC_AET, Orthanc, running_orthanc

from daemon.config_dicom import DicomConfig
from daemon.dicom_archive import DicomArchive
from daemon.dicom_query import SeriesMatch
from daemon.dicom_retrieve import Part
from daemon.igrtctl.dicom import run_dicom
from daemon.igrtctl.dicom_retrieve import Progress
from drivers.dicom_qr import PATIENT_ROOT_FIND, MoveStatus

from .builders import ct_slice, part10, rt_plan, rt_structures
from .service import AE, RunningService, free_port, running_dicom_service

PATIENT = "PAT-QR-1"  # a plan, its planning CT (4 slices) and a CBCT of another frame
REFUSED_PATIENT = "PAT-QR-2"  # a plan whose planning CT has a slice at a NaN position
TWO_CT_PATIENT = "PAT-QR-3"  # a plan and two CT series in its frame of reference (a 4D CT)
STRUCTURES_PATIENT = "PAT-QR-4"  # the same, and a structure set drawn on one of the two


@dataclass
class Clinic:
    svc: RunningService
    pacs: Orthanc
    config: Path  # the room configuration igrtctl reads: the PACS as query peer
    plan: FileDataset
    planning_ct: list[FileDataset]
    cbct: list[FileDataset]
    refused_plan: FileDataset
    nan_slice: FileDataset
    two_ct_plan: FileDataset
    two_cts: list[str]
    drawn_plan: FileDataset
    drawn_structures: FileDataset
    drawn_cts: list[str]  # the first is the one the structures were drawn on


def _series(patient: str, frame: str, zs: list[float]) -> list[FileDataset]:
    study, series = generate_uid(), generate_uid()
    return [ct_slice(z=z, patient=patient, study=study, series=series, frame=frame) for z in zs]


def _room_config(tmp: Path, service_config: Path, peers: list[dict[str, object]]) -> Path:
    config = json.loads(service_config.read_text())
    config["dicom"]["peers"] = peers
    path = tmp / f"room-{len(list(tmp.glob('room-*.json')))}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def clinic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clinic]:
    tmp = tmp_path_factory.mktemp("clinic")
    plan = rt_plan(patient=PATIENT)
    frame = str(plan.FrameOfReferenceUID)
    planning_ct = _series(PATIENT, frame, [0.0, 2.5, 5.0, 7.5])
    cbct = _series(PATIENT, generate_uid(), [0.0, 2.5])
    refused_plan = rt_plan(patient=REFUSED_PATIENT)
    refused_ct = _series(REFUSED_PATIENT, str(refused_plan.FrameOfReferenceUID), [0.0, 2.5, 5.0])
    nan_slice = refused_ct[1]
    nan_slice.ImagePositionPatient = [0.0, 0.0, float("nan")]
    two_ct_plan = rt_plan(patient=TWO_CT_PATIENT)
    phases = [_series(TWO_CT_PATIENT, str(two_ct_plan.FrameOfReferenceUID), [0.0, 2.5])
              for _ in range(2)]
    drawn_frame = generate_uid()
    drawn_phases = [_series(STRUCTURES_PATIENT, drawn_frame, [0.0, 2.5]) for _ in range(2)]
    drawn_structures = rt_structures(patient=STRUCTURES_PATIENT, frame=drawn_frame,
                                     ct_series=str(drawn_phases[0][0].SeriesInstanceUID))
    drawn_plan = rt_plan(patient=STRUCTURES_PATIENT, frame=drawn_frame,
                         structure_set=str(drawn_structures.SOPInstanceUID))
    # The PACS may store to igrt (send) and is queried (query); igrt-dicomd reads
    # only who may send, so its port is filled in for igrtctl once Orthanc is up.
    pacs_peer: dict[str, object] = {"ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": 1,
                                    "roles": ["send", "query"]}
    with running_dicom_service(tmp, peers=[pacs_peer]) as svc, \
            running_orthanc(tmp, peers={"igrt": (AE, "127.0.0.1", svc.port)}) as pacs:
        for ds in [plan, *planning_ct, *cbct, refused_plan, *refused_ct, two_ct_plan,
                   *phases[0], *phases[1], drawn_structures, drawn_plan, *drawn_phases[0],
                   *drawn_phases[1]]:
            pacs.upload(part10(ds))
        config = _room_config(tmp, tmp / "room.json",
                              [{**pacs_peer, "port": pacs.dicom_port}])
        yield Clinic(svc, pacs, config, plan, planning_ct, cbct, refused_plan, nan_slice,
                     two_ct_plan, [str(p[0].SeriesInstanceUID) for p in phases], drawn_plan,
                     drawn_structures, [str(p[0].SeriesInstanceUID) for p in drawn_phases])


def _igrtctl(config: Path, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_dicom([*argv[:1], "--config", str(config), *argv[1:]], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def retrieved(clinic: Clinic) -> tuple[int, str, str]:
    """The plan and its planning CT retrieved once, for the tests that look at it."""
    return _igrtctl(clinic.config, "retrieve", "--patient", PATIENT,
                    "--plan", str(clinic.plan.SOPInstanceUID), "--with-planning-ct")


# ------------------------------------------------------------------- find
def test_find_at_patient_level_lists_the_patient_with_its_study_count(clinic: Clinic) -> None:
    code, out, err = _igrtctl(clinic.config, "find", "--patient", PATIENT, "--level", "patient",
                              "--json")
    assert (code, err) == (0, "")
    matches = json.loads(out)["matches"]
    assert [(m["patient_id"], m["studies"]) for m in matches] == [(PATIENT, 3)]


def test_find_at_study_level_lists_each_study_with_its_uid_and_modalities(
        clinic: Clinic) -> None:
    code, out, err = _igrtctl(clinic.config, "find", "--patient", PATIENT, "--level", "study",
                              "--json")
    assert (code, err) == (0, "")
    studies = {m["study_uid"]: m for m in json.loads(out)["matches"]}
    plan_study = studies[str(clinic.plan.StudyInstanceUID)]
    assert plan_study["modalities"] == ["RTPLAN"]
    assert plan_study["instances"] == 1
    assert studies[str(clinic.planning_ct[0].StudyInstanceUID)]["instances"] == 4
    assert len(studies) == 3


def test_find_at_series_level_lists_uids_modality_and_instance_counts(clinic: Clinic) -> None:
    code, out, err = _igrtctl(clinic.config, "find", "--patient", PATIENT)
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == f"3 series match(es) for patient {PATIENT} on PACS {ORTHANC_AET}"
    lines = out.splitlines()[1:]
    ct = str(clinic.planning_ct[0].SeriesInstanceUID)
    assert any(line.split()[:3] == ["CT", "4", ct] for line in lines)
    assert any(line.split()[:3] == ["RTPLAN", "1", str(clinic.plan.SeriesInstanceUID)]
               for line in lines)


def test_find_with_a_modality_lists_only_that_modalitys_series(clinic: Clinic) -> None:
    code, out, _ = _igrtctl(clinic.config, "find", "--patient", PATIENT, "--modality", "ct",
                            "--json")
    assert code == 0
    series = json.loads(out)["matches"]
    assert sorted(s["series_uid"] for s in series) == sorted(
        [str(clinic.planning_ct[0].SeriesInstanceUID), str(clinic.cbct[0].SeriesInstanceUID)])
    assert {s["modality"] for s in series} == {"CT"}


# --------------------------------------------------------------- retrieve
def test_retrieving_a_plan_with_its_planning_ct_stores_both_in_igrts_archive(
        clinic: Clinic, retrieved: tuple[int, str, str]) -> None:
    code, _, err = retrieved
    assert (code, err) == (0, "")
    archive = DicomArchive(clinic.svc.storage, read_only=True)
    try:
        stored = {s.series_uid: s for s in archive.series(PATIENT)}
    finally:
        archive.close()
    plan_series = stored[str(clinic.plan.SeriesInstanceUID)]
    ct_series = stored[str(clinic.planning_ct[0].SeriesInstanceUID)]
    assert (plan_series.modality, plan_series.instances) == ("RTPLAN", 1)
    assert (ct_series.modality, ct_series.instances) == ("CT", 4)
    assert ct_series.frame_of_reference_uid == str(clinic.plan.FrameOfReferenceUID)
    assert str(clinic.cbct[0].SeriesInstanceUID) not in stored  # another frame: not asked


def test_retrieve_shows_progress_from_the_pacs_pending_responses(
        retrieved: tuple[int, str, str]) -> None:
    _, out, _ = retrieved
    progress = [line for line in out.splitlines() if "sub-operations done" in line]
    assert any(line.startswith("planning CT series ") and "/4 sub-operations done" in line
               for line in progress)
    assert progress[-1].endswith("4/4 sub-operations done (0 failed, 0 warning)")


def test_retrieve_ends_with_a_line_saying_what_arrived(
        clinic: Clinic, retrieved: tuple[int, str, str]) -> None:
    _, out, _ = retrieved
    last = out.splitlines()[-1]
    assert last.startswith(f"arrived in igrt for patient {PATIENT} from PACS {ORTHANC_AET}: ")
    assert f"RT Plan {clinic.plan.SOPInstanceUID} (1 instance(s))" in last
    assert f"planning CT series {clinic.planning_ct[0].SeriesInstanceUID} (4 instance(s))" \
        in last
    assert "4 slices 8x8, 2.500 mm apart" in out


def test_retrieve_with_json_prints_progress_objects_and_a_final_one(clinic: Clinic) -> None:
    series = str(clinic.cbct[0].SeriesInstanceUID)
    code, out, err = _igrtctl(clinic.config, "retrieve", "--patient", PATIENT, "--series",
                              series, "--json")
    assert (code, err) == (0, "")
    objects = [json.loads(line) for line in out.splitlines()]
    assert {o["event"] for o in objects[:-1]} == {"progress"}
    done = objects[-1]
    assert (done["event"], done["complete"]) == ("done", True)
    assert len(done["parts"][0]["arrived"]) == 2


def test_an_unknown_plan_is_a_one_line_error_and_nothing_is_moved(clinic: Clinic) -> None:
    unknown = generate_uid()
    code, out, err = _igrtctl(clinic.config, "retrieve", "--patient", PATIENT, "--plan", unknown)
    assert code == 1
    assert err == (f"igrtctl dicom: no RT Plan {unknown} for patient {PATIENT} on PACS "
                   f"{ORTHANC_AET}\n")
    assert out == ""


def test_a_slice_igrt_dicomd_refuses_is_a_failed_sub_operation_named_with_its_reason(
        clinic: Clinic) -> None:
    code, out, err = _igrtctl(clinic.config, "retrieve", "--patient", REFUSED_PATIENT,
                              "--plan", str(clinic.refused_plan.SOPInstanceUID),
                              "--with-planning-ct")
    nan = str(clinic.nan_slice.SOPInstanceUID)
    assert code == 1
    assert (f"  failed: {nan}: refused by igrt-dicomd (0xC000): ImagePositionPatient value nan "
            "is not finite") in out.splitlines()
    assert len(err.splitlines()) == 1
    assert err.startswith("igrtctl dicom: retrieve incomplete: ")
    assert nan in err
    assert err.rstrip().endswith(": refused by igrt-dicomd (0xC000): ImagePositionPatient value "
                                 "nan is not finite; see igrtctl dicom status")


def test_two_ct_series_in_the_plans_frame_are_refused_naming_both(clinic: Clinic) -> None:
    code, _, err = _igrtctl(clinic.config, "retrieve", "--patient", TWO_CT_PATIENT, "--plan",
                            str(clinic.two_ct_plan.SOPInstanceUID), "--with-planning-ct")
    assert code == 1
    assert len(err.splitlines()) == 1
    assert "2 CT series have the plan's frame of reference" in err
    assert all(uid in err for uid in clinic.two_cts)
    assert err.rstrip().endswith("retrieve the planning CT with --series")


def test_on_a_terminal_progress_is_one_line_rewritten_in_place() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = Progress(out, as_json=False)
    part = Part("CT series", SeriesMatch(patient_id=PATIENT, study_uid="1.2", series_uid="1.3"),
                ())
    for completed, remaining in ((1, 2), (2, 1)):
        progress(part, MoveStatus(0xFF00, remaining, completed, 0, 0))
    progress(part, MoveStatus(0x0000, None, 3, 0, 0))
    progress.end_line()
    assert out.getvalue() == (
        "\rCT series 1.3: 1/3 sub-operations done (0 failed, 0 warning)"
        "\rCT series 1.3: 2/3 sub-operations done (0 failed, 0 warning)"
        "\rCT series 1.3: 3/3 sub-operations done (0 failed, 0 warning)\n")


# ------------------------------------------------------------------ errors
def _room_file(tmp_path: Path, *, roles: list[str], port: int | None = None) -> Path:
    """A room configuration naming one peer PACS on loopback (nothing started)."""
    config = tmp_path / "room.json"
    config.write_text(json.dumps({
        "room": "r", "state_dir": str(tmp_path / "state"), "couch": {"port": "/dev/null"},
        "users": [{"name": "alice", "role": "therapist"}],
        "dicom": {"ae_title": AE, "peers": [{"ae_title": "PACS", "host": "127.0.0.1",
                                             "port": port or free_port(), "roles": roles}]}}))
    return config


def test_a_pacs_that_is_down_is_a_one_line_error_exit_unreachable(tmp_path: Path) -> None:
    config = _room_file(tmp_path, roles=["send", "query"])  # a port nothing listens on
    done = subprocess.run([sys.executable, "-m", "daemon.igrtctl", "dicom", "find", "--config",
                           str(config), "--patient", PATIENT, "--timeout", "2"],
                          check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 4
    assert done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("igrtctl dicom: cannot connect to PACS PACS at 127.0.0.1:")


def test_no_query_peer_configured_is_a_usage_error_saying_so(tmp_path: Path) -> None:
    code, out, err = _igrtctl(_room_file(tmp_path, roles=["send"]), "find", "--patient", PATIENT)
    assert (code, out) == (2, "")
    assert err == ("igrtctl dicom: no PACS configured: no peer in the dicom section has role "
                   "query (docs/dicom.md, Query/retrieve from a PACS)\n")


def test_a_wildcard_patient_id_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    code, _, err = _igrtctl(_room_file(tmp_path, roles=["send", "query"]), "find",
                            "--patient", "PAT*")
    assert code == 2
    assert "a wildcard could match another patient" in err


def test_a_query_peer_without_send_is_refused_in_the_config_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="role query needs role send too"):
        DicomConfig.model_validate({"peers": [{"ae_title": "PACS", "host": "10.0.0.7",
                                               "port": 104, "roles": ["query"]}]})


# --------------------------------------------------- a PACS that answers wrong
@contextlib.contextmanager
def lying_pacs(answer: Dataset) -> Iterator[int]:
    """A Query/Retrieve SCP answering every C-FIND with `answer`."""
    def on_find(event: Event) -> Iterator[tuple[int, Dataset | None]]:
        yield 0xFF00, answer

    ae = ScpAE(ae_title="PACS")
    ae.add_supported_context(PATIENT_ROOT_FIND)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False,
                             evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        yield port
    finally:
        server.shutdown()


def _study_answer(patient: str, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = patient
    ds.StudyInstanceUID = study_uid
    return ds


def test_a_pacs_answering_with_another_patient_is_refused(tmp_path: Path) -> None:
    with lying_pacs(_study_answer("SOMEONE-ELSE", generate_uid())) as port:
        code, out, err = _igrtctl(_room_file(tmp_path, roles=["send", "query"], port=port),
                                  "find", "--patient", PATIENT, "--level", "study")
    assert (code, out) == (1, "")
    assert err == (f"igrtctl dicom: PACS PACS answered a query for patient {PATIENT!r} with "
                   "PatientID 'SOMEONE-ELSE'; igrt uses exact matches only\n")


# pydicom warns of the malformed UID as the lying PACS encodes it: that is the test
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_pacs_answering_a_malformed_uid_is_refused_in_one_line(tmp_path: Path) -> None:
    with lying_pacs(_study_answer(PATIENT, "1.2.03.x")) as port:
        code, _, err = _igrtctl(_room_file(tmp_path, roles=["send", "query"], port=port),
                                "find", "--patient", PATIENT, "--level", "study")
    assert code == 1
    assert len(err.splitlines()) == 1
    assert err.startswith("igrtctl dicom: the PACS answered an unusable study-level match: "
                          "StudyInstanceUID '1.2.03.x'")


def test_the_plans_structure_set_comes_with_it_and_says_which_ct_to_retrieve(
        clinic: Clinic) -> None:
    code, _, err = _igrtctl(clinic.config, "retrieve", "--patient", STRUCTURES_PATIENT,
                            "--plan", str(clinic.drawn_plan.SOPInstanceUID),
                            "--with-planning-ct")
    assert (code, err) == (0, "")
    archive = DicomArchive(clinic.svc.storage, read_only=True)
    try:
        stored = {s.series_uid: s.modality for s in archive.series(STRUCTURES_PATIENT)}
    finally:
        archive.close()
    assert stored.get(str(clinic.drawn_structures.SeriesInstanceUID)) == "RTSTRUCT"
    drawn_on, other_phase = clinic.drawn_cts
    assert stored.get(drawn_on) == "CT" and other_phase not in stored


def _findscu(clinic: Clinic, *keys: str) -> subprocess.CompletedProcess[str]:
    import shutil

    exe = shutil.which("findscu")
    assert exe is not None, "findscu (Debian dcmtk) is not installed: run make setup"
    args = [exe, "-v", "-P", "-aet", AE, "-aec", ORTHANC_AET, "127.0.0.1",
            str(clinic.pacs.dicom_port)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_find_lists_the_series_a_third_party_client_finds(clinic: Clinic) -> None:
    """dcmtk's findscu asks the same PACS the same question: the same series."""
    import re

    done = _findscu(clinic, "QueryRetrieveLevel=SERIES", f"PatientID={PATIENT}",
                    f"StudyInstanceUID={clinic.planning_ct[0].StudyInstanceUID}",
                    "SeriesInstanceUID", "Modality")
    assert done.returncode == 0, done.stderr[-300:]
    # a UID of odd length is shown with its NUL padding: "[1.2.3\x00]"
    theirs = set(re.findall(r"\(0020,000e\) UI \[([0-9.]+)\x00?\]", done.stdout + done.stderr))
    code, out, _ = _igrtctl(clinic.config, "find", "--patient", PATIENT, "--json")
    assert code == 0
    ours = {m["series_uid"] for m in json.loads(out)["matches"]
            if m["study_uid"] == str(clinic.planning_ct[0].StudyInstanceUID)}
    assert theirs == ours == {str(clinic.planning_ct[0].SeriesInstanceUID)}


def test_igrt_is_not_a_query_scp_and_says_so_at_negotiation(clinic: Clinic) -> None:
    """findscu pointed at igrt itself: the Query/Retrieve context is not accepted."""
    import shutil

    exe = shutil.which("findscu")
    assert exe is not None
    done = subprocess.run([exe, "-P", "-aet", ORTHANC_AET, "-aec", AE, "127.0.0.1",
                           str(clinic.svc.port), "-k", "QueryRetrieveLevel=PATIENT",
                           "-k", f"PatientID={PATIENT}"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "no acceptable presentation contexts" in (done.stdout + done.stderr).lower()
