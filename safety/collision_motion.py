"""How far any point of a couch-carried solid can move when the pose changes a little.

This is the bound the path check rests on (docs/collision.md, "Why the path
check is conservative"). For a reference pose P and any pose P' with
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

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from safety.collision_model import Carrier, Solid
from safety.pose import Pose

_RAD = math.pi / 180.0


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


def centre_radius(reach: Reach, pose: Pose, pivot: np.ndarray) -> float:
    """Horizontal distance from the isocentre's vertical axis of the point the
    carrier turns with: the pivot c + t for the table top, (lat, long) or nothing
    for the base."""
    if reach.carrier is Carrier.TABLE_TOP:
        return math.hypot(float(pivot[0]) + pose.lat, float(pivot[1]) + pose.long)
    return math.hypot(pose.lat, pose.long) if reach.base_moves_with_lat_long else 0.0


def max_centre_radius(reach: Reach, lo: Pose, hi: Pose, pivot: np.ndarray) -> float:
    """The largest `centre_radius` over every pose between `lo` and `hi` (axis by axis)."""
    if reach.carrier is Carrier.TABLE_TOP:
        cx, cy = float(pivot[0]), float(pivot[1])
    elif reach.base_moves_with_lat_long:
        cx = cy = 0.0
    else:
        return 0.0
    # |(cx + lat, cy + long)| is convex: largest at a corner of the lat/long rectangle.
    return max(math.hypot(cx + a, cy + b) for a in (lo.lat, hi.lat) for b in (lo.long, hi.long))


def axis_contributions(reach: Reach, half: Sequence[float],
                       radius: float) -> tuple[float, float, float, float, float, float]:
    """Per axis (lat, long, vert, yaw, pitch, roll), how far the solid's points can move
    because of that axis alone, in mm. `half` is the per-axis half-width (mm, deg);
    `radius` is `centre_radius` at the reference pose (or a bound on it)."""
    h_lat, h_long, h_vert, h_yaw, h_pitch, h_roll = (abs(float(v)) for v in half)
    if reach.carrier is Carrier.TABLE_TOP:
        rho = reach.pivot_radius
        return (h_lat, h_long, h_vert, h_yaw * _RAD * (radius + rho),
                h_pitch * _RAD * rho, h_roll * _RAD * rho)
    yaw = h_yaw * _RAD * (reach.axis_radius + radius)
    if reach.base_moves_with_lat_long:
        return (h_lat, h_long, h_vert, yaw, 0.0, 0.0)
    return (0.0, 0.0, h_vert, yaw, 0.0, 0.0)


def displacement_bound(reach: Reach, half: Sequence[float], radius: float) -> float:
    """Upper bound (mm) on how far any point of the solid is from where it is at the
    reference pose, at any pose within `half` of it on every axis."""
    c = axis_contributions(reach, half, radius)
    # Translations add as a vector; each rotation's term adds on top (triangle inequality).
    return math.sqrt(c[0] * c[0] + c[1] * c[1] + c[2] * c[2]) + c[3] + c[4] + c[5]


#: Added to each component of a measured separation direction before it is used:
#: covers the direction's numerical error many times over (it is ~1e-6 / distance).
DIRECTION_SLACK = 0.01


def directional_contributions(reach: Reach, half: Sequence[float], radius: float,
                              direction: Sequence[float]) -> tuple[float, ...]:
    """Like `axis_contributions`, for the distance to ONE convex solid whose closest
    point lies in the unit `direction` from the piece's (expressed in the carrier's
    pre-yaw frame: Rz(-yaw) times the room direction).

    The distance between two convex solids is a convex function of a translation
    of one of them, so it drops by at most `-g . delta` for a translation delta,
    g the unit separation direction: a translation across g costs nothing. The
    rotations are bounded as in `axis_contributions`, about the translated pose
    (hence `hypot(h_lat, h_long)` added to the yaw lever: the new translation).
    """
    h_lat, h_long, h_vert, h_yaw, h_pitch, h_roll = (abs(float(v)) for v in half)
    gx, gy, gz = (abs(float(v)) + DIRECTION_SLACK for v in direction)
    moved = math.hypot(h_lat, h_long)
    if reach.carrier is Carrier.TABLE_TOP:
        rho = reach.pivot_radius
        return (gx * h_lat, gy * h_long, gz * h_vert, h_yaw * _RAD * (radius + moved + rho),
                h_pitch * _RAD * rho, h_roll * _RAD * rho)
    if reach.base_moves_with_lat_long:
        yaw = h_yaw * _RAD * (reach.axis_radius + radius + moved)
        return (gx * h_lat, gy * h_long, gz * h_vert, yaw, 0.0, 0.0)
    return (0.0, 0.0, gz * h_vert, h_yaw * _RAD * (reach.axis_radius + radius), 0.0, 0.0)


def directional_bound(reach: Reach, half: Sequence[float], radius: float,
                      direction: Sequence[float]) -> float:
    """Upper bound (mm) on how much the distance to the solid that lies in
    `direction` can drop within `half` of the reference pose."""
    return sum(directional_contributions(reach, half, radius, direction))
