"""How long one six-DoF correction plan takes (target: p99 <= 500 us)."""

from __future__ import annotations

import random
import time

import numpy as np

from bench.stats import tail_figures
from safety.correction import plan_correction
from safety.couch_model import CouchModel
from safety.geometry import PatientPosition, rotation_from_angles
from safety.policy import VerdictPolicy
from safety.pose import Pose

ITERATIONS = 5000


def _random_inputs(rng: random.Random) -> tuple[np.ndarray, tuple[float, float, float], str, Pose]:
    t = np.eye(4)
    t[:3, :3] = rotation_from_angles(*(rng.uniform(-3, 3) for _ in range(3)))
    t[:3, 3] = [rng.uniform(-10, 10) for _ in range(3)]
    iso = (rng.uniform(-100, 100), rng.uniform(-100, 100), rng.uniform(-100, 100))
    position = rng.choice(list(PatientPosition)).value
    p_img = Pose(rng.uniform(-200, 200), rng.uniform(-500, 500), rng.uniform(-300, 100),
                 rng.uniform(-90, 90), rng.uniform(-2, 2), rng.uniform(-2, 2))
    return t, iso, position, p_img


def run() -> dict[str, float]:
    rng = random.Random(61217)
    model = CouchModel.default()
    policy = VerdictPolicy()
    inputs = [_random_inputs(rng) for _ in range(ITERATIONS)]
    for t, iso, pos, p_img in inputs[:200]:  # warm up caches and imports
        plan_correction(t, iso, pos, p_img, model, policy)
    times: list[float] = []
    clock = time.perf_counter_ns
    for t, iso, pos, p_img in inputs:
        start = clock()
        plan_correction(t, iso, pos, p_img, model, policy)
        times.append((clock() - start) / 1000.0)
    return tail_figures("plan", "us", times)


if __name__ == "__main__":  # pragma: no cover
    print(run())
