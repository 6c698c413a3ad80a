"""Distances between the couch's solids and the gantry's, with FCL.

`CollisionModel` is the compiled room (immutable, shareable between threads);
`model.scene(gantry_deg, arms, patient)` places the fixed solids for one
gantry angle and arm state and gives a `Scene` whose `sample(pose)` returns,
for each moving solid, its distance to the nearest fixed solid. Only moving
vs fixed pairs are measured: the patient lies on the couch top and the top
rests on the base by design, and the gantry's parts touch each other.

Distances come from the Flexible Collision Library (python-fcl; GJK on the
exact boxes and cylinders). FCL reports overlapping solids as -1: that is
clearance 0 here. docs/collision.md says why FCL and what it costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import fcl  # type: ignore[import-untyped]
import numpy as np

from safety.collision_config import PatientEnvelope, RoomGeometry
from safety.collision_model import (
    Arms,
    ArmState,
    Box,
    Carrier,
    Solid,
    carrier_transform,
    couch_solids,
    gantry_solids,
    gantry_transform,
    patient_solids,
    pieces,
)
from safety.collision_motion import Reach, reach_of
from safety.couch_model import CouchModel
from safety.pose import Pose

#: Couch-carried solids are cut into pieces no longer than this along Y (the
#: path check's lever arms are then those of a piece, not of the whole couch).
PIECE_MM = 250.0
#: Below this distance the separation direction is not used (isotropic bound instead).
MIN_DIRECTION_MM = 1.0


@dataclass(frozen=True, slots=True)
class Nearest:
    """A couch-carried object, a gantry-carried object and the distance between them (mm, >= 0)."""

    moving: str
    fixed: str
    distance_mm: float


@dataclass(frozen=True, slots=True, eq=False)
class Sample:
    """The distances at one couch pose.

    `closest` is exact. `bounds[i]` is a lower bound on the distance from moving
    piece i to the nearest gantry solid (`nearest_fixed[i]`), exact wherever it
    is below the scene's `need[i]`.
    """

    pose: Pose
    closest: Nearest
    bounds: np.ndarray
    nearest_fixed: np.ndarray
    second: np.ndarray  # per piece, a lower bound on its distance to every other fixed solid
    # Per piece, the unit vector from the nearest fixed solid's closest point to the
    # piece's (room frame), where that distance was measured and is at least 1 mm.
    direction: tuple[np.ndarray | None, ...]


def _geometry(solid: Solid) -> fcl.CollisionGeometry:
    if isinstance(solid.shape, Box):
        return fcl.Box(*solid.shape.size)
    return fcl.Cylinder(solid.shape.radius, solid.shape.length)


def _fcl_object(solid: Solid, to_room: np.ndarray | None = None) -> fcl.CollisionObject:
    m = solid.placement if to_room is None else to_room @ solid.placement
    return fcl.CollisionObject(_geometry(solid), fcl.Transform(m[:3, :3], m[:3, 3]))


@dataclass(frozen=True, slots=True, eq=False)
class Load:
    """Everything the couch carries for one patient envelope, compiled once:
    pieces grouped by carrier (table top first, then the base)."""

    solids: tuple[Solid, ...]
    reaches: tuple[Reach, ...]
    geometries: tuple[fcl.CollisionGeometry, ...]
    carriers: tuple[Carrier, ...]
    local_corners: dict[Carrier, np.ndarray]  # 8 bounding-box corners per piece

    @classmethod
    def of(cls, moving: Sequence[tuple[Solid, Reach]]) -> Load:
        solids = tuple(s for s, _ in moving)
        carriers = tuple(dict.fromkeys(s.carrier for s in solids))
        order = [s.carrier for s in solids]
        if order != sorted(order, key=carriers.index):
            raise ValueError("moving solids must be grouped by carrier")
        corners = {c: np.concatenate([s.corners() for s in solids if s.carrier is c])
                   for c in carriers}
        return cls(solids, tuple(r for _, r in moving), tuple(_geometry(s) for s in solids),
                   carriers, corners)


class Scene:
    """FCL objects for one gantry angle, arm state and patient. Not shared between
    threads: `sample` moves the couch's objects.

    Pairs are pruned with a cheap lower bound (`gaps`): a pair whose bound is at
    least what is needed is not measured, and the bound still proves what it is
    used for.
    """

    def __init__(self, model: CollisionModel, fixed: Sequence[Solid], load: Load,
                 gantry_deg: float) -> None:
        g = gantry_transform(gantry_deg)
        self.pivot = model.pivot
        self.base_moves_with_lat_long = model.room.couch_base.moves_with_lat_long
        self.fixed = tuple(fixed)
        self.moving = load.solids
        self.reaches = load.reaches
        self._fixed_objects = [_fcl_object(s, g) for s in self.fixed]
        # Placed when first measured at a sample (`sample` sets each one's transform).
        self._moving_objects = [fcl.CollisionObject(geom) for geom in load.geometries]
        self._carriers = load.carriers
        self._local_corners = load.local_corners
        # Each fixed solid's frame (row-vector form: local = room @ R - c @ R) and half extents.
        frames = [g @ s.placement for s in self.fixed]
        self._fixed_rot = np.array([f[:3, :3] for f in frames])
        self._fixed_origin = np.array([f[:3, 3] @ f[:3, :3] for f in frames])[:, None, :]
        self._fixed_half = np.array([s.half_extents() for s in self.fixed])
        # Nearest points cost nothing extra (measured): the path check uses their direction.
        self._request = fcl.DistanceRequest(enable_nearest_points=True)
        #: Per moving piece, the bound below which `sample` measures exactly (mm).
        self.need = np.zeros(len(self.moving))
        self.samples_taken = 0

    def _transforms(self, pose: Pose) -> dict[Carrier, np.ndarray]:
        return {c: carrier_transform(c, pose, self.pivot, self.base_moves_with_lat_long)
                for c in self._carriers}

    def gaps(self, transforms: dict[Carrier, np.ndarray]) -> np.ndarray:
        """(pieces x fixed) lower bounds of the distances: each piece's bounding-box
        corners seen in each fixed solid's frame against that solid's half extents
        (a separating-axis bound along the fixed solid's own axes)."""
        corners = np.concatenate([
            self._local_corners[c] @ transforms[c][:3, :3].T + transforms[c][:3, 3]
            for c in self._carriers])
        # (fixed, piece * 8, 3): corners in each fixed solid's frame.
        local = np.matmul(corners[None, :, :], self._fixed_rot) - self._fixed_origin
        local = local.reshape(len(self.fixed), len(self.moving), 8, 3)
        half = self._fixed_half[:, None, :]
        apart = np.maximum(np.maximum(local.min(axis=2) - half, -half - local.max(axis=2)), 0.0)
        return np.sqrt((apart * apart).sum(axis=2)).T

    def pair_distances(self, pose: Pose) -> np.ndarray:
        """(pieces x fixed) exact distances at `pose`, every pair measured (tests, tools)."""
        transforms = self._transforms(pose)
        out = np.empty((len(self.moving), len(self.fixed)))
        for i, (solid, obj) in enumerate(zip(self.moving, self._moving_objects)):
            m = transforms[solid.carrier] @ solid.placement
            obj.setTransform(fcl.Transform(m[:3, :3], m[:3, 3]))
            for j, fobj in enumerate(self._fixed_objects):
                d = fcl.distance(obj, fobj, self._request, fcl.DistanceResult())
                out[i, j] = max(0.0, float(d))
        return out

    def sample(self, pose: Pose) -> Sample:
        """Bounds for every moving piece at `pose`, and the exact closest pair."""
        self.samples_taken += 1
        transforms = self._transforms(pose)
        gaps = self.gaps(transforms)
        values = gaps.copy()  # lower bounds, replaced by exact distances where measured
        measured = np.zeros(gaps.shape, dtype=bool)
        placed = [False] * len(self.moving)
        nf = len(self.fixed)
        directions: dict[tuple[int, int], np.ndarray] = {}

        def measure(i: int, j: int) -> float:
            if not placed[i]:
                m = transforms[self.moving[i].carrier] @ self.moving[i].placement
                self._moving_objects[i].setTransform(fcl.Transform(m[:3, :3], m[:3, 3]))
                placed[i] = True
            result = fcl.DistanceResult()
            d = fcl.distance(self._moving_objects[i], self._fixed_objects[j], self._request,
                             result)
            # FCL gives -1 for overlapping solids (no signed distance asked): clearance 0.
            d = max(0.0, float(d))
            values[i, j], measured[i, j] = d, True
            if d >= MIN_DIRECTION_MM:
                on_piece, on_fixed = result.nearest_points
                v = np.asarray(on_piece, dtype=float) - np.asarray(on_fixed, dtype=float)
                n = float(np.linalg.norm(v))
                # The points must be as far apart as the distance, or the direction
                # is not trusted (the path check then uses the isotropic bound).
                if abs(n - d) <= 1e-6 * max(1.0, d):
                    directions[i, j] = v / n
            return d

        # The closest pair, exactly: measure in order of gap until no gap is smaller.
        best, best_pair = math.inf, (0, 0)  # (piece, fixed solid)
        flat = gaps.ravel()
        for k in np.argsort(flat, kind="stable"):
            if flat[k] >= best:
                break
            i, j = (int(v) for v in divmod(int(k), nf))
            d = measure(i, j)
            if d < best:
                best, best_pair = d, (i, j)
        # Every piece whose bound is below its need gets its exact nearest distance:
        # afterwards each bound is either exact or at least the need.
        for row in np.flatnonzero(values.min(axis=1) < self.need):
            exact = float(values[row][measured[row]].min(initial=math.inf))
            for col in np.argsort(gaps[row], kind="stable"):
                if gaps[row, col] >= min(float(self.need[row]), exact):
                    break
                if not measured[row, col]:
                    exact = min(exact, measure(int(row), int(col)))
        rows = np.arange(len(self.moving))
        nearest = values.argmin(axis=1)
        bounds = values[rows, nearest]
        if nf > 1:
            second = np.partition(values, 1, axis=1)[:, 1]
        else:
            second = np.full(len(self.moving), math.inf)
        direction = tuple(directions.get((int(i), int(j))) for i, j in zip(rows, nearest))
        piece, fixed = best_pair
        closest = Nearest(self.moving[piece].name, self.fixed[fixed].name, best)
        return Sample(pose, closest, bounds, nearest, second, direction)


class CollisionModel:
    """The compiled room: solids from a `RoomGeometry` and the couch's pitch/roll pivot.

    Immutable; build it once (at configuration) and share it. Patient envelopes
    are compiled on first use and kept (a few per session at most).
    """

    def __init__(self, room: RoomGeometry | None = None,
                 pivot: tuple[float, float, float] | None = None) -> None:
        self.room = room if room is not None else RoomGeometry()
        p = pivot if pivot is not None else CouchModel.default().pivot
        pv = np.array(p, dtype=float)
        if pv.shape != (3,) or not np.all(np.isfinite(pv)):
            raise ValueError(f"pivot must be 3 finite numbers in mm, got {p!r}")
        pv.flags.writeable = False
        self.pivot = pv
        travels = self.room.couch_base.moves_with_lat_long
        top, base = couch_solids(self.room)
        self._top = tuple((p, reach_of(p, pv, travels)) for p in pieces(top, PIECE_MM))
        self._base = ((base, reach_of(base, pv, travels)),)
        self._gantry = {arms: gantry_solids(self.room, arms) for arms in _ALL_ARMS}
        # A few patient envelopes per session at most; None is the empty couch.
        self._loads = lru_cache(maxsize=16)(self._load)

    @classmethod
    def default(cls) -> CollisionModel:
        """The shipped room (a typical C-arm linac) on the default couch."""
        return _default_model()

    @classmethod
    def for_couch(cls, room: RoomGeometry, couch: CouchModel) -> CollisionModel:
        """The room on this couch model (its pivot)."""
        return cls(room, couch.pivot)

    def _load(self, patient: PatientEnvelope | None) -> Load:
        extra = () if patient is None else tuple(
            (p, reach_of(p, self.pivot, False))
            for s in patient_solids(self.room, patient) for p in pieces(s, PIECE_MM))
        # Table-top pieces first, then the base: Scene groups pieces by carrier.
        return Load.of(self._top + extra + self._base)

    def fixed_solids(self, arms: Arms) -> tuple[Solid, ...]:
        """The gantry's solids for this arm state, at gantry angle 0."""
        return self._gantry[arms]

    def moving_solids(self, patient: PatientEnvelope | None) -> tuple[tuple[Solid, Reach], ...]:
        """Couch top and patient envelope pieces (none for an empty couch), then the base."""
        load = self._loads(patient)
        return tuple(zip(load.solids, load.reaches))

    def scene(self, gantry_deg: float, arms: Arms, patient: PatientEnvelope | None) -> Scene:
        return Scene(self, self.fixed_solids(arms), self._loads(patient), gantry_deg)


_ALL_ARMS = tuple(Arms(a, b, c) for a in ArmState for b in ArmState for c in ArmState)


@lru_cache(maxsize=1)
def _default_model() -> CollisionModel:
    return CollisionModel()
