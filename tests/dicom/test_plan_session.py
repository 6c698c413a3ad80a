"""A session's set-up from the stored plan and planning CT (daemon/plan_source.py):
everything the archive holds must agree, or the session is refused naming what
disagrees."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import FileDataset
from pydicom.uid import generate_uid

from daemon.dicom_archive import DicomArchive
from daemon.plan_source import MIN_REGION_HALF_MM, PlanRefused, plan_session
from imaging.dicom_instances import check_instance

from .builders import PATIENT, ct_series, part10, rt_plan, rt_structures

ISO = (3.0, 4.0, 5.0)
FRAME = "1.2.826.0.1.3680043.8.498.77"

Store = Callable[..., None]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    archive = DicomArchive(tmp_path)

    def keep(*datasets: FileDataset) -> None:
        for ds in datasets:
            archive.keep(check_instance(ds, str(ds.SOPClassUID)), part10(ds), "TPS")
    return keep


def _plan(**kw: object) -> FileDataset:
    return rt_plan(**{"isocentre": ISO, "frame": FRAME, **kw})  # type: ignore[arg-type]


def test_a_stored_plan_and_its_ct_give_the_session_set_up(tmp_path: Path, store: Store) -> None:
    ct = ct_series(frame=FRAME)
    plan = _plan()
    store(*ct, plan)
    got = plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)
    assert (got.setup.isocentre, got.setup.patient_position,
            got.setup.frame_of_reference_uid) == (ISO, "HFS", FRAME)
    assert got.planning_ct_series_uid == ct[0].SeriesInstanceUID
    assert sorted(p.name for p in got.planning_ct_dir.iterdir()) == \
        sorted(f"{s.SOPInstanceUID}.dcm" for s in ct)


def test_a_plan_igrt_does_not_hold_is_refused_saying_how_to_retrieve_it(
        tmp_path: Path, store: Store) -> None:
    store(*ct_series(frame=FRAME))
    with pytest.raises(PlanRefused, match="not in igrt's DICOM archive.*igrtctl dicom retrieve "
                                          f"--patient {PATIENT} --plan 1.2.3.4"):
        plan_session(tmp_path, PATIENT, "1.2.3.4")


def test_another_patients_plan_is_refused(tmp_path: Path, store: Store) -> None:
    plan = _plan(patient="PAT-999")
    store(plan)
    with pytest.raises(PlanRefused, match=f"is for patient 'PAT-999', not '{PATIENT}'"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_a_uid_that_is_not_a_plan_is_refused(tmp_path: Path, store: Store) -> None:
    ct = ct_series(frame=FRAME)
    store(*ct)
    with pytest.raises(PlanRefused, match="is a CT instance, not an RT Plan"):
        plan_session(tmp_path, PATIENT, ct[0].SOPInstanceUID)


def test_a_plan_whose_frame_has_no_ct_is_refused(tmp_path: Path, store: Store) -> None:
    plan = _plan()
    store(*ct_series(frame=generate_uid()), plan)
    with pytest.raises(PlanRefused, match=f"no planning CT of patient '{PATIENT}' in frame of "
                                          f"reference {FRAME}"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_two_cts_in_the_plans_frame_without_a_structure_set_are_refused(
        tmp_path: Path, store: Store) -> None:
    plan = _plan()
    store(*ct_series(frame=FRAME), *ct_series(frame=FRAME), plan)
    with pytest.raises(PlanRefused, match="2 CT series .* does not say which"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_the_structure_set_says_which_ct_the_plan_was_made_on(
        tmp_path: Path, store: Store) -> None:
    chosen, other = ct_series(frame=FRAME), ct_series(frame=FRAME)
    structures = rt_structures(frame=FRAME, ct_series=chosen[0].SeriesInstanceUID)
    plan = _plan(structure_set=structures.SOPInstanceUID)
    store(*other, *chosen, structures, plan)
    got = plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)
    assert got.planning_ct_series_uid == chosen[0].SeriesInstanceUID


def test_a_structure_set_drawn_on_a_ct_igrt_does_not_hold_is_refused(
        tmp_path: Path, store: Store) -> None:
    structures = rt_structures(frame=FRAME, ct_series="1.2.3.999")
    plan = _plan(structure_set=structures.SOPInstanceUID)
    store(*ct_series(frame=FRAME), structures, plan)
    with pytest.raises(PlanRefused, match="drawn on CT series 1.2.3.999, which igrt does not "
                                          "hold"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_another_patients_images_in_the_plans_frame_are_refused(
        tmp_path: Path, store: Store) -> None:
    plan = _plan()
    store(*ct_series(frame=FRAME), *ct_series(frame=FRAME, patient="PAT-999"), plan)
    with pytest.raises(PlanRefused, match="also used by series of patient.s. 'PAT-999'"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_a_planning_ct_with_a_missing_slice_is_refused(tmp_path: Path, store: Store) -> None:
    ct = ct_series(frame=FRAME)
    plan = _plan()
    store(*ct[:3], *ct[4:], plan)
    with pytest.raises(PlanRefused, match="is not usable: .*1 slice.s. missing"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_a_ct_acquired_in_another_position_than_the_plans_is_refused(
        tmp_path: Path, store: Store) -> None:
    plan = _plan()
    store(*ct_series(frame=FRAME, position="FFS"), plan)
    with pytest.raises(PlanRefused, match="sets the patient up HFS, its planning CT .* was "
                                          "acquired FFS"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_an_isocentre_outside_the_planning_ct_is_refused(tmp_path: Path, store: Store) -> None:
    plan = _plan(isocentre=(3.0, 4.0, 80.0))
    store(*ct_series(frame=FRAME), plan)
    with pytest.raises(PlanRefused, match=r"isocentre \[3.0, 4.0, 80.0\] mm lies outside"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)


def test_several_isocentres_need_a_chosen_beam(tmp_path: Path, store: Store) -> None:
    plan = _plan(beams=[(1, "UPPER", ISO, 1), (2, "LOWER", (3.0, 4.0, 10.0), 1)])
    store(*ct_series(frame=FRAME), plan)
    with pytest.raises(PlanRefused, match="2 isocentres"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID)
    assert plan_session(tmp_path, PATIENT, plan.SOPInstanceUID, "LOWER").setup.isocentre == \
        (3.0, 4.0, 10.0)


def test_no_archive_is_a_one_line_refusal(tmp_path: Path) -> None:
    with pytest.raises(PlanRefused, match="no plan can be read: no DICOM archive in"):
        plan_session(tmp_path / "nothing", PATIENT, "1.2.3")


def test_the_rooms_target_structure_gives_the_registration_region(
        tmp_path: Path, store: Store) -> None:
    ct = ct_series(frame=FRAME)
    structures = rt_structures(frame=FRAME, ct_series=ct[0].SeriesInstanceUID,
                               ptv=[(2.0, 2.0, 2.5), (6.0, 6.0, 7.5)])
    plan = _plan(structure_set=structures.SOPInstanceUID)
    store(*ct, structures, plan)
    region = plan_session(tmp_path, PATIENT, plan.SOPInstanceUID, structure="PTV",
                          margin_mm=10.0).region
    assert region is not None and region.centre == (4.0, 4.0, 5.0)
    # 2.5 mm half extent + 10 mm margin, raised to the registration's smallest cube
    assert region.half_mm == MIN_REGION_HALF_MM


def test_a_target_structure_named_by_the_room_but_not_held_is_refused(
        tmp_path: Path, store: Store) -> None:
    plan = _plan()
    store(*ct_series(frame=FRAME), plan)
    with pytest.raises(PlanRefused, match="registers on structure 'PTV', and no structure set"):
        plan_session(tmp_path, PATIENT, plan.SOPInstanceUID, structure="PTV")
