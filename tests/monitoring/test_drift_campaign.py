"""Randomized drift campaign: 200 scenarios with a fixed seed, estimator on synthetic kV frames.

Each scenario is a random site policy (tolerance 2/3/5 mm, debounce 0.15-0.5 s,
frame rate 5-15 Hz) and a random beam-on period: breathing and drift clearly
inside tolerance, excursions clearly beyond it (long, short, slow ramps) and
marker dropouts. The monitor, the marker tracker and the images are the real
ones; time is simulated so the campaign runs faster than real time (the PLC
path is covered in test_monitor_plc.py, the latency in bench/monitor_bench.py).
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sim.intrafraction import (
    COMPACT_PAIR,
    MARKERS_MM,
    KvFrameRenderer,
    RunResult,
    make_tracker,
    random_scenario,
    run_virtual,
)

SEED = 20240808
SCENARIOS = 200
MARGIN_MM = 0.5


async def _run_campaign() -> list[RunResult]:
    rng = np.random.default_rng(SEED)
    renderer = KvFrameRenderer(COMPACT_PAIR, MARKERS_MM, SEED)
    tracker = make_tracker(COMPACT_PAIR)
    results = []
    for i in range(SCENARIOS):
        scenario, policy = random_scenario(rng, MARGIN_MM)
        results.append(await run_virtual(scenario, policy, seed=i, renderer=renderer,
                                         tracker=tracker, margin_mm=MARGIN_MM))
    return results


@pytest.fixture(scope="module")
def campaign() -> list[RunResult]:
    return asyncio.run(_run_campaign())


def test_campaign_exercises_holds_short_excursions_and_dropouts(
    campaign: list[RunResult]
) -> None:
    required = sum(r.check.must_hold for r in campaign)
    shorts = sum(1 for r in campaign for e in r.scenario.excursions
                 if e.ramp_s == 0 and e.duration_s < r.policy.debounce_s - r.scenario.frame_period_s)
    dropouts = sum(len(r.scenario.dropouts) for r in campaign)
    assert len(campaign) >= 200
    assert required >= 150 and shorts >= 50 and dropouts >= 30


def test_no_hold_is_ever_missed(campaign: list[RunResult]) -> None:
    missed = [f"scenario {i}: {m}" for i, r in enumerate(campaign) for m in r.check.missed]
    assert missed == []


def test_excursions_shorter_than_the_debounce_never_hold(campaign: list[RunResult]) -> None:
    spurious = [f"scenario {i}: {m}" for i, r in enumerate(campaign) for m in r.check.spurious]
    assert spurious == []


def test_stale_image_holds_happen_only_when_the_marker_was_not_seen(
    campaign: list[RunResult]
) -> None:
    unexplained = [f"scenario {i}: {m}" for i, r in enumerate(campaign)
                   for m in r.check.unexplained_stale]
    assert unexplained == []


def test_estimate_error_stays_inside_the_noise_margin_the_campaign_assumes(
    campaign: list[RunResult]
) -> None:
    worst = 0.0
    for r in campaign:
        truth = {f.frame_id: f for f in r.truth}
        for rec in r.records:
            if rec.deviation_mm is not None:
                err = np.subtract(rec.deviation_mm, truth[rec.frame_id].displacement_mm)
                worst = max(worst, float(np.linalg.norm(err)))
    assert worst < MARGIN_MM


def test_every_visible_marker_gives_an_estimate(campaign: list[RunResult]) -> None:
    lost = sum(1 for r in campaign for rec, f in zip(r.records, r.truth)
               if f.marker_visible and rec.deviation_mm is None)
    hidden_found = sum(1 for r in campaign for rec, f in zip(r.records, r.truth)
                       if not f.marker_visible and rec.deviation_mm is not None)
    assert (lost, hidden_found) == (0, 0)
