"""What a session takes from an RT Plan (imaging/dicom_plan.py): one isocentre,
one patient position, one frame of reference, or a refusal saying which the
plan does not decide."""

from __future__ import annotations

import pytest

from imaging.dicom_plan import PlanProblem, plan_setup, structure_region

from .builders import rt_plan, rt_structures

ISO = (3.0, 4.0, 5.0)
OTHER = (40.0, 4.0, 5.0)


def test_a_single_isocentre_plan_gives_its_isocentre_position_and_frame() -> None:
    ds = rt_plan(isocentre=ISO, setups={1: "FFS"}, frame="1.2.3")
    setup = plan_setup(ds)
    assert (setup.isocentre, setup.patient_position, setup.frame_of_reference_uid) == \
        (ISO, "FFS", "1.2.3")
    assert setup.plan_uid == ds.SOPInstanceUID


def test_beams_sharing_an_isocentre_are_one_isocentre() -> None:
    ds = rt_plan(beams=[(1, "AP", ISO, 1), (2, "LAT", (3.0, 4.0, 5.004), 1)])
    assert [b.number for b in plan_setup(ds).beams] == [1, 2]


def test_several_isocentres_without_a_chosen_beam_are_refused_listing_them() -> None:
    ds = rt_plan(beams=[(1, "BRAIN", ISO, 1), (2, "SPINE", OTHER, 1)])
    with pytest.raises(PlanProblem, match=r"2 isocentres: \[3.0, 4.0, 5.0\] mm \(beam 1 "
                                          r"'BRAIN'\); \[40.0, 4.0, 5.0\] mm \(beam 2 'SPINE'\)"):
        plan_setup(ds)


@pytest.mark.parametrize("beam", ["2", "SPINE"])
def test_a_beam_chosen_by_number_or_name_gives_its_isocentre(beam: str) -> None:
    ds = rt_plan(beams=[(1, "BRAIN", ISO, 1), (2, "SPINE", OTHER, 1)])
    assert plan_setup(ds, beam).isocentre == OTHER


def test_a_beam_the_plan_does_not_have_is_refused() -> None:
    ds = rt_plan(beams=[(1, "BRAIN", ISO, 1)])
    with pytest.raises(PlanProblem, match="no beam 'PELVIS' .it has beam 1 'BRAIN'"):
        plan_setup(ds, "PELVIS")


def test_beams_at_one_isocentre_with_different_positions_are_refused() -> None:
    ds = rt_plan(beams=[(1, "AP", ISO, 1), (2, "PA", ISO, 2)], setups={1: "HFS", 2: "HFP"})
    with pytest.raises(PlanProblem, match="different patient positions: HFS .beam 1 'AP'.; "
                                          "HFP .beam 2 'PA'."):
        plan_setup(ds)


def test_a_beam_naming_a_setup_the_plan_lacks_is_refused() -> None:
    ds = rt_plan(beams=[(1, "AP", ISO, 7)])
    with pytest.raises(PlanProblem, match="patient setup 7, which the plan does not have"):
        plan_setup(ds)


def test_a_plan_without_a_patient_position_is_refused() -> None:
    ds = rt_plan(isocentre=ISO)
    del ds.PatientSetupSequence
    with pytest.raises(PlanProblem, match="no patient position"):
        plan_setup(ds)


def test_a_plan_without_a_frame_of_reference_is_refused() -> None:
    ds = rt_plan(isocentre=ISO)
    del ds.FrameOfReferenceUID
    with pytest.raises(PlanProblem, match="no FrameOfReferenceUID"):
        plan_setup(ds)


def test_a_plan_without_beams_is_refused() -> None:
    ds = rt_plan(isocentre=ISO)
    ds.BeamSequence = []
    with pytest.raises(PlanProblem, match="no beams"):
        plan_setup(ds)


def test_the_referenced_structure_set_is_reported() -> None:
    assert plan_setup(rt_plan(isocentre=ISO, structure_set="1.2.9")).structure_set_uids == \
        ("1.2.9",)


def test_a_target_structure_gives_a_cube_about_its_box_plus_the_margin() -> None:
    ss = rt_structures(ptv=[(0.0, 0.0, 0.0), (10.0, 4.0, 0.0), (10.0, 4.0, 6.0)])
    region = structure_region(ss, "PTV", 15.0)
    assert (region.centre, region.half_mm) == ((5.0, 2.0, 3.0), 20.0)


def test_a_target_structure_the_set_does_not_have_is_refused_naming_those_it_has() -> None:
    with pytest.raises(PlanProblem, match="no ROI 'GTV' .it has 'PTV'"):
        structure_region(rt_structures(ptv=[(0.0, 0.0, 0.0)]), "GTV", 10.0)


def test_a_target_structure_without_contour_points_is_refused() -> None:
    with pytest.raises(PlanProblem, match="ROI 'PTV' has no contour points"):
        structure_region(rt_structures(), "PTV", 10.0)


def test_a_small_target_structures_cube_is_raised_to_the_smallest_allowed() -> None:
    ss = rt_structures(ptv=[(0.0, 0.0, 0.0), (10.0, 4.0, 6.0)])
    assert structure_region(ss, "PTV", 15.0, min_half_mm=60.0).half_mm == 60.0
