"""How far any point of a couch-carried solid can move when the pose changes a little.

The path check uses it to drop, in one cheap step, every piece that is far
from every gantry solid for the whole move (`safety.collision_sweep`'s
`Sweep.cheap` and `Sweep.displacement`, which computes it for every piece at
once; docs/collision.md, "Why the path check is conservative"). For a
reference pose P and any pose P' with
|P'_a - P_a| <= h_a on every axis a, every point of the solid moves by at
most

    table top:  |h_t| + (h_pitch + h_roll) rho + h_yaw (|(c_x + lat, c_y + long)| + rho)
    couch base: h_vert (or |h_t| if it travels with lat/long)
                + h_yaw (rho_xy (+ |(lat, long)| if it travels))

(angles in radians), where t = (lat, long, vert), c is the pitch/roll pivot,
rho the largest distance of a point of the solid from the pivot and rho_xy
the largest horizontal distance of a point of the base from the vertical
axis through the isocentre (both over the corners of the solid's bounding
box, which contains it: a distance from a point or a line is convex, so its
maximum over the box is at a corner).

Derivation for the table top, F_P(x) = Rz(yaw) u, u = A (x - c) + c + t,
A = Rx(pitch) Ry(roll):

    F_P'(x) - F_P(x) = Rz(yaw') (u' - u) + (Rz(yaw') - Rz(yaw)) u
    |u' - u| <= |t' - t| + |(A' A^T - I) A (x - c)| <= |h_t| + theta |x - c|

with theta the angle of A' A^T = Rx(pitch') Ry(roll' - roll) Rx(-pitch), at
most |pitch' - pitch| + |roll' - roll| (the angle of a product of rotations
is at most the sum of their angles), and |(R - I) v| <= angle |v|; the yaw
term moves u on a circle about the vertical axis through the isocentre, by
at most |yaw' - yaw| times its horizontal radius, and that radius is at most
|(c + t)_xy| + |x - c|. The base is the same with A = I and its own t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safety.collision_model import Carrier, Solid


@dataclass(frozen=True, slots=True)
class Reach:
    """The lever arms of one couch-carried solid (mm)."""

    carrier: Carrier
    pivot_radius: float  # table top: largest |x - c| over the solid
    axis_radius: float  # base: largest horizontal distance from the isocentre's vertical
    base_moves_with_lat_long: bool = False


def reach_of(solid: Solid, pivot: np.ndarray, base_moves_with_lat_long: bool) -> Reach:
    corners = solid.corners()
    if solid.carrier is Carrier.TABLE_TOP:
        rho = float(np.max(np.linalg.norm(corners - pivot, axis=1)))
        return Reach(Carrier.TABLE_TOP, rho, 0.0)
    if solid.carrier is Carrier.BASE:
        rho_xy = float(np.max(np.hypot(corners[:, 0], corners[:, 1])))
        return Reach(Carrier.BASE, 0.0, rho_xy, base_moves_with_lat_long)
    raise ValueError(f"{solid.name} is carried by the {solid.carrier}, not the couch")
