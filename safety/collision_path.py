"""The proof behind a path check: cover every pose of a move with cells whose
whole swept volume is proven clear.

A *cell* is a box of couch poses. `safety.collision_sweep` bounds, for each
couch-carried piece and each gantry solid, the smallest distance between them
at any pose of the cell, from the piece's corners at the cell's vertex poses
(their convex hull, widened by the curvature of the rotations) projected on a
separating direction. A cell whose bound is at least the margin for every
pair is proven, with nothing left to chance inside it. Otherwise the search
(lowest bound first):

1. **probes** the cell: measures the pairs that fall short, with FCL, at the
   vertex pose where they come closest (a real pose of the move). That gives
   the exact clearance there and the separation direction, which usually
   makes the cell's bound tight; the cell is bounded again;
2. if it still falls short, **splits** it in two across the axis that limits
   the bound most, and bounds both halves (pairs already proven in a cell stay
   proven in its halves: a half's poses are the cell's).

until

* every cell is proven (allowed: the cells cover the whole path), or
* a probe is itself below the margin (refused: that pose of the path really is
  too close; the search then goes on a little to find the worst place), or
* the budget of probes and cell bounds is spent, or a cell cannot be split
  further (refused as not proven: never allowed on a guess).

Two path shapes (docs/collision.md):

* `PER_AXIS`: every pose whose axes each lie between their start and end
  values (what a controller that drives each axis on its own profile can pass
  through). The root cell is that box; its vertices are poses of the move.
* `LINEAR`: the straight segment start + t (end - start), t in 0..1. A cell is
  a sub-segment, bounded through the box its two ends span (which contains
  it); it is probed at its middle and halved.

`slack` widens every cell by a fixed half-width per axis (the supervision's
path tolerance); it is never split away.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from safety.collision_scene import Nearest, Scene
from safety.collision_sweep import Sweep, vertex_bits
from safety.pose import Pose

Six = tuple[float, float, float, float, float, float]

#: Once a refusal is certain, keep refining the worst place until the bound is
#: within this of the lowest clearance found, or for REFINE_SAMPLES more steps,
#: so that the clearance the refusal names is close to the true minimum.
REFINE_MM = 1.0
REFINE_SAMPLES = 8


class CouchMotion(StrEnum):
    PER_AXIS = "per_axis"  # each axis anywhere between its start and end value
    LINEAR = "linear"  # all axes in step along the straight line in pose space


@dataclass(slots=True, eq=False)
class _Cell:
    lo: Six  # the path poses the cell covers (before slack)
    hi: Six
    a: float  # LINEAR: the sub-segment t in [a, b]
    b: float
    pieces: np.ndarray  # the pieces not yet proven in this cell (indices)
    directions: np.ndarray  # (len(pieces), fixed, 3), NaN where none is known
    bounds: np.ndarray  # (len(pieces), fixed): proven so far (-inf: nothing yet), mm
    gaps: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0)))  # (pieces, fixed, V)
    probed: bool = False

    def low(self) -> tuple[float, int, int]:
        """(lowest bound, piece row, fixed solid) of the cell; +inf when nothing is left."""
        if not len(self.pieces):
            return float("inf"), -1, -1
        k = int(np.argmin(self.bounds))
        i, j = divmod(k, self.bounds.shape[1])
        return float(self.bounds[i, j]), i, j


@dataclass(frozen=True, slots=True)
class PathResult:
    proven: bool  # every cell proven at least the margin
    min_clearance_mm: float  # lowest clearance measured at a pose of the path
    lower_bound_mm: float  # no pose of the path is closer (>= 0)
    fraction: float  # where the lowest measurement is
    pose: Pose
    nearest: Nearest  # the pair at the lowest measurement
    weakest: Nearest  # the pair limiting the lowest unproven cell (= nearest when proven)
    samples: int  # probes and cell bounds


class PathSearch:
    """One path check's search; `run` once."""

    def __init__(self, scene: Scene, start: Pose, end: Pose, motion: CouchMotion,
                 margin_mm: float, slack: Six) -> None:
        self.scene = scene
        self.sweep: Sweep = scene.sweep
        self.start = start.as_tuple()
        self.end = end.as_tuple()
        self.delta: Six = tuple(e - s for s, e in zip(self.start, self.end))  # type: ignore[assignment]
        self.motion = motion
        self.margin = margin_mm
        self.slack = slack
        self._moving_axes = [i for i, d in enumerate(self.delta) if d != 0.0]
        self._path_lo: Six = tuple(min(s, e) for s, e in zip(self.start, self.end))  # type: ignore[assignment]
        self._path_hi: Six = tuple(max(s, e) for s, e in zip(self.start, self.end))  # type: ignore[assignment]
        self._seq = itertools.count()
        self._heap: list[tuple[float, int, _Cell]] = []
        self.steps = 0
        # The lowest bound of the pairs proven and dropped along the way (mm).
        self._proven = float("inf")
        # The lowest clearance measured, where, and between which pair.
        self._best: tuple[float, float, Pose, Nearest] | None = None

    # ------------------------------------------------------------ measuring

    def _fraction(self, values: Six) -> float:
        progress = [(values[i] - self.start[i]) / self.delta[i] for i in self._moving_axes]
        return min(1.0, max(0.0, sum(progress) / len(progress))) if progress else 0.0

    def _found(self, distance: float, fraction: float, pose: Pose, pair: Nearest) -> None:
        if self._best is None or distance < self._best[0]:
            self._best = (distance, fraction, pose, pair)

    def _closest_at(self, values: Six, fraction: float) -> None:
        """The exact closest pair at a pose of the move."""
        pose = Pose(*values)
        closest = self.scene.closest(pose)
        self._found(closest.distance_mm, fraction, pose, closest)

    def _closest_corner(self, cell: _Cell, i: int, j: int) -> tuple[Six, float]:
        """Where pair (i, j) comes closest by the cell's bound: PER_AXIS, the vertex pose
        (clipped back into the move if the slack took it out); LINEAR, the point of the
        sub-segment nearest that vertex (in units of the cell's widths)."""
        lo, hi = self._box(cell)
        v = np.array(self.sweep.vertex(lo, hi, int(np.nanargmin(cell.gaps[i, j]))))
        if self.motion is CouchMotion.LINEAR:
            pa = np.array([s + cell.a * d for s, d in zip(self.start, self.delta)])
            step = np.array(self.delta) * (cell.b - cell.a)
            scale = np.maximum(np.array(hi) - np.array(lo), 1e-12)
            along, to_v = step / scale, (v - pa) / scale
            norm = float(along @ along)
            k = min(1.0, max(0.0, float(to_v @ along) / norm)) if norm > 0.0 else 0.5
            t = cell.a + k * (cell.b - cell.a)
            return tuple(s + t * d for s, d in zip(self.start, self.delta)), t  # type: ignore[return-value]
        values: Six = tuple(min(h, max(lo, float(x)))  # type: ignore[assignment]
                            for x, lo, h in zip(v, self._path_lo, self._path_hi))
        return values, self._fraction(values)

    def _probe(self, cell: _Cell, values: Six, fraction: float) -> None:
        """Measure the cell's short pairs exactly at a pose of the move in it, keep their
        separation directions for the cell's bound, and bound the cell again."""
        self.steps += 1
        pose = Pose(*values)
        short = np.argwhere(cell.bounds < self.margin)
        pairs = [(int(cell.pieces[r]), int(c)) for r, c in short]
        directions = cell.directions.copy()
        for (r, c), (i, j), (distance, direction) in zip(short, pairs,
                                                          self.scene.measure(pose, pairs)):
            self._found(distance, fraction, pose,
                        Nearest(self.scene.moving[i].name, self.scene.fixed[j].name, distance))
            if direction is not None:
                directions[r, c] = direction
        cell.directions = directions
        self._bound(cell)

    # ------------------------------------------------------------ bounding

    def _box(self, cell: _Cell) -> tuple[Six, Six]:
        if self.motion is CouchMotion.LINEAR:
            pa = [s + cell.a * d for s, d in zip(self.start, self.delta)]
            pb = [s + cell.b * d for s, d in zip(self.start, self.delta)]
            lo, hi = [min(x, y) for x, y in zip(pa, pb)], [max(x, y) for x, y in zip(pa, pb)]
        else:
            lo, hi = list(cell.lo), list(cell.hi)
        return (tuple(x - s for x, s in zip(lo, self.slack)),  # type: ignore[return-value]
                tuple(x + s for x, s in zip(hi, self.slack)))

    def _bound(self, cell: _Cell) -> None:
        """Bound the cell's short pairs, drop the pieces it proves, and queue it.

        `cell.bounds` holds what the cell already had proven (its parent's bounds,
        or its own before a probe): both are valid for every pose of the cell, so
        the better of the old and the new one is kept for each pair, and only the
        pairs still short of the margin are bounded again."""
        if not len(cell.pieces):
            heapq.heappush(self._heap, (float("inf"), next(self._seq), cell))
            return
        self.steps += 1
        lo, hi = self._box(cell)
        short = cell.bounds < self.margin
        found = self.sweep.bound(lo, hi, cell.pieces, cell.directions, short)
        bounds = np.fmax(cell.bounds, found.bounds)
        keep = bounds.min(axis=1) < self.margin
        if not keep.all():
            self._proven = min(self._proven, float(bounds[~keep].min()))
        cell.pieces, cell.directions = cell.pieces[keep], cell.directions[keep]
        cell.bounds, cell.gaps = bounds[keep], found.gaps[keep]
        heapq.heappush(self._heap, (cell.low()[0], next(self._seq), cell))

    # ------------------------------------------------------------ splitting

    def _split_axis(self, cell: _Cell, i: int, j: int) -> int:
        """The axis whose halving should help the limiting pair most: the one along
        which its vertex gaps differ most, plus its share of the curvature allowance."""
        lo, hi = self._box(cell)
        varying = [k for k in range(6) if hi[k] > lo[k]]
        gaps = cell.gaps[i, j]
        bits = vertex_bits(len(varying))
        curvature = self.sweep.eps_by_axis(lo, hi, int(cell.pieces[i]))
        best, best_score = -1, -1.0
        for p, k in enumerate(varying):
            if (self.motion is CouchMotion.PER_AXIS
                    and not cell.lo[k] < (cell.lo[k] + cell.hi[k]) / 2 < cell.hi[k]):
                continue  # nothing left to halve on this axis (slack only)
            spread = float(np.abs(gaps[bits[:, p] == 1] - gaps[bits[:, p] == 0]).mean())
            score = spread + curvature[k]
            if score > best_score:
                best, best_score = k, score
        return best

    def _split(self, cell: _Cell, i: int, j: int) -> bool:
        """Replace a cell by its halves; False when it cannot be split further."""
        if self.motion is CouchMotion.LINEAR:
            m = (cell.a + cell.b) / 2
            if not (self._moving_axes and cell.a < m < cell.b):
                return False
            halves = [(cell.lo, cell.hi, cell.a, m), (cell.lo, cell.hi, m, cell.b)]
        else:
            axis = self._split_axis(cell, i, j)
            if axis < 0:
                return False
            mid = (cell.lo[axis] + cell.hi[axis]) / 2
            halves = []
            for lo_k, hi_k in ((cell.lo[axis], mid), (mid, cell.hi[axis])):
                lo: Six = cell.lo[:axis] + (lo_k,) + cell.lo[axis + 1:]  # type: ignore[assignment]
                hi: Six = cell.hi[:axis] + (hi_k,) + cell.hi[axis + 1:]  # type: ignore[assignment]
                halves.append((lo, hi, 0.0, 1.0))
        for lo, hi, a, b in halves:
            self._bound(_Cell(lo, hi, a, b, cell.pieces, cell.directions, cell.bounds))
        return True

    # ------------------------------------------------------------ search

    def _refusing(self) -> bool:
        return self._best is not None and self._best[0] < self.margin

    def run(self, max_samples: int) -> PathResult:
        n_f = len(self.scene.fixed)
        root = _Cell(self._path_lo, self._path_hi, 0.0, 1.0, np.zeros(0, dtype=int),
                     np.zeros((0, n_f, 3)), np.zeros((0, n_f)))
        cheap = self.sweep.cheap(*self._box(root))
        pieces = np.flatnonzero(cheap.min(axis=1) < self.margin)
        if len(pieces) < len(cheap):
            self._proven = float(np.delete(cheap, pieces, axis=0).min())
        root.pieces, root.bounds = pieces, cheap[pieces]
        root.directions = np.full((len(pieces), n_f, 3), np.nan)
        if len(pieces):
            # Measured at the end first (where a move most often comes closest): its
            # directions make the first bound tight.
            self._probe(root, self.end, 1.0)
        else:
            self._bound(root)
        refused_at: int | None = None
        stuck = False
        while True:
            low, _, cell = self._heap[0]
            best_d = self._best[0] if self._best is not None else float("inf")
            if low >= self.margin:
                break  # every cell proven (the heap's lowest bound is the margin or more)
            if best_d < self.margin:
                refused_at = self.steps if refused_at is None else refused_at
                if (best_d <= 0.0 or low >= best_d - REFINE_MM
                        or self.steps >= refused_at + REFINE_SAMPLES):
                    break
            if self.steps >= max_samples:
                break
            heapq.heappop(self._heap)
            _, i, j = cell.low()
            if not cell.probed:
                cell.probed = True
                self._probe(cell, *self._closest_corner(cell, i, j))
            elif not self._split(cell, i, j):
                heapq.heappush(self._heap, (low, next(self._seq), cell))
                stuck = True
                break
        return self._result(stuck)

    def _result(self, stuck: bool) -> PathResult:
        if self._best is None:
            # Proven without measuring anything: report the exact closest pair at the
            # start and the end (where a move far from everything comes closest).
            self.steps += 1
            self._closest_at(self.start, 0.0)
            if self._moving_axes:
                self._closest_at(self.end, 1.0)
        assert self._best is not None
        distance, fraction, pose, nearest = self._best
        low, _, cell = self._heap[0]
        proven = not stuck and low >= self.margin
        if proven:
            weakest = nearest
        else:
            _, i, j = cell.low()
            weakest = Nearest(self.scene.moving[int(cell.pieces[i])].name,
                              self.scene.fixed[j].name, float(cell.bounds[i, j]))
        return PathResult(
            proven=proven, min_clearance_mm=distance,
            lower_bound_mm=max(0.0, min(low, self._proven, distance)), fraction=fraction, pose=pose,
            nearest=nearest, weakest=weakest, samples=self.steps)
