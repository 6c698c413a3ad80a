"""4D CBCT: per-phase target positions, amplitude and time-weighted mean."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.fourd import correction_matrix, register_4d
from sim.breathing import TUMOUR_CENTRE_MM, BreathingTrace, acquire_4d_cbct, breathing_phantom
from sim.imager import planning_ct, setup_placement


@pytest.fixture(scope="module")
def four_d():  # type: ignore[no-untyped-def]
    ct = planning_ct(breathing_phantom((0.0, 0.0, 0.0)), rng=np.random.default_rng(1))
    a = setup_placement(TUMOUR_CENTRE_MM, "HFS", (2.0, -3.0, 1.5))
    phases, truth = acquire_4d_cbct(np.random.default_rng(2), setup_a_4x4=a)
    return ct, phases, truth, register_4d(ct, phases, TUMOUR_CENTRE_MM)


def test_mean_position_is_within_half_a_millimetre_of_the_truth(four_d) -> None:  # type: ignore[no-untyped-def]
    _, _, truth, result = four_d
    err = np.linalg.norm(np.array(result.mean_position_mm) - truth.mean_position_mm)
    assert err <= 0.5


def test_amplitude_is_within_one_millimetre_of_the_truth(four_d) -> None:  # type: ignore[no-untyped-def]
    _, _, truth, result = four_d
    assert np.all(np.abs(np.array(result.amplitude_mm) - truth.amplitude_mm) <= 1.0)
    assert abs(result.principal_amplitude_mm - truth.principal_amplitude_mm) <= 1.0


def test_mean_correction_moves_the_target_to_its_mean_position(four_d) -> None:  # type: ignore[no-untyped-def]
    _, _, _truth, result = four_d
    m = correction_matrix(result, "mean")
    at = (m @ np.append(TUMOUR_CENTRE_MM, 1.0))[:3]
    assert np.allclose(at, result.mean_position_mm, atol=1e-9)


def test_phase_correction_uses_that_phase(four_d) -> None:  # type: ignore[no-untyped-def]
    _, _, _, result = four_d
    m = correction_matrix(result, 5)
    at = (m @ np.append(TUMOUR_CENTRE_MM, 1.0))[:3]
    assert np.allclose(at, result.phases[5].position_mm, atol=1e-9)


def test_unknown_phase_is_refused(four_d) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="no phase 12"):
        correction_matrix(four_d[3], 12)


def test_phase_weights_come_from_the_volumes(four_d) -> None:  # type: ignore[no-untyped-def]
    _, _, truth, result = four_d
    assert np.allclose([p.weight for p in result.phases], truth.weights)


def test_lujan_trace_mean_is_three_eighths_of_the_amplitude() -> None:
    trace = BreathingTrace(amplitude_mm=(0.0, 0.0, -16.0))
    assert trace.time_mean()[2] == pytest.approx(-6.0, abs=1e-3)


def test_one_phase_is_not_a_4d_series(four_d) -> None:  # type: ignore[no-untyped-def]
    ct, phases, _, _ = four_d
    with pytest.raises(ValueError, match="at least 2 phase volumes"):
        register_4d(ct, phases[:1], TUMOUR_CENTRE_MM)
