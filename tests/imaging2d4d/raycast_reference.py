"""The DRR ray caster in plain Python: the specification imaging/_raycast.c is
held to (tests/imaging2d4d/test_raycast_kernel.py), step for step and bit for
bit: float32 sample positions and weights, two float32 running sums, no fused
multiply-add (the kernel's vector path, 8 rays at a time, does the same
operations in the same order).

Index space: continuous voxel indices (x, y, z); a ray is source + t w with t = 0
at the source and 1 at its detector pixel. Same arguments as
`imaging._raycast.cast_rows`. Far too slow for use (pure Python): small grids only.
"""

from __future__ import annotations

import math

import numpy as np

from imaging.voxel_grid import NO_TISSUE, SKIP_BLOCK

# Keeps every bilinear read inside the volume: positions are clamped this far
# (in voxels) below the last voxel, so the upper neighbour always exists.
_EDGE = 1e-3
_PLANE_EPS = 1e-9

def cast_rows(
    voxels: np.ndarray, strides_xyz: np.ndarray, shape_xyz: np.ndarray,
    room_to_index: np.ndarray, source: np.ndarray,
    pixel0: np.ndarray, step_u: np.ndarray, step_v: np.ndarray, box_lo: np.ndarray,
    box_hi: np.ndarray, skip_first: np.ndarray, skip_last: np.ndarray,
    row_first: int, row_step: int, out: np.ndarray,
) -> None:
    """Line integrals of detector rows row_first, row_first + row_step, ... into `out`."""
    m = room_to_index
    s = _apply(m, source[0], source[1], source[2], 1.0)
    longest = max(shape_xyz[0], max(shape_xyz[1], shape_xyz[2]))
    base = np.empty(longest, np.uint32)  # per-sample scratch, reused by every ray
    wa = np.empty(longest, np.float32)
    wb = np.empty(longest, np.float32)
    nv, nu = out.shape
    for r in range(row_first, nv, row_step):
        for c in range(nu):
            w = (pixel0[0] + c * step_u[0] + r * step_v[0] - source[0],
                 pixel0[1] + c * step_u[1] + r * step_v[1] - source[1],
                 pixel0[2] + c * step_u[2] + r * step_v[2] - source[2])
            d = _apply(m, w[0], w[1], w[2], 0.0)
            out[r, c] = _cast_ray(voxels, strides_xyz, shape_xyz, s, d, box_lo, box_hi,
                                  skip_first, skip_last, base, wa, wb) * math.sqrt(
                w[0] * w[0] + w[1] * w[1] + w[2] * w[2])


def _apply(m: np.ndarray, x: float, y: float, z: float, h: float) -> tuple[float, float, float]:
    """3x4 matrix times (x, y, z, h): h = 1 for a point, 0 for a direction."""
    return (m[0, 0] * x + m[0, 1] * y + m[0, 2] * z + m[0, 3] * h,
            m[1, 0] * x + m[1, 1] * y + m[1, 2] * z + m[1, 3] * h,
            m[2, 0] * x + m[2, 1] * y + m[2, 2] * z + m[2, 3] * h)


def _cast_ray(
    voxels: np.ndarray, strides_xyz: np.ndarray, shape_xyz: np.ndarray,
    s: tuple[float, float, float], d: tuple[float, float, float], box_lo: np.ndarray,
    box_hi: np.ndarray, skip_first: np.ndarray, skip_last: np.ndarray, base: np.ndarray,
    wa: np.ndarray, wb: np.ndarray,
) -> float:
    """Joseph's method for the ray s + t d (index space): the sum over the voxel planes
    of its dominant axis k of bilinear samples in the other two (a, b), per unit t
    of ray (the caller multiplies by the ray's length)."""
    k = _dominant_axis(d)
    t0, t1 = _clip_to_box(s, d, box_lo, box_hi)
    if abs(d[k]) < 1e-12 or t1 <= t0:
        return 0.0
    a = (k + 1) % 3
    b = (k + 2) % 3
    n = (shape_xyz[0], shape_xyz[1], shape_xyz[2])
    stride = (strides_xyz[0], strides_xyz[1], strides_xyz[2])
    ra = d[a] / d[k]  # in-plane position at plane i: c + i r
    rb = d[b] / d[k]
    ca = s[a] - s[k] * ra
    cb = s[b] - s[k] * rb
    xk0 = s[k] + t0 * d[k]
    xk1 = s[k] + t1 * d[k]
    # planes on the box's faces are inside it: xk is one rounding away from the
    # face's integer index, so allow _PLANE_EPS either way
    i0 = max(math.ceil(min(xk0, xk1) - _PLANE_EPS), 0)
    i1 = min(math.floor(max(xk0, xk1) + _PLANE_EPS), n[k] - 1)
    top_a = n[a] - 1.0 - _EDGE
    top_b = n[b] - 1.0 - _EDGE
    i0, i1 = _tissue_planes(k, i0, i1, ca, ra, cb, rb, top_a, top_b, skip_first, skip_last)
    count = i1 - i0 + 1
    if count <= 0:
        return 0.0
    _plan_samples(i0, count, ca, ra, cb, rb, top_a, top_b, stride[k], stride[a], stride[b],
                  base, wa, wb)
    total = _gather_sum(voxels, base, wa, wb, count, stride[a], stride[b])
    return float(total) / abs(d[k])


def _dominant_axis(d: tuple[float, float, float]) -> int:
    k = 0
    for ax in range(3):
        if abs(d[ax]) > abs(d[k]):
            k = ax
    return k


def _clip_to_box(
    s: tuple[float, float, float], d: tuple[float, float, float], lo: np.ndarray,
    hi: np.ndarray,
) -> tuple[float, float]:
    """[t0, t1] of the ray inside the box lo..hi, within [0, 1]; empty when t1 <= t0."""
    t0 = 0.0
    t1 = 1.0
    for ax in range(3):
        if abs(d[ax]) < 1e-12:
            if s[ax] < lo[ax] or s[ax] > hi[ax]:
                return 1.0, 0.0
        else:
            inv = 1.0 / d[ax]
            ta = (lo[ax] - s[ax]) * inv
            tb = (hi[ax] - s[ax]) * inv
            t0 = max(t0, min(ta, tb))
            t1 = min(t1, max(ta, tb))
    return t0, t1


def _tissue_planes(
    k: int, i0: int, i1: int, ca: float, ra: float, cb: float, rb: float, top_a: float,
    top_b: float, skip_first: np.ndarray, skip_last: np.ndarray,
) -> tuple[int, int]:
    """Planes i0..i1 trimmed to those where the columns this ray passes hold tissue."""
    pa_i0 = ca + i0 * ra
    pa_i1 = ca + i1 * ra
    pb_i0 = cb + i0 * rb
    pb_i1 = cb + i1 * rb
    # 0.01 voxel of margin: the float32 sample positions may round across a cell edge
    a_lo = int(min(max(min(pa_i0, pa_i1) - 0.01, 0.0), top_a)) // SKIP_BLOCK
    a_hi = int(min(max(max(pa_i0, pa_i1) + 0.01, 0.0), top_a)) // SKIP_BLOCK
    b_lo = int(min(max(min(pb_i0, pb_i1) - 0.01, 0.0), top_b)) // SKIP_BLOCK
    b_hi = int(min(max(max(pb_i0, pb_i1) + 0.01, 0.0), top_b)) // SKIP_BLOCK
    first = NO_TISSUE
    last = -1
    for ba in range(a_lo, a_hi + 1):
        for bb in range(b_lo, b_hi + 1):
            first = min(first, skip_first[k, ba, bb])
            last = max(last, skip_last[k, ba, bb])
    return max(i0, first), min(i1, last)


def _plan_samples(
    i0: int, count: int, ca: float, ra: float, cb: float, rb: float, top_a: float,
    top_b: float, stride_k: int, stride_a: int, stride_b: int, base: np.ndarray,
    wa: np.ndarray, wb: np.ndarray,
) -> None:
    """Flat index of the (a, b) cell corner and the two weights of every sample, in a
    loop that vectorises: float32 positions (error < 1e-4 voxel), clamped so that
    every read stays inside the volume (the compiled caster does not check bounds)."""
    pa0 = np.float32(ca + i0 * ra)
    pb0 = np.float32(cb + i0 * rb)
    fra = np.float32(ra)
    frb = np.float32(rb)
    fta = np.float32(top_a)
    ftb = np.float32(top_b)
    zero = np.float32(0.0)
    b0 = np.int32(i0 * stride_k)
    isk = np.int32(stride_k)
    isa = np.int32(stride_a)
    isb = np.int32(stride_b)
    for j in range(count):
        pa = min(max(pa0 + np.float32(j) * fra, zero), fta)
        pb = min(max(pb0 + np.float32(j) * frb, zero), ftb)
        ia = np.int32(pa)
        ib = np.int32(pb)
        wa[j] = pa - np.float32(ia)
        wb[j] = pb - np.float32(ib)
        base[j] = np.uint32(b0 + np.int32(j) * isk + ia * isa + ib * isb)


def _gather_sum(
    voxels: np.ndarray, base: np.ndarray, wa: np.ndarray, wb: np.ndarray, count: int,
    stride_a: int, stride_b: int,
) -> np.float32:
    """Sum of the planned bilinear samples, in two running sums (even and odd
    samples): with one, every addition waits for the previous (3 % slower)."""
    ua = np.uint64(stride_a)  # unsigned indices: no wrap-around checks
    ub = np.uint64(stride_b)
    even = np.float32(0.0)
    odd = np.float32(0.0)
    for h in range(count // 2):
        even += _bilinear(voxels, base[2 * h], wa[2 * h], wb[2 * h], ua, ub)
        odd += _bilinear(voxels, base[2 * h + 1], wa[2 * h + 1], wb[2 * h + 1], ua, ub)
    if count % 2:
        even += _bilinear(voxels, base[count - 1], wa[count - 1], wb[count - 1], ua, ub)
    return even + odd


def _bilinear(
    voxels: np.ndarray, corner: int, fa: float, fb: float, ua: np.uint64, ub: np.uint64,
) -> float:
    q = np.uint64(corner)
    v00 = voxels[q]
    v0 = v00 + fa * (voxels[q + ua] - v00)
    v01 = voxels[q + ub]
    v1 = v01 + fa * (voxels[q + ua + ub] - v01)
    return v0 + fb * (v1 - v0)
