"""A soak of the collision path check: no allowed move has a pose below the margin.

`make fuzz` runs it with thousands of moves (the `fuzz` profile); `make test` a
few. Moves start anywhere near the isocentre at any gantry angle, with every arm
state and patient shape, both path shapes, with and without the supervision's
slack, and lengths from a small correction to 200 mm, so that many come within
a few millimetres of the margin. Every allowed move is sampled densely (every
corner of its box of poses and random poses inside, or the straight segment)
and no sample may be below the margin or below the bound the check proved.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from safety.collision import CouchMotion, check_path
from safety.collision_config import PatientEnvelope
from safety.collision_model import Arms, ArmState
from safety.collision_scene import CollisionModel
from safety.pose import Pose

from .harness import fuzz_settings

MODEL = CollisionModel.default()
MARGIN = 50.0
PATIENTS = [PatientEnvelope(), PatientEnvelope(arms="up"),
            PatientEnvelope.from_mapping({"body": {"shape": "cylinder"}}), None]
ARMS = [Arms(), Arms.extended(), Arms(kv_panel=ArmState.EXTENDED)]


def _poses_to_sample(start: Pose, end: Pose, motion: CouchMotion, slack: tuple[float, ...],
                     rng: random.Random) -> list[Pose]:
    s, e = start.as_tuple(), end.as_tuple()
    if motion is CouchMotion.LINEAR:
        out = []
        for i in range(400):
            t = i / 399
            out.append(Pose(*(a + t * (b - a) + rng.uniform(-h, h)
                              for a, b, h in zip(s, e, slack))))
        return out
    lo = [min(a, b) - h for a, b, h in zip(s, e, slack)]
    hi = [max(a, b) + h for a, b, h in zip(s, e, slack)]
    corners = [Pose(*(hi[i] if (m >> i) & 1 else lo[i] for i in range(6))) for m in range(64)]
    return corners + [Pose(*(rng.uniform(a, b) for a, b in zip(lo, hi))) for _ in range(300)]


@fuzz_settings(0.2)
@given(seed=st.integers(0, 2**32 - 1))
def test_no_allowed_move_has_a_sampled_pose_below_the_margin(seed: int) -> None:
    rng = random.Random(seed)
    gantry = rng.choice([rng.uniform(0.0, 359.99), 45.0, 90.0, 135.0, 225.0, 270.0, 315.0])
    start = Pose(rng.uniform(-60, 60), rng.uniform(-150, 150), rng.uniform(-80, 80),
                 rng.uniform(-15, 15), rng.uniform(-2, 2), rng.uniform(-2, 2))
    length = rng.choice([5.0, 20.0, 60.0, 200.0])
    end = Pose(*(a + rng.uniform(-1, 1) * b
                 for a, b in zip(start.as_tuple(), (length,) * 3 + (3.0, 2.0, 2.0))))
    motion, arms, patient = rng.choice(list(CouchMotion)), rng.choice(ARMS), rng.choice(PATIENTS)
    slack_mm = rng.choice([0.0, 0.0, 1.0])
    result = check_path(start, end, gantry, arms, patient, MARGIN, motion=motion, model=MODEL,
                        slack_mm=slack_mm, slack_deg=slack_mm * 0.2)
    if not result.allowed:
        return
    scene = MODEL.scene(gantry, arms, patient)
    slack = (slack_mm,) * 3 + (slack_mm * 0.2,) * 3
    lowest = min(scene.closest(p).distance_mm
                 for p in _poses_to_sample(start, end, motion, slack, rng))
    assert lowest >= MARGIN
    assert result.lower_bound_mm <= lowest + 1e-6
