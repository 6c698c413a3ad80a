"""The proof behind a path check: cover every pose of a move with certified cells.

A *cell* is a set of poses around one or two sampled poses. For a sample at
pose P, every pose within half-width h of P on each axis moves each point of
a couch-carried solid by at most D(h, P) (`safety.collision_motion`), and the
gantry's solids do not move, so at every pose of the cell each solid is at
least `distance(P) - D(h, P)` from its nearest gantry solid. A cell whose
bound is at least the margin for every solid is proven; any other cell is
split and its parts sampled, lowest bound first, until

* every cell is proven (the move is allowed: no gaps, since the cells cover
  the whole path), or
* a sample is itself below the margin (refused: a pose of the path really
  is too close; the search then goes on a little to find the worst place), or
* the sample budget is spent, or a cell cannot be split further (refused as
  not proven: never allowed on a guess).

Two path shapes (docs/collision.md):

* `LINEAR`: the straight segment start + t (end - start), t in 0..1; a cell
  is a sub-segment with samples at both ends (each covers its half).
* `PER_AXIS`: every pose whose axes each lie between their start and end
  values (what a controller that drives each axis on its own profile can pass
  through); a cell is an axis-aligned box with a sample at its centre, split
  across the axis that moves the limiting solid most.

`slack` widens every cell by a fixed half-width per axis (the supervision's
path tolerance); it is never split away.
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from safety.collision_motion import (
    axis_contributions,
    centre_radius,
    directional_bound,
    directional_contributions,
    displacement_bound,
    max_centre_radius,
)
from safety.collision_scene import Nearest, Sample, Scene
from safety.pose import Pose

Six = tuple[float, float, float, float, float, float]

#: Subtracted from every FCL distance before it proves anything: FCL's GJK stops
#: within 1e-6 of the true distance (relative); 0.01 mm covers that for any room.
DISTANCE_TOLERANCE_MM = 0.01
#: Once a refusal is certain, keep refining the worst place until the bound is
#: within this of the lowest clearance found, or for REFINE_SAMPLES more samples.
REFINE_MM = 1.0
REFINE_SAMPLES = 8


class CouchMotion(StrEnum):
    PER_AXIS = "per_axis"  # each axis anywhere between its start and end value
    LINEAR = "linear"  # all axes in step along the straight line in pose space


@dataclass(frozen=True, slots=True)
class _Probe:
    """A sample and what the bounds need from it: the pieces measured exactly
    (`active`) and the floor the others guarantee for any cell of this search."""

    sample: Sample
    fraction: float
    radii: tuple[float, ...]  # per piece, `centre_radius` at the sample's pose
    # Per piece, its separation direction in the carrier's pre-yaw frame, or None.
    directions: tuple[tuple[float, float, float] | None, ...]
    active: tuple[int, ...]
    floor: float
    floor_piece: int


@dataclass(frozen=True, slots=True)
class _Segment:  # LINEAR: t in [a, b], probes at both ends
    a: float
    b: float
    pa: _Probe
    pb: _Probe


@dataclass(frozen=True, slots=True)
class _Cell:  # PER_AXIS: the box lo..hi, probe at its centre
    lo: Six
    hi: Six
    pc: _Probe


@dataclass(frozen=True, slots=True)
class PathResult:
    proven: bool  # every cell proven at least the margin
    min_clearance_mm: float  # lowest clearance at a sampled pose
    lower_bound_mm: float  # no pose of the path is closer (>= 0)
    fraction: float  # where the lowest sample is
    pose: Pose
    nearest: Nearest  # the pair at the lowest sample
    weakest: Nearest  # the pair limiting the lowest unproven cell (= nearest when proven)
    samples: int


def _pose(values: Six | list[float]) -> Pose:
    return Pose(*values)


class PathSearch:
    """One path check's search; `run` once."""

    def __init__(self, scene: Scene, start: Pose, end: Pose, motion: CouchMotion,
                 margin_mm: float, slack: Six) -> None:
        self.scene = scene
        self.start = start.as_tuple()
        self.end = end.as_tuple()
        self.delta: Six = tuple(e - s for s, e in zip(self.start, self.end))  # type: ignore[assignment]
        self.motion = motion
        self.margin = margin_mm
        self.slack = slack
        self._moving_axes = [i for i, d in enumerate(self.delta) if d != 0.0]
        self._best: _Probe | None = None
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, int, _Segment | _Cell]] = []
        # What each piece must be from the gantry at a sample so that no cell of this
        # search (all inside the root box, half-widths at most the root's) can bring
        # it within the margin: margin + its largest displacement + tolerance.
        lo = _pose([min(s, e) for s, e in zip(self.start, self.end)])
        hi = _pose([max(s, e) for s, e in zip(self.start, self.end)])
        root: Six = tuple(abs(d) / 2 + s for d, s in zip(self.delta, slack))  # type: ignore[assignment]
        by_carrier = {r.carrier: r for r in scene.reaches}
        radius = {c: max_centre_radius(r, lo, hi, scene.pivot) for c, r in by_carrier.items()}
        scene.need = np.array([
            margin_mm + displacement_bound(r, root, radius[r.carrier]) + DISTANCE_TOLERANCE_MM
            for r in scene.reaches])

    # ------------------------------------------------------------ sampling

    def _probe_at(self, values: Six | list[float], fraction: float) -> _Probe:
        scene = self.scene
        pose = _pose(values)
        sample = scene.sample(pose)
        # One radius per carrier (every piece of a carrier shares it).
        by_carrier = {r.carrier: r for r in scene.reaches}
        radius = {c: centre_radius(r, pose, scene.pivot) for c, r in by_carrier.items()}
        radii = tuple(radius[r.carrier] for r in scene.reaches)
        slack_left = sample.bounds - scene.need
        active = tuple(int(i) for i in np.flatnonzero(slack_left < 0.0))
        spare = np.where(slack_left < 0.0, np.inf, slack_left)
        floor_piece = int(np.argmin(spare))
        # Translations act in the carrier's frame before the yaw: turn g back by -yaw.
        c, s_ = math.cos(math.radians(pose.yaw)), math.sin(math.radians(pose.yaw))
        directions = tuple(
            None if g is None else (c * g[0] + s_ * g[1], -s_ * g[0] + c * g[1], float(g[2]))
            for g in sample.direction)
        probe = _Probe(sample, fraction, radii, directions, active,
                       self.margin + float(spare[floor_piece]), floor_piece)
        best = self._best
        if best is None or sample.closest.distance_mm < best.sample.closest.distance_mm:
            self._best = probe
        return probe

    def _probe_t(self, t: float) -> _Probe:
        if t == 1.0:
            return self._probe_at(self.end, 1.0)
        return self._probe_at([s + t * d for s, d in zip(self.start, self.delta)], t)

    def _probe_box(self, values: Six) -> _Probe:
        progress = [(values[i] - self.start[i]) / self.delta[i] for i in self._moving_axes]
        fraction = sum(progress) / len(progress) if progress else 0.0
        return self._probe_at(values, min(1.0, max(0.0, fraction)))

    # ------------------------------------------------------------ bounds

    def _bound(self, probe: _Probe, half: Six) -> tuple[float, int]:
        """(lowest proven clearance within `half` of the probe, the piece that sets it).

        Per piece: its nearest gantry solid with the better of the isotropic and
        the directional bound, every other gantry solid with the isotropic one."""
        low, which = probe.floor, probe.floor_piece
        sample, reaches = probe.sample, self.scene.reaches
        for i in probe.active:
            iso = displacement_bound(reaches[i], half, probe.radii[i])
            nearest = float(sample.bounds[i]) - iso
            g = probe.directions[i]
            if g is not None:
                nearest = max(nearest, float(sample.bounds[i]) - directional_bound(
                    reaches[i], half, probe.radii[i], g))
            v = min(nearest, float(sample.second[i]) - iso) - DISTANCE_TOLERANCE_MM
            if v < low:
                low, which = v, i
        return low, which

    def _push(self, region: _Segment | _Cell) -> None:
        if isinstance(region, _Segment):
            w = (region.b - region.a) / 2
            half: Six = tuple(abs(d) * w + s for d, s in zip(self.delta, self.slack))  # type: ignore[assignment]
            low_a, ia = self._bound(region.pa, half)
            low_b, ib = self._bound(region.pb, half)
            low, which = (low_a, ia) if low_a <= low_b else (low_b, -1 - ib)
        else:
            half = tuple((h - lo) / 2 + s  # type: ignore[assignment]
                         for lo, h, s in zip(region.lo, region.hi, self.slack))
            low, which = self._bound(region.pc, half)
        heapq.heappush(self._heap, (low, next(self._seq), which, region))

    # ------------------------------------------------------------ splitting

    def _split(self, region: _Segment | _Cell, which: int) -> bool:
        """Replace a region by its halves; False when it cannot be split further."""
        if isinstance(region, _Segment):
            m = (region.a + region.b) / 2
            if not (self._moving_axes and region.a < m < region.b):
                return False
            # An end sample stays the reference of its half: if even the slack alone
            # (which splitting never shrinks) takes it below the margin, no split can
            # prove this segment. (After a refusal the search only refines the worst
            # place, and REFINE_MM ends that.)
            if not self._refusing() and min(self._bound(region.pa, self.slack)[0],
                                            self._bound(region.pb, self.slack)[0]) < self.margin:
                return False
            pm = self._probe_t(m)
            self._push(_Segment(region.a, m, region.pa, pm))
            self._push(_Segment(m, region.b, pm, region.pb))
            return True
        geometric: Six = tuple((h - lo) / 2 for lo, h in zip(region.lo, region.hi))  # type: ignore[assignment]
        reach, radius, g = (self.scene.reaches[which], region.pc.radii[which],
                            region.pc.directions[which])
        contrib = (axis_contributions(reach, geometric, radius) if g is None
                   else directional_contributions(reach, geometric, radius, g))
        axis = max(range(6), key=lambda k: (contrib[k], geometric[k]))
        mid = (region.lo[axis] + region.hi[axis]) / 2
        if not region.lo[axis] < mid < region.hi[axis]:
            return False
        for lo_k, hi_k in ((region.lo[axis], mid), (mid, region.hi[axis])):
            lo = region.lo[:axis] + (lo_k,) + region.lo[axis + 1:]
            hi = region.hi[:axis] + (hi_k,) + region.hi[axis + 1:]
            centre: Six = tuple((a + b) / 2 for a, b in zip(lo, hi))  # type: ignore[assignment]
            self._push(_Cell(lo, hi, self._probe_box(centre)))  # type: ignore[arg-type]
        return True

    # ------------------------------------------------------------ search

    def _refusing(self) -> bool:
        best = self._best
        return best is not None and best.sample.closest.distance_mm < self.margin

    def _roots(self) -> None:
        p0 = self._probe_t(0.0)
        if not self._moving_axes:
            if self.motion is CouchMotion.LINEAR:
                self._push(_Segment(0.0, 1.0, p0, p0))
            else:
                self._push(_Cell(self.start, self.start, p0))  # type: ignore[arg-type]
            return
        p1 = self._probe_t(1.0)
        if self.motion is CouchMotion.LINEAR:
            self._push(_Segment(0.0, 1.0, p0, p1))
            return
        lo: Six = tuple(min(s, e) for s, e in zip(self.start, self.end))  # type: ignore[assignment]
        hi: Six = tuple(max(s, e) for s, e in zip(self.start, self.end))  # type: ignore[assignment]
        centre: Six = tuple((a + b) / 2 for a, b in zip(lo, hi))  # type: ignore[assignment]
        self._push(_Cell(lo, hi, self._probe_box(centre)))

    def run(self, max_samples: int) -> PathResult:
        self._roots()
        refused_at: int | None = None
        stuck = False
        while True:
            low, _, which, region = self._heap[0]
            best = self._best
            assert best is not None
            best_d = best.sample.closest.distance_mm
            if low >= self.margin:
                break  # every cell proven (the heap's lowest bound is the margin or more)
            if best_d < self.margin:
                refused_at = self.scene.samples_taken if refused_at is None else refused_at
                if (best_d <= 0.0 or low >= best_d - REFINE_MM
                        or self.scene.samples_taken >= refused_at + REFINE_SAMPLES):
                    break
            if self.scene.samples_taken >= max_samples:
                break
            heapq.heappop(self._heap)
            if not self._split(region, which if which >= 0 else -1 - which):
                heapq.heappush(self._heap, (low, next(self._seq), which, region))
                stuck = True
                break
        return self._result(stuck)

    def _result(self, stuck: bool) -> PathResult:
        best = self._best
        assert best is not None
        low, _, which, region = self._heap[0]
        proven = not stuck and low >= self.margin
        if isinstance(region, _Segment):
            ref = region.pa if which >= 0 else region.pb
            piece = which if which >= 0 else -1 - which
        else:
            ref, piece = region.pc, which
        closest = best.sample.closest
        scene = self.scene
        weakest = Nearest(scene.moving[piece].name,
                          scene.fixed[int(ref.sample.nearest_fixed[piece])].name,
                          float(ref.sample.bounds[piece]))
        return PathResult(
            proven=proven, min_clearance_mm=closest.distance_mm,
            lower_bound_mm=max(0.0, min(low, closest.distance_mm)), fraction=best.fraction,
            pose=best.sample.pose, nearest=closest, weakest=closest if proven else weakest,
            samples=scene.samples_taken)
