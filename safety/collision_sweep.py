"""A lower bound on the clearance over a whole box of couch poses, from its corners.

A *cell* is an axis-aligned box of couch poses (lo..hi on each of lat, long,
vert, yaw, pitch, roll). This module bounds, for every couch-carried piece
and every gantry solid, the smallest distance between them at ANY pose of
the cell, without sampling its inside:

1. **Vertices.** Place every piece at each vertex pose of the cell (up to 64:
   two values per axis that varies). Those are real poses of the cell.
2. **Hull.** For a fixed point x of a piece, its position F(theta)(x) is a
   smooth function of the pose theta. Its tensor-product linear interpolant
   between the vertex poses is a convex combination of the vertex positions,
   and it differs from F by at most

       eps = sum_k h_k^2 sup|d^2 F / d theta_k^2| / 8

   (h_k the cell's width on axis k; the one-dimensional linear-interpolation
   error h^2 |f''| / 8, applied axis by axis: each interpolation is a convex
   combination, so it never enlarges an error already made). Translations are
   linear (no term); for the table top F = Rz(yaw) (A (x - c) + c + t), A =
   Rx(pitch) Ry(roll), so |d2F/dyaw2| <= |(c + t)_xy| + |x - c| and
   |d2F/dpitch2|, |d2F/droll2| <= |x - c|; the base's yaw term is its
   horizontal radius (plus |(lat, long)| if it travels). Mixed derivatives do
   not enter: the interpolant is exact for anything linear in each axis.
   A piece is the convex hull of its bounding-box corners, and F at a fixed
   pose is affine, so every point of the piece at every pose of the cell is
   within eps of the convex hull H of the corners at the vertex poses.
3. **Separation.** For any unit vector u, the distance between H and a gantry
   solid B is at least min_{p in H} u.p - max_{b in B} u.b: the gap between
   their projections (the hull's minimum is at one of its points; B's maximum
   is its support function, exact for a box and a cylinder). Two families of
   u are used: the gantry solid's own three axes together (the gaps along
   each, combined as a Euclidean norm: valid because each coordinate
   difference is at least its gap), and, where one is known, the direction
   FCL found between the two solids at a pose of the cell or of its parent
   (any unit vector gives a valid bound; a good one gives a tight one).

The bound for a pair is the better of the two, less eps, less a rounding
allowance. It is exact for pure translations along the found direction and
tends to the true clearance as the cell shrinks: eps falls with the square
of the rotation widths, the direction's mismatch with their first power.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from safety.collision_model import (
    Box,
    Carrier,
    Solid,
    base_transform,
    gantry_transform,
    table_top_transform,
)
from safety.collision_motion import Reach
from safety.geometry import rot_x, rot_y, rot_z
from safety.pose import Pose

Six = tuple[float, float, float, float, float, float]

_RAD = math.pi / 180.0
#: Subtracted from every bound for floating-point rounding in the projections (mm):
#: coordinates up to ~10 m, sums of a few products, each rounded to 2e-16 relative,
#: are off by far less than a nanometre; this is a thousand times that and more.
ROUNDING_MM = 0.004
# Per number m of varying axes, the (2^m, m) table of vertex bits.
_BITS = [np.array(list(itertools.product((0.0, 1.0), repeat=m)), dtype=float).reshape(1 << m, m)
         for m in range(7)]


def vertex_bits(n_varying: int) -> np.ndarray:
    """(2^n, n): for each vertex index, which end of each varying axis it takes (1 = hi)."""
    return _BITS[n_varying]


def _stack(rotation: Callable[[float], np.ndarray], values: tuple[float, ...]) -> np.ndarray:
    return np.array([rotation(a) for a in values])


@dataclass(frozen=True, slots=True)
class CellBound:
    """Lower bounds over one cell, per (piece, gantry solid)."""

    bounds: np.ndarray  # (pieces, fixed), mm; NaN where not asked
    gaps: np.ndarray  # (pieces, fixed, V): the separation at each vertex pose (before eps)
    eps: np.ndarray  # (pieces,), mm


@dataclass(frozen=True, slots=True, eq=False)
class _Frames:
    """A cell's vertex poses as rotations and translations (the order of `vertices`:
    translation (lat, long, vert) most significant, then yaw, then pitch and roll)."""

    rz: np.ndarray  # (Ny, 3, 3)
    top: np.ndarray  # (Ny * Np * Nr, 3, 3): Rz A for the table top
    top_shift: np.ndarray  # (3, Nt): c + t
    base_shift: np.ndarray  # (3, Nt): t' (the base's own translation)
    n_t: int
    n_pr: int
    eps_terms: np.ndarray  # (pieces, 3): the yaw, pitch and roll terms of eps (mm)


@dataclass(frozen=True, slots=True, eq=False)
class Carried:
    """What the sweep needs of the couch-carried pieces, compiled once per patient
    envelope: table-top pieces first, then the base."""

    pivot: np.ndarray
    base_travels: bool
    n_top: int
    top_local: np.ndarray  # (3, 8, table-top pieces): corners less the pivot, coordinates first
    base_local: np.ndarray  # (3, 8, base pieces)
    rho: np.ndarray  # per table-top piece, its largest distance from the pivot (mm)
    axis_radius: np.ndarray  # per base piece, its largest horizontal radius at zero pose (mm)
    # Every piece's bounding box in its carrier's frame: centre (table top: less the
    # pivot), axes (columns) and half extents; (pieces, 3), (pieces, 3, 3), (pieces, 3).
    centre: np.ndarray
    axes: np.ndarray
    half: np.ndarray

    @classmethod
    def of(cls, moving: tuple[Solid, ...], reaches: tuple[Reach, ...], pivot: np.ndarray,
           base_travels: bool) -> Carried:
        top = [i for i, s in enumerate(moving) if s.carrier is Carrier.TABLE_TOP]
        base = [i for i, s in enumerate(moving) if s.carrier is Carrier.BASE]
        if top + base != list(range(len(moving))):
            raise ValueError("moving pieces must be table-top pieces first, then the base")
        pv = np.asarray(pivot, dtype=float)

        def corners(rows: list[int]) -> np.ndarray:
            if not rows:
                return np.zeros((3, 8, 0))
            return np.stack([moving[i].corners() for i in rows]).transpose(2, 1, 0)

        centre = np.array([m.placement[:3, 3] for m in moving]).reshape(-1, 3)
        centre[: len(top)] -= pv
        return cls(pv, base_travels, len(top), corners(top) - pv[:, None, None], corners(base),
                   np.array([reaches[i].pivot_radius for i in top]),
                   np.array([reaches[i].axis_radius for i in base]), centre,
                   np.array([m.placement[:3, :3] for m in moving]).reshape(-1, 3, 3),
                   np.array([m.half_extents() for m in moving]).reshape(-1, 3))


class Sweep:
    """The carried pieces and the gantry solids' frames for one scene (gantry angle, arms)."""

    def __init__(self, carried: Carried, fixed: tuple[Solid, ...], gantry_deg: float) -> None:
        self.pivot = carried.pivot
        self.base_travels = carried.base_travels
        self.n_top = carried.n_top
        self._top_local = carried.top_local
        self._base_local = carried.base_local
        self.rho = carried.rho
        self._piece_centre, self._piece_axes = carried.centre, carried.axes
        self._piece_half = carried.half
        self.axis_radius = carried.axis_radius
        g = gantry_transform(gantry_deg)
        frames = [g @ s.placement for s in fixed]
        self.fixed_rot = np.array([f[:3, :3] for f in frames])  # (J, 3, 3) local -> room
        self.fixed_centre = np.array([f[:3, 3] for f in frames])  # (J, 3)
        self.fixed_half = np.array([s.half_extents() for s in fixed])  # (J, 3)
        self.is_box = np.array([isinstance(s.shape, Box) for s in fixed])
        # Row-vector form: local = room @ R - centre @ R.
        self._fixed_origin = np.einsum("jc,jcd->jd", self.fixed_centre,
                                       self.fixed_rot)[:, :, None, None, None]
        # (J * 3, 3): row (j, d) is gantry solid j's axis d in the room frame.
        self._fixed_rows = self.fixed_rot.transpose(0, 2, 1).reshape(-1, 3)
        self._frames_cache: dict[tuple[Six, Six], _Frames] = {}

    # ------------------------------------------------------------ placement

    @staticmethod
    def vertices(lo: Six, hi: Six) -> np.ndarray:
        """(V, 6): the cell's vertex poses, two values on each axis that varies (the
        first varying axis is the most significant bit of a vertex's index)."""
        low, high = np.array(lo, dtype=float), np.array(hi, dtype=float)
        varying = np.flatnonzero(high > low)
        out = np.repeat(low[None, :], 1 << len(varying), axis=0)
        # Each end taken as given (not lo + width, which may round past hi).
        out[:, varying] = np.where(vertex_bits(len(varying)) == 1.0, high[varying], low[varying])
        return out

    @staticmethod
    def vertex(lo: Six, hi: Six, index: int) -> Six:
        """Vertex pose `index` of the cell (the order of `vertices`)."""
        return tuple(float(x) for x in Sweep.vertices(lo, hi)[index])  # type: ignore[return-value]

    def _place(self, frames: _Frames, top: np.ndarray, base: np.ndarray) -> np.ndarray:
        """(3, 8, V, pieces): the corners of the given table-top and base pieces at every
        vertex pose of the cell, room frame: F_v(x) = M_v x + Rz shift_t as in
        `_lowest_along`. Coordinates first and corners before vertices: the reductions
        then run across contiguous slabs (numpy is ten times slower reducing a short
        axis inside another short one)."""
        rz, ny = frames.rz, len(frames.rz)
        parts = []
        for ids, local, m, shift in ((top, self._top_local, frames.top, frames.top_shift),
                                     (base, self._base_local, rz, frames.base_shift)):
            if not len(ids):
                continue
            turned = (m.reshape(-1, 3) @ local[:, :, ids].reshape(3, -1)).reshape(
                ny, -1, 3, 8, len(ids))  # (Ny, R', 3, 8, n); the base has R' = 1
            moved = (rz @ shift).transpose(2, 0, 1)  # (Nt, Ny, 3)
            w = np.broadcast_to(turned[None] + moved[:, :, None, :, None, None],
                                (frames.n_t, ny, frames.n_pr, 3, 8, len(ids)))
            parts.append(w.reshape(-1, 3, 8, len(ids)))
        w = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=3)
        return np.ascontiguousarray(w.transpose(1, 2, 0, 3))

    def _frames(self, lo: Six, hi: Six) -> _Frames:
        """The cell's rotations and translations, built once per cell (a probed cell is
        bounded twice with the same ones)."""
        key = (lo, hi)
        found = self._frames_cache.get(key)
        if found is not None:
            return found
        vals = [(a,) if a == b else (a, b) for a, b in zip(lo, hi)]
        rz = _stack(rot_z, vals[3])  # (Ny, 3, 3)
        a = np.array([rot_x(p) @ rot_y(r) for p in vals[4] for r in vals[5]])  # (Np * Nr, 3, 3)
        ts = np.array(list(itertools.product(vals[0], vals[1], vals[2])))  # (Nt, 3)
        frames = _Frames(
            rz=rz, top=(rz[:, None] @ a[None]).reshape(-1, 3, 3), top_shift=(ts + self.pivot).T,
            base_shift=(ts if self.base_travels else ts * np.array([0.0, 0.0, 1.0])).T,
            n_t=len(ts), n_pr=len(a), eps_terms=self._eps_terms(lo, hi))
        if len(self._frames_cache) >= 64:
            self._frames_cache.clear()
        self._frames_cache[key] = frames
        return frames

    def _lowest_along(self, frames: _Frames, pieces: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(V, P): for each pair p, min over piece pieces[p] at each vertex pose of u[p] . x.

        F_v(x) = M_v (x - c) + s_v (table top: M = Rz A, s = Rz (c + t); base: M = Rz,
        s = Rz t'), so u . F_v(x) = (M_v^T u) . (x - c) + u . s_v, and the first term's
        minimum over a box is its support function: w . centre - sum_i |w . axis_i| h_i.
        Rotations take at most 2 x 2 x 2 values and translations 2 x 2 x 2, so M and s
        are built per rotation and per translation and combined by broadcasting; the
        order of the result is that of `vertices`."""
        rz, ny = frames.rz, len(frames.rz)
        if pieces[-1] < self.n_top:  # only table-top pieces (sorted): the usual case
            return self._lowest_one_carrier(frames, pieces, u, frames.top, frames.top_shift)
        out = np.empty((frames.n_t, ny, frames.n_pr, len(pieces)))
        on_top = pieces < self.n_top
        for carrier_top in (True, False):
            cols = np.flatnonzero(on_top) if carrier_top else np.flatnonzero(~on_top)
            if not len(cols):
                continue
            # The base only turns with the yaw.
            m, shift = (frames.top, frames.top_shift) if carrier_top else (rz, frames.base_shift)
            part = self._lowest_one_carrier(frames, pieces[cols], u[cols], m, shift)
            out[..., cols] = part.reshape(frames.n_t, ny, -1, len(cols))
        return out.reshape(-1, len(pieces))

    def _lowest_one_carrier(self, frames: _Frames, ids: np.ndarray, u: np.ndarray,
                            m: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """`_lowest_along` for pieces of one carrier: m (Ny * R', 3, 3) its rotations,
        shift (3, Nt) its translations before the yaw. (V', P), V' = Nt * Ny * R'."""
        rz, ny, n = frames.rz, len(frames.rz), len(ids)
        w = np.matmul(u[:, None, None, :], m[None]).reshape(n, -1, 3)  # (P, R, 3)
        along_axes = np.abs(np.matmul(w, self._piece_axes[ids]))  # (P, R, 3)
        box = ((w * self._piece_centre[ids][:, None, :]).sum(axis=2)
               - (along_axes * self._piece_half[ids][:, None, :]).sum(axis=2))
        box = box.reshape(n, ny, -1)  # (P, Ny, R' / Ny)
        # u . Rz_y shift_t = (Rz_y^T u) . shift_t
        lin = np.matmul(np.matmul(u[:, None, None, :], rz[None]).reshape(n, ny, 3), shift)
        total = box[:, None, :, :] + lin.transpose(0, 2, 1)[..., None]  # (P, Nt, Ny, R')
        return total.reshape(n, -1).T

    def _place_one(self, pose: Pose) -> np.ndarray:
        """(3, 8 * pieces): every piece's corners at one pose (corner-major, like `_place`)."""
        top = table_top_transform(pose, self.pivot)
        offset = top[:3, :3] @ self.pivot + top[:3, 3]
        parts = [(top[:3, :3] @ self._top_local.reshape(3, -1) + offset[:, None])
                 .reshape(3, 8, -1)]
        if len(self.axis_radius):
            base = base_transform(pose, self.base_travels)
            parts.append((base[:3, :3] @ self._base_local.reshape(3, -1) + base[:3, 3][:, None])
                         .reshape(3, 8, -1))
        return np.concatenate(parts, axis=2).reshape(3, -1)

    def eps_by_axis(self, lo: Six, hi: Six, piece: int) -> np.ndarray:
        """(6,): each axis's share of `eps` for one piece (mm; translations have none)."""
        out = np.zeros(6)
        out[3:] = self._frames(lo, hi).eps_terms[piece]
        return out

    def eps(self, lo: Six, hi: Six) -> np.ndarray:
        """Per piece, how far a point can be from the hull of its vertex positions (mm)."""
        return self._frames(lo, hi).eps_terms.sum(axis=1)

    def _eps_terms(self, lo: Six, hi: Six) -> np.ndarray:
        """(pieces, 3): the yaw, pitch and roll terms of `eps` (h^2 |d2F/dtheta2| / 8)."""
        hy, hp, hr = ((hi[k] - lo[k]) * _RAD for k in (3, 4, 5))
        top = np.stack([hy * hy * (self._centre_radius(lo, hi) + self.rho),
                        hp * hp * self.rho, hr * hr * self.rho], axis=1)
        base = np.zeros((len(self.axis_radius), 3))
        base[:, 0] = hy * hy * (self.axis_radius + self._travel_radius(lo, hi))
        return np.concatenate([top, base]) / 8.0

    def _centre_radius(self, lo: Six, hi: Six) -> float:
        """The largest |(c + t)_xy| over the cell (convex: at a corner of lat x long)."""
        cx, cy = float(self.pivot[0]), float(self.pivot[1])
        return max(math.hypot(cx + a, cy + b) for a in (lo[0], hi[0]) for b in (lo[1], hi[1]))

    def _travel_radius(self, lo: Six, hi: Six) -> float:
        if not self.base_travels:
            return 0.0
        return max(math.hypot(a, b) for a in (lo[0], hi[0]) for b in (lo[1], hi[1]))

    def cheap(self, lo: Six, hi: Six) -> np.ndarray:
        """(pieces, J): a cheap lower bound for every pair over the whole cell: the
        separating-axis gap at the cell's centre pose less the furthest any point of
        the piece can move within the cell (`displacement`)."""
        pts = self._place_one(Pose(*((a + b) / 2 for a, b in zip(lo, hi))))  # (3, 8 * n)
        n = pts.shape[1] // 8
        local = (self._fixed_rows @ pts).reshape(len(self.fixed_half), 3, 8, n)
        local -= self._fixed_origin[..., 0]
        half = self.fixed_half[:, :, None]
        apart = np.maximum(np.maximum(local.min(axis=2) - half, -half - local.max(axis=2)), 0.0)
        gap = np.sqrt((apart * apart).sum(axis=1)).T  # (n, J)
        return gap - self.displacement(lo, hi)[:, None]

    def displacement(self, lo: Six, hi: Six) -> np.ndarray:
        """Per piece, how far any of its points can be from where it is at the cell's
        centre pose, at any pose of the cell (mm): `safety.collision_motion`'s bound,
        for every piece at once."""
        h = [(b - a) / 2 for a, b in zip(lo, hi)]
        hy, hp, hr = (x * _RAD for x in h[3:])
        moved = math.sqrt(h[0] * h[0] + h[1] * h[1] + h[2] * h[2])
        top = moved + (hp + hr) * self.rho + hy * (self._centre_radius(lo, hi) + self.rho)
        base_t = moved if self.base_travels else h[2]
        base = base_t + hy * (self.axis_radius + self._travel_radius(lo, hi))
        return np.concatenate([top, base])

    # ------------------------------------------------------------ bounds

    def bound(self, lo: Six, hi: Six, pieces: np.ndarray, directions: np.ndarray,
              short: np.ndarray) -> CellBound:
        """Lower bounds over the cell lo..hi for the (piece, gantry solid) pairs marked
        `short` (NaN for the others): `pieces` are indices (table-top pieces first),
        `directions` (len(pieces), J, 3) unit vectors from the gantry solid toward the
        piece, NaN where none is known (those pairs get the separating-axis bound)."""
        frames = self._frames(lo, hi)
        n, n_f, n_v = len(pieces), len(self.fixed_half), frames.n_t * len(frames.top)
        found = np.full((n, n_f), np.nan)
        gaps = np.full((n, n_f, n_v), np.nan)
        known = short & ~np.isnan(directions[..., 0])
        by_axes = short & ~known
        if by_axes.any():
            rows = np.flatnonzero(by_axes.any(axis=1))
            sel = pieces[rows]
            pts = self._place(frames, sel[sel < self.n_top], sel[sel >= self.n_top] - self.n_top)
            sat, per_vertex = self._axes_gaps(pts)  # (m, J), (m, J, V)
            mask = by_axes[rows]
            found[rows] = np.where(mask, sat, found[rows])
            gaps[rows] = np.where(mask[..., None], per_vertex, gaps[rows])
        if known.any():
            r, c = np.nonzero(known)
            u = directions[r, c]  # (P, 3)
            gap = self._lowest_along(frames, pieces[r], u) - self._support(c, u)  # (V, P)
            found[r, c] = gap.min(axis=0)
            gaps[r, c] = gap.T
        eps = frames.eps_terms[pieces].sum(axis=1)
        bounds = np.maximum(found - eps[:, None] - ROUNDING_MM, 0.0)  # NaN stays NaN
        return CellBound(bounds, gaps, eps)

    def _axes_gaps(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Separating-axis gaps along each gantry solid's own three axes (combined as a
        Euclidean norm): over the hull of all vertices (m, J) and per vertex (m, J, V)."""
        n_v, m, n_f = pts.shape[2], pts.shape[3], len(self.fixed_half)
        local = (self._fixed_rows @ pts.reshape(3, -1)).reshape(n_f, 3, 8, n_v, m)
        local -= self._fixed_origin
        vmin, vmax = local.min(axis=2), local.max(axis=2)  # (J, 3, V, m)
        half = self.fixed_half[:, :, None, None]
        apart = np.maximum(np.maximum(vmin - half, -half - vmax), 0.0)
        per_vertex = np.sqrt((apart * apart).sum(axis=1))  # (J, V, m)
        half = self.fixed_half[:, :, None]
        apart = np.maximum(np.maximum(vmin.min(axis=2) - half, -half - vmax.max(axis=2)), 0.0)
        hull = np.sqrt((apart * apart).sum(axis=1))  # (J, m)
        return hull.T, per_vertex.transpose(2, 0, 1)

    def _support(self, fixed: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(P,): max over gantry solid fixed[p] of u[p] . b, for unit vectors u (P, 3);
        exact for a box and a cylinder."""
        along = (u[:, :, None] * self.fixed_rot[fixed]).sum(axis=1)  # u in the solid's axes
        half = self.fixed_half[fixed]
        box = (np.abs(along) * half).sum(axis=1)
        axial = np.abs(along[:, 2])
        cyl = half[:, 0] * np.sqrt(np.maximum(0.0, 1.0 - axial * axial)) + half[:, 2] * axial
        return (u * self.fixed_centre[fixed]).sum(axis=1) + np.where(self.is_box[fixed], box, cyl)
