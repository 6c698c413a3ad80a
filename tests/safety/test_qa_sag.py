"""Couch sag fit (safety.qa_sag): recovers the model, predicts held-out points, refuses
points that cannot determine it, and is the simulator's model term for term."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from safety.qa_sag import SagModel, SagPoint, fit_sag
from sim.room_imperfections import Sag

TRUE = SagModel(a=1.6, b=0.9, c=0.06, d=0.035)
EXTENSIONS = (0.0, 200.0, 400.0, 600.0)
LOADS = (0.0, 80.0, 150.0)


def measured(model: SagModel, extensions=EXTENSIONS, loads=LOADS, noise_mm=0.0,
             noise_deg=0.0, seed=0) -> list[SagPoint]:
    rng = np.random.default_rng(seed)
    out = []
    for load in loads:
        for ext in extensions:
            v, p = model.predict(ext, load)
            out.append(SagPoint(ext, load, v + rng.normal(0, noise_mm) if noise_mm else v,
                                p + rng.normal(0, noise_deg) if noise_deg else p))
    return out


def test_noise_free_points_give_the_parameters_back() -> None:
    fit = fit_sag(measured(TRUE))
    assert (fit.a, fit.b, fit.c, fit.d) == pytest.approx((1.6, 0.9, 0.06, 0.035), abs=1e-12)
    assert fit.rms_mm == pytest.approx(0.0, abs=1e-12)
    assert fit.rms_deg == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_with_noise_a_held_out_extension_is_predicted_within_0_2_mm(seed: int) -> None:
    fit = fit_sag(measured(TRUE, noise_mm=0.05, noise_deg=0.005, seed=seed))
    assert fit.rms_mm == pytest.approx(0.05, abs=0.03)
    for ext, load in ((500.0, 120.0), (700.0, 150.0), (300.0, 40.0)):
        v, p = fit.predict(ext, load)
        tv, tp = TRUE.predict(ext, load)
        assert abs(v - tv) < 0.2, (ext, load)
        assert abs(p - tp) < 0.02, (ext, load)


def test_the_model_is_the_simulators_term_for_term() -> None:
    sim = Sag(mm_per_m=1.6, mm_per_m_per_100kg=0.9, deg_per_m=0.06, deg_per_m_per_100kg=0.035)
    assert Sag(**TRUE.as_imperfection()) == sim
    for ext, load in ((0.0, 0.0), (600.0, 150.0), (-250.0, 80.0), (123.4, 56.7)):
        assert TRUE.predict(ext, load) == sim.at(ext, load)


def test_prediction_is_linear_and_signed_in_extension() -> None:
    assert TRUE.predict(0.0, 150.0) == (0.0, 0.0)
    v, p = TRUE.predict(-500.0, 0.0)
    assert v == pytest.approx(-0.8) and p == pytest.approx(-0.03)


@pytest.mark.parametrize(("points", "message"), [
    ([SagPoint(200, 0, 0.3, 0.01), SagPoint(400, 80, 0.9, 0.03)],
     "a sag fit needs at least 3 points, got 2"),
    ([SagPoint(400, load, 0.6, 0.02) for load in (0, 80, 150)] + [SagPoint(0, 0, 0, 0)],
     "a sag fit needs points at two or more different non-zero extensions (found: 400 mm)"),
    ([SagPoint(0, load, 0.0, 0.0) for load in (0, 80, 150)],
     "a sag fit needs points at two or more different non-zero extensions (found: none mm)"),
    ([SagPoint(ext, 80, 0.3, 0.01) for ext in (0, 200, 400, 600)],
     "a sag fit needs two or more different loads at non-zero extensions (found only 80 kg)"),
    ([SagPoint(ext, 80, 0.3, 0.01) for ext in (200, 400)] + [SagPoint(0, 150, 0.0, 0.0)],
     "a sag fit needs two or more different loads at non-zero extensions (found only 80 kg)"),
])
def test_too_few_or_degenerate_points_are_refused_in_one_line(points, message) -> None:
    with pytest.raises(ValueError) as exc:
        fit_sag(points)
    assert str(exc.value).startswith(message)
    assert "\n" not in str(exc.value)


def test_loads_or_extensions_closer_than_their_resolution_do_not_count_as_different() -> None:
    pts = [SagPoint(200, 80, 0.3, 0.01), SagPoint(400, 80.5, 0.6, 0.02),
           SagPoint(600, 80, 0.9, 0.03)]
    with pytest.raises(ValueError, match=r"found only 80 kg"):
        fit_sag(pts)
    pts = [SagPoint(400, 0, 0.3, 0.01), SagPoint(400.5, 80, 0.6, 0.02),
           SagPoint(0, 150, 0.0, 0.0)]
    with pytest.raises(ValueError, match=r"found: 400 mm"):
        fit_sag(pts)


@pytest.mark.parametrize(("build", "message"), [
    (lambda: SagPoint(float("nan"), 0, 0, 0), "extension_mm is not a finite number: nan mm"),
    (lambda: SagPoint(200, math.inf, 0, 0), "load_kg is not a finite number: inf kg"),
    (lambda: SagPoint(200, -5, 0, 0), "load_kg -5 kg must not be negative (limit 0 kg)"),
    (lambda: SagPoint(200, 0, 0, float("-inf")), "pitch_deg is not a finite number: -inf deg"),
    (lambda: SagModel(float("nan"), 0, 0, 0), "sag a is not a finite number: nan mm/m"),
    (lambda: TRUE.predict(100.0, -1.0), "load -1 kg must not be negative"),
    (lambda: TRUE.predict(float("inf"), 0.0), "extension is not a finite number: inf mm"),
])
def test_non_finite_and_negative_numbers_are_refused_naming_field_value_unit(
        build, message) -> None:
    with pytest.raises(ValueError) as exc:
        build()
    assert str(exc.value).startswith(message)


def test_json_round_trip() -> None:
    fit = fit_sag(measured(TRUE, noise_mm=0.05, noise_deg=0.005))
    d = json.loads(json.dumps(fit.to_json(), allow_nan=False))
    assert set(d) == {"a", "b", "c", "d", "rms_mm", "rms_deg"}
    again = SagModel.from_json(d)
    assert again.predict(450.0, 90.0) == pytest.approx(fit.predict(450.0, 90.0), abs=1e-8)
    p = SagPoint.from_json({"extension_mm": 200, "load_kg": 80, "vert_sag_mm": 0.4,
                            "pitch_deg": 0.01})
    assert p == SagPoint(200.0, 80.0, 0.4, 0.01)
    with pytest.raises(ValueError, match="sag model is missing d"):
        SagModel.from_json({"a": 1, "b": 1, "c": 1})
