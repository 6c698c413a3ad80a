"""Distances between the couch's solids and the gantry's, with FCL.

`CollisionModel` is the compiled room (immutable, shareable between threads);
`model.scene(gantry_deg, arms, patient)` places the fixed solids for one
gantry angle and arm state and gives a `Scene`: `closest(pose)` is the exact
closest pair at one couch pose, `measure(pose, pairs)` given pairs with their
separation directions, and `sweep` the bounds over boxes of poses that the
path check rests on (`safety.collision_sweep`). Only moving vs fixed pairs
are measured: the patient lies on the couch top and the top
rests on the base by design, and the gantry's parts touch each other.

Distances come from the Flexible Collision Library (python-fcl; GJK on the
exact boxes and cylinders). FCL reports overlapping solids as -1: that is
clearance 0 here. docs/collision.md says why FCL and what it costs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

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
from safety.collision_sweep import Carried, Sweep
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
    carried: Carried  # the same pieces for the path check's sweep (checks their order)

    @classmethod
    def of(cls, moving: Sequence[tuple[Solid, Reach]], pivot: np.ndarray,
           base_travels: bool) -> Load:
        solids = tuple(s for s, _ in moving)
        reaches = tuple(r for _, r in moving)
        return cls(solids, reaches, tuple(_geometry(s) for s in solids),
                   Carried.of(solids, reaches, pivot, base_travels))


class _Transforms:
    """Each carrier's 4x4 transform at one pose, computed when first asked for."""

    def __init__(self, pose: Pose, pivot: np.ndarray, base_moves_with_lat_long: bool) -> None:
        self._args = (pose, pivot, base_moves_with_lat_long)
        self._done: dict[Carrier, np.ndarray] = {}

    def __getitem__(self, carrier: Carrier) -> np.ndarray:
        m = self._done.get(carrier)
        if m is None:
            pose, pivot, travels = self._args
            m = self._done[carrier] = carrier_transform(carrier, pose, pivot, travels)
        return m


class Scene:
    """FCL objects for one gantry angle, arm state and patient. Not shared between
    threads: measuring moves the couch's objects.

    Pairs are pruned with a cheap lower bound (the separating-axis gaps of
    `Sweep.cheap`): a pair whose bound is already above what has been found is
    not measured.
    """

    def __init__(self, model: CollisionModel, fixed: Sequence[Solid], load: Load,
                 gantry_deg: float) -> None:
        g = gantry_transform(gantry_deg)
        self.gantry_deg = gantry_deg
        self.pivot = model.pivot
        self.base_moves_with_lat_long = model.room.couch_base.moves_with_lat_long
        self.fixed = tuple(fixed)
        self.moving = load.solids
        self._fixed_objects = [_fcl_object(s, g) for s in self.fixed]
        # Created and placed when first measured (`_place`).
        self._geometries = load.geometries
        self._moving_objects: dict[int, fcl.CollisionObject] = {}
        self._carried = load.carried
        # Nearest points cost nothing extra (measured): the path check uses their direction.
        self._request = fcl.DistanceRequest(enable_nearest_points=True)

    @cached_property
    def sweep(self) -> Sweep:
        """The bounds over boxes of poses (`safety.collision_sweep`) for this scene."""
        return Sweep(self._carried, self.fixed, self.gantry_deg)

    def _transforms(self, pose: Pose) -> _Transforms:
        return _Transforms(pose, self.pivot, self.base_moves_with_lat_long)

    def _place(self, i: int, transforms: _Transforms) -> fcl.CollisionObject:
        m = transforms[self.moving[i].carrier] @ self.moving[i].placement
        tf = fcl.Transform(m[:3, :3], m[:3, 3])
        obj = self._moving_objects.get(i)
        if obj is None:
            obj = self._moving_objects[i] = fcl.CollisionObject(self._geometries[i], tf)
        else:
            obj.setTransform(tf)
        return obj

    def gaps(self, pose: Pose) -> np.ndarray:
        """(pieces x fixed) lower bounds of the distances at `pose`: each piece's
        bounding-box corners seen along each fixed solid's own axes (`Sweep.cheap`
        of a cell that is one pose)."""
        values = pose.as_tuple()
        return self.sweep.cheap(values, values)

    def closest(self, pose: Pose) -> Nearest:
        """The exact closest (couch-carried, gantry-carried) pair at `pose`: pairs are
        measured in order of their gap until no gap is below the closest found."""
        gaps = self.gaps(pose)
        transforms = self._transforms(pose)
        nf = len(self.fixed)
        best, best_pair = math.inf, (0, 0)
        placed: dict[int, fcl.CollisionObject] = {}
        flat = gaps.ravel()
        for k in np.argsort(flat, kind="stable"):
            if flat[k] >= best:
                break
            i, j = (int(v) for v in divmod(int(k), nf))
            obj = placed.get(i)
            if obj is None:
                obj = placed[i] = self._place(i, transforms)
            d = max(0.0, float(fcl.distance(obj, self._fixed_objects[j], self._request,
                                            fcl.DistanceResult())))
            if d < best:
                best, best_pair = d, (i, j)
        piece, fixed = best_pair
        return Nearest(self.moving[piece].name, self.fixed[fixed].name, best)

    def measure(self, pose: Pose, pairs: Sequence[tuple[int, int]]
                ) -> list[tuple[float, np.ndarray | None]]:
        """Exact distances of the given (piece, fixed solid) pairs at `pose`, each with
        its separation direction (unit, room frame, from the fixed solid toward the
        piece) where FCL's closest points can be trusted (`MIN_DIRECTION_MM`)."""
        transforms = self._transforms(pose)
        placed: dict[int, fcl.CollisionObject] = {}
        out: list[tuple[float, np.ndarray | None]] = []
        for i, j in pairs:
            obj = placed.get(i)
            if obj is None:
                obj = placed[i] = self._place(i, transforms)
            out.append(self._distance(obj, j))
        return out

    def _distance(self, obj: fcl.CollisionObject, j: int) -> tuple[float, np.ndarray | None]:
        result = fcl.DistanceResult()
        d = fcl.distance(obj, self._fixed_objects[j], self._request, result)
        # FCL gives -1 for overlapping solids (no signed distance asked): clearance 0.
        d = max(0.0, float(d))
        if d < MIN_DIRECTION_MM:
            return d, None
        on_piece, on_fixed = result.nearest_points
        v = np.asarray(on_piece, dtype=float) - np.asarray(on_fixed, dtype=float)
        n = math.sqrt(float(v @ v))
        # The points must be as far apart as the distance, or the direction is not used.
        if abs(n - d) > 1e-6 * max(1.0, d):
            return d, None
        return d, v / n

    def pair_distances(self, pose: Pose) -> np.ndarray:
        """(pieces x fixed) exact distances at `pose`, every pair measured (tests, tools)."""
        transforms = self._transforms(pose)
        out = np.empty((len(self.moving), len(self.fixed)))
        for i in range(len(self.moving)):
            obj = self._place(i, transforms)
            for j, fobj in enumerate(self._fixed_objects):
                d = fcl.distance(obj, fobj, self._request, fcl.DistanceResult())
                out[i, j] = max(0.0, float(d))
        return out


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
        return Load.of(self._top + extra + self._base, self.pivot,
                       self.room.couch_base.moves_with_lat_long)

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
