"""The refinement level of the rigid 3D registration: our own Gauss-Newton (numpy) on the
correlation at native resolution, sampling the planning CT at exact voxel centres and
the daily image straight from its buffer with the exact gradient of its trilinear
interpolant (why: the module docstring of `imaging.registration`, docs/registration.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from imaging.registration_result import RegistrationFailed
from imaging.registration_settings import Level


class _Trilinear:
    """Linear interpolation of an image, with the exact gradient of the interpolant, at
    arbitrary physical points (any direction cosines); numpy only.

    The gradient is the derivative of the same trilinear function whose values are
    compared, so the Gauss-Newton fixed point is the true optimum of the sampled
    correlation (no smoothed or finite-difference gradient that disagrees with it).
    """

    def __init__(self, img: sitk.Image, padding: float | None = None) -> None:
        self.padding = padding
        # A view of the image's own buffer, in its own pixel type (no copy, no cast of
        # a whole CBCT): only the gathered corner values are converted.
        self._img = img
        self.values = sitk.GetArrayViewFromImage(img).ravel()
        self.size = np.array(img.GetSize(), dtype=np.int64)
        d = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
        # physical p -> continuous index (i, j, k) = A (p - origin)
        self.a = (np.diag(1.0 / np.array(img.GetSpacing(), dtype=float)) @ d.T).astype(np.float32)
        self.origin = np.array(img.GetOrigin(), dtype=np.float32)

    def __call__(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, physical gradients (N, 3), inside) at the (N, 3) points `p`; points
        whose interpolation cell is not wholly inside the image are outside (their
        values are junk). float32 throughout: the gathers dominate the cost."""
        ci = (p.astype(np.float32) - self.origin) @ self.a.T
        i0 = np.floor(ci)
        f = ci - i0
        i0i = i0.astype(np.int64)
        inside = np.all((i0i >= 0) & (i0i < self.size - 1), axis=1)
        if not inside.all():
            np.clip(i0i, 0, self.size - 2, out=i0i)
        nx, nxy = int(self.size[0]), int(self.size[0] * self.size[1])
        lin = i0i[:, 0] + nx * i0i[:, 1] + nxy * i0i[:, 2]
        # np.take, not v[lin]: take releases the GIL while it gathers, fancy indexing
        # does not -- with it the daemon's event loop stalled up to 17 ms.
        v = self.values
        raw = [np.take(v, lin), np.take(v, lin + 1)]
        lin += nx
        raw += [np.take(v, lin), np.take(v, lin + 1)]
        lin += nxy
        raw += [np.take(v, lin), np.take(v, lin + 1)]
        lin -= nx
        raw += [np.take(v, lin), np.take(v, lin + 1)]
        v000, v100, v010, v110, v011, v111, v001, v101 = (
            c.astype(np.float32, copy=False) for c in raw)
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
        d00, d10, d01, d11 = v100 - v000, v110 - v010, v101 - v001, v111 - v011
        c00, c10 = v000 + fx * d00, v010 + fx * d10
        c01, c11 = v001 + fx * d01, v011 + fx * d11
        e0, e1 = c10 - c00, c11 - c01
        c0, c1 = c00 + fy * e0, c01 + fy * e1
        gz = c1 - c0
        val = c0 + fz * gz
        g = np.empty((len(val), 3), dtype=np.float32)
        gx0 = d00 + fy * (d10 - d00)
        g[:, 0] = gx0 + fz * ((d01 + fy * (d11 - d01)) - gx0)
        g[:, 1] = e0 + fz * (e1 - e0)
        g[:, 2] = gz
        # d value / d p = (d value / d index) A
        if self.padding is not None:
            # A cell touching a voxel outside the reconstructed field of view holds no
            # anatomy: the sample is outside, like one beyond the image edge.
            for corner in raw:
                inside &= corner != self.padding
        return val, g @ self.a, inside


def _curvature(jm: np.ndarray, u: np.ndarray, gf: np.ndarray, val: np.ndarray, ok: np.ndarray,
               const: np.ndarray, n_par: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Gauss-Newton curvature: the mean of J^T J from the daily image's gradient (`jm`)
    and from the planning CT's (`gf` = R grad F = a grad M at the solution).

    The CBCT's alone (noise in its gradient inflates it) gave steps covering a third of
    the remaining error (7-10 iterations); the CT's alone overshot (its edges are
    softer than the trilinear CBCT's) and oscillated; the mean converges in 3-6. It is
    computed once per level: the gradient J^T r, the daily image's exact one, decides
    where the iteration stops -- the correlation optimum -- whatever curvature is used.
    """
    n_var = jm.shape[1]
    jf = np.empty_like(jm)
    jf[:, 0:3] = np.cross(u, gf)
    jf[:, 3:6] = gf
    jf[:, 6] = val
    jf[~ok] = 0.0
    w = ok.astype(np.float64) if weights is None else weights * ok
    c_w = const * w[:, None]
    h = np.empty((n_par, n_par))
    h[:n_var, :n_var] = 0.5 * (jm.T @ (jm * w[:, None]) + jf.T @ (jf * w[:, None]))
    h[:n_var, n_var:] = 0.5 * ((jm + jf).T @ c_w)
    h[n_var:, :n_var] = h[:n_var, n_var:].T
    h[n_var:, n_var:] = const.T @ c_w
    return h


def _bias_basis(xi: np.ndarray, order: int) -> np.ndarray:
    """(N, K) polynomial terms of degree 1..order in the normalised positions `xi`."""
    cols: list[np.ndarray] = []
    if order >= 1:
        cols += [xi[:, 0], xi[:, 1], xi[:, 2]]
    if order >= 2:
        cols += [xi[:, 0] ** 2, xi[:, 1] ** 2, xi[:, 2] ** 2,
                 xi[:, 0] * xi[:, 1], xi[:, 0] * xi[:, 2], xi[:, 1] * xi[:, 2]]
    if not cols:
        return np.zeros((len(xi), 0), dtype=np.float32)
    return np.stack(cols, axis=1).astype(np.float64)


def _central_gradient(img: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """Physical gradient (N, 3) of `img` at the voxels `kji` (z, y, x indices), by
    central differences (one-sided at the border)."""
    arr = sitk.GetArrayViewFromImage(img)
    shape = np.array(arr.shape)
    g_idx = np.empty((len(kji), 3), dtype=np.float32)
    for axis in range(3):  # numpy axis 0 is z = index axis 2
        hi, lo = kji.copy(), kji.copy()
        hi[:, axis] = np.minimum(hi[:, axis] + 1, shape[axis] - 1)
        lo[:, axis] = np.maximum(lo[:, axis] - 1, 0)
        dist = (hi[:, axis] - lo[:, axis]).astype(np.float32)
        diff = arr[hi[:, 0], hi[:, 1], hi[:, 2]].astype(np.float32) - arr[lo[:, 0], lo[:, 1], lo[:, 2]]
        g_idx[:, 2 - axis] = diff / np.maximum(dist, 1.0)
    d = np.array(img.GetDirection(), dtype=float).reshape(3, 3)
    a = np.diag(1.0 / np.array(img.GetSpacing(), dtype=float)) @ d.T
    return g_idx @ a.astype(np.float32)


def _rotation_vector_matrix(w: np.ndarray) -> np.ndarray:
    """Rodrigues: the rotation by |w| radians about w."""
    th = float(np.linalg.norm(w))
    if th < 1e-15:
        return np.eye(3)
    k = w / th
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(th) * kx + (1 - math.cos(th)) * (kx @ kx)


@dataclass(frozen=True)
class _Refined:
    iterations: int
    ncc: float
    hit_max: bool
    stop: str


def _refine_gauss_newton(
    f_lvl: sitk.Image, mask: np.ndarray, moving: sitk.Image, tx: sitk.Euler3DTransform,
    lv: Level, lever_mm: float, padding: float | None = None,
    weights: np.ndarray | None = None,
) -> _Refined:
    """Gauss-Newton on the correlation at exact fixed voxel values; updates `tx` in place.

    Model: planning HU F(x) = a M(T(x)) + b + bias(x) with gain a, offset b and a
    smooth polynomial bias fitted along with the six pose parameters. For any pose the
    best (a, b) leave N var(F) (1 - NCC^2), so without the bias terms the
    least-squares optimum is the correlation optimum. Gauss-Newton needs 3-6
    evaluations where regular-step descent needs 12-15, and each evaluation is one
    trilinear gather per sample. `weights` (1 / sampling probability) make the sum
    over the drawn samples an unbiased estimate of the sum over every voxel.
    (Robust Tukey/Cauchy weights were tried against streaks and did not help: worst
    case 0.35 mm against 0.14 mm, and more iterations.)
    """
    arr = sitk.GetArrayViewFromImage(f_lvl)
    kji = np.argwhere(mask)
    f_vals = arr[mask].astype(np.float64)
    d = np.array(f_lvl.GetDirection(), dtype=float).reshape(3, 3)
    idx = kji[:, ::-1].astype(float)
    x = np.array(f_lvl.GetOrigin()) + (idx * np.array(f_lvl.GetSpacing())) @ d.T
    c = np.array(tx.GetCenter(), dtype=float)
    rot = np.array(tx.GetMatrix(), dtype=float).reshape(3, 3)
    t = np.array(tx.GetTranslation(), dtype=float)
    u0 = x - c
    sampler = _Trilinear(moving, padding)
    gain = offset = float("nan")
    ncc = float("nan")
    min_samples = max(100, len(f_vals) // 20)
    # Smooth intensity bias (cupping, shading): polynomial terms in the position,
    # fitted with gain and offset. The CBCT's cupping is not a global linear remap of
    # HU: with a 95 mm field of view and 150-220 HU cupping it varies by ~170 HU across
    # the region and, correlated with the anatomy, pulled the correlation optimum
    # (see docs/registration.md).
    basis = _bias_basis(u0 / lever_mm, lv.bias_order)
    # Parameters: 3 rotation, 3 translation, gain (varying columns of the Jacobian);
    # offset and bias terms (constant columns: their blocks of J^T J are computed once).
    # float64 sums: in float32 the summation order (BLAS threads) moved the end point
    # by up to 0.03 mm between runs of the same images.
    const = np.concatenate([np.ones((len(f_vals), 1)), basis], axis=1)
    n_var, n_par = 7, 7 + const.shape[1]
    coef = np.zeros(basis.shape[1])
    jm = np.empty((len(f_vals), n_var))  # from the daily image's gradient
    f_grad = _central_gradient(f_lvl, kji)
    h: np.ndarray | None = None
    moved = float("inf")
    # The accepted state before the last step: (rotation, translation, gain, offset,
    # bias, mean squared residual).
    prev: tuple[np.ndarray, np.ndarray, float, float, np.ndarray, float] | None = None
    step = np.zeros(n_par)
    for it in range(1, lv.max_iterations + 1):
        u = (u0 @ rot.T).astype(np.float32)
        val, grad, ok = sampler(u + (c + t))
        # Hand the interpreter lock over between the numpy steps: the daemon runs this in
        # a worker thread next to its event loop.
        time.sleep(0)
        n_ok = int(ok.sum())
        if n_ok < min_samples:
            raise RegistrationFailed(
                f"registration failed at native resolution: {n_ok} of {len(f_vals)} "
                "samples fall inside the daily image")
        if not math.isfinite(gain):
            gain, offset = (float(v) for v in np.polyfit(val[ok], f_vals[ok], 1))
        r = f_vals - (gain * val.astype(np.float64) + offset)
        if len(coef):
            r -= basis @ coef
        if n_ok < len(ok):
            r[~ok] = 0.0  # outside samples: no residual and no row
        wr = r if weights is None else r * weights
        mse = float(r @ wr) / n_ok
        if prev is not None and mse > prev[5]:
            # The step made the fit worse: it crossed a kink of the linear interpolant
            # (sharp, aliased edges) or overshot. Go back and take half of it; without
            # this, clean images of a hard-edged phantom cycled for 20 iterations.
            rot, t, gain, offset, coef = prev[0], prev[1], prev[2], prev[3], prev[4].copy()
            step = 0.5 * step
        else:
            prev = (rot, t, gain, offset, coef.copy(), mse)
            jm[:, 0:3] = np.cross(u, grad)
            jm[:, 0:3] *= gain
            np.multiply(grad, gain, out=jm[:, 3:6])
            jm[:, 6] = val
            if n_ok < len(ok):
                jm[~ok] = 0.0
            # Fresh curvature while the pose still moves by more than a fraction of a
            # voxel; then kept (it changes little, and it costs as much as the rest).
            if h is None or moved > 0.3:
                h = _curvature(jm, u, f_grad @ rot.T, val, ok, const, n_par, weights)
                time.sleep(0)
            g_vec = np.concatenate([jm.T @ wr, const.T @ wr])
            step = np.linalg.solve(h + 1e-9 * np.diag(np.diag(h)) + 1e-12 * np.eye(n_par), g_vec)
        rot = _rotation_vector_matrix(step[:3]) @ rot
        t = t + step[3:6]
        gain += float(step[6])
        offset += float(step[7])
        coef = coef + step[8:]
        # Largest displacement of the update anywhere in the region of interest.
        moved = float(np.linalg.norm(step[3:6]) + np.linalg.norm(step[:3]) * lever_mm)
        if moved < lv.min_step:
            break
    else:
        it = lv.max_iterations
    tx.SetMatrix([float(v) for v in rot.ravel()])
    tx.SetTranslation([float(v) for v in t])
    ok_f, ok_m = f_vals[ok], val[ok]
    ncc = float(np.corrcoef(ok_f, ok_m)[0, 1]) if len(ok_f) > 1 else float("nan")
    hit_max = it >= lv.max_iterations and not moved < lv.min_step
    stop = (f"Gauss-Newton: update {moved:.2g} mm below {lv.min_step:g} mm after {it} iterations"
            if not hit_max else f"Gauss-Newton: update still {moved:.2g} mm after {it} iterations")
    return _Refined(it, ncc, hit_max, stop)
