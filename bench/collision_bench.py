"""How long a full collision path check of a couch move takes (issue 17; goal: p99 < 1 ms).

`collision_check_*`: typical corrections (each translation up to 20 mm in
total length, each rotation up to 3 deg) from random couch poses near the
isocentre, at random gantry angles, arms parked, the default patient box,
margin 50 mm, the default motion model (every axis anywhere between its start
and end: `CouchMotion.PER_AXIS`). `collision_check_long_move_*`: 300 mm moves
in a random direction, same conditions. `collision_check_linear_*`: the same
moves checked along the straight line only (`CouchMotion.LINEAR`).
`collision_gate_check_*`: the typical moves with igrtd's MotionGate budget
(GATE_SAMPLES samples, then refused as not proven). `collision_clearance_one_pose_*`:
the clearance at one pose, what supervision computes for each couch status in motion. Always
>= 1,000 samples each, also in the short run (docs/collision.md has figures).
"""

from __future__ import annotations

import math
import random
import time

from bench.stats import samples, tail_figures
from daemon.collision_guard import GATE_SAMPLES
from safety.collision import DEFAULT_MAX_SAMPLES, CouchMotion, RoomState, check_path, clearance
from safety.collision_config import PatientEnvelope
from safety.collision_model import Arms
from safety.collision_scene import CollisionModel
from safety.pose import Pose

TYPICAL = samples(2000, 5000)
LONG_MOVES = samples(1000, 2000)
MARGIN_MM = 50.0


def _direction(rng: random.Random) -> tuple[float, float, float]:
    while True:
        v = (rng.gauss(0, 1), rng.gauss(0, 1), rng.gauss(0, 1))
        n = math.sqrt(sum(c * c for c in v))
        if n > 1e-6:
            return (v[0] / n, v[1] / n, v[2] / n)


def _start(rng: random.Random) -> Pose:
    return Pose(rng.uniform(-30, 30), rng.uniform(-100, 100), rng.uniform(-50, 50),
                rng.uniform(-10, 10), rng.uniform(-1, 1), rng.uniform(-1, 1))


def _move(rng: random.Random, length_mm: float, max_deg: float) -> tuple[Pose, Pose, float]:
    start = _start(rng)
    d = _direction(rng)
    end = Pose(start.lat + length_mm * d[0], start.long + length_mm * d[1],
               start.vert + length_mm * d[2],
               start.yaw + rng.uniform(-max_deg, max_deg),
               start.pitch + rng.uniform(-max_deg, max_deg),
               start.roll + rng.uniform(-max_deg, max_deg))
    return start, end, rng.uniform(0.0, 359.99)


def _time(moves: list[tuple[Pose, Pose, float]], model: CollisionModel,
          motion: CouchMotion, max_samples: int = DEFAULT_MAX_SAMPLES) -> list[float]:
    patient, arms = PatientEnvelope(), Arms.parked()
    for start, end, gantry in moves[:100]:  # warm up: imports, caches, FCL
        check_path(start, end, gantry, arms, patient, MARGIN_MM, model=model, motion=motion,
                   max_samples=max_samples)
    clock = time.perf_counter_ns
    out: list[float] = []
    for start, end, gantry in moves:
        t0 = clock()
        check_path(start, end, gantry, arms, patient, MARGIN_MM, model=model, motion=motion,
                   max_samples=max_samples)
        out.append((clock() - t0) / 1000.0)
    return out


def _time_clearance(moves: list[tuple[Pose, Pose, float]], model: CollisionModel) -> list[float]:
    """One pose: what supervision computes for every couch status during a move."""
    patient, arms = PatientEnvelope(), Arms.parked()
    clock = time.perf_counter_ns
    out: list[float] = []
    for start, _end, gantry in moves:
        t0 = clock()
        clearance(RoomState(start, gantry, arms, patient), model)
        out.append((clock() - t0) / 1000.0)
    return out


def run() -> dict[str, float]:
    rng = random.Random(17)
    model = CollisionModel.default()
    typical = [_move(rng, rng.uniform(0.0, 20.0), 3.0) for _ in range(TYPICAL)]
    long_moves = [_move(rng, 300.0, 3.0) for _ in range(LONG_MOVES)]
    per_axis, linear = CouchMotion.PER_AXIS, CouchMotion.LINEAR
    figures = tail_figures("collision_check", "us", _time(typical, model, per_axis))
    figures.update(tail_figures("collision_check_long_move", "us",
                                _time(long_moves, model, per_axis)))
    # The straight-line path shape, for a controller that moves all axes in step.
    figures.update(tail_figures("collision_check_linear", "us", _time(typical, model, linear)))
    figures.update(tail_figures("collision_check_linear_long_move", "us",
                                _time(long_moves, model, linear)))
    # igrtd's bounded re-check at the MotionGate when the gantry or the arms changed since
    # the proposal (daemon/collision_guard.py GATE_SAMPLES: not proven within them refuses).
    figures.update(tail_figures("collision_gate_check", "us",
                                _time(typical, model, per_axis, GATE_SAMPLES)))
    figures.update(tail_figures("collision_clearance_one_pose", "us",
                                _time_clearance(typical, model)))
    return figures


if __name__ == "__main__":  # pragma: no cover
    print(run())
