"""An independent reading of docs/geometry.md, for tests only.

Written separately from safety.geometry and built differently (axis-angle
rotations, homogeneous transforms composed step by step, the orientation
table parsed from its text) so a shared mistake is unlikely.
"""

from __future__ import annotations

import math

import numpy as np

# The contract's table, as text: IEC X, IEC Y, IEC Z in DICOM components.
ORIENTATION_TABLE = """
HFS   x  z -y
HFP  -x  z  y
FFS  -x -z -y
FFP   x -z  y
HFDL -y  z -x
HFDR  y  z  x
FFDL  y -z -x
FFDR -y -z  x
"""


def table_matrix(position: str) -> np.ndarray:
    for line in ORIENTATION_TABLE.strip().splitlines():
        name, *cells = line.split()
        if name == position:
            m = np.zeros((3, 3))
            for row, cell in enumerate(cells):
                sign = -1.0 if cell.startswith("-") else 1.0
                m[row, "xyz".index(cell[-1])] = sign
            return m
    raise KeyError(position)


def axis_angle(axis: tuple[float, float, float], deg: float) -> np.ndarray:
    """Right-handed rotation about a unit axis (Rodrigues)."""
    k = np.asarray(axis, dtype=float)
    k = k / np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * kx + (1 - math.cos(a)) * (kx @ kx)


def homogeneous(rot: np.ndarray | None = None, trans=(0.0, 0.0, 0.0)) -> np.ndarray:
    h = np.eye(4)
    if rot is not None:
        h[:3, :3] = rot
    h[:3, 3] = trans
    return h


def couch_transform(pose: tuple[float, ...], pivot) -> np.ndarray:
    """F_P as a chain: about the pivot roll then pitch, translate by t, then yaw about iso."""
    lat, lng, vert, yaw, pitch, roll = pose
    c = np.asarray(pivot, dtype=float)
    tilt = homogeneous(trans=c) @ homogeneous(
        axis_angle((1, 0, 0), pitch) @ axis_angle((0, 1, 0), roll)
    ) @ homogeneous(trans=-c)
    return homogeneous(axis_angle((0, 0, 1), yaw)) @ homogeneous(trans=(lat, lng, vert)) @ tilt


def registration_from_room_error(d_room: np.ndarray, position: str, iso) -> np.ndarray:
    """T with D = d_room: T(q) = M^-1 D(M (q - iso)) + iso."""
    m4 = homogeneous(table_matrix(position))
    iso_v = np.asarray(iso, dtype=float)
    return homogeneous(trans=iso_v) @ np.linalg.inv(m4) @ d_room @ m4 @ homogeneous(trans=-iso_v)


def registration_for_target(p_img, p_new, pivot, position: str, iso) -> np.ndarray:
    """The registration whose correction is exactly p_new: D = F_Pimg o F_Pnew^-1."""
    d_room = couch_transform(p_img, pivot) @ np.linalg.inv(couch_transform(p_new, pivot))
    return registration_from_room_error(d_room, position, iso)
