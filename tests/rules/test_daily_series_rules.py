"""Which stored series igrtd takes as the open session's daily image (daemon/daily_series.py:judge)."""

from __future__ import annotations

from dataclasses import replace

from daemon.daily_series import judge, not_of_this_pose
from daemon.dicom_archive import SeriesSummary
from daemon.proposals import TreatmentSession

OPENED = 1000.0
SESSION = TreatmentSession("P", "1.2.1", "1.2.100", (0.0, 0.0, 0.0), "HFS", "alice", OPENED,
                           source="plan", planning_ct_series_uid="1.2.50",
                           planning_ct_dir="/ct")
DAILY = SeriesSummary("1.2.60", "CT", "P", "1.2.7", "1.2.200", 40, OPENED + 5, OPENED + 9)
QUIET = 2.0


def test_a_quiet_series_of_the_patient_in_another_frame_is_registered() -> None:
    assert judge(DAILY, SESSION, OPENED + 12, QUIET).what == "register"  # type: ignore[union-attr]


def test_a_series_still_arriving_is_waited_for() -> None:
    assert judge(DAILY, SESSION, OPENED + 10, QUIET).what == "wait"  # type: ignore[union-attr]


def test_a_series_stored_before_the_session_opened_is_not_a_daily_image() -> None:
    assert judge(replace(DAILY, first_received_at=OPENED - 1), SESSION, OPENED + 12, QUIET) is None


def test_the_planning_ct_and_other_modalities_are_not_daily_images() -> None:
    assert judge(replace(DAILY, series_uid="1.2.50"), SESSION, OPENED + 12, QUIET) is None
    assert judge(replace(DAILY, modality="RTPLAN"), SESSION, OPENED + 12, QUIET) is None


def test_another_patients_series_is_ignored_with_the_reason() -> None:
    got = judge(replace(DAILY, patient_id="Q"), SESSION, OPENED + 12, QUIET)
    assert got is not None and got.what == "ignore" and "patient 'Q'" in got.reason


def test_a_series_in_the_plans_frame_is_ignored_as_a_planning_image() -> None:
    got = judge(replace(DAILY, frame_of_reference_uid="1.2.100"), SESSION, OPENED + 12, QUIET)
    assert got is not None and got.what == "ignore" and "planning image" in got.reason


def test_a_series_whose_association_was_released_is_not_waited_for() -> None:
    sent = replace(DAILY, sent_at=OPENED + 9.1)
    assert judge(sent, SESSION, OPENED + 9.2, QUIET).what == "register"  # type: ignore[union-attr]


def test_a_slice_after_the_release_makes_the_series_wait_again() -> None:
    more = replace(DAILY, sent_at=OPENED + 8, last_received_at=OPENED + 9)
    assert judge(more, SESSION, OPENED + 9.2, QUIET).what == "wait"  # type: ignore[union-attr]


def test_an_image_acquired_before_the_couch_last_moved_is_not_of_its_pose() -> None:
    why = not_of_this_pose(OPENED + 10, OPENED + 30, moving=False, moved_at=OPENED + 20)
    assert "the couch moved" in why and "re-image" in why


def test_an_image_acquired_after_the_last_move_is_of_its_pose() -> None:
    assert not_of_this_pose(OPENED + 21, OPENED + 30, moving=False, moved_at=OPENED + 20) == ""


def test_a_move_ending_in_the_second_the_acquisition_began_is_refused() -> None:
    # acquisition times are whole seconds, floored: 10.0 may mean 10.9
    assert not_of_this_pose(OPENED + 10, OPENED + 30, moving=False, moved_at=OPENED + 10.4)


def test_an_image_while_the_couch_moves_is_refused() -> None:
    assert "moving" in not_of_this_pose(OPENED + 25, OPENED + 30, moving=True,
                                        moved_at=OPENED + 20)


def test_an_image_without_an_acquisition_time_is_refused() -> None:
    assert "no acquisition date and time" in not_of_this_pose(None, OPENED, moving=False,
                                                              moved_at=0.0)


def test_an_image_from_a_clock_far_ahead_is_refused() -> None:
    assert "in the future" in not_of_this_pose(OPENED + 600, OPENED, moving=False, moved_at=0.0)


def test_igrtd_never_proposes_by_itself_over_a_persons_confirmation() -> None:
    from daemon.daily_series import AUTO_PROPOSABLE
    from daemon.workflow import RoomState

    assert RoomState.CONFIRMED not in AUTO_PROPOSABLE
    assert RoomState.AWAITING_APPROVAL not in AUTO_PROPOSABLE
    assert {RoomState.READY, RoomState.PROPOSED, RoomState.DONE} <= AUTO_PROPOSABLE
