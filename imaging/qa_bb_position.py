"""Where a detected BB is, to a fraction of a voxel: step 3 of imaging.qa_bb's finder.

On the unsmoothed image: a soft-thresholded intensity-weighted centroid (weights
max(0, HU - bg - tau); bg the median of a shell around the BB, i.e. its local background
whatever the cupping; tau the larger of 3 sd of the shell's noise and a tenth of the
BB's contrast), then a robust (Huber) Levenberg-Marquardt fit of a sphere with a
Gaussian-blurred edge (blur per image axis: voxels of 1 x 1 x 1.6 mm blur unequally)
from it. The centroid alone is biased by the sampling (a 4 mm BB spans ~3 slices of
1.6 mm: up to 0.25 mm off along them); the fit is not (<0.05 mm on the tests' images),
and the Huber weights make a streak crossing the BB count little. A fit that is not
trustworthy (it moved more than a voxel from the centroid, or gave non-finite numbers)
gives None, and the finder falls back on the centroid.

Positions here are continuous array indices (z, y, x) of the finder's crop; the finder
turns them into physical points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from imaging.qa_markers import CENTROID_ITERATIONS, local_box

__all__ = ["BbEstimate", "centroid", "fit_sphere"]

# Soft threshold of the centroid, as a fraction of the BB's contrast.
CENTROID_FRACTION = 0.1
# At most this many Levenberg-Marquardt iterations of the sphere fit.
FIT_ITERATIONS = 40


@dataclass(frozen=True)
class BbEstimate:
    """The centroid's answer, and what the sphere fit starts from."""

    centre: np.ndarray  # continuous array index (z, y, x)
    peak_hu: float
    voxels: int
    background: float
    noise: float
    window_mm: float
    contrast: float = 0.0


def centroid(a: np.ndarray, peak: tuple[int, int, int], spacing_zyx: np.ndarray,
             core_extent_mm: float) -> BbEstimate:
    """Soft-thresholded intensity-weighted centroid about the peak (the fit's start)."""
    r_w = core_extent_mm / 2.0 + 2.0 * float(spacing_zyx.max())
    r_in = r_w + 1.5
    r_out = r_in + 4.0
    box, grid = local_box(a, peak, np.ceil(r_out / spacing_zyx).astype(int) + 1)
    sp = spacing_zyx[:, None, None, None]
    centre = np.array(peak, dtype=float)
    est = BbEstimate(centre, float(box.max()), 0, 0.0, 0.0, r_w)
    for _ in range(CENTROID_ITERATIONS):
        d = np.sqrt((((grid - centre[:, None, None, None]) * sp) ** 2).sum(axis=0))
        shell = box[(d >= r_in) & (d <= r_out)]
        bg = float(np.median(shell))
        noise = 1.4826 * float(np.median(np.abs(shell - bg)))
        inner = d <= r_w
        v = box[inner] - bg
        contrast = float(v.max())
        tau = max(3.0 * noise, CENTROID_FRACTION * contrast)
        w = np.clip(v - tau, 0.0, None)
        total = float(w.sum())
        if not total > 0:
            break
        centre = (grid[:, inner] * w).sum(axis=1) / total
        est = BbEstimate(centre, float(box[inner].max()), int(np.count_nonzero(w)), bg,
                        max(noise, 1.0), r_w, contrast)
    return est


def _sphere_model(p: np.ndarray, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model HU at points p (3, N; mm about the start, array axes z, y, x) and its
    Jacobian (N, 9) for theta = (cz, cy, cx, radius, sz, sy, sx, contrast, background):

        bg + C * erfc((|p - c| - r) / (sqrt(2) S(n))) / 2,   S(n)^2 = sum_i n_i^2 s_i^2,

    a sphere whose edge is blurred by a Gaussian of sd s_i along array axis i (voxels
    average over their own, anisotropic, extent), n = (p - c) / |p - c|."""
    c, r, s, contrast = theta[:3], theta[3], theta[4:7], theta[7]
    diff = p - c[:, None]
    d = np.sqrt((diff * diff).sum(axis=0))
    safe_d = np.where(d > 1e-9, d, 1e-9)
    n = diff / safe_d
    s2 = s * s
    big_s = np.sqrt((n * n * s2[:, None]).sum(axis=0))
    root2 = math.sqrt(2.0)
    u = (d - r) / (root2 * big_s)
    step = 0.5 * _erfc(u)
    g = -np.exp(-u * u) / math.sqrt(math.pi)  # d step / du
    cg = contrast * g
    # du/dc_j = -n_j / (sqrt2 S) + (d - r) n_j (s_j^2 - S^2) / (sqrt2 S^3 d)
    du_dc = (-n / (root2 * big_s)
             + (d - r) * n * (s2[:, None] - big_s * big_s) / (root2 * big_s ** 3 * safe_d))
    # du/ds_i = -(d - r) / (sqrt2 S^2) * n_i^2 s_i / S
    du_ds = -(d - r) / (root2 * big_s * big_s) * (n * n * s[:, None]) / big_s
    jac = np.empty((p.shape[1], 9))
    jac[:, 0:3] = (cg * du_dc).T
    jac[:, 3] = cg * (-1.0 / (root2 * big_s))
    jac[:, 4:7] = (cg * du_ds).T
    jac[:, 7] = step
    jac[:, 8] = 1.0
    return theta[8] + contrast * step, jac


def _erfc(u: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 on |u| (max error 1.5e-7), reflected for u < 0.
    x = np.abs(u)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                          + t * 1.061405429))))
    e = poly * np.exp(-x * x)
    return np.where(u >= 0, e, 2.0 - e)


def fit_sphere(a: np.ndarray, start: BbEstimate, spacing_zyx: np.ndarray,
               max_diameter: float) -> np.ndarray | None:
    """Robust (Huber) Levenberg-Marquardt fit of `_sphere_model` about the centroid;
    the centre (continuous array index) or None when the fit is not trustworthy."""
    r_fit = start.window_mm + 1.5
    peak = tuple(round(float(v)) for v in start.centre)
    box, grid = local_box(a, peak, np.ceil(r_fit / spacing_zyx).astype(int) + 1)
    p = (grid - start.centre[:, None, None, None]) * spacing_zyx[:, None, None, None]
    inside = np.sqrt((p * p).sum(axis=0)) <= r_fit
    pts, y = p[:, inside], box[inside]
    above = np.count_nonzero(y - start.background >= 0.5 * start.contrast)
    r0 = (3.0 * above * float(np.prod(spacing_zyx)) / (4.0 * math.pi)) ** (1.0 / 3.0)
    theta = np.array([0.0, 0.0, 0.0, max(r0, 0.5), *(0.3 * spacing_zyx + 0.2), start.contrast,
                      start.background])
    huber = 1.345 * start.noise
    lam = 1e-3
    model, jac = _sphere_model(pts, theta)
    res = y - model

    def cost(res: np.ndarray) -> float:
        ar = np.abs(res)
        return float(np.where(ar <= huber, 0.5 * ar * ar, huber * (ar - 0.5 * huber)).sum())

    current = cost(res)
    for _ in range(FIT_ITERATIONS):
        ar = np.abs(res)
        w = np.where(ar <= huber, 1.0, huber / np.maximum(ar, 1e-12))
        jw = jac * w[:, None]
        h = jac.T @ jw
        grad = jw.T @ res
        accepted = False
        for _ in range(12):
            try:
                step = np.linalg.solve(h + lam * np.diag(np.diag(h) + 1e-12), grad)
            except np.linalg.LinAlgError:
                return None
            trial = theta + step
            trial[4:7] = np.clip(trial[4:7], 0.05, 3.0)
            trial[3] = min(max(trial[3], 0.2), max_diameter)
            t_model, t_jac = _sphere_model(pts, trial)
            t_res = y - t_model
            t_cost = cost(t_res)
            if t_cost <= current:
                theta, model, jac, res, current = trial, t_model, t_jac, t_res, t_cost
                lam = max(lam / 10.0, 1e-9)
                accepted = True
                break
            lam *= 10.0
        if not accepted or float(np.abs(step[:3]).max()) < 1e-5:
            break
    if not np.all(np.isfinite(theta)) or theta[7] <= 0:
        return None
    shift = theta[:3]
    # The fit refines the centroid; a fit that wandered off by a voxel has failed.
    if float(np.max(np.abs(shift) / spacing_zyx)) > 1.0:
        return None
    centre: np.ndarray = start.centre + shift / spacing_zyx
    return centre
