"""Travel rules: what the couch will really do, not only what the registration says.

The verdict tiers of docs/geometry.md are defined on the correction, target
minus the couch pose at imaging. The couch, however, travels from where it is
*now*. If the two differ (the couch was jogged or pushed by hand after imaging,
or a request named an imaging pose igrtd never saw), a 2 mm correction can be
a 150 mm travel. So (issue 11, item 2):

* the tiers are applied to both the correction and the actual travel from the
  current pose; the stricter verdict wins and the reasons name both;
* a couch that is no longer where it was imaged is refused outright (beyond a
  small, configured tolerance), because the registration describes the
  patient at the imaging pose only.

Pure functions; the daemon calls them at propose and the motion rule
(safety.motion) applies `couch_moved_reasons` again before TARGET and GO.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from safety.couch_model import LimitViolation
from safety.policy import Verdict, VerdictPolicy
from safety.pose import AXES, ROTATION_AXES, UNITS, Pose

# Severity of the verdict tiers, lowest first: the stricter verdict wins.
SEVERITY: Mapping[Verdict, int] = {
    Verdict.WITHIN_TOLERANCE: 0,
    Verdict.NEEDS_CONFIRMATION: 1,
    Verdict.NEEDS_SECOND_APPROVAL: 2,
    Verdict.REFUSED: 3,
}

CORRECTION = "correction (target minus couch pose at imaging)"
TRAVEL = "travel (target minus current couch pose)"


def stricter(a: Verdict, b: Verdict) -> Verdict:
    return a if SEVERITY[a] >= SEVERITY[b] else b


def couch_moved_reasons(
    reference: Pose, current: Pose | None, tolerance_mm: float, tolerance_deg: float,
    *, what: str = "couch moved since imaging", toward: Pose | None = None,
) -> list[str]:
    """One reason per axis on which `current` is further than the tolerance from
    `reference` (value, limit and unit named); [] when it is within tolerance.

    `toward`: the target of an interrupted move of this same correction. The couch
    may then be anywhere between `reference` and `toward` on each axis (igrtd
    moved it part of the way under the same registration); the travel left is
    then smaller than the one approved, never larger.

    An unknown or non-finite pose counts as moved: a pose we cannot vouch for
    is unsafe. Comparisons are written "not <=" so that NaN always refuses.
    """
    if current is None:
        return [f"{what}: current couch pose unknown"]
    out: list[str] = []
    for axis in AXES:
        ref, cur = reference.get(axis), current.get(axis)
        end = ref if toward is None else toward.get(axis)
        if not (math.isfinite(ref) and math.isfinite(cur) and math.isfinite(end)):
            out.append(f"{what}: {axis} is not a finite number "
                       f"(at imaging {ref}, now {cur} {UNITS[axis]})")
            continue
        lo, hi = min(ref, end), max(ref, end)
        diff = cur - lo if cur < lo else cur - hi if cur > hi else 0.0
        limit = tolerance_deg if axis in ROTATION_AXES else tolerance_mm
        if not abs(diff) <= limit:
            unit = UNITS[axis]
            where = (f"at imaging {ref:.2f} {unit}" if toward is None else
                     f"interrupted move {ref:.2f} -> {end:.2f} {unit}")
            out.append(f"{what}: {axis} {diff:+.2f} {unit} ({where}, now {cur:.2f} {unit}), "
                       f"limit {limit:.2f} {unit}")
    return out


def evaluate_with_travel(
    policy: VerdictPolicy,
    delta: Pose,
    travel: Pose,
    residual_rotation: Mapping[str, float],
    violations: Sequence[LimitViolation],
    extra_refusals: Sequence[str] = (),
    residual_iso: Mapping[str, float] | None = None,
) -> tuple[Verdict, list[str]]:
    """The stricter of the tiers of `delta` (from imaging) and `travel` (from now).

    Refusals that are not about size (limits, binding, couch moved) refuse
    whatever the tiers say. Reasons: those refusals first, then each tier's
    reasons prefixed with what was measured, the stricter one first.
    """
    v_corr, r_corr = policy.evaluate(delta, residual_rotation, (), (), residual_iso)
    # The residual rotation belongs to the correction, not to the path: not counted twice.
    v_trav, r_trav = policy.evaluate(travel, {}, (), ())
    general = [f"target {v.message}" for v in violations] + list(extra_refusals)
    verdict = Verdict.REFUSED if general else stricter(v_corr, v_trav)
    corr = [f"{CORRECTION}: {r}" for r in r_corr]
    trav = [f"{TRAVEL}: {r}" for r in r_trav]
    tiers = trav + corr if SEVERITY[v_trav] > SEVERITY[v_corr] else corr + trav
    return verdict, general + tiers


__all__ = [
    "CORRECTION",
    "SEVERITY",
    "TRAVEL",
    "couch_moved_reasons",
    "evaluate_with_travel",
    "stricter",
]
